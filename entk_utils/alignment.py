"""How well a set of directions matches a set of features.

All functions take column spaces: an (N, k) array stands for the span of its k columns in
R^N (eigenvectors, feature families, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.linalg


def orthonormal_basis(A, rtol: float = 1e-10) -> np.ndarray:
    """(N, r) orthonormal basis of the column span of ``A`` (N, k), ``r = rank(A)``.

    Columns whose singular value is below ``rtol * max singular value`` are dropped, so a
    redundant spanning set gives the dimension of its span.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 1:
        A = A[:, None]
    if A.ndim != 2 or A.shape[1] == 0:
        raise ValueError(f"expected an (N, k) matrix with k >= 1, got shape {A.shape}")
    U, s, _ = scipy.linalg.svd(A, full_matrices=False)
    if s[0] == 0:
        raise ValueError("the columns span the zero subspace")
    return U[:, s > rtol * s[0]]


def principal_cosines(A, B) -> np.ndarray:
    """Cosines of the principal angles between span(A) and span(B), descending.

    A: (N, k), B: (N, l); returns min(rank A, rank B) values in [0, 1].
    """
    QA, QB = orthonormal_basis(A), orthonormal_basis(B)
    if QA.shape[0] != QB.shape[0]:
        raise ValueError(f"A and B live in different spaces: {QA.shape[0]} vs {QB.shape[0]} rows")
    return np.clip(scipy.linalg.svdvals(QA.T @ QB), 0.0, 1.0)


def subspace_overlap(A, B) -> float:
    """``||orth(A)^T orth(B)||_F^2``: the sum of squared principal cosines.

    Between 0 (orthogonal spans) and ``min(rank A, rank B)`` (one span contains the other).
    Dividing by the smaller dimension gives the fraction captured.
    """
    return float(np.sum(principal_cosines(A, B) ** 2))


def projection_heatmap(vectors, bases: Sequence) -> np.ndarray:
    """How much of each vector lies in each subspace: (k, len(bases)).

    ``vectors`` (N, k); ``bases`` a list of (N, d_j) spanning sets. Entry ``[i, j]`` is
    ``||P_j v_i|| / ||v_i||``, the cosine of the angle between ``v_i`` and subspace ``j``.
    With the 2-D cos/sin plane of one frequency as a subspace this is a phase-insensitive
    correlation: it does not change when the vector's Fourier phase shifts.
    """
    V = np.asarray(vectors, dtype=np.float64)
    if V.ndim == 1:
        V = V[:, None]
    norms = np.linalg.norm(V, axis=0)
    if np.any(norms == 0):
        raise ValueError("vectors must be non-zero")
    out = np.empty((V.shape[1], len(bases)))
    for j, basis in enumerate(bases):
        Q = orthonormal_basis(basis)
        out[:, j] = np.linalg.norm(Q.T @ V, axis=0) / norms
    return out


def overlap_table(vectors, blocks, families) -> pd.DataFrame:
    """Overlap of each block of vectors with each feature family, as a tidy table.

    vectors : (N, M) e.g. eigenvectors in descending order.
    blocks : ``{label: (start, stop)}`` column ranges of ``vectors``.
    families : ``{name: (N, d) feature matrix}``.

    Returns a DataFrame with columns ``cliff, eigvecs, family, overlap, dim, percent,
    n_vectors, family_dim`` where ``dim = min(n_vectors, family_dim)`` (block size, rank of
    the family) is the largest possible overlap and ``percent = 100 * overlap / dim``.
    """

    V = np.asarray(vectors, dtype=np.float64)
    rows = []
    for label, (start, stop) in blocks.items():
        for name, F in families.items():
            overlap = subspace_overlap(V[:, start:stop], F)
            rank = orthonormal_basis(F).shape[1]
            dim = min(stop - start, rank)
            rows.append({"cliff": label, "eigvecs": _ranges([(start, stop)]), "family": name,
                         "overlap": overlap, "dim": dim, "percent": 100 * overlap / dim,
                         "n_vectors": stop - start, "family_dim": rank})
    return pd.DataFrame(rows)


def captured_fraction(vectors, bases: Sequence) -> np.ndarray:
    """Fraction of each subspace that lies inside span(vectors): (len(bases),) in [0, 1].

    Entry ``j`` is ``subspace_overlap(vectors, bases[j]) / rank(bases[j])``. Unlike
    :func:`projection_heatmap` it does not depend on how the vectors are rotated within
    their span, so it is the right view of a block of nearly equal eigenvalues.
    """
    return np.array([subspace_overlap(vectors, B) / orthonormal_basis(B).shape[1] for B in bases])


def _ranges(blocks) -> str:
    return ",".join(f"{a}-{b - 1}" for a, b in blocks)


def parse_range(text: str) -> tuple[int, int]:
    """``"5-8"`` (the ``eigvecs`` column of the overlap tables) -> the column slice ``(5, 9)``."""
    first, last = (int(x) for x in str(text).split("-"))
    return first, last + 1


def random_overlap_null(n: int, k: int, d: int, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Overlaps of ``n_draws`` uniformly random k-dim subspaces of R^n with a fixed d-dim one.

    The distribution does not depend on which d-dim subspace is fixed (the random one is
    rotation invariant), so we take the first d coordinates: the overlap of span(Q) is the
    squared norm of Q's first d rows. Its exact mean is ``k * d / n``. Returns (n_draws,).
    """
    if not (1 <= k <= n and 1 <= d <= n):
        raise ValueError(f"need 1 <= k, d <= n, got n={n}, k={k}, d={d}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_draws)
    for i in range(n_draws):
        Q, _ = np.linalg.qr(rng.standard_normal((n, k)))
        out[i] = np.sum(Q[:d] ** 2)
    return out


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


def overlaps_at_ranges(vectors, ranges, families) -> pd.DataFrame:
    """The overlap of given column ranges of ``vectors`` (N, M) with each family.

    ranges : ``{family: "first-last"}`` (e.g. the ``eigvecs`` column of
    :func:`family_overlap_table`, indexed by family) or ``{family: (start, stop)}``;
    families : ``{name: (N, d)}``. Used to score another set of eigenvectors (say, of the
    kernel at initialisation) on the ranges found for the trained model. Returns columns
    ``family, eigvecs, overlap``.
    """
    V = np.asarray(vectors, dtype=np.float64)
    rows = []
    for name, rng in dict(ranges).items():
        start, stop = parse_range(rng) if isinstance(rng, str) else rng
        rows.append({"family": name, "eigvecs": _ranges([(start, stop)]),
                     "overlap": subspace_overlap(V[:, start:stop], families[name])})
    return pd.DataFrame(rows)


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


def family_ranges(vectors, families, min_share: float = 0.5) -> dict[str, tuple[int, int] | None]:
    """The range of vectors that belongs to each feature family.

    vectors : (N, M), e.g. the leading eigenvectors in descending order; families :
    ``{name: (N, d)}``. A vector belongs to a family when at least ``min_share`` of its
    squared norm lies in the family's span (so it belongs to at most one family when the
    families are orthogonal and ``min_share >= 0.5``). A family's range is ``(first,
    last + 1)`` over its vectors, so vectors in between that are mixtures stay in the span;
    ``None`` when no vector belongs to it.
    """
    V = np.asarray(vectors, dtype=np.float64)
    shares = projection_heatmap(V, list(families.values())) ** 2  # (M, n_families)
    ranges = {}
    for j, name in enumerate(families):
        members = np.flatnonzero(shares[:, j] >= min_share)
        ranges[name] = (int(members[0]), int(members[-1]) + 1) if members.size else None
    return ranges


def family_overlap_table(vectors, families, min_share: float = 0.5) -> pd.DataFrame:
    """For each family, the overlap of the eigenvectors that :func:`family_ranges` gives it.

    When no vector belongs to a family, its leading ``d = rank(F)`` vectors are used and
    ``assigned`` is False. Returns a DataFrame with columns ``family, eigvecs, overlap, dim,
    percent, assigned``, where ``dim`` = min(number of vectors, rank of the family) is the
    largest possible overlap.
    """
    V = np.asarray(vectors, dtype=np.float64)
    rows = []
    for name, rng in family_ranges(V, families, min_share).items():
        F = families[name]
        rank = orthonormal_basis(F).shape[1]
        start, stop = rng if rng is not None else (0, rank)
        overlap = subspace_overlap(V[:, start:stop], F)
        dim = min(stop - start, rank)
        rows.append({"family": name, "eigvecs": _ranges([(start, stop)]), "overlap": overlap, "dim": dim,
                     "percent": 100 * overlap / dim, "assigned": rng is not None,
                     "n_vectors": stop - start, "family_dim": rank})
    return pd.DataFrame(rows)


def stratified_halves(classes, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 50/50 split of ``range(N)`` stratified by ``classes`` (N,): (select, evaluate) indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(classes))
    select, evaluate = train_test_split(idx, test_size=0.5, stratify=np.asarray(classes), random_state=seed)
    return np.sort(select), np.sort(evaluate)


def score_directions(scores, labels: pd.DataFrame, select, evaluate) -> pd.DataFrame:
    """One-vs-rest scoring of candidate directions against binary labels.

    scores : (N, m) a signed score per context for each of m directions; labels : (N, L)
    binary DataFrame. For each label the (direction, sign) with the best average precision
    on the ``select`` half is chosen; on the held-out ``evaluate`` half we report its AP,
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
        candidates = [(average_precision_score(y_sel, sign * S[select, j]), j, sign)
                      for j in range(S.shape[1]) for sign in (1, -1)]
        _, j, sign = max(candidates)
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
