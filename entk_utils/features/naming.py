"""Naming directions after features: which feature each direction separates best, and
whether that is more than choosing the best of many features by chance.

A direction is any column of per-context scores (an eNTK eigenvector's score, a principal
component, a dictionary latent); a feature is a binary label per context (a part of speech
of the next word, a morphological feature, ...)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import significance
from .scoring import auroc_matrix


def name_directions(scores, labels: pd.DataFrame, *, n_permutations: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> pd.DataFrame:
    """Each direction's best-matching feature.

    scores : (N, m) a score per context for each direction; labels : (N, L) binary features.
    For each direction, the feature it separates best by AUROC (either sign), the permutation
    p-value of that best match (:func:`~entk_utils.features.significance.best_label_test`), and the
    Holm-corrected p-value over the m directions. A direction is ``named`` after its feature
    where ``p_holm < alpha``. One row per direction: ``direction, feature, auroc, sign,
    p_perm, p_holm, named, name`` (``sign`` -1: the feature sits at the low end).
    """
    if labels.shape[1] == 0:
        raise ValueError("no feature has enough positives and negatives to name directions; use more contexts or "
                         "a smaller min_positives")
    best = significance.best_label_test(scores, labels.T.to_numpy(), n_permutations=n_permutations, seed=seed)
    table = pd.DataFrame({"direction": np.arange(len(best.label)), "feature": labels.columns[best.label],
                          "auroc": best.auroc, "sign": best.sign, "p_perm": best.p_value,
                          "p_holm": significance.holm(best.p_value)})
    table["named"] = table.p_holm < alpha
    table["name"] = table.feature.where(table.named, "-")
    return table


def oriented_auroc(scores, labels: pd.DataFrame) -> pd.DataFrame:
    """(L, m) AUROC of each direction (column of ``scores`` (N, m)) for each feature (column
    of ``labels`` (N, L)), oriented (``max(a, 1 - a)``: 0.5 is chance, 1 a perfect split)."""
    auroc = auroc_matrix(scores, labels.T.to_numpy())
    return pd.DataFrame(np.maximum(auroc, 1 - auroc), index=labels.columns)
