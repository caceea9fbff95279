import numpy as np
import pytest
from sklearn.decomposition import PCA

from entk_utils.features import directions
from entk_utils.features.geometry import subspace_overlap


def activations(n=60, h=25, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8)) @ rng.standard_normal((8, h)) + 0.01 * rng.standard_normal((n, h))


def test_pca_scores_are_scikit_learns_to_the_bit():
    X = activations()
    np.testing.assert_array_equal(directions.pca_scores(X, 6), PCA(6, svd_solver="full").fit_transform(X))


def test_pca_directions_are_the_normalised_scores_with_eigenvector_signs():
    X = activations() + 7  # not centred
    D, S = directions.pca_directions(X, 6), directions.pca_scores(X, 6)
    np.testing.assert_allclose(D.T @ D, np.eye(6), atol=1e-12)
    variance = np.linalg.norm((X - X.mean(0)).T @ D, axis=0)
    assert np.all(np.diff(variance) < 0)  # by descending variance
    np.testing.assert_allclose(np.abs(D), np.abs(S / np.linalg.norm(S, axis=0)), atol=1e-12)
    assert np.all(D[np.abs(D).argmax(0), np.arange(6)] > 0)  # each column's largest entry is positive
    assert subspace_overlap(D, S) == pytest.approx(6)


@pytest.mark.parametrize("k", [0, 26])
def test_principal_components_reject_k_outside_the_rank_bound(k):
    with pytest.raises(ValueError, match="k must lie in 1..25"):
        directions.principal_components(activations(), k)


def test_constant_activations_have_no_principal_components():
    with pytest.raises(ValueError, match="constant"):
        directions.pca_directions(np.ones((10, 4)), 2)


def test_random_directions_are_orthonormal_seeded_and_accept_a_generator():
    a, b = directions.random_directions(30, 4, seed=3), directions.random_directions(30, 4, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.T @ a, np.eye(4), atol=1e-12)
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(directions.random_directions(30, 4, rng), a)
    assert not np.array_equal(directions.random_directions(30, 4, rng), a)  # the generator moved on
    assert not np.allclose(a, directions.random_directions(30, 4, seed=4))
    with pytest.raises(ValueError, match="k must lie"):
        directions.random_directions(5, 6)


def test_entk_scores_take_the_top_singular_component():
    rng = np.random.default_rng(0)
    u, w = rng.standard_normal(6), rng.standard_normal(4)
    rank_one = np.outer(u, w).reshape(-1)
    noisy = rank_one + 0.1 * rng.standard_normal(24)
    scores, share = directions.entk_scores(np.column_stack([rank_one, noisy]) / np.linalg.norm(rank_one), 6)
    assert scores.shape == (6, 2) and share[0] == pytest.approx(1.0) and share[1] < 1.0
    assert abs(np.corrcoef(scores[:, 0], u)[0, 1]) == pytest.approx(1.0)


def test_pca_scores_by_descending_variance_and_random_scores_seeded_and_centred():
    acts = np.random.default_rng(0).standard_normal((40, 10))
    pca = directions.pca_scores(acts, 3)
    assert pca.shape == (40, 3) and np.all(np.diff(pca.var(0)) <= 1e-12)
    rand = directions.random_scores(acts, 3, seed=1)
    np.testing.assert_allclose(rand, directions.random_scores(acts, 3, seed=1))
    np.testing.assert_allclose(rand.mean(0), 0, atol=1e-12)


def test_entk_axes_read_each_eigenvector_into_its_scores():
    evecs = np.random.default_rng(0).standard_normal((5 * 4, 3))
    axes = directions.entk_axes(evecs, 5)
    assert axes.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(axes, axis=1), 1)
    read = np.column_stack([evecs[:, i].reshape(5, 4) @ axes[i] for i in range(3)])
    np.testing.assert_allclose(read, directions.entk_scores(evecs, 5)[0], atol=1e-12)
