"""Directions scored against features that are known (toy models of superposition).

Hidden space: each method's unit vectors against the true feature vectors (the columns of a
toy model's ``W``): the mean max cosine similarity (MMCS, Sharkey et al. 2022: per true
feature the best |cosine| over a method's vectors, averaged) and the number of features
recovered at |cosine| >= :data:`RECOVERED_COSINE`. Parameter space: weight steps against the
true rank-one components ``W[:, j] e_j^T``, as Attribution-based and Stochastic Parameter
Decomposition score theirs (Braun et al. 2025; Bushnaq et al. 2025: per feature the best
component's column j against ``W[:, j]``), and, stricter, the whole step against the whole
rank-one component. Cosines are taken in absolute value: an eigenvector's sign is arbitrary.

The eNTK's directions are defined here once:

* **in hidden space** (:func:`hidden_space_directions`): an eNTK eigenvector is a change of the
  outputs at every input, not a vector of the hidden space; the hidden direction it stands for
  is the one whose reading best reproduces its per-input scores, the least-squares regression
  of the scores on the (centred) hidden activations;
* **in parameter space**: its weight step ``J^T v``
  (:func:`~entk_utils.kernels.eigen.jacobian_eigenpairs`), restricted to ``W`` and laid out as
  ``W`` is.
"""

from __future__ import annotations

import numpy as np

RECOVERED_COSINE = 0.9
# A feature is represented where its column of W has squared norm at least this (the cut the
# paper's own toy-model code used, jylin04/mi-ntk).
REPRESENTED_NORM2 = 0.75


def unit_rows(vectors) -> np.ndarray:
    """``vectors`` (k, d) with each row scaled to unit length (a zero row stays zero)."""
    V = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(V, axis=-1, keepdims=True)
    return V / np.where(norms == 0, 1.0, norms)


def best_cosines(vectors, features) -> np.ndarray:
    """(n,): for each true feature (row of ``features`` (n, d)) the largest |cosine| with any
    row of ``vectors`` (k, d)."""
    return np.abs(unit_rows(features) @ unit_rows(vectors).T).max(axis=1)


def mmcs(vectors, features) -> float:
    """The mean max |cosine| of ``vectors`` (k, d) with the true ``features`` (n, d)."""
    return float(best_cosines(vectors, features).mean())


def recovered(vectors, features, threshold: float = RECOVERED_COSINE) -> int:
    """How many true features some vector matches at |cosine| >= ``threshold``."""
    return int((best_cosines(vectors, features) >= threshold).sum())


def represented(features, norm2: float = REPRESENTED_NORM2) -> np.ndarray:
    """(n,) bool: the features (rows of ``features``, i.e. columns of W) a model represents."""
    return np.sum(np.asarray(features, dtype=np.float64) ** 2, axis=1) >= norm2


def hidden_space_directions(scores, hidden) -> np.ndarray:
    """(k, m) unit vectors: for each column of ``scores`` (N, k) the hidden direction whose
    reading of the centred ``hidden`` activations (N, m) best reproduces it (least squares)."""
    H = np.asarray(hidden, dtype=np.float64)
    S = np.asarray(scores, dtype=np.float64)
    coefficients = np.linalg.lstsq(H - H.mean(0), S - S.mean(0), rcond=None)[0]  # (m, k)
    return unit_rows(coefficients.T)


def column_cosines(steps, W) -> np.ndarray:
    """(n,): per feature j the largest |cosine| between column j of any weight step ``steps``
    (k, m, n) and ``W[:, j]`` (``W`` (m, n)): APD's and SPD's match of components to features."""
    S = np.asarray(steps, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    columns = unit_rows(np.moveaxis(S, 2, 1))  # (k, n, m): each step's columns
    return np.abs(np.einsum("knm,mn->kn", columns, unit_rows(W.T).T)).max(axis=0)


def matrix_cosines(steps, W) -> np.ndarray:
    """(n,): per feature j the largest |cosine| between a whole weight step (k, m, n) and the
    rank-one component ``W[:, j] e_j^T`` (all of a step outside column j counts against it)."""
    S = np.asarray(steps, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    inner = np.einsum("kmn,mn->kn", S, W)  # <S_k, W_j e_j^T> = S_k[:, j] . W[:, j]
    norms = np.linalg.norm(S.reshape(len(S), -1), axis=1)[:, None] * np.linalg.norm(W, axis=0)[None, :]
    return np.abs(inner / np.where(norms == 0, 1.0, norms)).max(axis=0)
