"""Naming directions after features: which feature each direction separates best, and
whether that is more than choosing the best of many features by chance.

A direction is any column of per-context scores (an eNTK eigenvector's score, a principal
component, a dictionary latent); a feature is a binary label per context (a part of speech
of the next word, a morphological feature, ...)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import significance
from .scoring import auroc_matrix, oriented


def name_directions(scores: dict, labels: pd.DataFrame, *, n_permutations: int | None = None, seed: int = 0,
                    alpha: float = significance.LEVEL) -> pd.DataFrame:
    """Each direction's best-matching feature, for every method at once.

    scores : ``{method: (N, m) a score per context for each direction}``; labels : (N, L)
    binary features. For each direction, the feature it separates best by AUROC (either
    sign), the permutation p-value of that best match
    (:func:`~entk_utils.features.significance.best_label_test`), and its Holm correction over
    every direction of every method (one family: the names of all methods are compared). A
    direction is ``named`` after its feature where ``p_holm < alpha``. ``n_permutations``:
    None sets enough for that family (:func:`~entk_utils.features.significance.monte_carlo_draws`);
    a number that cannot reach the correction is refused.

    Returns one row per (method, direction): ``method, direction, feature, auroc, sign,
    p_perm, p_holm, named, name, n_permutations`` (``sign`` -1: the feature sits at the low end).
    """
    if labels.shape[1] == 0:
        raise ValueError("no feature has enough positives and negatives to name directions; use more contexts or "
                         "a smaller min_positives")
    if not isinstance(scores, dict) or not scores:
        raise ValueError("scores must be a non-empty {method: (N, m) scores} dict")
    family = sum(np.shape(s)[1] if np.ndim(s) == 2 else 1 for s in scores.values())
    tables = []
    for method, s in scores.items():
        best = significance.best_label_test(s, labels.T.to_numpy(), n_permutations=n_permutations, seed=seed,
                                            family=family, level=alpha)
        tables.append(pd.DataFrame({"method": method, "direction": np.arange(len(best.label)),
                                    "feature": labels.columns[best.label], "auroc": best.auroc, "sign": best.sign,
                                    "p_perm": best.p_value, "n_permutations": best.n_permutations}))
    table = pd.concat(tables, ignore_index=True)
    table["p_holm"] = significance.holm(table.p_perm.to_numpy())
    table["named"] = table.p_holm < alpha
    table["name"] = table.feature.where(table.named, "-")
    return table[["method", "direction", "feature", "auroc", "sign", "p_perm", "p_holm", "named", "name",
                  "n_permutations"]]


def oriented_auroc(scores, labels: pd.DataFrame) -> pd.DataFrame:
    """(L, m) AUROC of each direction (column of ``scores`` (N, m)) for each feature (column
    of ``labels`` (N, L)), oriented (:func:`~entk_utils.features.scoring.oriented`: 0.5 is
    chance, 1 a perfect split)."""
    return pd.DataFrame(oriented(auroc_matrix(scores, labels.T.to_numpy())), index=labels.columns)
