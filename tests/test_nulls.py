"""Chance levels of subspace overlaps: the random-subspace null and reference overlaps."""

import numpy as np
import pandas as pd
import pytest

from entk_utils.features.geometry import overlap_table, subspace_overlap
from entk_utils.features.nulls import describe_nulls, random_overlap_null, with_random_null, with_reference_overlaps


def test_random_subspace_overlap_matches_expectation():
    """E[overlap] = k * l / N for uniformly random subspaces."""
    rng = np.random.default_rng(2)
    n, k, l = 60, 6, 10
    draws = [subspace_overlap(rng.standard_normal((n, k)), rng.standard_normal((n, l))) for _ in range(400)]
    assert np.mean(draws) == pytest.approx(k * l / n, rel=0.05)


def test_random_overlap_null_matches_the_closed_form_and_a_general_subspace():
    n, k, d = 50, 7, 4
    null = random_overlap_null(n, k, d, n_draws=2000, seed=0)
    # E = k d / n; the standard error of the mean of 2000 draws is well under 2% of it here
    assert null.mean() == pytest.approx(k * d / n, rel=0.04)
    assert null.min() >= 0 and null.max() <= d
    # the shortcut (the first d coordinates) has the law of any fixed d-dim subspace
    rng = np.random.default_rng(1)
    F = rng.standard_normal((n, d))
    general = [subspace_overlap(rng.standard_normal((n, k)), F) for _ in range(2000)]
    assert np.quantile(general, [0.25, 0.5, 0.9]) == pytest.approx(np.quantile(null, [0.25, 0.5, 0.9]), rel=0.1)
    np.testing.assert_array_equal(null, random_overlap_null(n, k, d, n_draws=2000, seed=0))
    with pytest.raises(ValueError, match="need 1 <= k, d <= n"):
        random_overlap_null(5, 6, 1)


def test_with_random_null_separates_a_planted_family_from_a_random_one():
    n = 40
    eye = np.eye(n)
    F = eye[:, :4]
    vectors = np.column_stack([F + 0.05 * np.random.default_rng(0).standard_normal((n, 4)), eye[:, 10:20]])
    table = overlap_table(vectors, {0: (0, 4), 1: (4, 14)}, {"f": F})
    table = with_random_null(table, n, n_draws=500, seed=0)
    np.testing.assert_allclose(table.null_mean, [4 * 4 / n, 10 * 4 / n])
    planted, unrelated = table.iloc[0], table.iloc[1]
    assert planted.null_p == pytest.approx(1 / 501) and planted.overlap > planted.null_q99
    assert unrelated.overlap == pytest.approx(0, abs=1e-12) and unrelated.null_p == 1.0


def test_with_reference_overlaps_summarises_the_references_per_row():
    table = pd.DataFrame({"family": ["a", "b"], "overlap": [3.0, 1.0]})
    refs = [pd.DataFrame({"family": ["a", "b"], "overlap": [0.1 * s, 0.2]}) for s in range(3)]
    out = with_reference_overlaps(table, refs, on=["family"])
    np.testing.assert_allclose(out.init_mean, [0.1, 0.2])
    np.testing.assert_allclose(out.init_max, [0.2, 0.2])
    np.testing.assert_allclose(out.init_std, [0.1, 0.0], atol=1e-12)


def test_describe_nulls():
    row = pd.Series({"null_mean": 1.864, "null_p": 1 / 1001, "init_mean": 1.994, "init_std": 0.0612})
    assert describe_nulls(row) == "random 1.86 (p 0.001); init 1.99 ± 0.06"
    assert describe_nulls(row, digits=3) == "random 1.864 (p 0.001); init 1.994 ± 0.061"
