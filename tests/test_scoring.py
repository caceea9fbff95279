"""Scoring directions against labels: scikit-learn's metrics, one rule for the best direction."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from entk_utils.features.probing import mean_abs_cosine
from entk_utils.features.scoring import (auroc_matrix, average_precision_matrix, best_direction_metrics, choose_layer,
                                         has_both_classes, oriented, precision_at_quota, score_directions,
                                         stratified_halves, with_best_layer)
from labels import halves, random_labels


def test_stratified_halves_keep_class_proportions():
    classes = np.repeat(["a", "b", "c", "d"], 10)
    select, evaluate = stratified_halves(classes, seed=0)
    assert len(select) == len(evaluate) == 20 and not set(select) & set(evaluate)
    for c in "abcd":
        assert (classes[evaluate] == c).sum() == 5


def test_stratified_halves_pool_classes_with_a_single_member():
    classes = np.array(["a"] * 10 + ["b"] * 10 + ["x", "y"])
    select, evaluate = stratified_halves(classes, seed=0)
    assert len(select) == len(evaluate) == 11
    assert {classes[i] for i in np.concatenate([select, evaluate]) if classes[i] in "xy"} == {"x", "y"}
    assert sum(classes[i] in "xy" for i in evaluate) == 1  # the pooled pair is split between the halves
    lone = np.array(["a"] * 10 + ["b"] * 10 + ["x"])
    select, evaluate = stratified_halves(lone, seed=0)  # a single rare member joins the largest class
    assert len(select) + len(evaluate) == 21


def test_score_directions_finds_the_planted_direction_and_sign():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    scores = rng.standard_normal((80, 5))
    scores[:, 3] = -3.0 * y + 0.1 * rng.standard_normal(80)  # separates the label, with a minus sign
    labels = pd.DataFrame({"planted": y, "noise": rng.integers(0, 2, 80)})
    select, evaluate = stratified_halves(y, seed=0)
    table = score_directions(scores, labels, select, evaluate).set_index("label")
    assert table.loc["planted", "direction"] == 3 and table.loc["planted", "sign"] == -1
    assert table.loc["planted", "auroc"] == 1.0 and table.loc["planted", "ap"] == 1.0
    assert table.loc["planted", "precision_at_quota"] == 1.0
    assert table.loc["planted", "enrichment"] == pytest.approx(1 / table.loc["planted", "base_rate"])
    assert 0.2 < table.loc["noise", "auroc"] < 0.8
    with pytest.raises(ValueError, match="only one class"):
        score_directions(scores, pd.DataFrame({"const": np.zeros(80, int)}), select, evaluate)


def test_with_best_layer_appends_the_rows_of_the_chosen_layers():
    per_layer = pd.DataFrame({"label": ["x", "y"] * 4, "method": ["entk"] * 4 + ["pca"] * 4,
                              "layer": [0, 0, 1, 1] * 2, "auroc": [0.6, 0.7, 0.9, 0.8, 0.9, 0.9, 0.5, 0.5]})
    table = with_best_layer(per_layer, {"entk": 1, "pca": 0})
    assert table[table.layer == "best"].groupby("method").auroc.mean().round(2).to_dict() == {"entk": 0.85, "pca": 0.9}
    assert set(table.layer) == {"0", "1", "best"}


def test_choose_layer_reads_the_select_half_only():
    """Layer 1 carries the label on the select half only, layer 0 on the evaluate half only:
    the choice follows the select half."""
    rng = np.random.default_rng(2)
    N = 120
    y = np.tile([0, 1], N // 2)
    select, evaluate = np.arange(N // 2), np.arange(N // 2, N)
    layers = {0: rng.standard_normal((N, 4)), 1: rng.standard_normal((N, 4))}
    layers[1][select, 2] += 3 * y[select]
    layers[0][evaluate, 1] += 3 * y[evaluate]
    assert choose_layer(layers, y[None].astype(float), select) == 1
    assert choose_layer(layers, y[None].astype(float), evaluate) == 0


def test_precision_at_quota_counts_ties_at_the_cut_by_their_share():
    # k = 2 positives; the top score is a positive, then three tied scores hold one positive
    scores, y = np.array([5.0, 1.0, 1.0, 1.0, 0.0]), np.array([1, 0, 1, 0, 0])
    assert precision_at_quota(scores, y) == pytest.approx((1 + 1 * (1 / 3)) / 2)
    # no order of the tied contexts changes it (an SAE latent is zero on most contexts)
    order = np.array([0, 3, 1, 2, 4])
    assert precision_at_quota(scores[order], y[order]) == precision_at_quota(scores, y)
    assert precision_at_quota(np.arange(5.0), np.array([0, 0, 0, 1, 1])) == 1.0


def test_one_orientation_and_one_minimum_count_rule():
    np.testing.assert_allclose(oriented([0.2, 0.7]), [0.8, 0.7])
    np.testing.assert_allclose(oriented([0.2, 0.7], [1, -1]), [0.2, 0.3])
    Y = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=float)
    assert has_both_classes(Y).tolist() == [True, True, False]
    assert has_both_classes(Y, min_count=2).tolist() == [True, False, False]


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_ap_match_sklearn(ties):
    rng = np.random.default_rng(1)
    N, m, B = 90, 6, 8
    S = rng.integers(-3, 4, size=(N, m)).astype(float) if ties else rng.standard_normal((N, m))
    if ties:
        S[:, 0] = 2.0  # one column with every score tied
    Y = random_labels(rng, B, N)
    expected_auc = np.array([[roc_auc_score(y, s) for s in S.T] for y in Y])
    expected_ap = np.array([[average_precision_score(y, s) for s in S.T] for y in Y])
    np.testing.assert_allclose(auroc_matrix(S, Y), expected_auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(average_precision_matrix(S, Y), expected_ap, rtol=0, atol=1e-12)
    # a 1-D label vector gives one row, squeezed
    np.testing.assert_allclose(auroc_matrix(S, Y[2]), expected_auc[2], atol=1e-12)
    np.testing.assert_allclose(average_precision_matrix(S, Y[2]), expected_ap[2], atol=1e-12)
    # square inputs (B = N = m) keep the (label, column) meaning
    Sq, Yq = S[:8, :8], random_labels(rng, 8, 8)
    np.testing.assert_allclose(auroc_matrix(Sq, Yq), [[roc_auc_score(y, s) for s in Sq.T] for y in Yq], atol=1e-12)


def test_ap_of_tied_scores_uses_one_threshold_per_distinct_score():
    # scores 2, 2, 2, 1, 0 with labels 1, 0, 1, 1, 0: thresholds at 2 (P=2/3, R=2/3) and 1 (P=3/4, R=1)
    S, y = np.array([2.0, 2.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 1, 0])
    assert average_precision_matrix(S, y)[0] == pytest.approx(2 / 3 * 2 / 3 + 1 / 3 * 3 / 4, abs=1e-15)
    # pairs (positive, negative): each positive 2 ties the negative 2 (1/2) and beats 0 (1); 1 beats only 0
    assert auroc_matrix(S, y)[0] == pytest.approx((1.5 + 1.5 + 1) / 6, abs=1e-15)


@pytest.mark.parametrize("ties", [False, True])
def test_best_direction_metrics_matches_score_directions(ties):
    rng = np.random.default_rng(2)
    N, m = 300, 8
    labels = pd.DataFrame(random_labels(rng, 5, N).T, columns=[f"l{i}" for i in range(5)])
    S = rng.standard_normal((N, m))
    S[:, 2] += 1.5 * labels["l0"]  # positive direction
    S[:, 5] -= 1.0 * labels["l1"]  # negative direction
    S[:, 7] = S[:, 2]  # an exact tie with column 2: both rules must take the larger index
    S[:, 3] = np.round(S[:, 3])  # tied scores
    if ties:
        S = np.round(2 * S)  # tied scores everywhere, on the evaluate half too
    select, evaluate = halves(N)
    expected = score_directions(S, labels, select, evaluate)
    got = best_direction_metrics(S, labels.to_numpy().T, select, evaluate)
    np.testing.assert_array_equal(got.direction, expected.direction)
    np.testing.assert_array_equal(got.sign, expected.sign)
    np.testing.assert_allclose(got.ap, expected.ap, atol=1e-12)
    np.testing.assert_allclose(got.auroc, expected.auroc, atol=1e-12)
    assert got.direction[0] == 7 and got.sign[0] == 1 and got.sign[1] == -1


def test_mean_abs_cosine_is_mean_abs_pearson_correlation():
    rng = np.random.default_rng(11)
    N, m = 150, 12
    Y = random_labels(rng, 4, N)
    S = rng.standard_normal((N, m)) - 2 * Y[0][:, None] * (np.arange(m) == 1)
    corr = np.abs(np.corrcoef(S.T, Y)[:m, m:].T)  # (4, m): |corr(label b, column j)|
    np.testing.assert_allclose(mean_abs_cosine(S, Y, top=5), corr[:, :5].mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(mean_abs_cosine(S, Y, top=m, reduce="max"), corr.max(axis=1), atol=1e-12)
    assert mean_abs_cosine(S, Y[0], top=3) == pytest.approx(corr[0, :3].mean())
    assert mean_abs_cosine(S, Y[0], top=3, reduce="max") == pytest.approx(corr[0, 1])
