"""Significance of differences between methods: permutation tests, corrections, bootstrap."""

import numpy as np
import pytest
from scipy.stats import kstest
from sklearn.metrics import average_precision_score, roc_auc_score

from entk_utils.features.scoring import auroc_matrix, average_precision_matrix, best_direction_metrics, mean_abs_cosine
from entk_utils.features.significance import best_label_test, bonferroni, bootstrap_macro, holm, permutation_test
from labels import halves, random_labels


def holm_by_definition(p):
    """Adjusted p_(i) = max_{j <= i} min(1, (n - j + 1) p_(j)) over the ascending order (1-based)."""
    n = len(p)
    order = sorted(range(n), key=lambda i: p[i])
    adjusted, running = [0.0] * n, 0.0
    for rank, i in enumerate(order, start=1):
        running = max(running, min(1.0, (n - rank + 1) * p[i]))
        adjusted[i] = running
    return adjusted


def planted_eval_scores(rng, L, n):
    Y = random_labels(rng, L, n, rates=(0.2, 0.4, 0.6))
    return rng.standard_normal((L, n)) + Y, Y


def test_permutation_observed_is_difference_of_best_direction_auroc():
    rng = np.random.default_rng(3)
    N = 200
    y = random_labels(rng, 1, N, rates=(0.3,))[0]
    Sa, Sb = rng.standard_normal((N, 5)) + 0.5 * y[:, None], rng.standard_normal((N, 7))
    select, evaluate = halves(N)
    result = permutation_test(Sa, Sb, y, select, evaluate, n_permutations=50, seed=4)
    a, b = (best_direction_metrics(S, y, select, evaluate) for S in (Sa, Sb))
    assert result.observed == pytest.approx(a.auroc[0] - b.auroc[0], abs=1e-12)
    again = permutation_test(Sa, Sb, y, select, evaluate, n_permutations=50, seed=4)
    np.testing.assert_array_equal(again.null, result.null)
    ap = permutation_test(Sa, Sb, y, select, evaluate, n_permutations=10, seed=4, metric="ap")
    assert ap.observed == pytest.approx(a.ap[0] - b.ap[0], abs=1e-12)


def test_permutation_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(5)
    N, n_perm = 120, 200
    select, evaluate = halves(N)
    p_values = []
    for _ in range(100):
        y = (rng.random(N) < 0.3).astype(int)
        y[select[:2]], y[evaluate[:2]] = (1, 0), (1, 0)
        Sa, Sb = rng.standard_normal((N, 4)), rng.standard_normal((N, 4))
        result = permutation_test(Sa, Sb, y, select, evaluate, n_permutations=n_perm,
                                  seed=int(rng.integers(2**31)))
        assert result.null.shape == (n_perm,)
        p_values.append(result.p_value)
    p_values = np.array(p_values)
    assert kstest(p_values, "uniform").pvalue > 1e-3
    # Binomial(100, 0.1): 2..20 holds with probability > 0.99
    assert 2 <= np.count_nonzero(p_values <= 0.1) <= 20


def test_permutation_p_value_is_minimal_for_a_planted_signal():
    rng = np.random.default_rng(6)
    N, n_perm = 400, 200
    y = (rng.random(N) < 0.2).astype(int)
    Sa, Sb = rng.standard_normal((N, 6)), rng.standard_normal((N, 6))
    Sa[:, 3] -= 1.5 * y  # informative with sign -1
    select, evaluate = halves(N)
    result = permutation_test(Sa, Sb, y, select, evaluate, n_permutations=n_perm, seed=0)
    assert result.observed > 0.2
    assert result.p_value <= 2 / (n_perm + 1)
    # reversing the roles gives the same two-sided p-value
    swapped = permutation_test(Sb, Sa, y, select, evaluate, n_permutations=n_perm, seed=0)
    assert swapped.observed == pytest.approx(-result.observed)
    assert swapped.p_value <= 2 / (n_perm + 1)


def test_permutation_redraws_shuffles_with_a_single_class_in_a_half():
    rng = np.random.default_rng(7)
    N = 40
    y = np.zeros(N, dtype=int)
    select, evaluate = halves(N)
    y[select[0]] = y[evaluate[0]] = 1  # two positives: about half of all shuffles put both in one half
    result = permutation_test(rng.standard_normal((N, 3)), rng.standard_normal((N, 3)), y, select, evaluate,
                              n_permutations=100, seed=0)
    assert result.n_redrawn > 10
    assert result.null.shape == (100,) and np.all(np.isfinite(result.null))


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


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_contexts():
    widths = []
    for n in (100, 1600):
        S, Y = planted_eval_scores(np.random.default_rng(9), 3, n)
        result = bootstrap_macro(S, Y, n_boot=300, seed=0)
        assert result.auroc_boot.shape == (300,) and result.ap_boot.shape == (300,)
        assert result.auroc == pytest.approx(np.mean([roc_auc_score(y, s) for s, y in zip(S, Y)]))
        assert result.ap == pytest.approx(np.mean([average_precision_score(y, s) for s, y in zip(S, Y)]))
        assert result.auroc_ci[0] < result.auroc < result.auroc_ci[1]
        assert result.ap_ci[0] < result.ap < result.ap_ci[1]
        widths.append((result.auroc_ci[1] - result.auroc_ci[0], result.ap_ci[1] - result.ap_ci[0]))
    # 16x the contexts: about 1/4 of the width
    assert widths[1][0] < 0.5 * widths[0][0] and widths[1][1] < 0.5 * widths[0][1]


def test_bootstrap_takes_the_chosen_scores_and_redraws_single_class_draws():
    rng = np.random.default_rng(10)
    N = 200
    Y = random_labels(rng, 3, N, rates=(0.3,))
    Y[2] = 0
    Y[2, [0, 1, 2, 3]] = 1  # a rare label: 2 positives per half; ~13% of resamples miss both
    scores = rng.standard_normal((N, 5)) + Y[[0, 1, 2, 0, 1]].T
    select, evaluate = np.arange(0, N, 2), np.arange(1, N, 2)
    best = best_direction_metrics(scores, Y, select, evaluate)
    result = bootstrap_macro(best.chosen_scores(scores, evaluate), Y[:, evaluate], n_boot=200, seed=1)
    assert result.auroc == pytest.approx(best.auroc.mean()) and result.ap == pytest.approx(best.ap.mean())
    assert result.n_redrawn > 0 and np.all(np.isfinite(result.auroc_boot))
    again = bootstrap_macro(best.chosen_scores(scores, evaluate), Y[:, evaluate], n_boot=200, seed=1)
    np.testing.assert_array_equal(again.ap_boot, result.ap_boot)


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
    with pytest.raises(ValueError, match="same contexts"):
        permutation_test(S, S[:10], y, evaluate, select)
    with pytest.raises(ValueError, match="metric"):
        permutation_test(S, S, y, np.arange(10), np.arange(10, 20), metric="f1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bonferroni([np.nan])
    with pytest.raises(ValueError, match="level"):
        bootstrap_macro(S.T[:1], y[None], level=95)
    with pytest.raises(ValueError, match="same shape"):
        bootstrap_macro(S.T, y[None])
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
    p = best_label_test(rng.standard_normal((40, 200)), Y, n_permutations=199, seed=1).p_value
    assert 0.03 < np.mean(p <= 0.05) < 0.08 and 0.4 < np.mean(p) < 0.6


def test_best_label_test_rejects_bad_input():
    with pytest.raises(ValueError, match="only one class"):
        best_label_test(np.ones((4, 1)) * np.arange(4)[:, None], np.ones((1, 4)))
    with pytest.raises(ValueError, match="n_permutations and batch_size must be >= 1"):
        best_label_test(np.arange(4.0), np.array([0, 1, 0, 1]), n_permutations=0)
