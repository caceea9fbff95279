"""The direction finders' registry: each finder's contract, the same seed giving the same
directions, the supervised ones fitting on the select half only, ICA and an SAE recovering
planted sparse directions, and k-sparse probing equal to scikit-learn's own fit."""

import numpy as np
import pandas as pd
import pytest
import torch

from entk_utils.features import finders, probing, scoring
from entk_utils.features.directions import entk_scores, pca_scores
from entk_utils.features.sae import SAERecipe, sae_latents, sae_quality, train_sae

N, D, K = 120, 12, 4


def planted(n: int, d: int, n_features: int, p_active: float, seed: int = 0):
    """Activations (n, d) that are sparse non-negative combinations of ``n_features`` unit
    directions (n_features, d) plus a little noise; returns (X, directions, codes)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_features, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = (rng.random((n, n_features)) < p_active) * rng.exponential(1.0, (n, n_features))
    return codes @ directions + 0.01 * rng.standard_normal((n, d)), directions, codes


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)) @ rng.standard_normal((D, D))
    labels = pd.DataFrame({"a": (X[:, 0] > 0).astype(int), "b": (rng.random(N) < 0.3).astype(int)})
    select, _ = scoring.stratified_halves(labels.a, seed=0)
    evecs = rng.standard_normal((N * 3, 6))
    return finders.FinderInputs(activations=X, eigenvectors=evecs, labels=labels, select=select)


@pytest.fixture(scope="module")
def small_sae():
    X, _, _ = planted(20_000, D, 6, 0.15, seed=1)
    return train_sae(torch.tensor(X, dtype=torch.float32),
                     SAERecipe(width=16, k=3, tokens=40_000, batch_size=256, lr=3e-3, held_out=2000, seed=0))


def test_every_finder_gives_n_by_k_scores_and_is_seeded(inputs, small_sae):
    full = finders.FinderInputs(activations=inputs.activations, eigenvectors=inputs.eigenvectors, sae=small_sae.sae,
                                labels=inputs.labels, select=inputs.select)
    found = finders.find_directions(list(finders.FINDERS), full, K, seed=3)
    again = finders.find_directions(list(finders.FINDERS), full, K, seed=3)
    for method, d in found.items():
        width = {"sae-all": 16, "mean-difference": 2, "logistic": 2}.get(method, K)
        assert d.scores.shape == (N, width), method
        spec = finders.FINDERS[method]
        assert (d.supervised, d.larger_budget) == (spec.supervised, spec.larger_budget) and d.description
        np.testing.assert_array_equal(d.scores, again[method].scores)
        if d.vectors is not None:
            assert d.vectors.shape == (width, D)
            np.testing.assert_allclose(np.linalg.norm(d.vectors, axis=1), 1, atol=1e-6)
        if d.read is not None:  # the score function, applied to one hidden state at a time
            np.testing.assert_allclose(d.read(inputs.activations[:7]), d.scores[:7], rtol=1e-6, atol=1e-6)
    assert {m for m, d in found.items() if d.read is not None} == {"pca", "random", "ica", "sae", "sae-all"}
    np.testing.assert_array_equal(found["entk"].scores, entk_scores(inputs.eigenvectors[:, :K], N)[0])
    np.testing.assert_array_equal(found["pca"].scores, pca_scores(inputs.activations, K))
    assert not np.allclose(found["random"].scores, finders.find_directions(["random"], full, K, seed=4)["random"].scores)


SUPERVISED = [m for m, spec in finders.FINDERS.items() if spec.supervised]


def test_adding_a_finder_is_one_spec_entry(inputs, monkeypatch):
    """A finder registered once is run, marked, compared, explained and carded from its spec
    alone; what it needs is checked before any work."""
    from entk_utils.experiments import baselines, dashboard

    def first_coordinates(inp, k, seed):
        return finders.Directions("coords", inp.activations[:, :k].copy(), "the first k coordinates")

    monkeypatch.setitem(finders.FINDERS, "coords", finders.FinderSpec(first_coordinates, carded=True))
    monkeypatch.setitem(finders.FINDERS, "coords-all", finders.FinderSpec(first_coordinates, needs=("sae",),
                                                                          larger_budget=True))
    found = baselines.run_finders(inputs, K, seed=0)  # no SAE: the finders that need one are left out
    assert "coords" in found and "coords-all" not in found and "sae" not in found
    assert "coords" in finders.carded_finders() and "coords-all" not in finders.carded_finders()
    assert "coords" in baselines.tested_methods(found) and "mean-difference" not in baselines.tested_methods(found)
    assert "coords" in dashboard.explain(found, inputs.labels, inputs.select,
                                         np.setdiff1d(np.arange(N), inputs.select))
    with pytest.raises(ValueError, match="finder 'coords-all' needs FinderInputs.sae"):
        finders.find_directions(["coords", "coords-all"], inputs, K)


def test_pca_vectors_give_the_scores(inputs):
    d = finders.find_directions(["pca"], inputs, K)["pca"]
    X = inputs.activations - inputs.activations.mean(0)
    np.testing.assert_allclose(X @ d.vectors.T, d.scores, atol=1e-9)


def test_supervised_finders_never_see_the_evaluate_half(inputs):
    labels = inputs.labels.copy()
    evaluate = np.setdiff1d(np.arange(N), inputs.select)
    labels.iloc[evaluate] = 1 - labels.iloc[evaluate]  # change only the held-out labels
    changed = finders.FinderInputs(activations=inputs.activations, labels=labels, select=inputs.select)
    for method in SUPERVISED:
        a = finders.find_directions([method], inputs, K)[method].scores
        b = finders.find_directions([method], changed, K)[method].scores
        np.testing.assert_array_equal(a, b)


def test_supervised_finders_refit_on_another_half_as_on_their_own(inputs):
    other = np.setdiff1d(np.arange(N), inputs.select)
    moved = finders.FinderInputs(activations=inputs.activations, labels=inputs.labels, select=other)
    for method in SUPERVISED:
        d = finders.find_directions([method], inputs, K)[method]
        np.testing.assert_array_equal(d.refit(inputs.select), d.scores)
        np.testing.assert_allclose(d.refit(other), finders.find_directions([method], moved, K)[method].scores)
    assert all(d.refit is None for d in finders.find_directions(["pca", "random", "entk"], inputs, K).values())


def test_mean_difference_is_the_difference_of_class_means(inputs):
    scores = finders.mean_difference_scores(inputs.activations, inputs.labels.to_numpy(), inputs.select)
    X, y = inputs.activations[inputs.select], inputs.labels.a.to_numpy()[inputs.select].astype(bool)
    w = X[y].mean(0) - X[~y].mean(0)
    np.testing.assert_allclose(scores[:, 0], (inputs.activations - X.mean(0)) @ w)


def test_missing_inputs_and_unknown_finders_fail_before_any_work(inputs):
    with pytest.raises(ValueError, match="unknown direction finder.*'nmf'"):
        finders.find_directions(["pca", "nmf"], inputs, K)
    with pytest.raises(ValueError, match="'sae' needs FinderInputs.sae"):
        finders.find_directions(["pca", "sae"], inputs, K)
    bare = finders.FinderInputs(activations=inputs.activations)
    with pytest.raises(ValueError, match="'logistic' needs FinderInputs.labels"):
        finders.find_directions(["logistic"], bare, K)
    with pytest.raises(ValueError, match="k must lie in 1..12"):  # PCA: at most the activations' dimensions
        finders.find_directions(["pca"], inputs, 13)
    assert finders.find_directions(["random"], inputs, 13)["random"].scores.shape == (N, 13)  # more than d: fine
    with pytest.raises(ValueError, match=f"k must lie in 1..{N} \\(the inputs\\)"):
        finders.find_directions(["random"], inputs, N + 1)
    with pytest.raises(ValueError, match="finite"):
        finders.FinderInputs(activations=np.full((3, 2), np.nan))


def test_most_active_latents_rank_by_how_often_they_fire():
    latents = np.array([[0, 1, 2, 0], [0, 1, 0, 5], [0, 1, 3, 0], [0, 0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(finders.most_active_latents(latents, 3), [1, 2, 3])


def best_cosines(found: np.ndarray, planted_directions: np.ndarray) -> np.ndarray:
    """For each planted direction, the largest |cosine| with any found direction."""
    found = found / np.linalg.norm(found, axis=1, keepdims=True)
    return np.abs(planted_directions @ found.T).max(axis=1)


def test_ica_recovers_planted_sparse_directions():
    X, directions, _ = planted(4000, D, 6, 0.1, seed=0)
    _, mixing = finders.independent_components(X, 6, seed=0)
    assert best_cosines(mixing, directions).min() > 0.9


def test_sae_recovers_planted_sparse_directions(small_sae):
    _, directions, _ = planted(20_000, D, 6, 0.15, seed=1)
    assert best_cosines(small_sae.sae.W_dec.detach().double().numpy(), directions).min() > 0.9
    q = small_sae.quality
    assert q["fve"] > 0.9 and 0 < q["l0"] <= 3 and q["n"] == 2000 and 0 <= q["dead"] <= 16


def test_an_sae_learns_around_a_large_constant_offset():
    """Residual streams can carry a constant far larger than their variation (Gemma-3's does):
    the decoder bias must start at the mean for a short training to explain the variance."""
    X, directions, _ = planted(20_000, D, 6, 0.15, seed=1)
    X[:, 3] += 500.0
    trained = train_sae(torch.tensor(X, dtype=torch.float32),
                        SAERecipe(width=16, k=3, tokens=40_000, batch_size=256, lr=3e-3, held_out=2000, seed=0))
    assert trained.quality["fve"] > 0.9
    assert best_cosines(trained.sae.W_dec.detach().double().numpy(), directions).min() > 0.9


def test_sae_training_is_seeded_and_quality_is_measured_on_held_out_data(small_sae):
    X, _, _ = planted(20_000, D, 6, 0.15, seed=1)
    again = train_sae(torch.tensor(X, dtype=torch.float32), small_sae.recipe)
    for name, value in small_sae.sae.state_dict().items():
        torch.testing.assert_close(again.sae.state_dict()[name], value, rtol=0, atol=0)
    latents = sae_latents(small_sae.sae, X[:50])
    assert latents.shape == (50, 16) and (np.count_nonzero(latents, axis=1) <= 3).all()
    q = sae_quality(small_sae.sae, torch.tensor(X[:1000], dtype=torch.float32))
    assert set(q) == {"fve", "l0", "dead", "dead_fraction", "n"} and q["n"] == 1000
    with pytest.raises(ValueError, match=r"SAERecipe.k=40: must be an integer <= 16 \(SAERecipe.width\)"):
        train_sae(torch.tensor(X, dtype=torch.float32), SAERecipe(width=16, k=40))
    with pytest.raises(ValueError, match="cannot hold SAERecipe.held_out=8192"):
        train_sae(torch.tensor(X[:100], dtype=torch.float32), SAERecipe(width=16, k=3))


def test_k_sparse_probe_is_scikit_learns_logistic_regression_on_the_chosen_columns(inputs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    S = inputs.activations
    select = inputs.select
    evaluate = np.setdiff1d(np.arange(N), select)
    table = probing.k_sparse_probe(S, inputs.labels, select, evaluate, ks=(1, 2, 5))
    assert list(table.k) == [1, 2, 5, 1, 2, 5]
    for row in table.itertuples():
        y = inputs.labels[row.label].to_numpy().astype(bool)
        Z = (S - S[select].mean(0)) / S[select].std(0)
        gap = np.abs(Z[select][y[select]].mean(0) - Z[select][~y[select]].mean(0))
        assert sorted(row.chosen) == sorted(np.argsort(-gap)[:row.k].tolist())
        probe = LogisticRegression(max_iter=5000).fit(Z[select][:, row.chosen], y[select])
        assert row.auroc == pytest.approx(roc_auc_score(y[evaluate], probe.decision_function(Z[evaluate][:, row.chosen])))
        assert row.accuracy == pytest.approx(accuracy_score(y[evaluate], probe.predict(Z[evaluate][:, row.chosen])))
    # a column that is the label itself is picked first and separates perfectly
    S2 = np.column_stack([S, inputs.labels.a.to_numpy() + 0.01 * S[:, 0]])
    best = probing.k_sparse_probe(S2, inputs.labels[["a"]], select, evaluate, ks=(1,))
    assert best.chosen[0] == [D] and best.auroc[0] == 1.0
    with pytest.raises(ValueError, match="ks must lie in 1..12"):
        probing.k_sparse_probe(S, inputs.labels, select, evaluate, ks=(13,))
