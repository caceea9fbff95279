"""Explaining a direction without a language model: the candidate explanation (a binary
property of each context, e.g. "the next word is a noun") whose contexts it separates best.

A candidate is chosen on one half of the contexts and validated on the other: on the
``select`` half each (direction, candidate) pair gets its AUROC and an orientation (which end
of the direction the candidate sits at); on the ``evaluate`` half its oriented AUROC is tested
against shuffles of the candidate over those contexts (one-sided: the orientation was fixed
beforehand), and the false discovery rate is controlled (Benjamini-Hochberg) over all
direction x candidate pairs. A direction's explanation is its best candidate on the select
half among those validated, with its held-out AUROC as the effect size; otherwise "none
found", with its best candidate shown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, rankdata

from ..io.checks import index_array
from .scoring import as_labels, as_scores, auroc_matrix, auroc_from_rank_sums


def held_out_pvalues(scores: np.ndarray, Y: np.ndarray, sign: np.ndarray, n_permutations: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Oriented AUROC of every score column (n, k) for every candidate row of ``Y`` (C, n),
    with ``sign`` (C, k) +1 / -1 fixed in advance, and its one-sided permutation p-value
    (candidates shuffled over the n contexts, one shuffle for all pairs at a time).
    Returns ``(auroc (C, k), p (C, k))``."""
    ranks = rankdata(scores, axis=0)
    n_pos = Y.sum(axis=1)

    def oriented(Yp):
        auc = auroc_from_rank_sums(Yp @ ranks, n_pos, len(ranks))
        return np.where(sign > 0, auc, 1 - auc)

    observed = oriented(Y)
    rng = np.random.default_rng(seed)
    exceed = np.zeros_like(observed)
    for _ in range(int(n_permutations)):
        exceed += oriented(Y[:, rng.permutation(Y.shape[1])]) >= observed - 1e-12
    return observed, (1 + exceed) / (1 + n_permutations)


def explain_directions(scores, candidates: pd.DataFrame, select, evaluate, *, n_permutations: int = 1000,
                       seed: int = 0, fdr: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Explain each of the k score columns (N, k) by one of the binary ``candidates`` (N, C)
    as the module docstring says.

    Returns ``(explanations, pairs)``: one row per direction (``direction, explanation``
    (the candidate or "none found"), ``candidate`` (the validated one, or the best on the
    select half), ``sign`` (+1: high scores carry the candidate), ``select_auroc``,
    ``auroc`` (held out, oriented), ``p``, ``q``) and every (direction, candidate) pair with
    the same columns.
    """
    S = as_scores(scores)
    N, k = S.shape
    if not isinstance(candidates, pd.DataFrame) or len(candidates) != N or candidates.shape[1] == 0:
        raise ValueError(f"candidates must be a DataFrame with one row per context ({N}) and at least one column")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must lie in (0, 1), got {fdr}")
    select, evaluate = index_array(select, N, "select", min_size=2), index_array(evaluate, N, "evaluate", min_size=2)
    Y = as_labels(candidates.T.to_numpy(), N, "candidates")
    usable = Y[:, select].std(axis=1) > 0
    usable &= Y[:, evaluate].std(axis=1) > 0
    if not usable.any():
        raise ValueError("no candidate has both classes in both halves")
    names = candidates.columns[usable]
    Y = Y[usable]
    select_auc = auroc_matrix(S[select], Y[:, select])  # (C, k)
    sign = np.where(select_auc >= 0.5, 1, -1)
    auroc, p = held_out_pvalues(S[evaluate], Y[:, evaluate], sign, n_permutations, seed)
    q = false_discovery_control(p.ravel(), method="bh").reshape(p.shape)
    strength = np.abs(select_auc - 0.5)
    pairs = pd.DataFrame({"direction": np.tile(np.arange(k), len(names)), "candidate": np.repeat(names, k),
                          "sign": sign.ravel(), "select_auroc": select_auc.ravel(), "auroc": auroc.ravel(),
                          "p": p.ravel(), "q": q.ravel(), "strength": strength.ravel()})
    rows = []
    for j in range(k):
        mine = pairs[pairs.direction == j].sort_values(["strength", "candidate"], ascending=[False, True])
        valid = mine[mine.q < fdr]
        best = valid.iloc[0] if len(valid) else mine.iloc[0]
        rows.append({"direction": j, "explanation": best.candidate if len(valid) else "none found",
                     **best.drop(["direction", "strength"]).to_dict()})
    return pd.DataFrame(rows), pairs.drop(columns="strength")
