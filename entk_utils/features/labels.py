"""Which labels a comparison of methods uses: each counted once, each with enough of both
classes in both halves (:func:`comparable_labels`). The rule for a label being usable at all
is :func:`~entk_utils.features.scoring.has_both_classes`; this module applies it with a
minimum count per half and merges identical columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.checks import index_array
from .scoring import as_labels, has_both_classes


@dataclass(frozen=True)
class ComparableLabels:
    """Labels fit to compare methods on (:func:`comparable_labels`): ``labels`` (N, L)
    binary DataFrame, ``kinds`` ``{label: kind}`` where kinds were given, ``merged``
    ``{name: [the identical columns it stands for]}``, ``too_thin``: the columns left out
    (fewer than ``min_per_half`` positives or negatives in a half)."""

    labels: pd.DataFrame
    kinds: dict | None
    merged: dict
    too_thin: list
    min_per_half: int

    def describe(self) -> str:
        """One line: what was merged and what was left out, and why."""
        merged = "; ".join(self.merged) or "none"
        thin = ", ".join(self.too_thin) or "none"
        return (f"{self.labels.shape[1]} labels; identical columns merged: {merged}; left out (fewer than "
                f"{self.min_per_half} positives or negatives in a half): {thin}")


MERGED_NAME = " / "  # joins the names of identical label columns


def comparable_labels(labels: pd.DataFrame, select, evaluate, *, min_per_half: int = 1,
                      kinds: dict | None = None) -> ComparableLabels:
    """The labels (N, L) that a comparison of methods can use, each counted once: columns with
    fewer than ``min_per_half`` positives or negatives in either half are left out (an AUROC
    on a handful of positives is noise, and the choice of a direction on them overfits), and
    identical columns are merged into one named by all of theirs (joined by
    :data:`MERGED_NAME`), so that no label weighs twice in a macro average or a family of
    tests. ``kinds``: ``{label: kind}``, carried over (a merged label takes its first
    column's)."""
    if not isinstance(labels, pd.DataFrame) or labels.shape[1] == 0:
        raise ValueError("labels must be a DataFrame with at least one column")
    if int(min_per_half) < 1:
        raise ValueError(f"min_per_half must be >= 1, got {min_per_half}")
    Y = as_labels(labels.T.to_numpy(), len(labels), "labels")
    N = Y.shape[1]
    select, evaluate = index_array(select, N, "select", min_size=2), index_array(evaluate, N, "evaluate", min_size=2)
    enough = has_both_classes(Y[:, select], min_per_half) & has_both_classes(Y[:, evaluate], min_per_half)
    too_thin = [c for c, ok in zip(labels.columns, enough) if not ok]
    if len(too_thin) == labels.shape[1]:
        raise ValueError(f"no label has {min_per_half} positives and {min_per_half} negatives in each half "
                         f"(min_per_half={min_per_half}); use more contexts or a smaller min_per_half")
    groups: dict[bytes, list[str]] = {}
    for name, ok, row in zip(labels.columns, enough, Y):
        if ok:
            groups.setdefault(row.astype(np.uint8).tobytes(), []).append(name)
    names = {members[0]: MERGED_NAME.join(members) for members in groups.values()}
    kept = labels[list(names)].rename(columns=names)
    return ComparableLabels(labels=kept, kinds=None if kinds is None else {names[c]: kinds[c] for c in names},
                            merged={names[m[0]]: m for m in groups.values() if len(m) > 1}, too_thin=too_thin,
                            min_per_half=int(min_per_half))
