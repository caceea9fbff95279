"""Subspace geometry: how much of one span lies in another.

``subspace_overlap(A, B) = ||orth(A)^T orth(B)||_F^2`` is the sum of the squared cosines of
the principal angles between the two column spans (at most the smaller dimension); around
it, tables of the overlaps of blocks of eigenvectors with feature families, the families'
eigenvector ranges, and per-frequency heatmaps.
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
