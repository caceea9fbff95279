"""Candidate directions over the inputs: principal components of activations, random
directions, and per-context scores of eNTK eigenvectors laid out as (N, d) arrays.

Each function returns an (N, k) array whose columns are functions over the N inputs
(contexts): what the scoring (:mod:`.scoring`) and the causal tests (:mod:`.causal`) take.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ..kernels.eigen import fix_signs



def principal_components(activations, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` principal components of activations (N, h) over N inputs, by descending
    variance: ``(U (N, k), s (k,), Vt (k, h))`` of the SVD of the centred activations (signs
    as the SVD returns them; :func:`pca_scores` and :func:`pca_directions` fix them)."""
    X = np.asarray(activations.detach().cpu() if hasattr(activations, "detach") else activations, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"activations must be an (N, h) matrix, got shape {X.shape}")
    n, h = X.shape
    k = int(k)
    if not 1 <= k <= min(n, h):
        raise ValueError(f"k must lie in 1..{min(n, h)} (= min(N, h) for activations of shape {X.shape}), got {k}")
    U, s, Vt = scipy.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    if s[0] == 0:
        raise ValueError("the activations are constant over the inputs: no principal components")
    return U[:, :k], s[:k], Vt[:k]


def pca_directions(activations, k: int) -> np.ndarray:
    """The top ``k`` principal components of the activations (N, h) as functions over the
    inputs: (N, k) orthonormal columns, signs fixed like eigenvectors (each column's
    largest-magnitude entry positive, :func:`~entk_utils.kernels.eigen.fix_signs`)."""
    return fix_signs(principal_components(activations, k)[0])


def random_directions(n: int, k: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """(n, k) orthonormal columns spanning a uniformly random k-dimensional subspace.

    QR of a Gaussian (n, k) matrix drawn from ``numpy.random.default_rng(seed)`` (or the
    generator given), signs fixed by the diagonal of R so the basis itself is
    Haar-distributed.
    """
    n, k = int(n), int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..n={n}, got {k}")
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def pca_scores(activations, k: int) -> np.ndarray:
    """Projections (N, k) of the centred activations (N, d) on their top ``k`` principal axes,
    signed as scikit-learn's PCA signs them (each axis' largest-magnitude loading positive):
    ``PCA(k, svd_solver="full").fit_transform``."""
    U, s, Vt = principal_components(activations, k)
    return U * np.sign(Vt[np.arange(len(Vt)), np.abs(Vt).argmax(axis=1)]) * s


def random_scores(activations, k: int, seed: int = 0) -> np.ndarray:
    """Projections (N, k) of the centred activations on ``k`` random unit directions."""
    X = np.asarray(activations, dtype=np.float64)
    return (X - X.mean(0)) @ random_unit_directions(X.shape[1], k, seed)


def random_unit_directions(d: int, k: int, seed: int = 0) -> np.ndarray:
    """(d, k) independent uniformly random unit vectors (normalised Gaussian columns drawn from
    ``numpy.random.default_rng(seed)``; not orthogonalised): :func:`random_scores`' axes."""
    directions = np.random.default_rng(seed).standard_normal((int(d), int(k)))
    return directions / np.linalg.norm(directions, axis=0)


def _top_singular(evecs, n_contexts: int):
    """Per eigenvector (N*d, m) laid out as (N, d): its SVD ``(U, s, Vt)``, one at a time."""
    for v in np.asarray(evecs, dtype=np.float64).T:
        yield np.linalg.svd(v.reshape(n_contexts, -1), full_matrices=False)


def entk_scores(evecs, n_contexts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-context scores of eNTK eigenvectors laid out as (N, d) arrays.

    evecs : (N*d, m). Each eigenvector is reshaped to (N, d); its top singular component
    ``u_1 s_1`` is a signed score per context. Returns ``(scores (N, m), share (m,))`` with
    ``share = s_1^2 / sum s_i^2``, how much of the mode one direction in hidden space explains.
    """
    scores, share = [], []
    for U, s, _ in _top_singular(evecs, n_contexts):
        scores.append(U[:, 0] * s[0])
        share.append(s[0] ** 2 / np.sum(s**2))
    return np.column_stack(scores), np.array(share)


def entk_axes(evecs, n_contexts: int) -> np.ndarray:
    """(m, d): each eigenvector's (N, d) top right singular vector ``r``, signed so that
    ``V r`` is :func:`entk_scores`' score: the direction in the output space it reads along."""
    return np.array([Vt[0] for _, _, Vt in _top_singular(evecs, n_contexts)])
