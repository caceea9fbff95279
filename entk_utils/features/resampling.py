"""Comparing methods' held-out scores with every choice made from the data inside the
resampling.

The paper's metric for a method and a label: the method's best direction (and sign), chosen
on one half of the contexts by AP, scored (AUROC, AP) on the other half; where the method has
directions at several layers its layer is chosen first, on the same half
(:func:`~entk_utils.features.scoring.choose_layer`); a supervised method is fit on that half.
The number depends on the split as much as on the data; what a claim is about is its
expectation: how well the method's chosen direction does on contexts it was not chosen on.

:func:`resample_halves` repeats the whole procedure on R fresh half-splits of the contexts,
stratified as the table's split is, each redoing the fit, the layer choice and the direction
choice, and keeps every result (the same splits for every method: the comparison is paired).
Its mean over the splits estimates the expectation with less noise than one split; its
variance over the splits, corrected for their overlap (Nadeau & Bengio 2003, "Inference for
the generalization error": ``var(mean) ~ (1/R + n_evaluate/n_select) s^2``), gives the
standard error, the interval (t with R - 1 degrees of freedom at
:data:`~entk_utils.features.significance.CONFIDENCE`) and the test. The test of "method A
beats B on label L" is the paired one: A's held-out AUROC minus B's on the same splits, null
"A and B are equally good on L" (the negation of the claim), two-sided; its p-values are
continuous, so they can reach any correction, and the family of labels x methods is
corrected together (Holm).

Why not a bootstrap of the contexts: resampling the select half with replacement degrades the
choice (duplicated contexts) and overstates the spread; keeping the choice on distinct contexts
and resampling only the evaluate half (a Wald test of one split's difference) held its level
less well on planted data and found real gaps less often than this test.
``benchmarks/size_of_tests.py`` measures this test, the evaluate-half bootstrap and the label-shuffling test
this replaced on planted data: ``benchmarks/results/size_of_tests.md``. Shapes as in :mod:`.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from tqdm.auto import tqdm

from .scoring import as_labels, as_scores, choose_and_score, choose_layer, has_both_classes, stratified_halves
from .significance import CONFIDENCE, holm

METRICS = ("auroc", "ap")
MIN_REPEATS = 10  # fewer splits give no usable variance, hence no interval or test


@dataclass(frozen=True)
class Resampled:
    """What :func:`resample_halves` kept: for every split r, method and label, the held-out
    ``values[metric]`` (R, M, L) of the method's chosen direction; ``layers`` (R, M) the layer
    each method chose (None for a method with one set of directions); ``n_select`` and
    ``n_evaluate`` the halves' sizes; ``n_redrawn`` splits drawn again because a label had a
    single class in a half."""

    methods: tuple
    labels: tuple
    values: dict
    layers: np.ndarray
    n_select: int
    n_evaluate: int
    n_redrawn: int
    confidence: float = CONFIDENCE

    @property
    def repeats(self) -> int:
        return self.values[METRICS[0]].shape[0]

    def estimate(self, per_split: np.ndarray) -> pd.DataFrame:
        """Mean over the splits of ``per_split`` (R, ...) with its corrected standard error, the
        interval at ``confidence`` and the two-sided p-value of "the expectation is 0": columns
        ``estimate, se, low, high, p`` (one row per entry of the trailing shape, flattened)."""
        X = np.asarray(per_split, dtype=np.float64).reshape(self.repeats, -1)
        R = len(X)
        mean = X.mean(axis=0)
        se = np.sqrt((1 / R + self.n_evaluate / self.n_select) * X.var(axis=0, ddof=1))
        half = student_t.ppf((1 + self.confidence) / 2, R - 1) * se
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(se > 0, 2 * student_t.sf(np.abs(mean) / se, R - 1), np.where(mean == 0, 1.0, 0.0))
        return pd.DataFrame({"estimate": mean, "se": se, "low": mean - half, "high": mean + half, "p": p})

    def macro(self, metric: str = "auroc") -> pd.DataFrame:
        """Per method: the macro (mean over labels) ``metric`` averaged over the splits, with its
        standard error and interval (index: method)."""
        table = self.estimate(self._values(metric).mean(axis=2)).drop(columns="p")
        return table.set_index(pd.Index(self.methods, name="method"))

    def macro_table(self) -> pd.DataFrame:
        """Per method (index): macro AUROC and AP over the splits with their intervals,
        ``auroc, auroc low, auroc high, ap, ap low, ap high``."""
        parts = []
        for metric in METRICS:
            m = self.macro(metric)
            parts.append(pd.DataFrame({metric: m.estimate, f"{metric} low": m.low, f"{metric} high": m.high}))
        return pd.concat(parts, axis=1)

    def differences(self, reference: str, methods=None, metric: str = "auroc") -> pd.DataFrame:
        """Per (method, label): ``reference``'s held-out ``metric`` minus the method's, averaged
        over the splits (``difference``), its ``se``, interval (``low``, ``high``), the paired
        test's ``p`` and ``p_holm`` over every row (labels x methods: one family)."""
        values = self._values(metric)
        methods = [m for m in self.methods if m != reference] if methods is None else list(methods)
        unknown = [m for m in [reference, *methods] if m not in self.methods]
        if unknown:
            raise ValueError(f"no resampled values for {unknown}; have {list(self.methods)}")
        ref = values[:, self.methods.index(reference)]
        diff = np.stack([ref - values[:, self.methods.index(m)] for m in methods], axis=1)  # (R, M', L)
        table = self.estimate(diff).rename(columns={"estimate": "difference"})
        table.insert(0, "label", np.tile(self.labels, len(methods)))
        table.insert(0, "method", np.repeat(methods, len(self.labels)))
        table["p_holm"] = holm(table.p.to_numpy())
        return table

    def _values(self, metric: str) -> np.ndarray:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        return self.values[metric]


Candidates = np.ndarray | dict | Callable  # (N, m) scores | {layer: (N, m)} | fit(select) -> (N, m)


def _checked(method: str, candidates, N: int):
    """``candidates`` with its score arrays checked (finite, N rows); a fit function as it is."""
    if callable(candidates):
        return candidates
    if isinstance(candidates, dict):
        checked = {k: as_scores(v, f"scores[{method!r}][{k!r}]") for k, v in candidates.items()}
    else:
        checked = as_scores(candidates, f"scores[{method!r}]")
    for S in checked.values() if isinstance(checked, dict) else [checked]:
        if len(S) != N:
            raise ValueError(f"scores[{method!r}] has {len(S)} rows, strata has {N} contexts")
    return checked


def resample_halves(scores: dict[str, Candidates], labels: pd.DataFrame, strata, *, repeats: int = 200, seed: int = 0,
                    confidence: float = CONFIDENCE, progress: bool = False) -> Resampled:
    """The paper's metric on ``repeats`` fresh half-splits of the N contexts (see the module
    docstring).

    scores : ``{method: candidates}``, each an (N, m) array of direction scores; a dict
        ``{layer: (N, m)}`` (the layer chosen on each split's select half); or a function
        ``fit(select) -> (N, m)`` that fits the method on the select contexts (a supervised
        ceiling) and scores all N.
    labels : (N, L) binary DataFrame; strata : (N,) the classes each split is stratified by
        (:func:`~entk_utils.features.scoring.stratified_halves`).
    seed : seeds the splits (the same seed, the same splits for every method and call).

    A split leaving a label with a single class in a half is drawn again (counted); if most
    are, the label is too thin for a comparison (``ValueError`` naming it).
    """
    if not scores:
        raise ValueError("scores must name at least one method")
    N = len(np.asarray(strata))
    if not isinstance(labels, pd.DataFrame) or labels.shape[1] == 0:
        raise ValueError("labels must be a DataFrame with at least one column")
    Yb = as_labels(labels.T.to_numpy(), N, "labels")
    if int(repeats) < MIN_REPEATS or not 0 < confidence < 1:
        raise ValueError(f"need repeats >= {MIN_REPEATS} and 0 < confidence < 1, got {repeats} and {confidence}")
    candidates = {method: _checked(method, c, N) for method, c in scores.items()}
    rng = np.random.default_rng(seed)
    values = {metric: np.empty((int(repeats), len(candidates), len(Yb))) for metric in METRICS}
    layers = np.full((int(repeats), len(candidates)), None, dtype=object)
    r, redrawn, sizes = 0, np.zeros(len(Yb), dtype=int), None
    with tqdm(total=int(repeats), desc="splits", disable=not progress) as bar:
        while r < int(repeats):
            select, evaluate = stratified_halves(strata, seed=int(rng.integers(2**31)))
            usable = has_both_classes(Yb[:, select]) & has_both_classes(Yb[:, evaluate])
            if not usable.all():
                redrawn += ~usable
                if redrawn.max() > 10 * int(repeats) + 100:
                    thin = labels.columns[redrawn > 10 * int(repeats)][:10].tolist()
                    raise ValueError(f"label(s) {thin} have a single class in a half of most splits: too few positives "
                                     "or negatives to compare methods on")
                continue
            sizes = (len(select), len(evaluate))
            for i, c in enumerate(candidates.values()):
                if callable(c):
                    S = as_scores(c(select), "a fitted method's scores")
                elif isinstance(c, dict):
                    layers[r, i] = choose_layer(c, Yb, select)
                    S = c[layers[r, i]]
                else:
                    S = c
                metrics = choose_and_score(S, Yb, select, evaluate)[2]
                for metric in METRICS:
                    values[metric][r, i] = metrics[metric]
            r += 1
            bar.update()
    return Resampled(methods=tuple(candidates), labels=tuple(labels.columns), values=values, layers=layers,
                     n_select=sizes[0], n_evaluate=sizes[1], n_redrawn=int(redrawn.sum()), confidence=confidence)
