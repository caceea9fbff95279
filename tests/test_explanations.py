"""Explaining directions by candidate properties: a planted candidate is found, oriented and
validated on the held-out half; a direction of noise gets "none found"; the held-out p-values
are the rank test's; the share explained grows smoothly with the contexts and shrinks smoothly
with the candidates; the random floor is built by the same rule and the discovery table tests
counts against chance and between methods."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from entk_utils.features.explanations import (UNEXPLAINED, ExplanationFloor, discovery_table, explain_directions,
                                              explained_auroc, random_explanation_floor)
from entk_utils.features.scoring import stratified_halves
from entk_utils.features.significance import rank_test

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
    explained, pairs = explain_directions(scores, candidates, select, evaluate)
    assert list(explained.explanation) == ["inside a quotation", "none found", "next word: NOUN"]
    assert list(explained.sign[[0, 2]]) == [-1, 1]
    assert (explained.auroc[[0, 2]] > 0.8).all() and (explained.q[[0, 2]] < 0.05).all()
    assert explained.q[1] >= 0.05 and explained.candidate[1] in candidates.columns  # its best is still shown
    assert len(pairs) == 3 * 4 and pairs.q.between(0, 1).all() and (pairs.q >= pairs.p - 1e-12).all()
    y = candidates["next word: NOUN"].to_numpy()[evaluate]
    assert explained.auroc[2] == pytest.approx(roc_auc_score(y, scores[evaluate, 2]))


def test_held_out_pvalues_are_the_rank_tests_in_the_select_halfs_orientation(planted):
    scores, candidates, select, evaluate = planted
    _, pairs = explain_directions(scores, candidates, select, evaluate)
    Y = candidates.T.to_numpy()[:, evaluate]
    sign = pairs.sign.to_numpy().reshape(len(candidates.columns), 3)
    auroc, p = rank_test(scores[evaluate], Y, sign)
    np.testing.assert_allclose(pairs.auroc, auroc.ravel())
    np.testing.assert_allclose(pairs.p, p.ravel())


def share_explained(N, n_noise, seed):
    """Share of 10 directions validated: direction j carries planted candidate j weakly (j < 4)."""
    rng = np.random.default_rng(seed)
    candidates = pd.DataFrame((rng.random((N, 4 + n_noise)) < 0.3).astype(int))
    X = rng.standard_normal((N, 10))
    X[:, :4] += 0.8 * candidates.iloc[:, :4].to_numpy()
    select, evaluate = stratified_halves(candidates[0], seed=seed)
    return np.mean(explain_directions(X, candidates, select, evaluate)[0].q < 0.05)


@pytest.mark.slow
def test_the_share_explained_changes_smoothly_with_contexts_and_candidates():
    """More contexts: more explained; more candidates to correct over: fewer; and no cliff
    where Monte Carlo p-values would hit their floor (a step of at most a few directions
    between neighbouring settings, averaged over data sets)."""
    by_n = [np.mean([share_explained(N, 40, seed) for seed in range(16)]) for N in (80, 120, 160, 200, 300, 400)]
    by_c = [np.mean([share_explained(200, c, seed) for seed in range(16)]) for c in (10, 40, 160, 640)]
    assert by_n[-1] > by_n[0] + 0.2 and by_c[0] > by_c[-1] + 0.1, (by_n, by_c)
    assert np.all(np.diff(by_n) > -0.05) and np.all(np.diff(by_c) < 0.05), (by_n, by_c)
    assert np.max(np.abs(np.diff(by_n))) <= 0.25 and np.max(np.abs(np.diff(by_c))) <= 0.25, (by_n, by_c)


def test_unusable_candidates_and_bad_arguments_fail_clearly(planted):
    scores, candidates, select, evaluate = planted
    constant = pd.DataFrame({"always": np.ones(N, dtype=int)})
    with pytest.raises(ValueError, match="no candidate has both classes"):
        explain_directions(scores, constant, select, evaluate)
    with pytest.raises(ValueError, match="one row per context"):
        explain_directions(scores, candidates.iloc[:10], select, evaluate)
    with pytest.raises(ValueError, match="fdr must lie"):
        explain_directions(scores, candidates, select, evaluate, fdr=1.5)


def test_the_random_floor_is_built_by_the_methods_own_rule():
    """Random directions explained in sets of k as a method's are, unexplained ones counted at
    chance: about 5% of them lie beyond the floor, by construction."""
    rng = np.random.default_rng(2)
    y = (rng.random(N) < 0.4).astype(int)
    X = rng.standard_normal((N, 20)) + 0.4 * y[:, None]
    candidates = pd.DataFrame({"next word: planted": y, "noise": (rng.random(N) < 0.3).astype(int)})
    select, evaluate = stratified_halves(y, seed=0)
    floor = random_explanation_floor(X, candidates, select, evaluate, k=5, n_directions=200, seed=0)
    assert isinstance(floor, ExplanationFloor) and floor.n_directions == 200 and floor.k == 5
    assert 0.6 < floor.value < 0.95 and 0.02 <= floor.chance <= 0.05
    assert "95% quantile of 200 (in sets of 5)" in floor.describe()
    table = explain_directions(X[:, :3], candidates, select, evaluate)[0]
    strength = explained_auroc(table)
    np.testing.assert_array_equal(strength, np.where(table.q < 0.05, table.auroc, UNEXPLAINED))


def test_the_discovery_table_counts_what_beats_random_directions():
    """Activations where one axis carries a property strongly and every axis weakly: any
    direction is 'explained', only the aligned one beyond the random floor."""
    rng = np.random.default_rng(1)
    y = (rng.random(N) < 0.4).astype(int)
    X = rng.standard_normal((N, 20)) + 0.4 * y[:, None]
    X[:, 0] += 2.5 * y
    candidates = pd.DataFrame({"next word: planted": y, "noise": (rng.random(N) < 0.3).astype(int)})
    select, evaluate = stratified_halves(y, seed=0)
    floor = random_explanation_floor(X, candidates, select, evaluate, k=2, n_directions=100, seed=0)
    assert 0.6 < floor.value < 0.95
    aligned = np.column_stack([X[:, 0], X[:, 1]])  # axis 0 strongly, axis 1 weakly
    tables = {"entk": explain_directions(aligned, candidates, select, evaluate)[0],
              "noise": explain_directions(rng.standard_normal((N, 2)), candidates, select, evaluate)[0]}
    table = discovery_table(tables, floor)
    row = table.loc["entk"]
    assert row[["directions", "explained", "distinct", "beyond_random", "distinct_beyond_random",
                "next_word_beyond_random"]].to_dict() == pytest.approx(
        {"directions": 2, "explained": 1.0, "distinct": 1, "beyond_random": 0.5, "distinct_beyond_random": 1,
         "next_word_beyond_random": 0.5})
    assert row.mean_auroc == pytest.approx(tables["entk"].auroc.mean()) and row.by_chance == floor.chance
    # 1 of 2 beyond a floor that lets a share c through by chance: binomial P(X >= 1) = 1 - (1 - c)^2, Holm x 2
    assert row.p_vs_chance == pytest.approx(min(1.0, 2 * (1 - (1 - floor.chance) ** 2)))
    assert table.loc["noise", "beyond_random"] == 0 and np.isnan(row.p_vs_entk)
    assert table.loc["noise", "p_vs_entk"] == pytest.approx(1.0)  # Fisher: 1 of 2 against 0 of 2
    assert "beyond_random" not in discovery_table(tables).columns
    with pytest.raises(ValueError, match="quantile"):
        random_explanation_floor(X, candidates, select, evaluate, k=2, quantile=1.5)
