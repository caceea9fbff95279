"""Significance of one-vs-rest direction scores against binary labels.

``scores`` is an (N, m) array throughout: a signed score per context (row) for each of m
candidate directions (column), e.g. projections on eNTK eigenvectors, PCA components or
random directions. Labels are binary rows: ``Y`` is (B, N) with values in {0, 1}, one row
per label, or per shuffled copy of one label.

:func:`auroc_matrix` and :func:`average_precision_matrix` give the same values as
scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (tied scores included)
for all B x m pairs at once, which makes permutation tests with thousands of shuffled label
vectors cheap. On top of them: choosing the best (direction, sign) on one half and
scoring it on the other, as :func:`entk_utils.alignment.score_directions` does
(:func:`best_direction_metrics`); a permutation test of the difference between two
methods (:func:`permutation_test`); multiple-comparison corrections (:func:`bonferroni`,
:func:`holm`); a bootstrap of macro metrics (:func:`bootstrap_macro`); and the mean
|cosine| between score columns and labels (:func:`mean_abs_cosine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# |null| counts as "at least as extreme" as |observed| within this absolute tolerance, so
# that a shuffle reproducing the observed value up to rounding is counted.
_P_VALUE_ATOL = 1e-12


# ----------------------------------------------------------------------------- checks


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    """(N, m) float64 copy of ``scores``; a 1-D array is one column."""
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim == 1:
        S = S[:, None]
    if S.ndim != 2 or S.shape[0] < 2 or S.shape[1] == 0:
        raise ValueError(f"{name} must be an (N, m) array with N >= 2 and m >= 1, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return S


def _as_labels(Y, n: int, name: str = "Y") -> np.ndarray:
    """(B, n) float64 copy of the binary label rows ``Y``; a 1-D array is one row."""
    Y = np.asarray(Y)
    if Y.ndim == 1:
        Y = Y[None, :]
    if Y.ndim != 2 or Y.shape[1] != n or Y.shape[0] == 0:
        raise ValueError(f"{name} must be a (B, {n}) array of label rows (one entry per context), "
                         f"got shape {np.shape(Y)}")
    if not np.all(np.isin(Y, (0, 1))):
        bad = np.unique(Y[~np.isin(Y, (0, 1))])[:5]
        raise ValueError(f"{name} must be binary (0/1 or bool), found values such as {bad.tolist()}")
    return Y.astype(np.float64)


def _has_both_classes(Y: np.ndarray) -> np.ndarray:
    """(B,) True where a label row has at least one positive and one negative."""
    n_pos = Y.sum(axis=1)
    return (n_pos > 0) & (n_pos < Y.shape[1])


def _positives(Y: np.ndarray, where: str = "") -> np.ndarray:
    """(B,) number of positives per row; ValueError if a row has a single class."""
    bad = np.flatnonzero(~_has_both_classes(Y))
    if bad.size:
        raise ValueError(f"label row(s) {bad[:10].tolist()} have only one class{where}; "
                         "AUROC and AP need both positives and negatives")
    return Y.sum(axis=1)


def _as_index(idx, n: int, name: str) -> np.ndarray:
    """1-D integer indices into range(n); a boolean mask of length n is converted."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean {name} must have shape ({n},), got {idx.shape}")
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or idx.size < 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of at least 2 integer indices into range({n}), "
                         f"got shape {idx.shape} and dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name} has indices outside range({n}): min {idx.min()}, max {idx.max()}")
    return idx


# ----------------------------------------------------------------------------- core metrics


def _auroc_from_rank_sums(rank_sum: np.ndarray, n_pos: np.ndarray, n: int) -> np.ndarray:
    """AUROC = Mann-Whitney U / (n_pos n_neg) from the sum of the positives' average ranks.

    ``rank_sum`` (B,) or (B, m); ``n_pos`` (B,) positives among ``n`` contexts.
    """
    if rank_sum.ndim == 2:
        n_pos = n_pos[:, None]
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def _tie_group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """For scores sorted along the last axis: the index of the last member of each entry's tie group."""
    n = sorted_scores.shape[-1]
    is_end = np.ones(sorted_scores.shape, dtype=bool)
    is_end[..., :-1] = sorted_scores[..., 1:] != sorted_scores[..., :-1]
    last = np.where(is_end, np.arange(n), n)
    return np.flip(np.minimum.accumulate(np.flip(last, axis=-1), axis=-1), axis=-1)


def _tie_group_starts(sorted_scores: np.ndarray) -> np.ndarray:
    """For scores sorted along the last axis: the index of the first member of each entry's tie group."""
    is_start = np.ones(sorted_scores.shape, dtype=bool)
    is_start[..., 1:] = sorted_scores[..., 1:] != sorted_scores[..., :-1]
    return np.maximum.accumulate(np.where(is_start, np.arange(sorted_scores.shape[-1]), 0), axis=-1)


def _ap_sorted(Ys: np.ndarray, ends: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """(B,) average precision of label rows ``Ys`` (B, n) given in decreasing score order.

    ``ends`` (B, n) from :func:`_tie_group_ends`. With one threshold per distinct score,
    ``AP = sum_k (R_k - R_{k-1}) P_k``; the recall step at threshold k is the number of
    positives in tie group k over n_pos, so ``AP = sum_i y_i P_{group(i)} / n_pos`` where
    ``P_{group(i)} = TP(end of i's group) / (end + 1)``.
    """
    tp = np.cumsum(Ys, axis=1)
    precision = np.take_along_axis(tp, ends, axis=1) / (ends + 1)
    return np.einsum("bn,bn->b", Ys, precision) / n_pos


def _ap_columns(S: np.ndarray, Y: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """(B, m) AP of every column of ``S`` (n, m) for every label row of ``Y`` (B, n).

    The formula of :func:`_ap_sorted`, laid out for speed: labels as an (n, B) uint8 array
    whose rows are gathered in each column's score order, true-positive counts as small
    integers (exact), and the sum over positives as one weighted reduction over contexts.
    """
    n = S.shape[0]
    Yt = np.ascontiguousarray(Y.T, dtype=np.uint8)
    count_dtype = np.int16 if n < 2**15 else np.int64
    out = np.empty((S.shape[1], Y.shape[0]))
    for j in range(S.shape[1]):
        order = np.argsort(-S[:, j], kind="stable")
        ends = _tie_group_ends(-S[order, j])
        Ys = Yt[order]
        tp = np.cumsum(Ys, axis=0, dtype=count_dtype)
        if np.any(ends != np.arange(n)):  # tied scores: TP at the end of each tie group
            tp = tp[ends]
        tp *= Ys
        out[j] = np.einsum("n,nb->b", 1.0 / (ends + 1), tp)
    return out.T / n_pos[:, None]


def _row_metrics(S: np.ndarray, Y: np.ndarray, n_pos: np.ndarray) -> dict[str, np.ndarray]:
    """``{"auroc": (B,), "ap": (B,)}`` of score row ``S[b]`` for label row ``Y[b]``; both (B, n).

    One sort per row serves both: in decreasing order, position k of a tie group spanning
    positions [start, end] has the average (ascending, 1-based) rank ``n - (start + end) / 2``.
    """
    n = S.shape[1]
    order = np.argsort(-S, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(-S, order, axis=1)  # increasing -S: decreasing S
    Ys = np.take_along_axis(Y, order, axis=1)
    ends = _tie_group_ends(sorted_scores)
    ranks = n - (_tie_group_starts(sorted_scores) + ends) / 2
    auroc = _auroc_from_rank_sums(np.einsum("bn,bn->b", Ys, ranks), n_pos, n)
    return {"auroc": auroc, "ap": _ap_sorted(Ys, ends, n_pos)}


def auroc_matrix(scores, Y) -> np.ndarray:
    """AUROC of each score column for each label row, as ``sklearn.metrics.roc_auc_score``.

    Parameters
    ----------
    scores : (N, m) array; a higher score predicts the positive class.
    Y : (B, N) binary label rows, or (N,) for one label.

    Returns
    -------
    (B, m) array (``(m,)`` for a 1-D ``Y``). Ties count one half, through average ranks:
    ``AUROC = (y @ ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``. ValueError if a row
    has a single class.
    """
    S = _as_scores(scores)
    Yb = _as_labels(Y, S.shape[0])
    out = _auroc_from_rank_sums(Yb @ rankdata(S, axis=0), _positives(Yb), S.shape[0])
    return out[0] if np.ndim(Y) == 1 else out


def average_precision_matrix(scores, Y) -> np.ndarray:
    """Average precision of each score column for each label row.

    The same as ``sklearn.metrics.average_precision_score``, tied scores included: one
    threshold per distinct score, in decreasing order, ``AP = sum_k (R_k - R_{k-1}) P_k``.

    Parameters
    ----------
    scores : (N, m) array; a higher score predicts the positive class.
    Y : (B, N) binary label rows, or (N,) for one label.

    Returns
    -------
    (B, m) array (``(m,)`` for a 1-D ``Y``). ValueError if a row has a single class.
    """
    S = _as_scores(scores)
    Yb = _as_labels(Y, S.shape[0])
    out = _ap_columns(S, Yb, _positives(Yb))
    return out[0] if np.ndim(Y) == 1 else out


# ----------------------------------------------------------------------------- best direction


@dataclass(frozen=True)
class BestDirections:
    """Per label row: the chosen direction and sign, and their metrics on the evaluate half.

    Attributes: ``direction`` (B,) column index; ``sign`` (B,) +1 or -1; ``ap`` and
    ``auroc`` (B,) on the evaluate half.
    """

    direction: np.ndarray
    sign: np.ndarray
    ap: np.ndarray
    auroc: np.ndarray

    def chosen_scores(self, scores, idx) -> np.ndarray:
        """(B, len(idx)): ``sign[b] * scores[idx, direction[b]]``, the rows :func:`bootstrap_macro` takes."""
        S = _as_scores(scores)
        idx = _as_index(idx, S.shape[0], "idx")
        return self.sign[:, None] * S[idx][:, self.direction].T


def _choose(S_sel: np.ndarray, Y_sel: np.ndarray, n_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(direction, sign) per label row maximising AP on the select half.

    Ties go to the larger direction index, then to sign +1: the order of Python's ``max``
    over ``(ap, j, sign)`` tuples used by ``score_directions``.
    """
    m = S_sel.shape[1]
    # candidates in order of preference among equal APs: (m-1, +1), (m-1, -1), (m-2, +1), ...
    signed = np.empty((S_sel.shape[0], 2 * m))
    signed[:, 0::2] = S_sel[:, ::-1]
    signed[:, 1::2] = -S_sel[:, ::-1]
    best = np.argmax(_ap_columns(signed, Y_sel, n_pos), axis=1)  # first of equal maxima
    return m - 1 - best // 2, np.where(best % 2 == 0, 1, -1)


def _best(S: np.ndarray, Y: np.ndarray, select: np.ndarray, evaluate: np.ndarray):
    """Choose on ``select``, then the AP and AUROC of the choice on ``evaluate``; Y (B, N) valid."""
    Y_sel, Y_eval = Y[:, select], Y[:, evaluate]
    direction, sign = _choose(S[select], Y_sel, Y_sel.sum(axis=1))
    chosen = sign[:, None] * S[evaluate][:, direction].T
    return direction, sign, _row_metrics(chosen, Y_eval, Y_eval.sum(axis=1))


def best_direction_metrics(scores, Y, select, evaluate) -> BestDirections:
    """One-vs-rest choice of the best (direction, sign) per label, scored on held-out contexts.

    For each label row the candidates are the m columns of ``scores`` and their negations;
    the one with the highest average precision on the ``select`` contexts is chosen (ties:
    larger column index, then sign +1, as in ``alignment.score_directions``; since the APs
    here are summed in another order than scikit-learn's, two candidates equal to the last
    bit can in rare cases be ordered differently). Its AP and AUROC are then measured on the
    ``evaluate`` contexts.

    Parameters
    ----------
    scores : (N, m) array.
    Y : (B, N) binary label rows, or (N,) for one label.
    select, evaluate : integer indices (or boolean masks) of contexts, e.g. from
        ``alignment.stratified_halves``.

    Returns
    -------
    :class:`BestDirections` with arrays of shape (B,). ValueError if a label has a single
    class in either half.
    """
    S = _as_scores(scores)
    N = S.shape[0]
    Yb = _as_labels(Y, N)
    select, evaluate = _as_index(select, N, "select"), _as_index(evaluate, N, "evaluate")
    _positives(Yb[:, select], " on the select contexts")
    _positives(Yb[:, evaluate], " on the evaluate contexts")
    direction, sign, values = _best(S, Yb, select, evaluate)
    return BestDirections(direction=direction, sign=sign, ap=values["ap"], auroc=values["auroc"])


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
    Sa, Sb = _as_scores(scores_a, "scores_a"), _as_scores(scores_b, "scores_b")
    N = Sa.shape[0]
    if Sb.shape[0] != N:
        raise ValueError(f"scores_a and scores_b must have the same contexts (rows): {N} vs {Sb.shape[0]}")
    if np.ndim(y) != 1:
        raise ValueError(f"y must be a 1-D label vector of length {N}, got shape {np.shape(y)}")
    y = _as_labels(y, N, "y")
    if metric not in ("auroc", "ap"):
        raise ValueError(f"metric must be 'auroc' or 'ap', got {metric!r}")
    if int(n_permutations) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_permutations and batch_size must be >= 1, got {n_permutations} and {batch_size}")
    select, evaluate = _as_index(select, N, "select"), _as_index(evaluate, N, "evaluate")
    _positives(y[:, select], " on the select contexts")
    _positives(y[:, evaluate], " on the evaluate contexts")

    def statistic(Y):
        return _best(Sa, Y, select, evaluate)[2][metric] - _best(Sb, Y, select, evaluate)[2][metric]

    observed = float(statistic(y)[0])
    rng = np.random.default_rng(seed)
    null, n_done, n_redrawn = [], 0, 0
    while n_done < n_permutations:
        k = min(int(batch_size), n_permutations - n_done)
        Y = rng.permuted(np.repeat(y, k, axis=0), axis=1)
        valid = _has_both_classes(Y[:, select]) & _has_both_classes(Y[:, evaluate])
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
    S = _as_scores(scores)
    n = S.shape[0]
    Yb = _as_labels(Y, n)
    n_pos = _positives(Yb)
    if int(n_permutations) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_permutations and batch_size must be >= 1, got {n_permutations} and {batch_size}")
    ranks = rankdata(S, axis=0)  # (N, m); a permutation of the contexts permutes these rows

    def aurocs(R):  # R (k, N, m) ranks -> (L, k, m) AUROCs
        sums = np.einsum("ln,knm->lkm", Yb, R)
        return _auroc_from_rank_sums(sums.reshape(len(Yb), -1), n_pos, n).reshape(sums.shape)

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
    S = _as_scores(np.atleast_2d(S).T, "S").T  # (L, n), checked finite
    Y = _as_labels(Y, S.shape[1])
    if Y.shape != S.shape:
        raise ValueError(f"S and Y must both be (L, n) with the same shape, got {S.shape} and {Y.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if int(n_boot) < 1 or int(batch_size) < 1:
        raise ValueError(f"n_boot and batch_size must be >= 1, got {n_boot} and {batch_size}")
    n_pos = _positives(Y)
    L, n = S.shape
    point = _row_metrics(S, Y, n_pos)
    auroc, ap = float(point["auroc"].mean()), float(point["ap"].mean())

    rng = np.random.default_rng(seed)
    auroc_boot, ap_boot, n_done, n_redrawn = [], [], 0, 0
    while n_done < n_boot:
        k = min(int(batch_size), n_boot - n_done)
        idx = rng.integers(0, n, size=(k, n))
        Sb = S[:, idx].transpose(1, 0, 2).reshape(k * L, n)  # row d*L + l: draw d, label l
        Yb = Y[:, idx].transpose(1, 0, 2).reshape(k * L, n)
        valid = _has_both_classes(Yb).reshape(k, L).all(axis=1)
        n_redrawn += int(k - valid.sum())
        if n_redrawn > 10 * n_boot + 100:
            raise ValueError("most bootstrap draws leave some label with a single class; "
                             f"the rarest label has {int(min(n_pos.min(), n - n_pos.max()))} minority contexts")
        if not valid.any():
            continue
        rows = np.repeat(valid, L)
        Sb, Yb = Sb[rows], Yb[rows]
        values = _row_metrics(Sb, Yb, Yb.sum(axis=1))
        auroc_boot.append(values["auroc"].reshape(-1, L).mean(axis=1))
        ap_boot.append(values["ap"].reshape(-1, L).mean(axis=1))
        n_done += int(valid.sum())
    auroc_boot, ap_boot = np.concatenate(auroc_boot), np.concatenate(ap_boot)
    q = [(1 - level) / 2, (1 + level) / 2]
    return BootstrapResult(auroc=auroc, ap=ap, auroc_boot=auroc_boot, ap_boot=ap_boot,
                           auroc_ci=tuple(float(v) for v in np.quantile(auroc_boot, q)),
                           ap_ci=tuple(float(v) for v in np.quantile(ap_boot, q)),
                           level=level, n_redrawn=n_redrawn)


# ----------------------------------------------------------------------------- cosine metric


def mean_abs_cosine(scores, Y, top: int = 10, reduce: str = "mean") -> np.ndarray:
    """Mean (or max) over the first ``top`` score columns of |cosine| with each label.

    The cosine is taken between the centred score column and the centred label vector,
    i.e. it is the Pearson correlation; its absolute value ignores the sign of a direction.

    Parameters
    ----------
    scores : (N, m) array; columns in the order of the directions (e.g. by eigenvalue).
    Y : (B, N) label rows (binary or real), or (N,) for one label.
    top : use columns ``0 .. top-1``; 1 <= top <= m.
    reduce : "mean" (the metric announced by the paper's authors) or "max".

    Returns
    -------
    (B,) array (a float for a 1-D ``Y``). ValueError for a constant score column or label.
    """
    S = _as_scores(scores)
    N, m = S.shape
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    if not 1 <= int(top) <= m:
        raise ValueError(f"top must lie in 1..{m} (the number of score columns), got {top}")
    Yb = np.asarray(Y, dtype=np.float64)
    Yb = Yb[None, :] if Yb.ndim == 1 else Yb
    if Yb.ndim != 2 or Yb.shape[1] != N or not np.all(np.isfinite(Yb)):
        raise ValueError(f"Y must be a finite (B, {N}) array of label rows, got shape {np.shape(Y)}")
    Sc = S[:, :top] - S[:, :top].mean(axis=0)
    Yc = Yb - Yb.mean(axis=1, keepdims=True)
    s_norm, y_norm = np.linalg.norm(Sc, axis=0), np.linalg.norm(Yc, axis=1)
    if np.any(s_norm == 0):
        raise ValueError(f"score column(s) {np.flatnonzero(s_norm == 0).tolist()} are constant")
    if np.any(y_norm == 0):
        raise ValueError(f"label row(s) {np.flatnonzero(y_norm == 0)[:10].tolist()} are constant")
    cos = np.abs(Yc @ Sc) / (y_norm[:, None] * s_norm[None, :])
    out = cos.mean(axis=1) if reduce == "mean" else cos.max(axis=1)
    return float(out[0]) if np.ndim(Y) == 1 else out
