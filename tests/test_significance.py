"""Tests and corrections (:mod:`entk_utils.features.significance`): Holm, Bonferroni and
Benjamini-Hochberg, Monte Carlo draws sized by the family, the one rank test, the best-label
permutation test; and the scoring's input checks."""

import numpy as np
import pytest
from scipy.stats import kstest
from sklearn.metrics import average_precision_score, roc_auc_score

from scipy.stats import false_discovery_control

from entk_utils.features.probing import mean_abs_cosine
from entk_utils.features.scoring import auroc_matrix, average_precision_matrix, best_direction_metrics
from entk_utils.features.significance import (DRAWS_PER_TEST, EXACT_MAX, LEVEL, benjamini_hochberg, best_label_test,
                                              bonferroni, check_reachable, holm, monte_carlo_draws, rank_test)
from labels import random_labels


def holm_by_definition(p):
    """Adjusted p_(i) = max_{j <= i} min(1, (n - j + 1) p_(j)) over the ascending order (1-based)."""
    n = len(p)
    order = sorted(range(n), key=lambda i: p[i])
    adjusted, running = [0.0] * n, 0.0
    for rank, i in enumerate(order, start=1):
        running = max(running, min(1.0, (n - rank + 1) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_and_bonferroni_on_a_worked_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # ascending 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    np.testing.assert_allclose(holm(p), holm_by_definition(p), atol=1e-15)
    np.testing.assert_allclose(bonferroni(p), [4 * x for x in p], atol=1e-15)
    np.testing.assert_allclose(bonferroni([0.3, 0.6]), [0.6, 1.0])
    np.testing.assert_allclose(holm([0.3, 0.6, 0.2]), holm_by_definition([0.3, 0.6, 0.2]))


def test_holm_is_monotone_and_between_raw_and_bonferroni():
    p = np.random.default_rng(8).random(30) ** 3
    adjusted = holm(p)
    np.testing.assert_allclose(adjusted, holm_by_definition(list(p)), atol=1e-15)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(p <= adjusted) and np.all(adjusted <= bonferroni(p)) and adjusted.max() <= 1
    assert holm(p.reshape(5, 6)).shape == (5, 6)


def test_benjamini_hochberg_is_scipys_and_sits_between_raw_and_holm():
    p = np.random.default_rng(4).random(40) ** 4
    q = benjamini_hochberg(p.reshape(5, 8))
    assert q.shape == (5, 8)
    np.testing.assert_allclose(q.ravel(), false_discovery_control(p, method="bh"))
    assert np.all(p <= q.ravel() + 1e-15) and np.all(q.ravel() <= holm(p) + 1e-15)


def test_monte_carlo_draws_reach_the_correction_and_too_few_are_refused():
    assert monte_carlo_draws(10) == 4000 and monte_carlo_draws(1, level=0.01) == 2000
    for family in (1, 7, 92):
        draws = monte_carlo_draws(family)
        assert family / (draws + 1) < LEVEL / DRAWS_PER_TEST * 1.01  # the smallest p, corrected, is far below the bar
        assert check_reachable(draws, family) == draws
    assert check_reachable(199, 10) == 199  # 10 / 200 = 0.05: reachable, just
    with pytest.raises(ValueError, match=r"n_permutations=198 can never reach significance.*at least 199"):
        check_reachable(198, 10)
    with pytest.raises(ValueError, match="shuffles=1000 can never reach.*at least 2999"):
        check_reachable(1000, 150, what="shuffles")  # notebook 03's old default against ~150 direction x label tests


def test_rank_test_is_scipys_one_sided_mann_whitney_on_untied_scores():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(5)
    n = 60
    Y = random_labels(rng, 3, n, rates=(0.1, 0.5))  # 6 or 30 positives: the exact null, then the normal one
    S = rng.standard_normal((n, 4)) + 0.8 * Y[0][:, None]
    sign = np.where(rng.random((3, 4)) < 0.5, 1, -1)
    auroc, p = rank_test(S, Y, sign)
    for c, y in enumerate(Y.astype(bool)):
        method = "exact" if min(y.sum(), n - y.sum()) <= EXACT_MAX else "asymptotic"
        for j in range(4):
            s = sign[c, j] * S[:, j]
            assert p[c, j] == pytest.approx(mannwhitneyu(s[y], s[~y], alternative="greater", method=method).pvalue)
            assert auroc[c, j] == pytest.approx(roc_auc_score(y, s))
    with pytest.raises(ValueError, match="sign must be"):
        rank_test(S, Y, np.ones((3, 3)))


def test_rank_test_on_tied_scores_is_the_exact_null_of_mid_ranks():
    """Against enumeration of every subset of positives, both orientations, both class sizes."""
    from itertools import combinations

    from scipy.stats import rankdata

    rng = np.random.default_rng(7)
    for _ in range(40):
        n = int(rng.integers(6, 13))
        s = rng.integers(0, 3, n).astype(float)
        y = np.zeros(n, dtype=bool)
        y[rng.choice(n, int(rng.integers(1, n)), replace=False)] = True
        sign = int(rng.choice([-1, 1]))
        r = rankdata(sign * s)
        null = np.array([r[list(c)].sum() for c in combinations(range(n), int(y.sum()))])
        expected = np.mean(null >= r[y].sum() - 1e-9)
        assert rank_test(s, y[None].astype(int), np.array([[sign]]))[1][0, 0] == pytest.approx(expected, abs=1e-12)


def test_a_sparse_column_is_not_given_the_normal_approximations_tiny_p():
    """3 of 32 contexts active, all among the 4 positives: exactly p = 29 / C(32, 4) (the 4th
    positive anywhere in the tied zeros); the tie-corrected normal approximation says 1.5e-6."""
    from scipy.stats import mannwhitneyu

    s, y = np.zeros(32), np.zeros(32, dtype=int)
    s[:3], y[:4] = [3.0, 2.0, 1.0], 1
    p = rank_test(s, y[None])[1][0, 0]
    assert p == pytest.approx(29 / 35960)
    assert mannwhitneyu(s[:4], s[4:], alternative="greater").pvalue < p / 100


def test_rank_test_p_values_are_uniform_under_the_null_tied_or_not_and_fine_enough_for_many_tests():
    rng = np.random.default_rng(6)
    Y = random_labels(rng, 50, 200, rates=(0.1, 0.3, 0.5))
    dense = rng.standard_normal((200, 10))
    sparse = np.abs(rng.standard_normal((200, 10))) * (rng.random((200, 10)) < 0.3)  # ties broken at random
    _, p = rank_test(np.column_stack([dense, sparse]), Y)
    assert kstest(p[:, :10].ravel(), "uniform").pvalue > 1e-3
    assert kstest(p[:, 10:].ravel(), "uniform").pvalue > 1e-3
    strong = rng.standard_normal((200, 1)) + 2.0 * Y[2][:, None]
    _, p_strong = rank_test(strong, Y[2:3])
    assert p_strong[0, 0] < 1e-10  # far below any correction over thousands of pairs


def test_scoring_and_tests_reject_bad_inputs_with_clear_errors():
    rng = np.random.default_rng(12)
    S, y = rng.standard_normal((20, 3)), np.tile([0, 1], 10)
    select, evaluate = np.arange(0, 20, 2), np.arange(1, 20, 2)
    with pytest.raises(ValueError, match="only one class"):
        auroc_matrix(S, np.zeros((2, 20)))
    with pytest.raises(ValueError, match="binary"):
        average_precision_matrix(S, np.full(20, 0.5))
    with pytest.raises(ValueError, match=r"\(B, 20\)"):
        auroc_matrix(S, np.ones(19))
    with pytest.raises(ValueError, match="NaN"):
        auroc_matrix(np.full((20, 3), np.nan), y)
    with pytest.raises(ValueError, match="only one class.*select"):
        best_direction_metrics(S, y, select, evaluate)  # y is 0 on every even context
    with pytest.raises(ValueError, match="outside range"):
        best_direction_metrics(S, y, [0, 25], evaluate)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bonferroni([np.nan])
    with pytest.raises(ValueError, match="top"):
        mean_abs_cosine(S, y, top=4)
    with pytest.raises(ValueError, match="constant"):
        mean_abs_cosine(S, np.ones(20), top=3)


# ----------------------------------------------------------------------------- best label per direction


def test_best_label_test_matches_a_loop_over_shuffles():
    """The label, AUROC and p-value of each column equal a plain loop: for every shuffle of
    the contexts, the best |AUROC - 1/2| over all labels (scikit-learn's AUROC)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    Y = (rng.random((3, 30)) < 0.4).astype(int)
    S = rng.standard_normal((30, 2))
    S[:, 0] += 1.5 * Y[2]
    S[:5, 1] = S[0, 1]  # ties
    result = best_label_test(S, Y, n_permutations=200, seed=7, batch_size=64)
    for j in range(2):
        aurocs = [roc_auc_score(y, S[:, j]) for y in Y]
        best = int(np.argmax(np.abs(np.array(aurocs) - 0.5)))
        assert result.label[j] == best
        assert result.auroc[j] == pytest.approx(max(aurocs[best], 1 - aurocs[best]))
        assert result.sign[j] == (1 if aurocs[best] >= 0.5 else -1)
        observed = abs(aurocs[best] - 0.5)
        shuffles = np.random.default_rng(7)
        null = []
        for start in range(0, 200, 64):
            k = min(64, 200 - start)
            for order in np.argsort(shuffles.random((k, 30)), axis=1):
                null.append(max(abs(roc_auc_score(y, S[order, j]) - 0.5) for y in Y))
        assert result.p_value[j] == pytest.approx((1 + sum(v >= observed - 1e-12 for v in null)) / 201)
    assert result.p_value[0] < 0.01 < result.p_value[1]


def test_best_label_test_is_uniform_under_the_null():
    rng = np.random.default_rng(0)
    Y = (rng.random((4, 40)) < 0.5).astype(int)
    p = best_label_test(rng.standard_normal((40, 200)), Y, n_permutations=199, seed=1, family=1).p_value
    assert 0.03 < np.mean(p <= 0.05) < 0.08 and 0.4 < np.mean(p) < 0.6


def test_best_label_test_rejects_bad_input():
    with pytest.raises(ValueError, match="only one class"):
        best_label_test(np.ones((4, 1)) * np.arange(4)[:, None], np.ones((1, 4)))
    with pytest.raises(ValueError, match="can never reach significance"):
        best_label_test(np.arange(4.0), np.array([0, 1, 0, 1]), n_permutations=0)
    with pytest.raises(ValueError, match="n_permutations=100 can never reach"):
        best_label_test(np.random.default_rng(0).standard_normal((10, 20)), np.tile([0, 1], 5), n_permutations=100)


def test_best_label_test_sets_its_shuffles_from_the_family():
    rng = np.random.default_rng(2)
    Y = (rng.random((2, 30)) < 0.5).astype(int)
    S = rng.standard_normal((30, 3))
    assert best_label_test(S, Y).n_permutations == monte_carlo_draws(3)
    assert best_label_test(S, Y, family=12).n_permutations == monte_carlo_draws(12)
