import warnings

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

from entk_utils.kernels.eigen import cliff_blocks, find_cliffs, lanczos, top_eigenpairs


def random_psd(n, seed=0, decay=0.9):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = decay ** np.arange(n)
    return (Q * lam) @ Q.T, lam, Q


def test_dense_eigenpairs_are_sorted_and_correct():
    K, lam, _ = random_psd(30)
    evals, evecs = top_eigenpairs(torch.tensor(K))
    assert np.all(np.diff(evals) <= 0)
    np.testing.assert_allclose(evals, lam, atol=1e-10)
    np.testing.assert_allclose(K @ evecs, evecs * evals, atol=1e-10)
    np.testing.assert_allclose(evecs.T @ evecs, np.eye(30), atol=1e-10)


def test_top_k_and_sign_convention():
    K, lam, _ = random_psd(25, seed=1)
    evals, evecs = top_eigenpairs(K, 5)
    assert evals.shape == (5,) and evecs.shape == (25, 5)
    np.testing.assert_allclose(evals, lam[:5], atol=1e-10)
    biggest = evecs[np.abs(evecs).argmax(0), np.arange(5)]
    assert np.all(biggest > 0)


@pytest.mark.parametrize("solver", ["lanczos", "eigsh"])
def test_operator_path_agrees_with_dense_and_is_seeded(solver):
    K, lam, _ = random_psd(60, seed=2, decay=0.8)
    op = scipy.sparse.linalg.LinearOperator(K.shape, matvec=lambda v: K @ v, dtype=np.float64)
    evals, evecs = top_eigenpairs(op, 6, seed=3, solver=solver, steps=40, progress=False)
    np.testing.assert_allclose(evals, lam[:6], rtol=1e-8)
    _, dense_vecs = top_eigenpairs(K, 6)
    np.testing.assert_allclose(np.abs(evecs.T @ dense_vecs), np.eye(6), atol=1e-6)
    again, _ = top_eigenpairs(op, 6, seed=3, solver=solver, steps=40, progress=False)
    np.testing.assert_array_equal(evals, again)


def test_lanczos_counts_matvecs_and_reports_residuals():
    K, lam, _ = random_psd(200, seed=4, decay=0.85)
    calls = []
    op = scipy.sparse.linalg.LinearOperator(K.shape, matvec=lambda v: calls.append(1) or K @ v, dtype=np.float64)
    evals, evecs, residuals = lanczos(op, 5, steps=50, progress=False)
    assert len(calls) == 50
    np.testing.assert_allclose(evals, lam[:5], rtol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(K @ evecs - evecs * evals, axis=0), residuals, atol=1e-8)
    np.testing.assert_allclose(evecs.T @ evecs, np.eye(5), atol=1e-10)
    with pytest.raises(ValueError, match="k must lie"):
        lanczos(op, 51, steps=50)


def test_lanczos_stops_when_the_krylov_space_is_exhausted():
    K = np.diag([5.0, 3.0, 1.0] + [0.0] * 17)
    evals, _, _ = lanczos(scipy.sparse.linalg.aslinearoperator(K), 3, steps=10, progress=False)
    np.testing.assert_allclose(evals, [5, 3, 1], atol=1e-10)


def test_fewer_eigenpairs_than_asked_come_with_a_warning():
    K = np.diag([5.0, 3.0] + [0.0] * 18)
    # the Krylov space holds the rank's eigenvectors and the start vector's part in the null space
    found = np.linalg.matrix_rank(K) + 1
    op = scipy.sparse.linalg.aslinearoperator(K)
    with pytest.warns(UserWarning, match=f"returns {found} eigenpairs, fewer than the k=5 asked"):
        evals, evecs = top_eigenpairs(op, 5, steps=10, progress=False)
    assert evals.shape == (found,) and evecs.shape == (20, found)
    np.testing.assert_allclose(evals, np.sort(np.diag(K))[::-1][:found], atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as many as asked: no warning
        assert len(top_eigenpairs(op, 2, steps=10, progress=False)[0]) == 2


@pytest.mark.parametrize("bad, message", [
    (np.ones((3, 4)), "square"),
    (np.ones((0, 0)), "square"),
])
def test_dense_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        top_eigenpairs(bad)


def test_bad_k():
    with pytest.raises(ValueError, match="k must lie"):
        top_eigenpairs(np.eye(4), 5)


def block_spectrum(sizes, levels, rng, jitter=0.002):
    """Blocks of nearly equal eigenvalues at the given levels, each slowly decaying."""
    parts = [level * np.exp(-jitter * np.arange(size)) * (1 + 0.001 * rng.random(size)) for size, level in zip(sizes, levels)]
    return np.sort(np.concatenate(parts))[::-1]


def test_find_cliffs_on_mlp_like_spectrum():
    """1 outlier, two blocks of 56 with a 2x and a 1.4x drop, then a slow tail: cliffs at 1, 57, 113."""
    rng = np.random.default_rng(0)
    lam = block_spectrum([1, 56, 56, 700], [0.5, 0.02, 0.008, 0.0028], rng)
    np.testing.assert_array_equal(find_cliffs(lam), [1, 57, 113])
    assert cliff_blocks(find_cliffs(lam)) == [(0, 1), (1, 57), (57, 113)]
    assert cliff_blocks([1, 57], n=100) == [(0, 1), (1, 57), (57, 100)]


@pytest.mark.parametrize("sizes", [[3, 10, 40], [8, 8, 8, 100], [2, 50, 300]])
def test_find_cliffs_recovers_planted_block_sizes(sizes):
    rng = np.random.default_rng(sum(sizes))
    levels = [10.0 / 3**i for i in range(len(sizes))]
    lam = block_spectrum(sizes, levels, rng)
    np.testing.assert_array_equal(find_cliffs(lam), np.cumsum(sizes)[:-1])


def test_smooth_spectrum_has_no_cliffs():
    lam = 0.97 ** np.arange(300)
    assert find_cliffs(lam).size == 0


def test_numerical_zero_tail_is_ignored():
    lam = np.concatenate([block_spectrum([5, 20], [1.0, 0.1], np.random.default_rng(3)), 1e-14 * np.ones(50)])
    np.testing.assert_array_equal(find_cliffs(lam), [5])


def test_find_cliffs_n_cliffs_and_max_index():
    rng = np.random.default_rng(4)
    lam = block_spectrum([4, 10, 30], [9.0, 3.0, 1.5], rng)
    np.testing.assert_array_equal(find_cliffs(lam, n_cliffs=1), [4])
    np.testing.assert_array_equal(find_cliffs(lam, max_index=10), [4])


@pytest.mark.parametrize("bad, message", [
    ([1.0, 2.0, 3.0], "descending"),
    ([1.0, 0.5], "at least 3"),
    ([-1.0, -2.0, -3.0], "positive"),
])
def test_find_cliffs_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        find_cliffs(bad)


def test_ratio_rule_alone_for_short_steep_spectra():
    """In a steep spectrum many gaps are large: the default keeps only the outliers among
    them, the ratio rule alone keeps every drop of at least min_ratio."""
    ratios = [1.5, 4.0, 1.6, 1.5, 4.0, 2.2, 1.5, 2.5, 1.6]
    lam = 100 / np.cumprod([1.0, *ratios])
    np.testing.assert_array_equal(find_cliffs(lam), [2, 5])
    np.testing.assert_array_equal(find_cliffs(lam, min_ratio=2.0, outlier_mads=None), [2, 5, 6, 8])
