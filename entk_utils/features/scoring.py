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


def has_both_classes(Y: np.ndarray) -> np.ndarray:
    """(B,) True where a label row has at least one positive and one negative."""
    n_pos = Y.sum(axis=1)
    return (n_pos > 0) & (n_pos < Y.shape[1])


def positive_counts(Y: np.ndarray, where: str = "") -> np.ndarray:
    """(B,) number of positives per row; ValueError if a row has a single class."""
    bad = np.flatnonzero(~has_both_classes(Y))
    if bad.size:
        raise ValueError(f"label row(s) {bad[:10].tolist()} have only one class{where}; "
                         "AUROC and AP need both positives and negatives")
    return Y.sum(axis=1)


# ----------------------------------------------------------------------------- core metrics


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

    def chosen_scores(self, scores, idx) -> np.ndarray:
        """(B, len(idx)): ``sign[b] * scores[idx, direction[b]]``, the rows :func:`bootstrap_macro` takes."""
        S = as_scores(scores)
        idx = index_array(idx, S.shape[0], "idx", min_size=2)
        return self.sign[:, None] * S[idx][:, self.direction].T


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
    S = as_scores(scores)
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
    AUROC, precision at quota (among the k highest-scoring contexts, k = number of
    positives) and enrichment (that precision over the base rate).

    Returns one row per label: ``label, direction, sign, ap, auroc, precision_at_quota,
    enrichment, base_rate``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    S = np.asarray(scores, dtype=np.float64)
    rows = []
    for name in labels.columns:
        y = labels[name].to_numpy()
        y_sel, y_eval = y[select], y[evaluate]
        if y_sel.min() == y_sel.max() or y_eval.min() == y_eval.max():
            raise ValueError(f"label {name!r} has only one class in a half; raise min_positives or use more contexts")
        Y_sel = y_sel[None].astype(np.float64)
        direction, sign = _choose(S[select], Y_sel, Y_sel.sum(axis=1))
        j, sign = int(direction[0]), int(sign[0])
        s_eval = sign * S[evaluate, j]
        k = int(y_eval.sum())
        precision = y_eval[np.argsort(-s_eval, kind="stable")[:k]].mean()
        base = y_eval.mean()
        rows.append({"label": name, "direction": j, "sign": sign, "ap": average_precision_score(y_eval, s_eval),
                     "auroc": roc_auc_score(y_eval, s_eval), "precision_at_quota": precision,
                     "enrichment": precision / base, "base_rate": base})
    return pd.DataFrame(rows)


def with_best_layer(per_layer: pd.DataFrame, by: str = "auroc") -> tuple[pd.DataFrame, pd.Series]:
    """Append, for each method, its rows at the layer with the best macro ``by``.

    per_layer : rows of :func:`score_directions` with added columns ``layer`` (int) and
    ``method``. Returns ``(table, best_layer)``: the table with ``layer`` as strings and
    extra rows whose ``layer`` is ``"best"``, and ``{method: best layer}``.
    """
    macro = per_layer.groupby(["method", "layer"])[by].mean()
    best_layer = macro.groupby(level="method").idxmax().map(lambda key: key[1])
    best_rows = [per_layer[(per_layer.method == m) & (per_layer.layer == layer)].assign(layer="best")
                 for m, layer in best_layer.items()]
    table = pd.concat([per_layer.assign(layer=per_layer.layer.astype(str)), *best_rows], ignore_index=True)
    return table, best_layer


# ----------------------------------------------------------------------------- k-sparse probing


def k_sparse_probe(scores, labels: pd.DataFrame, select, evaluate, ks=(1, 2, 5)) -> pd.DataFrame:
    """SAEBench's k-sparse probing, for any score columns: per label and k, the k columns with
    the largest |difference of class means| on the ``select`` contexts (columns standardised
    there first, so that the choice does not depend on each method's scale), a scikit-learn
    ``LogisticRegression`` fit on those k columns of the ``select`` contexts, and its AUROC and
    accuracy on the ``evaluate`` contexts.

    scores : (N, m); labels : (N, L) binary DataFrame. Returns one row per (label, k):
    ``label, k, chosen`` (the column indices), ``auroc, accuracy``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    S = as_scores(scores)
    N = S.shape[0]
    select, evaluate = index_array(select, N, "select", min_size=2), index_array(evaluate, N, "evaluate", min_size=2)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > S.shape[1]:
        raise ValueError(f"ks must lie in 1..{S.shape[1]} (the number of score columns), got {ks}")
    mean, std = S[select].mean(0), S[select].std(0)
    Z = (S - mean) / np.where(std > 0, std, 1.0)
    rows = []
    for name in labels.columns:
        y = labels[name].to_numpy().astype(bool)
        y_sel, y_eval = y[select], y[evaluate]
        if y_sel.all() or not y_sel.any() or y_eval.all() or not y_eval.any():
            raise ValueError(f"label {name!r} has only one class in a half")
        gap = np.abs(Z[select][y_sel].mean(0) - Z[select][~y_sel].mean(0))
        ranked = np.lexsort((np.arange(len(gap)), -gap))  # largest gap first, ties to the lower column
        for k in ks:
            columns = np.sort(ranked[:k])
            probe = LogisticRegression(max_iter=5000).fit(Z[select][:, columns], y_sel)
            rows.append({"label": name, "k": k, "chosen": columns.tolist(),
                         "auroc": roc_auc_score(y_eval, probe.decision_function(Z[evaluate][:, columns])),
                         "accuracy": accuracy_score(y_eval, probe.predict(Z[evaluate][:, columns]))})
    return pd.DataFrame(rows)
