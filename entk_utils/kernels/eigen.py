"""Top eigenpairs of kernels and operators, and automatic location of spectral cliffs."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
from tqdm.auto import tqdm


def _as_numpy(K) -> np.ndarray:
    if isinstance(K, torch.Tensor):
        K = K.detach().cpu().numpy()
    return np.asarray(K, dtype=np.float64)


def lanczos(op, k: int, steps: int = 50, *, seed: int = 0, progress: bool = True):
    """Top-``k`` eigenpairs of a symmetric operator by ``steps`` Lanczos iterations.

    Full re-orthogonalisation (twice, against every previous Lanczos vector) keeps the basis
    orthogonal, so there are no spurious copies of converged eigenvalues; the start vector
    is Gaussian, drawn with ``seed``. Exactly ``steps`` matrix-vector products (fewer if the
    Krylov space is exhausted: then fewer than ``k`` pairs may come back, with a warning).

    op : anything with ``.shape == (n, n)`` and ``.matvec(v)``.

    Returns ``(evals (k,), evecs (n, k), residuals (k,))``, descending; ``residuals[i]`` is
    the Ritz residual norm ``||op v_i - lambda_i v_i||`` (small means converged).
    """
    n = op.shape[0]
    steps = min(int(steps), n)
    if not 0 < k <= steps:
        raise ValueError(f"k must lie in 1..steps={steps}, got {k}")
    Q = np.zeros((steps + 1, n))
    q = np.random.default_rng(seed).standard_normal(n)
    Q[0] = q / np.linalg.norm(q)
    alpha, beta = [], []
    for j in tqdm(range(steps), desc="Lanczos", disable=not progress):
        w = np.asarray(op.matvec(Q[j]), dtype=np.float64).reshape(-1)
        alpha.append(float(w @ Q[j]))
        for _ in range(2):
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta.append(float(np.linalg.norm(w)))
        if beta[-1] <= 1e-12 * max(abs(alpha[0]), 1e-300):
            break
        Q[j + 1] = w / beta[-1]
    m = len(alpha)
    if m < k:
        warnings.warn(f"Lanczos returns {m} eigenpairs, fewer than the k={k} asked: the Krylov space was exhausted "
                      f"after {m} steps (the operator's rank, as seen from the start vector, is below k)", stacklevel=2)
    theta, S = scipy.linalg.eigh_tridiagonal(np.array(alpha), np.array(beta[: m - 1]))
    top = np.argsort(theta)[::-1][: min(k, m)]
    evecs = Q[:m].T @ S[:, top]
    return theta[top], evecs, np.abs(beta[m - 1] * S[m - 1, top])


def top_eigenpairs(K, k: int | None = None, *, ridge: float = 1e-12, seed: int = 0,
                   tol: float = 0.0, solver: str = "lanczos", steps: int = 50,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of a symmetric PSD kernel and their eigenvectors.

    Parameters
    ----------
    K : (N, N) array / tensor (dense path: symmetrised, then ``scipy.linalg.eigh`` in
        float64 with ``ridge * mean(diag(K))`` added to the diagonal and taken off the
        eigenvalues again, which keeps a rank-deficient kernel well conditioned), or an
        operator with ``.shape == (N, N)`` and ``.matvec(v)`` (e.g. a
        ``scipy.sparse.linalg.LinearOperator``), solved by :func:`lanczos` with ``steps``
        products (``solver="lanczos"``) or by ``scipy.sparse.linalg.eigsh`` to tolerance
        ``tol`` (``solver="eigsh"``), both from a start vector seeded by ``seed``.
    k : how many pairs (default: all, dense only). An operator whose Krylov space is
        exhausted before ``k`` pairs gives fewer, with a warning (see :func:`lanczos`).

    Returns
    -------
    evals : (k,) descending.
    evecs : (N, k) orthonormal columns; ``evecs[:, i]`` belongs to ``evals[i]``. Signs are
        fixed so that each column's largest-magnitude entry is positive.
    """
    if hasattr(K, "matvec") and not isinstance(K, (np.ndarray, torch.Tensor)):
        n = K.shape[0]
        if k is None or not 0 < k < n:
            raise ValueError(f"for an operator, k must lie in 1..{n - 1}, got {k}")
        if solver == "lanczos":
            evals, evecs, _ = lanczos(K, k, steps, seed=seed, progress=progress)
        elif solver == "eigsh":
            v0 = np.random.default_rng(seed).standard_normal(n)
            evals, evecs = scipy.sparse.linalg.eigsh(scipy.sparse.linalg.aslinearoperator(K), k=k, which="LA", v0=v0, tol=tol)
        else:
            raise ValueError(f"unknown solver {solver!r}; choose 'lanczos' or 'eigsh'")
    else:
        A = _as_numpy(K)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise ValueError(f"K must be a non-empty square (N, N) matrix, got shape {A.shape}")
        n = A.shape[0]
        k = n if k is None else int(k)
        if not 0 < k <= n:
            raise ValueError(f"k must lie in 1..{n}, got {k}")
        A = (A + A.T) / 2
        shift = ridge * float(np.mean(np.diag(A)))
        A[np.diag_indices(n)] += shift
        evals, evecs = scipy.linalg.eigh(A, subset_by_index=(n - k, n - 1))
        evals = evals - shift
    order = np.argsort(evals)[::-1]
    return evals[order], fix_signs(evecs[:, order])


def fix_signs(U: np.ndarray) -> np.ndarray:
    """``U`` (n, k) with each column's sign flipped so that its largest-magnitude entry is
    positive: the one convention for eigenvectors and other directions whose sign is
    arbitrary (a zero column is left as it is)."""
    flip = np.sign(U[np.abs(U).argmax(0), np.arange(U.shape[1])])
    return U * np.where(flip == 0, 1.0, flip)


def find_cliffs(evals, *, max_index: int | None = None, min_ratio: float = 1.25,
                n_cliffs: int | None = None, floor: float = 1e-8,
                outlier_mads: float | None = 10.0) -> np.ndarray:
    """Locate the large drops ("cliffs") in a descending spectrum.

    A cliff after position ``i`` is a drop ``evals[i] / evals[i+1]`` that stands out from
    the ratios between neighbouring eigenvalues: at least ``min_ratio`` (a 25% drop by
    default) and, in log scale, an outlier among the gaps (above median + 10 x median
    absolute deviation of all log-gaps considered), so a spectrum that decays steeply but
    smoothly has no cliffs. Only the leading ``max_index`` eigenvalues (default: all) that
    exceed ``floor * evals[0]`` are examined, so the numerical-zero tail cannot make cliffs.

    Parameters
    ----------
    evals : (M,) eigenvalues, descending.
    n_cliffs : if given, return exactly the ``n_cliffs`` largest drops instead (ignores
        the outlier rule, not ``max_index``).
    outlier_mads : how many median absolute deviations above the median log-gap a cliff
        must be; ``None`` keeps only the ``min_ratio`` rule (for short, steeply decaying
        spectra, where every gap is large and the outlier rule finds nothing).

    Returns
    -------
    (n,) int array, ascending: each entry is the number of eigenvalues above a cliff, so the
    blocks between cliffs are ``evals[0:c0], evals[c0:c1], ...``.
    """
    lam = np.asarray(evals, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 3:
        raise ValueError(f"evals must be a 1-D spectrum with at least 3 values, got shape {lam.shape}")
    if np.any(np.diff(lam) > 1e-9 * abs(lam[0])):
        raise ValueError("evals must be sorted in descending order")
    if lam[0] <= 0:
        raise ValueError("the leading eigenvalue must be positive")
    keep = lam > floor * lam[0]
    m = int(np.argmin(keep)) if not keep.all() else lam.size
    if max_index is not None:
        m = min(m, int(max_index))
    if m < 3:
        raise ValueError(f"fewer than 3 eigenvalues above floor/max_index (got {m})")
    gaps = np.log(lam[: m - 1]) - np.log(lam[1:m])
    if n_cliffs is not None:
        if not 0 < n_cliffs < m:
            raise ValueError(f"n_cliffs must lie in 1..{m - 1}, got {n_cliffs}")
        return np.sort(np.argsort(gaps)[::-1][:n_cliffs] + 1)
    threshold = np.log(min_ratio)
    if outlier_mads is not None:
        med = np.median(gaps)
        threshold = max(threshold, med + outlier_mads * np.median(np.abs(gaps - med)))
    return np.flatnonzero(gaps > threshold) + 1


def cliff_blocks(cliffs, n: int | None = None) -> list[tuple[int, int]]:
    """Turn cliff positions into ``[(start, stop), ...]`` eigenvector index blocks.

    The blocks are ``[0, c0), [c0, c1), ...``; with ``n`` the block after the last cliff,
    ``[c_last, n)``, is appended.
    """
    edges = [0, *(int(c) for c in cliffs)] + ([int(n)] if n is not None else [])
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def jacobian_eigenpairs(J, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``k`` eigenpairs of the kernel ``K = J J^T`` from the SVD of ``J`` (R, P) (e.g. the
    flat Jacobian of :func:`~entk_utils.kernels.dense.output_jacobian`): ``(evals (k,)
    descending, evecs (R, k), steps (k, P))`` with ``evals = s**2``, ``evecs`` the left singular
    vectors (signs fixed by :func:`fix_signs`) and ``steps[i] = J^T evecs[:, i]`` the weight step
    of eigenvector i (``s_i`` times its right singular vector). ``k`` at most ``min(R, P)``."""
    J = np.asarray(J, dtype=np.float64)
    if not 1 <= k <= min(J.shape):
        raise ValueError(f"k must lie in 1..{min(J.shape)} (the kernel's rank bound), got {k}")
    U, s, _ = np.linalg.svd(J, full_matrices=False)
    U = fix_signs(U[:, :k])
    return s[:k] ** 2, U, U.T @ J
