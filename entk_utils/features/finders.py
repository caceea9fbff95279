"""The direction finders compared with the eNTK, in one registry.

Every finder reads the same :class:`FinderInputs` (the activations of the N scored contexts,
the eNTK eigenvectors, an SAE, and, for the supervised ceilings only, the labels of the
``select`` half) and returns :class:`Directions`: per-context scores (N, k) for its k
directions with a short description. Each is one :class:`FinderSpec` entry of
:data:`FINDERS`: what it reads, whether the labels choose it, whether it gets a larger budget
and whether it gets dashboard cards; everything downstream reads the spec. The scoring (:mod:`.scoring`), the significance tests
(:mod:`.significance`) and notebooks 03 and 06 take them all alike.

=================  =====================================================================
``entk``           top singular component of each eNTK eigenvector laid out as (N, d)
``pca``            top principal components of the activations
``random``         projections on random directions of the activation space
``ica``            scikit-learn ``FastICA`` components of the activations (k of them)
``sae``            the k SAE latents most often active on the contexts (no labels used)
``sae-all``        every latent of the SAE (the larger budget: the whole dictionary)
``mean-difference``  per label, the difference of class means (select half): supervised
``logistic``       per label, a logistic regression's score (select half): supervised
=================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .directions import entk_scores, pca_scores, principal_components, random_scores, random_unit_directions
from .sae import decoder_rows, describe_sae, sae_latents


@dataclass
class FinderInputs:
    """What the finders read. ``activations`` (N, d): the hidden states of the N scored
    contexts (e.g. the residual stream after the analysed layer); ``eigenvectors``
    (N*d_out, m): eNTK eigenvectors, or None; ``sae``: an SAELens SAE over the same
    activations, or None; ``labels`` (N, L) binary DataFrame and ``select``: the half the
    supervised finders may fit on (they never see the other half's labels)."""

    activations: np.ndarray
    eigenvectors: np.ndarray | None = None
    sae: object | None = None
    labels: pd.DataFrame | None = None
    select: np.ndarray | None = None

    def __post_init__(self):
        self.activations = np.asarray(self.activations, dtype=np.float64)
        if self.activations.ndim != 2 or not np.all(np.isfinite(self.activations)):
            raise ValueError(f"activations must be a finite (N, d) matrix, got shape {self.activations.shape}")

    @property
    def n(self) -> int:
        return len(self.activations)

    def needs(self, what: str, method: str):
        """The input ``what`` that finder ``method`` reads; ``ValueError`` naming both if it is None."""
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"finder {method!r} needs FinderInputs.{what}, which is None")
        return value


@dataclass
class Directions:
    """A finder's directions: ``scores`` (N, k), a signed score per context and direction;
    ``description`` in a few words; ``supervised`` if the labels chose them (fit on the
    select half only); ``larger_budget`` if k exceeds the budget the others get; ``vectors``
    (k, d): each direction in the space of the activations where it has one (the principal
    axes, ICA's mixing columns, the SAE's decoder rows), unit length; ``read``: the score
    function itself where it is one of a single hidden state, mapping activations (M, d) to
    scores (M, k) (``read(inputs.activations)`` gives ``scores``): what a dashboard applies to
    every token of a context. The eNTK's scores are no such function (see
    :mod:`entk_utils.experiments.dashboard`). ``refit``: for a supervised finder, the same fit
    on other contexts, ``refit(select) -> (N, k)`` scores (what a resampling that redraws the
    select half calls, :func:`~entk_utils.features.resampling.resample_halves`)."""

    method: str
    scores: np.ndarray
    description: str
    supervised: bool = False
    larger_budget: bool = False
    vectors: np.ndarray | None = None  # (k, d) where each direction lies in activation space, if it has one
    read: Callable[[np.ndarray], np.ndarray] | None = None  # activations (M, d) -> scores (M, k)
    refit: Callable[[np.ndarray], np.ndarray] | None = None  # select indices -> scores (N, k), supervised only

    @property
    def k(self) -> int:
        return self.scores.shape[1]


# --------------------------------------------------------------------------- the finders
def _entk(inputs: FinderInputs, k: int, seed: int) -> Directions:
    evecs = inputs.needs("eigenvectors", "entk")
    if evecs.shape[1] < k:
        raise ValueError(f"finder 'entk' asked for k={k} directions but has {evecs.shape[1]} eigenvectors")
    scores, _ = entk_scores(evecs[:, :k], inputs.n)
    return Directions("entk", scores, f"top {k} eNTK eigenvectors, top singular component each")


def centred_projection(mean: np.ndarray, vectors: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The function ``X -> (X - mean) @ vectors.T``: activations (M, d) read along the rows of
    ``vectors`` (k, d) from ``mean`` (d,)."""
    mean, vectors = np.array(mean, dtype=np.float64), np.array(vectors, dtype=np.float64)
    return lambda X: (np.asarray(X, dtype=np.float64) - mean) @ vectors.T


def _pca(inputs: FinderInputs, k: int, seed: int) -> Directions:
    axes = principal_components(inputs.activations, k)[2]
    axes = axes * np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])[:, None]
    return Directions("pca", pca_scores(inputs.activations, k), f"top {k} principal components", vectors=axes,
                      read=centred_projection(inputs.activations.mean(0), axes))


def _random(inputs: FinderInputs, k: int, seed: int) -> Directions:
    vectors = random_unit_directions(inputs.activations.shape[1], k, seed).T
    return Directions("random", random_scores(inputs.activations, k, seed=seed), f"{k} random directions (seed {seed})",
                      vectors=vectors, read=centred_projection(inputs.activations.mean(0), vectors))


def independent_components(activations, k: int, seed: int = 0, max_iter: int = 2000, with_transform: bool = False
                           ) -> tuple:
    """scikit-learn's ``FastICA(k, whiten="unit-variance")`` fit on the activations (N, d)
    (within their top-k principal subspace, as FastICA whitens): ``(sources (N, k), mixing
    (k, d))``, each mixing row the unit direction along which its source writes; with
    ``with_transform`` also the fitted unmixing as a function of activations (M, d) -> (M, k).
    A convergence warning is passed on."""
    from sklearn.decomposition import FastICA

    X = np.asarray(activations, dtype=np.float64)
    if not 1 <= k <= min(X.shape):
        raise ValueError(f"ICA needs 1 <= k <= min(N, d) = {min(X.shape)}, got k={k}")
    ica = FastICA(n_components=k, whiten="unit-variance", random_state=seed, max_iter=max_iter)
    sources = ica.fit_transform(X)
    mixing = (ica.mixing_ / np.linalg.norm(ica.mixing_, axis=0)).T
    if with_transform:
        return sources, mixing, lambda A: ica.transform(np.asarray(A, dtype=np.float64))
    return sources, mixing


def _ica(inputs: FinderInputs, k: int, seed: int) -> Directions:
    sources, mixing, read = independent_components(inputs.activations, k, seed, with_transform=True)
    return Directions("ica", sources, f"{k} FastICA components (seed {seed})", vectors=mixing, read=read)


def most_active_latents(latents: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` latents active (non-zero) on the most inputs, ties broken by the
    larger mean activation, then the lower index: a choice that uses no labels."""
    active, mean = (latents != 0).sum(0), latents.mean(0)
    return np.lexsort((np.arange(latents.shape[1]), -mean, -active))[:k]


def _sae(inputs: FinderInputs, k: int, seed: int) -> Directions:
    sae = inputs.needs("sae", "sae")
    latents = sae_latents(sae, inputs.activations)
    chosen = most_active_latents(latents, k)
    return Directions("sae", latents[:, chosen], f"{describe_sae(sae)}: the {k} most often active on the contexts",
                      vectors=decoder_rows(sae)[chosen], read=lambda X: sae_latents(sae, X)[:, chosen])


def _sae_all(inputs: FinderInputs, k: int, seed: int) -> Directions:
    sae = inputs.needs("sae", "sae-all")
    latents = sae_latents(sae, inputs.activations)
    return Directions("sae-all", latents, f"{describe_sae(sae)}: the whole dictionary",
                      vectors=decoder_rows(sae), read=lambda X: sae_latents(sae, X))


def mean_difference_scores(activations, labels: np.ndarray, fit) -> np.ndarray:
    """(N, L): for each label column of ``labels`` (N, L) the projection of the centred
    activations on the difference of the class means over the ``fit`` contexts."""
    X = np.asarray(activations, dtype=np.float64)
    Xf, Yf = X[fit], np.asarray(labels, dtype=bool)[fit]
    directions = np.column_stack([Xf[y].mean(0) - Xf[~y].mean(0) for y in Yf.T])
    return (X - Xf.mean(0)) @ directions


def logistic_scores(activations, labels: np.ndarray, fit, C: float = 1.0) -> np.ndarray:
    """(N, L): for each label column the decision function of a scikit-learn
    ``LogisticRegression(C)`` on standardised activations, fit on the ``fit`` contexts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(activations, dtype=np.float64)
    Y = np.asarray(labels, dtype=bool)
    out = []
    for y in Y.T:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        out.append(probe.fit(X[fit], y[fit]).decision_function(X))
    return np.column_stack(out)


def _supervised(method: str, fit: Callable, inputs: FinderInputs, description: str) -> Directions:
    labels, select = inputs.needs("labels", method), inputs.needs("select", method)
    Y = labels.to_numpy()
    return Directions(method, fit(inputs.activations, Y, select), description,
                      refit=lambda other: fit(inputs.activations, Y, other))


def _mean_difference(inputs: FinderInputs, k: int, seed: int) -> Directions:
    return _supervised("mean-difference", mean_difference_scores, inputs,
                       "per label, the difference of class means (select half)")


def _logistic(inputs: FinderInputs, k: int, seed: int) -> Directions:
    return _supervised("logistic", logistic_scores, inputs,
                       "per label, a logistic regression on the activations (select half)")


@dataclass(frozen=True)
class FinderSpec:
    """One finder: ``find(inputs, k, seed) -> Directions``; ``needs``: the fields of
    :class:`FinderInputs` it reads beyond the activations; ``supervised``: the labels choose its
    directions (a ceiling, not a rival); ``larger_budget``: it gets more than the k directions
    the others get; ``carded``: it gets explanations and a dashboard card per direction."""

    find: Callable[[FinderInputs, int, int], Directions]
    needs: tuple[str, ...] = ()
    supervised: bool = False
    larger_budget: bool = False
    carded: bool = False


# Every finder, in table order (the eNTK first). Adding a finder is one entry here.
FINDERS: dict[str, FinderSpec] = {
    "entk": FinderSpec(_entk, needs=("eigenvectors",), carded=True),
    "pca": FinderSpec(_pca, carded=True),
    "ica": FinderSpec(_ica, carded=True),
    "sae": FinderSpec(_sae, needs=("sae",), carded=True),
    "sae-all": FinderSpec(_sae_all, needs=("sae",), larger_budget=True),
    "random": FinderSpec(_random, carded=True),
    "mean-difference": FinderSpec(_mean_difference, needs=("labels", "select"), supervised=True),
    "logistic": FinderSpec(_logistic, needs=("labels", "select"), supervised=True),
}


def carded_finders() -> tuple[str, ...]:
    """The finders that get explanations and cards, in table order."""
    return tuple(m for m, spec in FINDERS.items() if spec.carded)


def find_directions(methods: Sequence[str], inputs: FinderInputs, k: int, seed: int = 0) -> dict[str, Directions]:
    """``{method: Directions}`` for each of ``methods`` (names of :data:`FINDERS`), each with
    ``k`` directions (the supervised ones: one per label; ``sae-all``: the whole dictionary; PCA
    and ICA at most as many as the activations have dimensions, the others any number: more
    features than dimensions is superposition),
    marked supervised / larger budget as its :class:`FinderSpec` says. Unknown names and
    missing inputs fail before any work, naming them."""
    unknown = [m for m in methods if m not in FINDERS]
    if unknown:
        raise ValueError(f"unknown direction finder(s) {unknown}; choose from {list(FINDERS)}")
    for method in methods:
        for what in FINDERS[method].needs:
            inputs.needs(what, method)
    if not 1 <= int(k) <= inputs.n:
        raise ValueError(f"k must lie in 1..{inputs.n} (the inputs), got {k}")  # PCA and ICA: also at most d
    found = {}
    for method in methods:
        spec = FINDERS[method]
        found[method] = replace(spec.find(inputs, int(k), seed), supervised=spec.supervised,
                                larger_budget=spec.larger_budget)
    return found
