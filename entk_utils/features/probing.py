"""Metrics of a set of directions against labels beyond the paper's best single direction
(:mod:`.scoring`): SAEBench's k-sparse probing, and the mean |cosine| of the top score
vectors with each label (the metric the paper's authors announced for their revision).
Shapes as in :mod:`.scoring`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.checks import index_array
from .scoring import as_scores, has_both_classes


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
        if not (has_both_classes(y_sel[None]) & has_both_classes(y_eval[None]))[0]:
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
