"""Explaining a direction without a language model: the candidate explanation (a binary
property of each context, e.g. "the next word is a noun") whose contexts it separates best.

A candidate is chosen on one half of the contexts and validated on the other: on the
``select`` half each (direction, candidate) pair gets its AUROC and an orientation (which end
of the direction the candidate sits at); on the ``evaluate`` half its oriented AUROC is tested
by the one-sided rank test (:func:`~entk_utils.features.significance.rank_test`: the
orientation was fixed beforehand), and the false discovery rate is controlled
(Benjamini-Hochberg at :data:`~entk_utils.features.significance.LEVEL`) over all direction x
candidate pairs of a method. A direction's explanation is its best candidate on the select half
among those validated, with its held-out AUROC as the effect size; otherwise "none found", with
its best candidate shown. The rank test's p-values are as fine as the data allow, so the share
of directions explained changes smoothly with the number of contexts and candidates.

A validated explanation says that a direction is more than noise about a property, not that
it is about that property more than any direction would be: the last word and its morphology
can be read off a hidden state along almost any direction. :func:`random_explanation_floor`
explains random directions of the same activations by the same rule (in sets of the same
size, so each faces the same correction) and takes the quantile of how strongly they are
explained; :func:`discovery_table` counts per method the directions explained, and those
explained beyond that floor, against the count random directions reach by chance and against
a reference method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest, fisher_exact

from ..io.checks import index_array
from .directions import random_scores
from .scoring import as_labels, as_scores, auroc_matrix, has_both_classes
from .significance import FLOOR_QUANTILE, LEVEL, benjamini_hochberg, holm, rank_test

UNEXPLAINED = 0.5  # how strongly a direction without a validated explanation is explained: chance


def explain_directions(scores, candidates: pd.DataFrame, select, evaluate, *, fdr: float = LEVEL
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Explain each of the k score columns (N, k) by one of the binary ``candidates`` (N, C)
    as the module docstring says (candidates without both classes in both halves are left out).

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
    usable = has_both_classes(Y[:, select]) & has_both_classes(Y[:, evaluate])
    if not usable.any():
        raise ValueError("no candidate has both classes in both halves")
    names = candidates.columns[usable]
    Y = Y[usable]
    select_auc = auroc_matrix(S[select], Y[:, select])  # (C, k)
    sign = np.where(select_auc >= 0.5, 1, -1)
    auroc, p = rank_test(S[evaluate], Y[:, evaluate], sign)
    q = benjamini_hochberg(p)
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


def explained_auroc(explanations: pd.DataFrame, fdr: float = LEVEL) -> np.ndarray:
    """(k,) how strongly each direction of an :func:`explain_directions` table is explained:
    the held-out AUROC of its validated explanation (q < ``fdr``), :data:`UNEXPLAINED` where
    none was validated. The one number a method's directions and the random ones are ranked by."""
    return np.where(explanations.q.to_numpy() < fdr, explanations.auroc.to_numpy(), UNEXPLAINED)


@dataclass(frozen=True)
class ExplanationFloor:
    """How strongly random directions are explained (:func:`random_explanation_floor`):
    ``value``, the ``quantile`` of :func:`explained_auroc` over ``n_directions`` random
    directions explained in sets of ``k``; ``chance``, the share of those random directions
    explained beyond ``value`` (at most ``1 - quantile``): the rate at which a direction of no
    method at all passes, against which a method's count is tested; ``fdr``, the level used."""

    value: float
    quantile: float
    chance: float
    n_directions: int
    k: int
    fdr: float

    def describe(self) -> str:
        return (f"random directions' explanations, {self.quantile:.0%} quantile of {self.n_directions} (in sets of "
                f"{self.k}): held-out AUROC {self.value:.3f}; {self.chance:.1%} of them lie beyond it")


def random_explanation_floor(activations, candidates: pd.DataFrame, select, evaluate, *, k: int,
                             n_directions: int = 400, quantile: float = FLOOR_QUANTILE, seed: int = 0,
                             fdr: float = LEVEL) -> ExplanationFloor:
    """Explain ``n_directions`` random directions of the ``activations`` (N, d) exactly as a
    method's k directions are (:func:`explain_directions` on sets of ``k``, so each faces a
    correction over the same number of pairs) and take the ``quantile`` of how strongly they are
    explained (:func:`explained_auroc`): a method's direction explained beyond it is explained
    more strongly than that share of directions drawn with no method at all."""
    if not 0 < quantile < 1 or int(n_directions) < 1 or int(k) < 1:
        raise ValueError(f"need 0 < quantile < 1, n_directions >= 1 and k >= 1, got {quantile}, {n_directions}, {k}")
    k = int(k)
    scores = random_scores(activations, k * math.ceil(int(n_directions) / k), seed=seed)
    strength = np.concatenate([explained_auroc(explain_directions(scores[:, i:i + k], candidates, select, evaluate,
                                                                  fdr=fdr)[0], fdr)
                               for i in range(0, scores.shape[1], k)])
    value = float(np.quantile(strength, quantile))
    return ExplanationFloor(value=value, quantile=quantile, chance=float(np.mean(strength > value)),
                            n_directions=len(strength), k=k, fdr=fdr)


def discovery_table(explanations: dict[str, pd.DataFrame], floor: ExplanationFloor | None = None, *,
                    fdr: float = LEVEL, reference: str = "entk", next_word: str = "next word") -> pd.DataFrame:
    """Per method (``{method: explain_directions(...)[0]}``): ``directions`` (k),
    ``explained`` (share with a validated explanation, q < ``fdr``), ``distinct`` (how many
    different candidates those explanations are), ``mean_auroc`` (held-out AUROC of the
    validated ones) and, with a ``floor`` (:func:`random_explanation_floor`):

    - ``beyond_random``: the share explained beyond the floor, and ``by_chance``: the share
      random directions reach (``floor.chance``);
    - ``p_vs_chance``: is the count beyond more than chance? (one-sided binomial test against
      ``floor.chance``; Holm over the methods);
    - ``p_vs_<reference>``: does the count differ from the reference method's? (two-sided
      Fisher exact test; Holm over the methods compared with it);
    - ``distinct_beyond_random``, and ``next_word_beyond_random``: the share of directions
      explained beyond the floor by a candidate about what follows the context (named
      starting with ``next_word``), not the context itself.

    The counts treat a method's directions as independent draws, and the floor as known
    (it is measured on ``floor.n_directions`` random directions)."""
    if floor is not None and floor.fdr != fdr:
        raise ValueError(f"the floor's random directions were explained at fdr={floor.fdr}, the methods' at fdr={fdr}: "
                         "one rule for both")
    rows, counts = [], {}
    for method, table in explanations.items():
        valid = table[table.q < fdr]
        row = {"method": method, "directions": len(table), "explained": len(valid) / len(table),
               "distinct": valid.candidate.nunique(), "mean_auroc": valid.auroc.mean() if len(valid) else np.nan}
        if floor is not None:
            strong = table[explained_auroc(table, fdr) > floor.value]
            counts[method] = (len(strong), len(table))
            row |= {"beyond_random": len(strong) / len(table), "by_chance": floor.chance,
                    "p_vs_chance": binomtest(len(strong), len(table), floor.chance, alternative="greater").pvalue,
                    "distinct_beyond_random": strong.candidate.nunique(),
                    "next_word_beyond_random": strong.candidate.str.startswith(next_word).sum() / len(table)}
        rows.append(row)
    out = pd.DataFrame(rows).set_index("method")
    if floor is None:
        return out
    out["p_vs_chance"] = holm(out.p_vs_chance.to_numpy())
    others = [m for m in out.index if m != reference]
    if reference in counts and others:
        a, n_a = counts[reference]
        p = [fisher_exact([[a, n_a - a], [counts[m][0], counts[m][1] - counts[m][0]]]).pvalue for m in others]
        out[f"p_vs_{reference}"] = pd.Series(holm(p), index=others)
    columns = ["directions", "explained", "distinct", "mean_auroc", "beyond_random", "by_chance", "p_vs_chance",
               f"p_vs_{reference}", "distinct_beyond_random", "next_word_beyond_random"]
    return out[[c for c in columns if c in out.columns]]
