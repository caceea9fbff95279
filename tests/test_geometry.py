"""Subspace geometry: overlaps, principal angles, heatmaps, family ranges."""

import numpy as np
import pytest

from entk_utils.features.geometry import (captured_fraction, family_overlap_table, family_ranges, orthonormal_basis,
                                          overlap_table, overlaps_at_ranges, parse_range, principal_cosines,
                                          projection_heatmap, subspace_overlap)


def rotation_pair(theta):
    """Two lines in R^3 at angle theta."""
    return np.array([[1.0, 0, 0]]).T, np.array([[np.cos(theta), np.sin(theta), 0]]).T


@pytest.mark.parametrize("theta", [0.0, 0.3, np.pi / 4, 1.2, np.pi / 2])
def test_overlap_of_two_lines_is_cos_squared(theta):
    a, b = rotation_pair(theta)
    assert subspace_overlap(a, b) == pytest.approx(np.cos(theta) ** 2, abs=1e-12)


def test_planes_with_known_principal_angles():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    angles = np.array([0.2, 0.9])
    A = Q[:, :2]
    B = Q[:, :2] * np.cos(angles) + Q[:, 2:4] * np.sin(angles)
    np.testing.assert_allclose(principal_cosines(A, B), np.sort(np.cos(angles))[::-1], atol=1e-12)
    assert subspace_overlap(A, B) == pytest.approx(np.sum(np.cos(angles) ** 2), abs=1e-12)
    # invariant to the choice of spanning set
    assert subspace_overlap(A @ rng.standard_normal((2, 2)), 3 * B) == pytest.approx(subspace_overlap(A, B), abs=1e-10)


def test_overlap_bounds_and_redundant_columns():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((20, 3))
    assert subspace_overlap(A, A) == pytest.approx(3)
    redundant = np.column_stack([A, A[:, 0] + A[:, 1]])
    assert orthonormal_basis(redundant).shape == (20, 3)
    assert subspace_overlap(A, redundant) == pytest.approx(3)
    assert subspace_overlap(A, np.column_stack([A, rng.standard_normal((20, 5))])) == pytest.approx(3)
    orth = np.linalg.qr(np.column_stack([A, rng.standard_normal((20, 2))]))[0][:, 3:]
    assert subspace_overlap(A, orth) == pytest.approx(0, abs=1e-12)


def test_projection_heatmap_is_phase_insensitive():
    n = 31
    t = 2 * np.pi * np.arange(n) / n
    plane3 = np.column_stack([np.cos(3 * t), np.sin(3 * t)])
    plane5 = np.column_stack([np.cos(5 * t), np.sin(5 * t)])
    vectors = np.column_stack([np.cos(3 * t + phase) for phase in (0.0, 0.7, 2.0)])
    heat = projection_heatmap(vectors, [plane3, plane5])
    np.testing.assert_allclose(heat[:, 0], 1.0, atol=1e-12)
    np.testing.assert_allclose(heat[:, 1], 0.0, atol=1e-12)


def test_captured_fraction_ignores_rotation_within_span():
    rng = np.random.default_rng(3)
    span = rng.standard_normal((40, 4))
    inside, outside = span[:, :2], np.linalg.qr(np.column_stack([span, rng.standard_normal((40, 2))]))[0][:, 4:]
    rotated = span @ np.linalg.qr(rng.standard_normal((4, 4)))[0]
    np.testing.assert_allclose(captured_fraction(span, [inside, outside]), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(captured_fraction(rotated, [inside, outside]), [1.0, 0.0], atol=1e-12)


def test_overlap_table_columns_and_values():
    eye = np.eye(6)
    table = overlap_table(eye, {0: (0, 2), 1: (2, 6)}, {"f": eye[:, :3]})
    assert list(table.columns) == ["cliff", "eigvecs", "family", "overlap", "dim", "percent", "n_vectors", "family_dim"]
    np.testing.assert_allclose(table.overlap, [2, 1])
    np.testing.assert_allclose(table.dim, [2, 3])
    np.testing.assert_allclose(table.percent, [100, 100 / 3])


def test_geometry_rejects_bad_inputs_with_clear_errors():
    with pytest.raises(ValueError, match="different spaces"):
        subspace_overlap(np.ones((3, 1)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="zero subspace"):
        orthonormal_basis(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-zero"):
        projection_heatmap(np.zeros((3, 1)), [np.ones((3, 1))])


def test_family_ranges_and_table_on_planted_eigenvectors():
    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.standard_normal((50, 12)))[0]
    fam_a, fam_b = Q[:, :4], Q[:, 4:8]
    # vectors: 0-2 in a, 3 half a / half b (a mixture), 4 in a, 5-8 in b, 9 neither
    mix = (Q[:, 0:1] + Q[:, 4:5]) / np.sqrt(2)
    V = np.column_stack([Q[:, 0], Q[:, 1], Q[:, 2], mix[:, 0], Q[:, 3], Q[:, 4], Q[:, 5], Q[:, 6], Q[:, 7], Q[:, 10]])
    assert family_ranges(V, {"a": fam_a, "b": fam_b, "c": Q[:, 11:12]}) == {"a": (0, 5), "b": (3, 9), "c": None}
    table = family_overlap_table(V, {"a": fam_a, "c": Q[:, 11:12]}).set_index("family")
    assert table.loc["a", "eigvecs"] == "0-4" and table.loc["a", "assigned"]
    assert table.loc["a", "overlap"] == pytest.approx(4.0)
    assert table.loc["a", "dim"] == 4 and table.loc["a", "percent"] == pytest.approx(100)
    assert table.loc["c", "eigvecs"] == "0-0" and not table.loc["c", "assigned"]
    assert table.loc["c", "overlap"] == pytest.approx(0, abs=1e-12)


def test_parse_range_reads_inclusive_ranges_as_slices():
    assert parse_range("5-8") == (5, 9) and parse_range("0-0") == (0, 1)


def test_overlaps_at_ranges_scores_other_vectors_on_given_ranges():
    eye = np.eye(8)
    families = {"f": eye[:, :2], "g": eye[:, 5:7]}
    table = family_overlap_table(eye, families)
    out = overlaps_at_ranges(eye[:, ::-1], table.set_index("family").eigvecs, families)
    # reversed vectors: range 0-1 now holds e7, e6 (none of f); range 5-6 holds e2, e1 (none of g)
    np.testing.assert_allclose(out.overlap, [0.0, 0.0])
    np.testing.assert_allclose(overlaps_at_ranges(eye, {"f": (0, 3)}, families).overlap, [2.0])
