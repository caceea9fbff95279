"""Toy models where the features are known (:mod:`entk_utils.settings.toy`,
:mod:`entk_utils.features.ground_truth`, :mod:`entk_utils.experiments.toy`): the metrics on
hand-made cases, the eNTK's Jacobian and eigenpairs against brute force, ICA and an SAE on a
planted case, and a small sweep, seeded."""

import numpy as np
import pandas as pd
import pytest
import torch

from entk_utils.experiments import toy
from entk_utils.features import finders
from entk_utils.features import ground_truth as truth
from entk_utils.features.sae import SAERecipe, train_sae
from entk_utils.kernels import entk
from entk_utils.kernels.dense import output_jacobian
from entk_utils.kernels.eigen import jacobian_eigenpairs
from entk_utils.settings.toy import CONFIGURATIONS, TMS, TMSRecipe, train_tms


def test_mmcs_and_recovered_on_hand_made_cases():
    features = np.eye(3)
    assert truth.mmcs(-features[[2, 0, 1]], features) == pytest.approx(1.0)  # order and sign do not matter
    assert truth.recovered(features, features) == 3
    diagonal = np.array([[1.0, 1.0, 0.0]])  # 45 degrees from the first two features, orthogonal to the third
    np.testing.assert_allclose(truth.best_cosines(diagonal, features), [2 ** -0.5, 2 ** -0.5, 0])
    assert truth.recovered(diagonal, features) == 0 and truth.recovered(diagonal, features, threshold=0.7) == 2
    assert list(truth.represented(np.array([[1.0, 0], [0.5, 0.5], [0.9, 0.1]]))) == [True, False, True]


def test_hidden_space_directions_regress_the_scores_on_the_activations():
    rng = np.random.default_rng(0)
    H = rng.standard_normal((200, 4))
    w = np.array([[1.0, -2.0, 0.0, 0.5], [0.0, 0.0, 3.0, 0.0]])
    directions = truth.hidden_space_directions(H @ w.T + 7.0, H)  # an offset changes nothing
    np.testing.assert_allclose(directions, w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-10)


def test_weight_steps_against_rank_one_components():
    W = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])  # (m, n)
    components = np.stack([np.outer(W[:, j], np.eye(3)[j]) for j in range(3)])  # W_j e_j^T
    np.testing.assert_allclose(truth.column_cosines(components, W), 1.0)
    np.testing.assert_allclose(truth.matrix_cosines(components, W), 1.0)
    whole = W[None]  # one step equal to W: every column right, but the whole matrix is not one component
    np.testing.assert_allclose(truth.column_cosines(whole, W), 1.0)
    np.testing.assert_allclose(truth.matrix_cosines(whole, W), np.linalg.norm(W, axis=0) / np.linalg.norm(W))


def test_the_output_jacobian_is_the_full_entk_and_its_svd_the_eigenpairs():
    torch.manual_seed(0)
    model = TMS(5, 2).double()
    x = torch.rand(12, 5, dtype=torch.float64) * (torch.rand(12, 5) < 0.5)
    J, slices = output_jacobian(model, x)
    assert J.shape == (12 * 5, 15) and slices == {"W": slice(0, 10), "b": slice(10, 15)}
    full = entk(model, x, reduce="full", method="reference")  # (N, N, C, C)
    np.testing.assert_allclose((J @ J.T).numpy(), full.permute(0, 2, 1, 3).reshape(60, 60).numpy(), atol=1e-10)
    evals, evecs, steps = jacobian_eigenpairs(J.numpy(), 6)
    K = (J @ J.T).numpy()
    np.testing.assert_allclose(evals, np.linalg.eigvalsh(K)[::-1][:6], rtol=1e-8)
    np.testing.assert_allclose(K @ evecs, evecs * evals, atol=1e-8 * evals[0])
    np.testing.assert_allclose(steps, evecs.T @ J.numpy(), atol=1e-12)
    scaled, _ = output_jacobian(model, x, output_scale=torch.arange(1.0, 6.0))
    np.testing.assert_allclose(scaled.reshape(12, 5, 15)[:, 2], 3 * J.reshape(12, 5, 15)[:, 2])
    with pytest.raises(ValueError, match="k must lie in 1..15"):
        jacobian_eigenpairs(J.numpy(), 16)


def test_the_layerwise_entk_of_W_is_the_dense_kernel_of_W_alone(tmp_path):
    """entk-W against brute force: its scores are eigenvectors of the (N*n) x (N*n) kernel of
    the parameter W alone (outputs scaled by importance), and its weight steps are J_W^T v."""
    recipe = TMSRecipe(5, 2, probability=0.3, steps=200, importance_decay=0.9)
    run = train_tms(recipe, cache_dir=tmp_path, progress=False)
    found = toy.toy_directions(run, n_inputs=40, seed=0, sae_inputs=6000)
    x = found.x
    K = entk(run.model, x, params="W", reduce="full").double().numpy()  # (N, N, n, n)
    scale = np.sqrt(recipe.importances().double().numpy())
    K = (K * scale[None, None, :, None] * scale[None, None, None, :]).transpose(0, 2, 1, 3).reshape(200, 200)
    evals, evecs = np.linalg.eigh(K)
    top = evecs[:, ::-1][:, :5]
    scores = found.directions["entk-W"].scores  # (N, k): per input, the norm-weighted reading
    from entk_utils.features.directions import entk_scores

    np.testing.assert_allclose(np.abs(entk_scores(top, 40)[0]), np.abs(scores), atol=1e-5 * np.abs(scores).max())  # float32 kernel
    J = output_jacobian(run.model, x, "W", output_scale=torch.tensor(scale))[0].double().numpy()
    v = np.linalg.svd(J, full_matrices=False)[0][:, :5]
    steps = found.weight_steps["entk-W"].reshape(5, -1)
    np.testing.assert_allclose(np.abs(steps), np.abs(v.T @ J), rtol=1e-4, atol=1e-6 * np.abs(steps).max())


def test_ica_and_an_sae_recover_planted_sparse_features():
    """Four orthonormal features in six dimensions, each on with probability 0.1: what ICA and
    the toy SAE recipe must find."""
    rng = np.random.default_rng(0)
    features = np.linalg.qr(rng.standard_normal((6, 6)))[0][:, :4].T

    def activations(n):
        return ((rng.random((n, 4)) < 0.1) * rng.random((n, 4))) @ features

    X = activations(4000)
    ica = finders.find_directions(["ica"], finders.FinderInputs(activations=X), 4)["ica"]
    assert truth.mmcs(ica.vectors, features) > 0.99
    recipe = SAERecipe(width=8, k=2, tokens=400_000, batch_size=1024, lr=3e-3, held_out=2000, seed=0)
    sae = train_sae(torch.tensor(activations(40_000), dtype=torch.float32), recipe).sae
    latents = finders.find_directions(["sae-all"], finders.FinderInputs(activations=X, sae=sae), 4)["sae-all"]
    assert truth.mmcs(latents.vectors, features) > 0.98 and truth.recovered(latents.vectors, features) == 4


def test_a_small_sweep_scores_every_method_and_is_seeded(tmp_path):
    recipes = {"5-2": TMSRecipe(5, 2, steps=300)}
    sweep = toy.toy_sweep(recipes, [0], n_inputs=300, cache_dir=tmp_path, progress=False)
    again = toy.toy_sweep(recipes, [0], n_inputs=300, cache_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(sweep, again)
    assert list(sweep.method) == [*toy.ENTK_VARIANTS, *toy.FINDERS_AT_M, *toy.FINDERS_AT_N, toy.WHOLE_W]
    rows = sweep.set_index("method")
    assert rows.loc["pca", "k"] == 2 and rows.loc["entk", "k"] == 5 and rows.loc["sae-all", "k"] == 10
    assert rows.loc[list(toy.ENTK_VARIANTS[:2]), "column mmcs"].between(0, 1).all()
    assert rows.loc[["pca", "ica", "sae", "random"], "mmcs"].between(0, 1).all()
    assert rows.auroc.dropna().between(0, 1).all() and (rows.represented <= 5).all()
    assert rows.loc[toy.WHOLE_W, "column mmcs"] == pytest.approx(1.0) and rows.loc[toy.WHOLE_W, "matrix mmcs"] < 1
    summary = toy.sweep_summary(pd.concat([sweep, sweep.assign(seed=1)]))
    assert (summary["auroc ±"].dropna() == 0).all() and len(summary) == len(rows)


def test_the_spd_configurations_and_recipe_checks():
    assert [r.name for r in CONFIGURATIONS.values()] == ["5-2", "5-2+ID", "40-10", "40-10+ID"]
    with pytest.raises(ValueError, match="probability=0: must be"):
        train_tms(TMSRecipe(probability=0))
    run = train_tms(TMSRecipe(5, 2, steps=50), progress=False)
    identity = train_tms(TMSRecipe(5, 2, steps=50, identity=True), progress=False)
    x = run.inputs(10, seed=3)
    torch.testing.assert_close(run.model(x), identity.model(x))  # a frozen identity changes nothing trained


@pytest.mark.slow
def test_the_modular_table_scores_every_finder_by_the_eNTKs_blocks(tmp_path):
    from entk_utils.settings.modular import train_gromov_mlp

    run = train_gromov_mlp(p=11, width=64, epochs=150, cache_dir=tmp_path, progress=False)
    table = toy.modular_finder_table(run, null_draws=20, seed=0)
    assert list(dict.fromkeys(table.method)) == ["entk", "pca", "sae", "random"]
    assert set(table[table.method == "sae"].block) == {"all"} and "block 0" in set(table[table.method == "pca"].block)
    every = table[table.block == "all"]
    assert len(set(every.directions)) == 1  # the same K directions for every method
    assert (table.overlap <= table.dim + 1e-9).all() and table.null_p.between(0, 1).all()
    assert (table.null_mean < table.dim).all()


@pytest.mark.slow
def test_the_transformer_table_scores_the_finders_as_table_2(tmp_path):
    from entk_utils.settings.modular import train_transformer

    run = train_transformer(p=11, epochs=20, d_model=16, d_mlp=32, cache_dir=tmp_path, progress=False)
    table = toy.transformer_finder_table(run, n_eigs=8, null_draws=20, seed=0)
    assert list(dict.fromkeys(table.method)) == ["entk (W_U)", "pca", "sae", "random"]
    assert set(table.family) == {"sum", "axis_sum"} and len(table) == 8
    assert (table.overlap <= table.dim + 1e-9).all() and table.null_p.between(0, 1).all()
    spans = table[table.method.isin(["sae", "random"])]
    assert len(set(spans.eigvecs)) == 1 and not spans.assigned.any()
