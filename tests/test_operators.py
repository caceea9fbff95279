"""The matrix-free layer eNTK operator equals the brute-force kernel on a tiny Gemma3."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from torch.func import functional_call, jacrev  # noqa: E402

from entk_utils.kernels.eigen import top_eigenpairs  # noqa: E402
from entk_utils.kernels.operators import layer_entk_operator, unembedding_metric  # noqa: E402

N_CTX, T, LAYER = 5, 7, 1


def tiny_gemma(attn_implementation):
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, sliding_window=3, max_position_embeddings=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )
    config._attn_implementation = attn_implementation
    return transformers.Gemma3ForCausalLM(config).double().eval()


def dense(op):
    return np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])


def brute_force(model, ids, layer, metric=True):
    """(I kron A) J J^T (I kron A) from the full Jacobian of h = final-norm state at the last position."""
    name = f"layers.{layer}.mlp.down_proj.weight"
    theta = dict(model.model.named_parameters())[name].detach()
    J = jacrev(lambda t: functional_call(model.model, {name: t}, kwargs={"input_ids": ids}).last_hidden_state[:, -1])(theta)
    J = J.reshape(len(ids) * model.config.hidden_size, -1).detach().numpy()
    IA = np.kron(np.eye(len(ids)), unembedding_metric(model).numpy()) if metric else np.eye(J.shape[0])
    return IA @ J @ J.T @ IA


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 50, (N_CTX, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layer", [LAYER, 3])
def test_operator_equals_brute_force_on_every_path(attn, layer, ids):
    """T = 7 exceeds the sliding window (3), so the last-position shortcut must apply the mask."""
    model = tiny_gemma(attn)
    K_bf = brute_force(model, ids, layer)
    scale = np.abs(K_bf).max()
    for truncate, path, chunk_size in [(True, "down_proj", 2), ("layer", "layer", 2), (False, "full-model", 3)]:
        op = layer_entk_operator(model, ids, layer, chunk_size=chunk_size, truncate=truncate)
        assert op.path == path
        assert op.shape == (N_CTX * 16, N_CTX * 16)
        K = dense(op)
        # Gemma's RMSNorm computes in float32 internally, which sets the floor even in float64
        assert np.abs(K - K_bf).max() < 1e-5 * scale, path
        assert np.abs(K - K.T).max() < 1e-5 * scale


def test_shortcut_falls_back_when_a_layer_is_not_what_it_looks_like(ids):
    """A layer with Gemma's attribute names but a different forward fails the probe."""
    model = tiny_gemma("eager")
    last = model.model.layers[-1]
    original = type(last).forward

    def forward_with_extra_residual(self, hidden_states, **kwargs):  # (not a rescaling: the final norm undoes those)
        return original(self, hidden_states, **kwargs) + hidden_states

    last.forward = forward_with_extra_residual.__get__(last)
    with pytest.warns(UserWarning, match="falling back"):
        op = layer_entk_operator(model, ids, LAYER)
    assert op.path == "layer"
    np.testing.assert_allclose(dense(op), brute_force(model, ids, LAYER), atol=1e-5 * np.abs(dense(op)).max())
    with pytest.raises(ValueError, match="does not reproduce"):
        layer_entk_operator(model, ids, LAYER, truncate="down_proj")


def test_identity_metric_and_layout(ids):
    model = tiny_gemma("eager")
    op = layer_entk_operator(model, ids, 3, metric=None)
    np.testing.assert_allclose(dense(op), brute_force(model, ids, 3, metric=False), atol=1e-5 * np.abs(dense(op)).max())
    # (N, d) row-major layout: block (n, m) of the kernel couples context n with context m
    v = np.zeros(op.shape[0])
    v[2 * 16:3 * 16] = np.random.default_rng(0).standard_normal(16)
    out = op.matvec(v).reshape(N_CTX, 16)
    Kd = dense(op)
    expected = Kd[4 * 16:5 * 16, 2 * 16:3 * 16] @ v[2 * 16:3 * 16]
    np.testing.assert_allclose(out[4], expected, atol=1e-5 * np.abs(expected).max())


def test_top_eigenpairs_of_the_operator_match_the_dense_kernel(ids):
    model = tiny_gemma("sdpa")
    op = layer_entk_operator(model, ids, LAYER)
    evals, evecs = top_eigenpairs(op, 4, steps=40, progress=False)
    dense_evals, dense_vecs = top_eigenpairs(dense(op), 4)
    np.testing.assert_allclose(evals, dense_evals, rtol=1e-6)
    np.testing.assert_allclose(np.abs(evecs.T @ dense_vecs), np.eye(4), atol=1e-4)
    assert op.n_matvecs >= 40


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer=4), r"layer must be an integer in 0\.\.3"),
    (dict(layer=-1), "layer must be"),
    (dict(layer=0, param="mlp.nope.weight"), "has no parameter"),
    (dict(layer=0, metric="logits"), "unknown metric"),
    (dict(layer=0, truncate="yes"), "truncate must be one of"),
])
def test_bad_arguments(ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_entk_operator(tiny_gemma("eager"), ids, **kwargs)


def test_weight_direction_is_j_transpose_a_v(ids):
    """<J^T (I kron A) v, u> = <v, (I kron A) J u> for any weight-shaped u."""
    model = tiny_gemma("eager")
    op = layer_entk_operator(model, ids, LAYER)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(op.shape[0])
    d = op.weight_direction(v)
    assert d.shape == op.theta.shape
    u = torch.from_numpy(rng.standard_normal(tuple(op.theta.shape))).to(op.theta)
    with torch.no_grad():
        Ju = (op.matvec_params(u) @ op.A).reshape(-1).numpy()
    assert float((d * u).sum()) == pytest.approx(float(v @ Ju), rel=1e-6)


def test_down_proj_truncation_refuses_a_weight_or_layers_it_cannot_shortcut(ids):
    with pytest.raises(ValueError, match="truncate='down_proj' needs param='mlp.down_proj.weight'"):
        layer_entk_operator(tiny_gemma("eager"), ids, LAYER, param="mlp.up_proj.weight", truncate="down_proj")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    llama = transformers.LlamaForCausalLM(config).double().eval()  # no pre/post feed-forward norms
    with pytest.raises(ValueError, match=r"needs Gemma-style decoder layers .* layers \[0, 1\] are not"):
        layer_entk_operator(llama, ids, 0, truncate="down_proj")
    assert layer_entk_operator(llama, ids, 0).path == "layer"  # the default still picks what applies
