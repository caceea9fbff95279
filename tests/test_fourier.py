import numpy as np
import pytest

from entk_utils.alignment import subspace_overlap
from entk_utils.fourier import FAMILIES, check_frequencies, feature_family, fourier_family, frequency_planes
from entk_utils.modular import modular_addition_pairs

P = 13
PAIRS = modular_addition_pairs(P)[0].numpy()


def test_fourier_family_is_orthogonal_on_a_full_period():
    F = fourier_family(np.arange(P), P)
    assert F.shape == (P, P - 1)
    np.testing.assert_allclose(F.T @ F, (P / 2) * np.eye(P - 1), atol=1e-10)
    np.testing.assert_allclose(F.mean(0), 0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_full_rank_and_orthogonal_columns(family):
    F = feature_family(PAIRS, P, family)
    assert F.shape == (P * P, P - 1)
    gram = F.T @ F
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-8)
    assert np.linalg.matrix_rank(F) == P - 1


def test_families_are_mutually_orthogonal_where_theory_says():
    fams = {f: feature_family(PAIRS, P, f) for f in ("a", "b", "sum", "diff")}
    for x in fams:
        for y in fams:
            expected = P - 1 if x == y else 0
            assert subspace_overlap(fams[x], fams[y]) == pytest.approx(expected, abs=1e-8)
    # 2a is a relabelling of a's frequencies: same span
    assert subspace_overlap(feature_family(PAIRS, P, "2a"), fams["a"]) == pytest.approx(P - 1)
    # axis_sum F(a) + F(b) lies inside span(a) + span(b)
    both = np.column_stack([fams["a"], fams["b"]])
    assert subspace_overlap(feature_family(PAIRS, P, "axis_sum"), both) == pytest.approx(P - 1)


def test_frequency_subsets_and_planes():
    F = feature_family(PAIRS, P, "sum", freqs=[1, 4])
    assert F.shape == (P * P, 4)
    planes = frequency_planes(PAIRS, P, "sum", [1, 4])
    assert [pl.shape for pl in planes] == [(P * P, 2)] * 2
    np.testing.assert_allclose(np.column_stack(planes), F)


def test_values_are_taken_mod_p():
    np.testing.assert_allclose(fourier_family([1, 1 + P], P, center=False)[0], fourier_family([1, 1 + P], P, center=False)[1], atol=1e-12)


@pytest.mark.parametrize("freqs, message", [([0], r"outside 1\.\.6"), ([7], r"outside 1\.\.6"), ([2.5], "outside"), ([], "empty")])
def test_bad_frequencies(freqs, message):
    with pytest.raises(ValueError, match=message):
        check_frequencies(freqs, P)


def test_bad_family_and_modulus():
    with pytest.raises(ValueError, match="unknown family 'prod'"):
        feature_family(PAIRS, P, "prod")
    with pytest.raises(ValueError, match="odd prime"):
        fourier_family(np.arange(4), 15)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        feature_family(np.arange(5), P, "a")
