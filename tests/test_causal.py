import copy

import numpy as np
import pandas as pd
import pytest
import torch

from entk_utils.features import causal, directions, fourier
from entk_utils.settings import modular
from entk_utils.settings.modular import GromovMLP, OneLayerTransformer, modular_addition_pairs, one_hot_pairs, train_gromov_mlp, transformer_tokens

P = 19  # small, yet a width-256 MLP generalises within 300 full-batch steps at 80% train


@pytest.fixture(scope="module")
def run(model_cache):
    """A Gromov MLP trained to 100% test accuracy on the 72 held-out pairs.

    One thread: this tiny full-batch training is ~10x slower when torch's threads compete
    with other work for 2 cores (the thread count is restored afterwards).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_gromov_mlp(p=P, width=256, epochs=300, train_frac=0.8, cache_dir=model_cache, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sum_family(run):
    return fourier.feature_family(run.pairs.numpy(), P, "sum")


def _logits(run):
    with torch.no_grad():
        return causal.model_logits(run.model, run.inputs)


# --------------------------------------------------------------------------- ablate_outputs
def test_ablate_outputs_removes_exactly_the_projection():
    rng = np.random.default_rng(0)
    F, B = rng.standard_normal((40, 6)), rng.standard_normal((40, 5)) * [1, 10, 0.1, 3, 1]
    R = causal.ablate_outputs(F, B)
    assert R.shape == F.shape
    np.testing.assert_allclose(B.T @ R, 0, atol=1e-10)  # orthogonal to the basis
    np.testing.assert_allclose(causal.ablate_outputs(R, B), R, atol=1e-12)  # idempotent
    # what was removed lies in span(B): least squares reproduces it exactly
    removed = F - R
    coef, *_ = np.linalg.lstsq(B, removed, rcond=None)
    np.testing.assert_allclose(B @ coef, removed, atol=1e-10)
    # only the span counts: a redundant column and a torch input change nothing
    redundant = np.column_stack([B, B[:, 0] + B[:, 1]])
    np.testing.assert_allclose(causal.ablate_outputs(torch.from_numpy(F), redundant), R, atol=1e-10)


def test_ablate_outputs_rejects_an_empty_or_mismatched_basis():
    F = np.ones((10, 3))
    with pytest.raises(ValueError, match="zero subspace"):
        causal.ablate_outputs(F, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="zero subspace"):
        causal.ablate_outputs(F, np.zeros((10, 0)))
    with pytest.raises(ValueError, match="rows"):
        causal.ablate_outputs(F, np.ones((9, 2)))


def test_ablation_curve_matches_ablate_outputs_and_reports_the_baseline():
    rng = np.random.default_rng(1)
    n, c = 60, 5
    targets = rng.integers(0, c, n)
    F = rng.standard_normal((n, c)) + 3 * np.eye(c)[targets]
    D = rng.standard_normal((n, 8))
    idx = np.arange(0, n, 2)
    df = causal.ablation_curve(F, targets, idx, {"d": D, "r": directions.random_directions(n, 4, seed=0)}, [2, 4])
    assert list(df.columns) == ["method", "k", "accuracy", "loss_ce", "loss_mse"]
    assert df.groupby("method").k.apply(list).to_dict() == {"d": [0, 2, 4], "r": [0, 2, 4]}
    base = causal.classification_metrics(F[idx], targets[idx])
    for k in (0, 2, 4):
        row = df[(df.method == "d") & (df.k == k)].iloc[0]
        expected = base if k == 0 else causal.classification_metrics(causal.ablate_outputs(F, D[:, :k])[idx], targets[idx])
        for col in ("accuracy", "loss_ce", "loss_mse"):
            assert row[col] == pytest.approx(expected[col], rel=1e-10)
    # the metrics agree with torch's definitions (MSE: mean over all entries, as in training)
    z, t = torch.from_numpy(F[idx]), torch.from_numpy(targets[idx])
    assert base["loss_ce"] == pytest.approx(torch.nn.functional.cross_entropy(z, t).item())
    assert base["loss_mse"] == pytest.approx(torch.nn.functional.mse_loss(z, torch.eye(c, dtype=z.dtype)[t]).item())
    with pytest.raises(ValueError, match="0..4 for method 'r'"):
        causal.ablation_curve(F, targets, idx, {"r": directions.random_directions(n, 4)}, [5])


def test_hidden_activations_of_both_models():
    p = 5
    pairs, _ = modular_addition_pairs(p)
    mlp = GromovMLP(p, 16)
    x = one_hot_pairs(pairs, p)
    H = modular.hidden_activations(mlp, x)
    assert H.shape == (25, 16) and torch.all(H >= 0)  # after the x**2 nonlinearity
    torch.testing.assert_close(mlp.fc2(H) / mlp.width, mlp(x))  # it is what the readout reads
    tf = OneLayerTransformer(p, d_model=8, n_heads=2, d_mlp=12)
    tokens = transformer_tokens(pairs, p)
    assert modular.hidden_activations(tf, tokens).shape == (25, 12)
    assert causal.model_logits(tf, tokens, n_scored=p).shape == (25, p)  # the answer logits only, not "="
    assert causal.model_logits(tf, tokens).shape == (25, p + 1)  # by default every output
    with pytest.raises(ValueError, match="supported models: GromovMLP, OneLayerTransformer"):
        modular.hidden_activations(torch.nn.Linear(3, 2), torch.zeros(4, 3))


# --------------------------------------------------------------------------- the causal sanity check
def test_ablating_the_sum_family_destroys_accuracy_but_random_directions_do_not(run, sum_family):
    F = _logits(run)
    k = sum_family.shape[1]  # p - 1
    random = {f"random {s}": directions.random_directions(len(F), k, seed=s) for s in range(3)}
    df = causal.ablation_curve(F, run.labels, run.test_idx, {"sum": sum_family, **random}, [k])
    before = df[df.k == 0].accuracy
    after = df[df.k == k].set_index("method").accuracy
    assert before.min() > 0.95
    # chance is 1/p; 3/p is ~4 binomial standard deviations above it for the 72 test pairs
    assert after["sum"] < 3 / P
    assert df[(df.method == "sum") & (df.k == k)].loss_ce.item() > df[df.k == 0].loss_ce.iloc[0]
    # a random (p-1)-dimensional subspace holds only ~(p-1)/p^2 of each logit's energy
    assert after.drop("sum").min() > before.min() - 0.05


# --------------------------------------------------------------------------- weight space
def test_projection_gradient_matches_finite_differences(run, sum_family):
    model = copy.deepcopy(run.model).double()
    x = run.inputs.double()
    g = causal.projection_gradient(model, x, sum_family)
    assert {k: v.shape for k, v in g.items()} == {k: v.shape for k, v in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    u = causal.random_weight_direction(model, seed=5)
    assert causal.direction_norm(u) == pytest.approx(1.0)
    Q = np.linalg.qr(sum_family)[0]

    def objective(eps):
        params = {k: p.detach() + eps * u[k] for k, p in model.named_parameters()}
        with torch.no_grad():
            F = causal.model_logits(model, x, params).numpy()
        return 0.5 * np.sum((Q.T @ F) ** 2)

    h = 1e-4
    finite_difference = (objective(h) - objective(-h)) / (2 * h)
    directional = sum((g[k] * u[k]).sum() for k in g).item()
    assert directional == pytest.approx(finite_difference, rel=1e-6)
    assert causal.projection_objective(model, x, sum_family).item() == pytest.approx(objective(0.0), rel=1e-12)


def test_perturbation_curve_is_side_effect_free_and_the_sum_gradient_hurts_most(run, sum_family):
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    directions = {"sum": causal.projection_gradient(run.model, run.inputs, sum_family),
                  **{f"random {s}": causal.random_weight_direction(run.model, seed=s) for s in range(3)}}
    theta = causal.direction_norm(dict(run.model.named_parameters()))
    eps = 0.05 * theta  # a 5% step
    df = causal.perturbation_curve(run.model, run.inputs, run.labels, run.test_idx, directions, [0.0, eps])
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())
    assert list(df.columns)[:6] == ["method", "norm", "accuracy", "loss_ce", "loss_mse", "delta_loss_ce"]
    at0 = df[df.norm == 0]
    assert len(at0) == 4 and (at0.delta_loss_ce == 0).all() and (at0.delta_loss_mse == 0).all()
    delta = df[df.norm == eps].set_index("method")
    assert delta.loc["sum", "delta_loss_ce"] > 0
    assert delta.loc["sum", "delta_loss_ce"] > 10 * delta.drop("sum").delta_loss_ce.abs().max()
    assert delta.loc["sum", "delta_loss_mse"] > delta.drop("sum").delta_loss_mse.max()
    # stepping against the gradient shrinks the logits' sum-family component
    step = {k: p.detach() - eps * directions["sum"][k] / causal.direction_norm(directions["sum"])
            for k, p in run.model.named_parameters()}
    assert (causal.projection_objective(run.model, run.inputs, sum_family, step)
            < causal.projection_objective(run.model, run.inputs, sum_family))


def test_perturbation_curve_on_a_transformer_and_bad_directions():
    p = 5
    pairs, labels = modular_addition_pairs(p)
    tokens = transformer_tokens(pairs, p)
    tf = OneLayerTransformer(p, d_model=8, n_heads=2, d_mlp=12)
    g = causal.projection_gradient(tf, tokens, fourier.feature_family(pairs.numpy(), p, "sum"))
    assert set(g) == {name for name, _ in tf.named_parameters()}
    df = causal.perturbation_curve(tf, tokens, labels, None, {"sum": g}, [0, 0.1])
    assert isinstance(df, pd.DataFrame) and len(df) == 2 and df.delta_loss_ce.iloc[0] == 0
    with pytest.raises(ValueError, match="does not train"):
        causal.perturbation_curve(tf, tokens, labels, None, {"bad": {"nope": torch.ones(1)}}, [1.0])
    with pytest.raises(ValueError, match="non-zero"):
        causal.perturbation_curve(tf, tokens, labels, None, {"zero": {k: 0 * v for k, v in g.items()}}, [1.0])
    with pytest.raises(ValueError, match="norms"):
        causal.perturbation_curve(tf, tokens, labels, None, {"sum": g}, [-1.0])


def test_next_token_shift_is_zero_at_zero_grows_with_the_step_and_restores_the_weight():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=32, layer_types=["sliding_attention", "full_attention"])
    model = transformers.Gemma3ForCausalLM(config).eval()
    ids = torch.randint(0, 40, (5, 6), generator=torch.Generator().manual_seed(0))
    weight = model.model.layers[1].mlp.down_proj.weight
    before = weight.detach().clone()
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    shifts = causal.next_token_shift(model, ids, weight, {"d": direction, "2d": 2 * direction}, [0.0, 0.5, 2.0],
                                     chunk_size=2)
    kl = shifts["d"]
    assert kl.shape == (3, 5)
    np.testing.assert_allclose(shifts["2d"], kl)  # directions are normalised
    np.testing.assert_allclose(kl[0], 0, atol=1e-12)
    assert (kl[1] > 0).all() and (kl[2] > kl[1]).all()
    torch.testing.assert_close(weight, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        causal.next_token_shift(model, ids, weight, {"d": direction.T}, [1.0])


@pytest.mark.parametrize("arch, param", [("llama", "mlp.down_proj.weight"), ("gemma3", "mlp.down_proj.weight"),
                                         ("gpt2", "mlp.c_proj.weight")])
def test_next_token_shift_replays_the_layers_below_the_weight_to_the_bit(arch, param):
    """The lower layers' outputs of the first pass stand in for them on every moved pass: the
    same KL to the bit as the full forward, and the lower layers' insides run only once."""
    pytest.importorskip("transformers")
    from tiny_models import tiny_model

    from entk_utils.kernels.conventions import layer_weight

    model = tiny_model(arch, dtype=torch.float32)
    ids = torch.randint(1, 40, (5, 7), generator=torch.Generator().manual_seed(0))
    name = layer_weight(model, 2, param)
    direction = {"d": torch.randn(model.get_parameter(name).shape, generator=torch.Generator().manual_seed(1))}
    lower = next(m for n, m in model.named_modules() if n.endswith(".0.mlp"))
    calls = []
    lower.register_forward_hook(lambda *args: calls.append(1))
    fast = causal.next_token_shift(model, ids, name, direction, [0.01, 0.1], chunk_size=2)
    assert len(calls) == 3  # the first pass over the 3 chunks only
    full = causal.next_token_shift(model, ids, name, direction, [0.01, 0.1], chunk_size=2, replay_lower_layers=False)
    assert len(calls) == 3 + 3 * 3
    np.testing.assert_array_equal(fast["d"], full["d"])
    assert (fast["d"] > 0).all()
