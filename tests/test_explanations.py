"""Explaining directions by candidate properties: a planted candidate is found, oriented and
validated on the held-out half; a direction of noise gets "none found"; the held-out
p-values are those of a direct shuffle."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from entk_utils.features.explanations import (discovery_table, explain_directions, held_out_pvalues,
                                              random_explanation_floor)
from entk_utils.features.scoring import stratified_halves

N = 400


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    candidates = pd.DataFrame({name: rng.random(N) < rate for name, rate in
                               [("next word: NOUN", 0.3), ("inside a quotation", 0.2), ("last word = 'the'", 0.1),
                                ("sentence start", 0.15)]}).astype(int)
    scores = rng.standard_normal((N, 3))
    scores[:, 0] -= 2.0 * candidates["inside a quotation"]      # low scores carry the quotation
    scores[:, 2] += 1.5 * candidates["next word: NOUN"]
    select, evaluate = stratified_halves(candidates["next word: NOUN"], seed=0)
    return scores, candidates, select, evaluate


def test_planted_candidates_are_found_oriented_and_noise_is_not(planted):
    scores, candidates, select, evaluate = planted
    explained, pairs = explain_directions(scores, candidates, select, evaluate, n_permutations=300, seed=0)
    assert list(explained.explanation) == ["inside a quotation", "none found", "next word: NOUN"]
    assert list(explained.sign[[0, 2]]) == [-1, 1]
    assert (explained.auroc[[0, 2]] > 0.8).all() and (explained.q[[0, 2]] < 0.05).all()
    assert explained.q[1] >= 0.05 and explained.candidate[1] in candidates.columns  # its best is still shown
    assert len(pairs) == 3 * 4 and pairs.q.between(0, 1).all() and (pairs.q >= pairs.p - 1e-12).all()
    y = candidates["next word: NOUN"].to_numpy()[evaluate]
    assert explained.auroc[2] == pytest.approx(roc_auc_score(y, scores[evaluate, 2]))


def test_held_out_pvalues_match_a_direct_shuffle():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((60, 1))
    y = (rng.random(60) < 0.4).astype(float)
    auroc, p = held_out_pvalues(s, y[None], np.ones((1, 1)), n_permutations=200, seed=3)
    shuffles = np.random.default_rng(3)
    null = [roc_auc_score(y[shuffles.permutation(60)], s[:, 0]) for _ in range(200)]
    assert auroc[0, 0] == pytest.approx(roc_auc_score(y, s[:, 0]))
    assert p[0, 0] == pytest.approx((1 + sum(v >= auroc[0, 0] - 1e-12 for v in null)) / 201)


def test_unusable_candidates_and_bad_arguments_fail_clearly(planted):
    scores, candidates, select, evaluate = planted
    constant = pd.DataFrame({"always": np.ones(N, dtype=int)})
    with pytest.raises(ValueError, match="no candidate has both classes"):
        explain_directions(scores, constant, select, evaluate)
    with pytest.raises(ValueError, match="one row per context"):
        explain_directions(scores, candidates.iloc[:10], select, evaluate)
    with pytest.raises(ValueError, match="fdr must lie"):
        explain_directions(scores, candidates, select, evaluate, fdr=1.5)


def test_the_discovery_table_counts_what_beats_random_directions():
    """Activations where one axis carries a property strongly and every axis weakly: any
    direction is 'explained', only the aligned one beyond the random floor."""
    rng = np.random.default_rng(1)
    y = (rng.random(N) < 0.4).astype(int)
    X = rng.standard_normal((N, 20)) + 0.4 * y[:, None]
    X[:, 0] += 2.5 * y
    candidates = pd.DataFrame({"next word: planted": y, "noise": (rng.random(N) < 0.3).astype(int)})
    select, evaluate = stratified_halves(y, seed=0)
    floor = random_explanation_floor(X, candidates, select, evaluate, n_directions=100, seed=0)
    assert 0.6 < floor < 0.95
    aligned = np.column_stack([X[:, 0], X[:, 1]])  # axis 0 strongly, axis 1 weakly
    tables = {"aligned": explain_directions(aligned, candidates, select, evaluate, n_permutations=200)[0],
              "noise": explain_directions(rng.standard_normal((N, 2)), candidates, select, evaluate,
                                          n_permutations=200)[0]}
    table = discovery_table(tables, floor)
    assert table.loc["aligned"].to_dict() == pytest.approx(
        {"directions": 2, "explained": 1.0, "distinct": 1, "mean_auroc": tables["aligned"].auroc.mean(),
         "beyond_random": 0.5, "distinct_beyond_random": 1, "next_word_beyond_random": 0.5})
    assert table.loc["noise", "beyond_random"] == 0 and "beyond_random" not in discovery_table(tables).columns
    with pytest.raises(ValueError, match="quantile"):
        random_explanation_floor(X, candidates, select, evaluate, quantile=1.5)
