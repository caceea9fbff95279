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

A validated explanation says that a direction is more than noise about a property, not that
it is about that property more than any direction would be: the last word and its morphology
can be read off a hidden state along almost any direction. :func:`random_explanation_floor`
measures how strongly random directions of the same activations are explained;
:func:`discovery_table` counts per method the directions explained, and those explained more
strongly than that floor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, rankdata

from ..io.checks import index_array
from .directions import random_scores
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


def random_explanation_floor(activations, candidates: pd.DataFrame, select, evaluate, *, n_directions: int = 200,
                             quantile: float = 0.95, seed: int = 0) -> float:
    """The ``quantile`` of the held-out AUROC of the best candidate (chosen on ``select``) over
    ``n_directions`` random directions of the ``activations`` (N, d): how strongly a direction
    drawn with no method at all is explained. A method's direction explained above it is
    explained more strongly than 95% (by default) of random ones."""
    if not 0 < quantile < 1 or int(n_directions) < 1:
        raise ValueError(f"need 0 < quantile < 1 and n_directions >= 1, got {quantile} and {n_directions}")
    scores = random_scores(activations, int(n_directions), seed=seed)
    table, _ = explain_directions(scores, candidates, select, evaluate, n_permutations=0, seed=seed)
    return float(np.quantile(table.auroc, quantile))


def discovery_table(explanations: dict[str, pd.DataFrame], floor: float | None = None, fdr: float = 0.05,
                    next_word: str = "next word") -> pd.DataFrame:
    """Per method (``{method: explain_directions(...)[0]}``): ``directions`` (k),
    ``explained`` (share with a validated explanation, q < ``fdr``), ``distinct`` (how many
    different candidates those explanations are), ``mean_auroc`` (held-out AUROC of the
    validated ones) and, with a ``floor`` (:func:`random_explanation_floor`),
    ``beyond_random`` / ``distinct_beyond_random``: the same counts for explanations whose
    held-out AUROC also exceeds it, and ``next_word_beyond_random``: the share of those about
    what follows the context (candidates named starting with ``next_word``), not the context
    itself."""
    rows = []
    for method, table in explanations.items():
        valid = table[table.q < fdr]
        row = {"method": method, "directions": len(table), "explained": len(valid) / len(table),
               "distinct": valid.candidate.nunique(), "mean_auroc": valid.auroc.mean() if len(valid) else np.nan}
        if floor is not None:
            strong = valid[valid.auroc > floor]
            row |= {"beyond_random": len(strong) / len(table), "distinct_beyond_random": strong.candidate.nunique(),
                    "next_word_beyond_random": strong.candidate.str.startswith(next_word).sum() / len(table)}
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")
