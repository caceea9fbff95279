"""Scoring directions against binary labels, one-vs-rest.

``scores`` is an (N, m) array throughout: a signed score per context (row) for each of m
candidate directions (column), e.g. projections on eNTK eigenvectors, PCA components or
random directions. Labels are binary rows: ``Y`` is (B, N) with values in {0, 1}, one row
per label, or per shuffled copy of one label.

:func:`auroc_matrix` and :func:`average_precision_matrix` give the same values as
scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (tied scores included)
for all B x m pairs at once, which makes permutation tests with thousands of shuffled label
vectors cheap. The best (direction, sign) per label is chosen on one half of the contexts
and scored on the other, by one rule (:func:`choose_directions`) used by both
:func:`score_directions` (the table, with scikit-learn's metrics) and
:func:`best_direction_metrics` (vectorised, for the tests in :mod:`.significance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..io.checks import index_array


# ----------------------------------------------------------------------------- checks


def as_scores(scores, name: str = "scores") -> np.ndarray:
    """(N, m) float64 copy of ``scores``; a 1-D array is one column."""
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim == 1:
        S = S[:, None]
    if S.ndim != 2 or S.shape[0] < 2 or S.shape[1] == 0:
        raise ValueError(f"{name} must be an (N, m) array with N >= 2 and m >= 1, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return S


def as_labels(Y, n: int, name: str = "Y") -> np.ndarray:
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


def has_both_classes(Y: np.ndarray, min_count: int = 1) -> np.ndarray:
    """(B,) True where a label row (of ``Y`` (B, n)) has at least ``min_count`` positives and
    as many negatives: the one rule for a label being usable, whether on all contexts, on a
    half or on a resample (``min_count=1``: AUROC and AP are defined)."""
    n_pos = Y.sum(axis=1)
    return (n_pos >= min_count) & (Y.shape[1] - n_pos >= min_count)


def positive_counts(Y: np.ndarray, where: str = "") -> np.ndarray:
    """(B,) number of positives per row; ValueError if a row has a single class."""
    bad = np.flatnonzero(~has_both_classes(Y))
    if bad.size:
        raise ValueError(f"label row(s) {bad[:10].tolist()} have only one class{where}; "
                         "AUROC and AP need both positives and negatives")
    return Y.sum(axis=1)


# ----------------------------------------------------------------------------- core metrics


def oriented(auroc, sign=None):
    """An AUROC read in a direction's orientation: with ``sign`` (+1 / -1, broadcast against
    ``auroc``) the AUROC where the sign is +1 and ``1 - auroc`` where it is -1 (the label at
    the low end); with no sign, the better of the two, ``max(a, 1 - a)`` (0.5 is chance, 1 a
    perfect split). The one orientation rule of scoring, naming and explanations."""
    auroc = np.asarray(auroc, dtype=np.float64)
    if sign is None:
        return np.maximum(auroc, 1 - auroc)
    return np.where(np.asarray(sign) > 0, auroc, 1 - auroc)


def auroc_from_rank_sums(rank_sum: np.ndarray, n_pos: np.ndarray, n: int) -> np.ndarray:
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


def row_metrics(S: np.ndarray, Y: np.ndarray, n_pos: np.ndarray) -> dict[str, np.ndarray]:
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
    auroc = auroc_from_rank_sums(np.einsum("bn,bn->b", Ys, ranks), n_pos, n)
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
    S = as_scores(scores)
    Yb = as_labels(Y, S.shape[0])
    out = auroc_from_rank_sums(Yb @ rankdata(S, axis=0), positive_counts(Yb), S.shape[0])
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
    S = as_scores(scores)
    Yb = as_labels(Y, S.shape[0])
    out = _ap_columns(S, Yb, positive_counts(Yb))
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


def _choose(S_sel: np.ndarray, Y_sel: np.ndarray, n_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(direction, sign) per label row maximising AP on the select half.

    Ties go to the larger direction index, then to sign +1 (the one rule of
    :func:`score_directions` and :func:`best_direction_metrics`).
    """
    m = S_sel.shape[1]
    # candidates in order of preference among equal APs: (m-1, +1), (m-1, -1), (m-2, +1), ...
    signed = np.empty((S_sel.shape[0], 2 * m))
    signed[:, 0::2] = S_sel[:, ::-1]
    signed[:, 1::2] = -S_sel[:, ::-1]
    best = np.argmax(_ap_columns(signed, Y_sel, n_pos), axis=1)  # first of equal maxima
    return m - 1 - best // 2, np.where(best % 2 == 0, 1, -1)


def choose_and_score(S: np.ndarray, Y: np.ndarray, select: np.ndarray, evaluate: np.ndarray):
    """Choose on ``select``, then the AP and AUROC of the choice on ``evaluate``; Y (B, N) valid."""
    Y_sel, Y_eval = Y[:, select], Y[:, evaluate]
    direction, sign = _choose(S[select], Y_sel, Y_sel.sum(axis=1))
    chosen = sign[:, None] * S[evaluate][:, direction].T
    return direction, sign, row_metrics(chosen, Y_eval, Y_eval.sum(axis=1))


def choose_layer(candidates: dict, Y: np.ndarray, select: np.ndarray):
    """The key of ``candidates`` (``{layer: scores (N, m)}``) whose directions, each label's
    chosen on ``select`` (:func:`_choose`), have the best macro AUROC on ``select`` itself: a
    choice of layer that never reads the evaluate half (ties: the first key). ``Y`` (B, N)
    valid on ``select``."""
    Y_sel = Y[:, select]
    n_pos = Y_sel.sum(axis=1)
    best, best_value = None, -np.inf
    for key, S in candidates.items():
        direction, sign = _choose(S[select], Y_sel, n_pos)
        value = row_metrics(sign[:, None] * S[select][:, direction].T, Y_sel, n_pos)["auroc"].mean()
        if value > best_value:
            best, best_value = key, value
    return best


def best_direction_metrics(scores, Y, select, evaluate) -> BestDirections:
    """One-vs-rest choice of the best (direction, sign) per label, scored on held-out contexts.

    For each label row the candidates are the m columns of ``scores`` and their negations;
    the one with the highest average precision on the ``select`` contexts is chosen (ties:
    larger column index, then sign +1: :func:`_choose`, as in :func:`score_directions`). Its
    AP and AUROC are then measured on the
    ``evaluate`` contexts.

    Parameters
    ----------
    scores : (N, m) array.
    Y : (B, N) binary label rows, or (N,) for one label.
    select, evaluate : integer indices (or boolean masks) of contexts, e.g. from
        :func:`stratified_halves`.

    Returns
    -------
    :class:`BestDirections` with arrays of shape (B,). ValueError if a label has a single
    class in either half.
    """
    S = as_scores(scores)
    N = S.shape[0]
    Yb = as_labels(Y, N)
    select, evaluate = index_array(select, N, "select", min_size=2), index_array(evaluate, N, "evaluate", min_size=2)
    positive_counts(Yb[:, select], " on the select contexts")
    positive_counts(Yb[:, evaluate], " on the evaluate contexts")
    direction, sign, values = choose_and_score(S, Yb, select, evaluate)
    return BestDirections(direction=direction, sign=sign, ap=values["ap"], auroc=values["auroc"])


def stratified_halves(classes, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 50/50 split of ``range(N)`` stratified by ``classes`` (N,): (select, evaluate) indices.
    Classes with a single member are pooled into one stratum (and that, if still alone, into
    the largest class), since a stratum needs a member in each half."""
    from sklearn.model_selection import train_test_split

    strata = np.asarray(classes)
    values, counts = np.unique(strata, return_counts=True)
    if (counts < 2).any():
        strata, values = strata.astype(str), values.astype(str)
        rare = np.isin(strata, values[counts < 2])
        strata = np.where(rare, "\0rare", strata)
        if rare.sum() < 2:
            strata = np.where(rare, values[counts.argmax()], strata)
    idx = np.arange(len(strata))
    select, evaluate = train_test_split(idx, test_size=0.5, stratify=strata, random_state=seed)
    return np.sort(select), np.sort(evaluate)


def score_directions(scores, labels: pd.DataFrame, select, evaluate) -> pd.DataFrame:
    """One-vs-rest scoring of candidate directions against binary labels.

    scores : (N, m) a signed score per context for each of m directions; labels : (N, L)
    binary DataFrame. For each label the (direction, sign) with the best average precision
    on the ``select`` half is chosen (:func:`_choose`, the rule :func:`best_direction_metrics`
    uses); on the held-out ``evaluate`` half we report scikit-learn's AP,
    AUROC, precision at quota (:func:`precision_at_quota`) and enrichment (that precision
    over the base rate).

    Returns one row per label: ``label, direction, sign, ap, auroc, precision_at_quota,
    enrichment, base_rate``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    S = np.asarray(scores, dtype=np.float64)
    rows = []
    for name in labels.columns:
        y = labels[name].to_numpy()
        y_sel, y_eval = y[select], y[evaluate]
        if not (has_both_classes(y_sel[None]) & has_both_classes(y_eval[None]))[0]:
            raise ValueError(f"label {name!r} has only one class in a half; raise min_positives or use more contexts")
        Y_sel = y_sel[None].astype(np.float64)
        direction, sign = _choose(S[select], Y_sel, Y_sel.sum(axis=1))
        j, sign = int(direction[0]), int(sign[0])
        s_eval = sign * S[evaluate, j]
        precision = precision_at_quota(s_eval, y_eval)
        base = y_eval.mean()
        rows.append({"label": name, "direction": j, "sign": sign, "ap": average_precision_score(y_eval, s_eval),
                     "auroc": roc_auc_score(y_eval, s_eval), "precision_at_quota": precision,
                     "enrichment": precision / base, "base_rate": base})
    return pd.DataFrame(rows)


def precision_at_quota(scores, y) -> float:
    """Precision among the k highest scores, k the number of positives in ``y`` (n,), with
    tied scores at the cut counted at their group's share (the expected precision over every
    order of the ties), so that no order of the contexts decides it (an SAE latent is zero on
    most contexts)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.float64)
    k = int(y.sum())
    threshold = np.sort(s)[::-1][k - 1]
    above, tied = s > threshold, s == threshold
    return float((y[above].sum() + (k - above.sum()) * y[tied].mean()) / k)


def with_best_layer(per_layer: pd.DataFrame, best_layer: dict) -> pd.DataFrame:
    """Append, for each method, its rows at the layer ``best_layer[method]`` (chosen on the
    select half: :func:`choose_layer`) as rows whose ``layer`` is ``"best"``.

    per_layer : rows of :func:`score_directions` with added columns ``layer`` (int) and
    ``method``. Returns the table with ``layer`` as strings.
    """
    best_rows = [per_layer[(per_layer.method == m) & (per_layer.layer == layer)].assign(layer="best")
                 for m, layer in best_layer.items()]
    return pd.concat([per_layer.assign(layer=per_layer.layer.astype(str)), *best_rows], ignore_index=True)
