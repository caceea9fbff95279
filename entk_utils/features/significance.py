"""Is a difference between two methods' direction scores more than noise?

A permutation test per label of the difference between two methods (each choosing its best
direction on one half and scored on the other, on every shuffle: :func:`permutation_test`),
multiple-comparison corrections (:func:`bonferroni`, :func:`holm`) and a bootstrap of macro
metrics (:func:`bootstrap_macro`). Shapes as in :mod:`.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..io.checks import index_array
from .scoring import as_labels, as_scores, auroc_from_rank_sums, choose_and_score, has_both_classes, positive_counts, row_metrics


# |null| counts as "at least as extreme" as |observed| within this absolute tolerance, so
# that a shuffle reproducing the observed value up to rounding is counted.
_P_VALUE_ATOL = 1e-12


# ----------------------------------------------------------------------------- permutation test


@dataclass(frozen=True)
class PermutationResult:
    """``observed`` difference, its ``null`` distribution (n_permutations,), the two-sided
    ``p_value``, and ``n_redrawn``: shuffles discarded because a half had a single class."""

    observed: float
    null: np.ndarray
    p_value: float
    n_redrawn: int


def permutation_test(scores_a, scores_b, y, select, evaluate, n_permutations: int = 1000, seed: int = 0,
                     metric: str = "auroc", batch_size: int = 1000) -> PermutationResult:
    """Do methods a and b differ in how well their best direction predicts label ``y``?

    The statistic is ``metric_a - metric_b``, each method's (direction, sign) chosen by AP
    on ``select`` and its ``metric`` ("auroc" or "ap") measured on ``evaluate``, exactly as
    :func:`best_direction_metrics`. Its null distribution comes from shuffling ``y`` over
    all N contexts (the same shuffle for both methods; ``select`` and ``evaluate`` stay
    fixed), which repeats the selection step on every shuffle. Shuffles that leave a half
    with a single class are discarded and redrawn (counted in ``n_redrawn``); the observed
    labelling has both classes in both halves, so this conditions the null on an event the
    data satisfy and the test stays exact.

    Parameters
    ----------
    scores_a : (N, m_a) array; scores_b : (N, m_b) array.
    y : (N,) binary labels.
    select, evaluate : integer indices (or boolean masks) of contexts.
    n_permutations : number of valid shuffles; seed : seeds ``np.random.default_rng``.
    batch_size : shuffles evaluated at once (memory: a few (batch_size, N) arrays).

    Returns
    -------
    :class:`PermutationResult`; two-sided ``p = (1 + #{|null| >= |observed|}) /
    (1 + n_permutations)`` (with a 1e-12 tolerance for rounding), so ``p >= 1 /
    (n_permutations + 1)``.
    """
    Sa, Sb = as_scores(scores_a, "scores_a"), as_scores(scores_b, "scores_b")
    N = Sa.shape[0]
    if Sb.shape[0] != N:
        raise ValueError(f"scores_a and scores_b must have the same contexts (rows): {N} vs {Sb.shape[0]}")
    if np.ndim(y) != 1:
        raise ValueError(f"y must be a 1-D label vector of length {N}, got shape {np.shape(y)}")
    y = as_labels(y, N, "y")
    if metric not in ("auroc", "ap"):
        raise ValueError(f"metric must be 'auroc' or 'ap', got {metric!r}")
    if int(n_permutations) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_permutations and batch_size must be >= 1, got {n_permutations} and {batch_size}")
    select, evaluate = index_array(select, N, "select", min_size=2), index_array(evaluate, N, "evaluate", min_size=2)
    positive_counts(y[:, select], " on the select contexts")
    positive_counts(y[:, evaluate], " on the evaluate contexts")

    def statistic(Y):
        return choose_and_score(Sa, Y, select, evaluate)[2][metric] - choose_and_score(Sb, Y, select, evaluate)[2][metric]

    observed = float(statistic(y)[0])
    rng = np.random.default_rng(seed)
    null, n_done, n_redrawn = [], 0, 0
    while n_done < n_permutations:
        k = min(int(batch_size), n_permutations - n_done)
        Y = rng.permuted(np.repeat(y, k, axis=0), axis=1)
        valid = has_both_classes(Y[:, select]) & has_both_classes(Y[:, evaluate])
        n_redrawn += int(k - valid.sum())
        if n_redrawn > 10 * n_permutations + 100:
            raise ValueError("most shuffles of y leave a half with a single class; y has too few "
                             f"positives ({int(y.sum())}) or negatives for this split")
        if valid.any():
            null.append(statistic(Y[valid]))
            n_done += int(valid.sum())
    null = np.concatenate(null)
    extreme = np.count_nonzero(np.abs(null) >= abs(observed) - _P_VALUE_ATOL)
    return PermutationResult(observed=observed, null=null, p_value=(1 + extreme) / (1 + n_permutations),
                             n_redrawn=n_redrawn)


# ----------------------------------------------------------------------------- multiple comparisons


def _as_pvalues(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        raise ValueError("p must hold at least one p-value")
    bad = ~((p >= 0) & (p <= 1))  # NaN included
    if np.any(bad):
        raise ValueError(f"p-values must lie in [0, 1], got {p[bad][:5].tolist()}")
    return p


def bonferroni(p) -> np.ndarray:
    """Bonferroni-adjusted p-values ``min(1, n p)``, same shape as ``p`` (all entries form one family)."""
    p = _as_pvalues(p)
    return np.minimum(p * p.size, 1.0)


def holm(p) -> np.ndarray:
    """Holm step-down adjusted p-values, same shape as ``p`` (all entries form one family).

    With ``p_(1) <= ... <= p_(n)`` sorted, ``adj_(i) = min(1, max_{j <= i} (n - j + 1) p_(j))``;
    the running max makes the adjusted values keep the order of the raw ones. Rejecting
    where ``adj <= alpha`` controls the family-wise error rate at ``alpha``.
    """
    p = _as_pvalues(p)
    flat = p.ravel()
    n = flat.size
    order = np.argsort(flat, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((n - np.arange(n)) * flat[order]), 1.0)
    out = np.empty(n)
    out[order] = adjusted
    return out.reshape(p.shape)


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Macro (mean over labels) AUROC and AP on the given contexts, their bootstrap
    distributions (n_boot,), percentile intervals ``(low, high)`` at ``level``, and
    ``n_redrawn``: draws discarded because some label had a single class."""

    auroc: float
    ap: float
    auroc_boot: np.ndarray
    ap_boot: np.ndarray
    auroc_ci: tuple[float, float]
    ap_ci: tuple[float, float]
    level: float
    n_redrawn: int


def bootstrap_macro(S, Y, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    batch_size: int = 50) -> BootstrapResult:
    """Bootstrap confidence intervals of macro AUROC and macro AP over labels.

    Parameters
    ----------
    S : (L, n) the chosen score of each label on the n evaluate contexts (the best
        direction times its sign), e.g. ``best.chosen_scores(scores, evaluate)``.
    Y : (L, n) binary labels on the same contexts, e.g. ``labels[:, evaluate]``.
    n_boot : number of bootstrap draws; seed : seeds ``np.random.default_rng``.
    level : coverage of the percentile interval, in (0, 1).
    batch_size : draws evaluated at once.

    Each draw resamples the n contexts with replacement, the same resample for all labels,
    and records the mean over labels of AUROC and of AP. A draw in which some label has a
    single class is discarded and redrawn (counted in ``n_redrawn``). The choice of
    directions is held fixed (it was made on other contexts).

    Returns
    -------
    :class:`BootstrapResult`.
    """
    S = as_scores(np.atleast_2d(S).T, "S").T  # (L, n), checked finite
    Y = as_labels(Y, S.shape[1])
    if Y.shape != S.shape:
        raise ValueError(f"S and Y must both be (L, n) with the same shape, got {S.shape} and {Y.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if int(n_boot) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_boot and batch_size must be >= 1, got {n_boot} and {batch_size}")
    n_pos = positive_counts(Y)
    L, n = S.shape
    point = row_metrics(S, Y, n_pos)
    auroc, ap = float(point["auroc"].mean()), float(point["ap"].mean())

    rng = np.random.default_rng(seed)
    auroc_boot, ap_boot, n_done, n_redrawn = [], [], 0, 0
    while n_done < n_boot:
        k = min(int(batch_size), n_boot - n_done)
        idx = rng.integers(0, n, size=(k, n))
        Sb = S[:, idx].transpose(1, 0, 2).reshape(k * L, n)  # row d*L + l: draw d, label l
        Yb = Y[:, idx].transpose(1, 0, 2).reshape(k * L, n)
        valid = has_both_classes(Yb).reshape(k, L).all(axis=1)
        n_redrawn += int(k - valid.sum())
        if n_redrawn > 10 * n_boot + 100:
            raise ValueError("most bootstrap draws leave some label with a single class; "
                             f"the rarest label has {int(min(n_pos.min(), n - n_pos.max()))} minority contexts")
        if not valid.any():
            continue
        rows = np.repeat(valid, L)
        Sb, Yb = Sb[rows], Yb[rows]
        values = row_metrics(Sb, Yb, Yb.sum(axis=1))
        auroc_boot.append(values["auroc"].reshape(-1, L).mean(axis=1))
        ap_boot.append(values["ap"].reshape(-1, L).mean(axis=1))
        n_done += int(valid.sum())
    auroc_boot, ap_boot = np.concatenate(auroc_boot), np.concatenate(ap_boot)
    q = [(1 - level) / 2, (1 + level) / 2]
    return BootstrapResult(auroc=auroc, ap=ap, auroc_boot=auroc_boot, ap_boot=ap_boot,
                           auroc_ci=tuple(float(v) for v in np.quantile(auroc_boot, q)),
                           ap_ci=tuple(float(v) for v in np.quantile(ap_boot, q)),
                           level=level, n_redrawn=n_redrawn)


@dataclass(frozen=True)
class BestLabels:
    """Per score column: the ``label`` (row index of Y) it separates best, that ``auroc``
    oriented so that it is >= 1/2 (``sign`` -1 where the column's low end holds the label),
    and the permutation ``p_value`` of that best separation."""

    label: np.ndarray
    auroc: np.ndarray
    sign: np.ndarray
    p_value: np.ndarray


def best_label_test(scores, Y, n_permutations: int = 1000, seed: int = 0, batch_size: int = 100) -> BestLabels:
    """Which label does each direction pick out, and is it more than chance?

    For each score column the statistic is ``max_l |AUROC(column, Y_l) - 1/2|`` over the
    label rows; its null distribution comes from shuffling the contexts (one permutation
    of the column's scores against all labels at once, which keeps the labels' correlations),
    so the p-value accounts for having chosen the best of all labels (a max-statistic test;
    correct across columns separately, e.g. with :func:`holm`).

    Parameters
    ----------
    scores : (N, m) array; Y : (B, N) binary label rows (each with both classes).
    n_permutations : shuffles (the same for every column); seed : seeds ``np.random.default_rng``.

    Returns
    -------
    :class:`BestLabels` with arrays of shape (m,); ``p = (1 + #{null >= observed}) /
    (1 + n_permutations)`` (with a 1e-12 tolerance for rounding).
    """
    S = as_scores(scores)
    n = S.shape[0]
    Yb = as_labels(Y, n)
    n_pos = positive_counts(Yb)
    if int(n_permutations) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_permutations and batch_size must be >= 1, got {n_permutations} and {batch_size}")
    ranks = rankdata(S, axis=0)  # (N, m); a permutation of the contexts permutes these rows

    def aurocs(R):  # R (k, N, m) ranks -> (L, k, m) AUROCs
        sums = np.einsum("ln,knm->lkm", Yb, R)
        return auroc_from_rank_sums(sums.reshape(len(Yb), -1), n_pos, n).reshape(sums.shape)

    observed = aurocs(ranks[None])[:, 0]  # (L, m)
    best = np.abs(observed - 0.5).argmax(axis=0)
    auroc = observed[best, np.arange(S.shape[1])]
    statistic = np.abs(auroc - 0.5)
    rng = np.random.default_rng(seed)
    extreme = np.zeros(S.shape[1], dtype=np.int64)
    for start in range(0, int(n_permutations), int(batch_size)):
        k = min(int(batch_size), int(n_permutations) - start)
        shuffled = ranks[np.argsort(rng.random((k, n)), axis=1)]  # (k, N, m): contexts permuted
        extreme += np.count_nonzero(np.abs(aurocs(shuffled) - 0.5).max(axis=0) >= statistic - _P_VALUE_ATOL, axis=0)
    return BestLabels(label=best, auroc=np.maximum(auroc, 1 - auroc), sign=np.where(auroc >= 0.5, 1, -1),
                      p_value=(1 + extreme) / (1 + int(n_permutations)))
