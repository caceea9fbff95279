"""Chance levels for subspace overlaps: random subspaces of the same dimensions (exact mean
``k * d / N`` and a seeded empirical distribution), and reference overlaps such as those of
the eNTK of untrained networks, joined onto an overlap table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .directions import random_directions


def random_overlap_null(n: int, k: int, d: int, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Overlaps of ``n_draws`` uniformly random k-dim subspaces of R^n with a fixed d-dim one.

    The distribution does not depend on which d-dim subspace is fixed (the random one is
    rotation invariant), so we take the first d coordinates: the overlap of span(Q) is the
    squared norm of Q's first d rows. Its exact mean is ``k * d / n``. Returns (n_draws,).
    """
    if not (1 <= k <= n and 1 <= d <= n):
        raise ValueError(f"need 1 <= k, d <= n, got n={n}, k={k}, d={d}")
    rng = np.random.default_rng(seed)
    return np.array([np.sum(random_directions(n, k, rng)[:d] ** 2) for _ in range(n_draws)])


def with_random_null(table: pd.DataFrame, n: int, n_draws: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Add what random subspaces of the same dimensions give to an overlap table.

    table : rows with ``overlap, n_vectors, family_dim`` (from :func:`overlap_table` or
    :func:`family_overlap_table`); n : the dimension of the space (number of inputs).
    Adds ``null_mean`` (the exact expectation ``n_vectors * family_dim / n``), ``null_q99``
    (the empirical 99th percentile of ``n_draws`` seeded random subspaces) and ``null_p``
    (the empirical one-sided p-value ``(1 + #{null >= overlap}) / (1 + n_draws)``).
    """
    out = table.copy()
    nulls = {}
    for key in set(zip(out.n_vectors, out.family_dim)):
        nulls[key] = random_overlap_null(n, int(key[0]), int(key[1]), n_draws, seed)
    draws = [nulls[key] for key in zip(out.n_vectors, out.family_dim)]
    out["null_mean"] = out.n_vectors * out.family_dim / n
    out["null_q99"] = [np.quantile(null, 0.99) for null in draws]
    out["null_p"] = [(1 + np.sum(null >= obs)) / (1 + n_draws) for null, obs in zip(draws, out.overlap)]
    return out


def describe_nulls(row, digits: int = 2) -> str:
    """One table row's nulls in words: ``"random 1.86 (p 0.001); init 1.99 ± 0.06"`` (the
    columns of :func:`with_random_null` and :func:`with_reference_overlaps`)."""
    return (f"random {row['null_mean']:.{digits}f} (p {row['null_p']:.3f}); "
            f"init {row['init_mean']:.{digits}f} ± {row['init_std']:.{digits}f}")


def with_reference_overlaps(table: pd.DataFrame, references: Sequence[pd.DataFrame], on: Sequence[str],
                            prefix: str = "init") -> pd.DataFrame:
    """Add the mean, standard deviation and maximum of the ``overlap`` column of several
    reference tables (e.g. the same overlaps for the eNTK at initialisation, one table per
    seed), matched on the columns ``on``: columns ``{prefix}_mean, {prefix}_std, {prefix}_max``.
    """
    stacked = pd.concat(list(references), ignore_index=True)
    stats = stacked.groupby(list(on)).overlap.agg(["mean", "std", "max"])
    stats.columns = [f"{prefix}_{c}" for c in stats.columns]
    return table.merge(stats.reset_index(), on=list(on), how="left")
