"""The matrix-free eNTK operator equals the brute-force kernel on tiny random models of nine
Hugging Face architectures, on every forward path, with several weights at once and padding
on either side.

The brute force differentiates the logits at each context's output position through the
model's own forward (``jacrev``, float64): ``J_z`` (N V, P). With ``z = U h + b`` and ``U``
(V, d) of full column rank, ``J_h = (I kron U^+) J_z``; where the logits are capped,
``z = c tanh((U h + b) / c)`` and ``J_h = (I kron (D_n U)^+) J_z``.
"""

import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from tiny_models import CONFIGS, HIDDEN, VOCAB, WEIGHTS, tiny_model  # noqa: E402
from torch.func import functional_call, jacrev  # noqa: E402

from entk_utils.kernels import anatomy, conventions, forward_paths, path_choice  # noqa: E402
from entk_utils.kernels.eigen import top_eigenpairs  # noqa: E402
from entk_utils.kernels.token_reading import TokenOutputChanges  # noqa: E402
from entk_utils.kernels.operators import (  # noqa: E402
    entk_operator,
    layer_entk_operator,
    resolve_weights,
    unembedding_metric,
)

LENGTHS = [7, 5, 6, 4]  # tokens per context; padded to 7
PADDINGS = ("none", "left", "right")
PATHS = ("full", "layer", "module")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds waiting (much of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def contexts(padding: str, seed: int = 1):
    """(ids (N, T), mask (N, T) or None) with pad id 0 on the given side."""
    ids = torch.randint(1, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=torch.Generator().manual_seed(seed))
    if padding == "none":
        return ids, None
    mask = torch.zeros_like(ids)
    for n, length in enumerate(LENGTHS):
        live = slice(len(mask[n]) - length, None) if padding == "left" else slice(0, length)
        mask[n, live] = 1
    return ids * mask, mask


def logit_jacobian(model, names, ids, mask):
    """(J_z (N, V, P) at each context's last real token, logits there (N, V)) through the model's own forward."""
    params = {name: p.detach() for name, p in resolve_weights(model, names).items()}
    kwargs = {"input_ids": ids}
    if mask is not None:  # HF's convention for generation: positions count the real tokens
        kwargs.update(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 1))
    last = torch.full((len(ids),), ids.shape[1] - 1) if mask is None else (mask * torch.arange(ids.shape[1])).argmax(-1)

    def logits(ps):
        return functional_call(model, ps, kwargs=kwargs).logits[torch.arange(len(ids)), last]

    with anatomy.math_attention():
        J = jacrev(logits)(params)
    flat = torch.cat([J[name].reshape(len(ids), VOCAB, -1) for name in params], dim=-1)
    with torch.no_grad():
        return flat.numpy(), logits(params).numpy()


def hidden_jacobian(model, names, ids, mask):
    """(J_h (N d, P), per-context logit metrics A_n (N, d, d))."""
    Jz, z = logit_jacobian(model, names, ids, mask)
    U = model.get_output_embeddings().weight.detach().double().numpy()
    cap = getattr(model.config, "final_logit_softcapping", None)
    rows, metrics = [], []
    for n in range(len(Jz)):
        D = np.ones(VOCAB) if cap is None else 1 - (z[n] / cap) ** 2  # tanh(u/c) = z/c
        DU = D[:, None] * U
        rows.append(np.linalg.pinv(DU) @ Jz[n])
        evals, evecs = np.linalg.eigh(DU.T @ DU)
        metrics.append((evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T)
    return np.concatenate(rows), np.stack(metrics)


def block_diag(blocks):
    n, d, _ = blocks.shape
    out = np.zeros((n * d, n * d))
    for i, block in enumerate(blocks):
        out[i * d:(i + 1) * d, i * d:(i + 1) * d] = block
    return out


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


_CASES = {}
# Gemma2's eager attention takes its softmax in float32, where a float64 model's mask value
# becomes -inf: fully masked (left-pad) query rows give NaN in the model's own forward, so
# (and, with its sliding window, right-pad) query rows give NaN in the model's own forward,
# so those cases run in float32.
FLOAT32 = {("gemma2", "left"), ("gemma2", "right")}


def case(arch, padding):
    """(model, ids, mask, J_h, A_n) of one architecture and padding, built once."""
    if (arch, padding) not in _CASES:
        model = tiny_model(arch, dtype=torch.float32 if (arch, padding) in FLOAT32 else torch.float64)
        ids, mask = contexts(padding)
        _CASES[arch, padding] = (model, ids, mask, *hidden_jacobian(model, WEIGHTS[arch], ids, mask))
    return _CASES[arch, padding]


def tolerance(arch, padding="none"):
    """Largest relative error accepted: float32 rounding, or the float32 RMSNorms of some
    architectures (they compute in float32 even in a float64 model)."""
    if (arch, padding) in FLOAT32:
        return 1e-4
    return 1e-6 if arch in ("llama", "qwen2", "mistral", "phi3", "gemma2", "gemma3") else 1e-9


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_operator_equals_brute_force_on_every_path(arch, padding):
    model, ids, mask, Jh, metrics = case(arch, padding)
    d = Jh.shape[0] // len(ids)
    softcapped = getattr(model.config, "final_logit_softcapping", None) is not None
    A = block_diag(metrics)  # the logit eNTK's geometry, per context where the logits are capped
    K_bf = A @ Jh @ Jh.T @ A
    V = np.random.default_rng(0).standard_normal((len(Jh), 3))
    for path in PATHS:
        op = entk_operator(model, ids, WEIGHTS[arch], attention_mask=mask, truncate=path, chunk_size=3,
                           metric="logits" if softcapped else "unembedding")
        assert op.path == path, op.strategy.describe()
        assert op.shape == (len(ids) * d, len(ids) * d) and op.hidden == d
        assert (op.metric is None) == softcapped
        KV = np.column_stack([op.matvec(v) for v in V.T])
        assert relative_error(KV, K_bf @ V) < tolerance(arch, padding), (path, relative_error(KV, K_bf @ V))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_identity_metric_and_the_param_space_contract(arch):
    """``rmatvec_params`` / ``matvec_params`` are J^T and J with weights as {full name: tensor}."""
    model, ids, mask, Jh, _ = case(arch, "left")
    op = entk_operator(model, ids, WEIGHTS[arch], attention_mask=mask, metric="identity")
    assert op.metric is None
    rng = np.random.default_rng(0)
    w = rng.standard_normal((len(ids), op.hidden))
    Jtw = op.rmatvec_params(torch.from_numpy(w))
    assert list(Jtw) == list(op.weights) and all(Jtw[k].shape == op.weights[k].shape for k in Jtw)
    flat = torch.cat([g.reshape(-1) for g in Jtw.values()]).numpy()
    assert relative_error(flat, Jh.T @ w.reshape(-1)) < tolerance(arch)
    u = {k: torch.from_numpy(rng.standard_normal(tuple(t.shape))) for k, t in op.weights.items()}
    Ju = op.matvec_params(u).numpy().reshape(-1)
    assert relative_error(Ju, Jh @ torch.cat([t.reshape(-1) for t in u.values()]).numpy()) < tolerance(arch)
    assert relative_error(op.matvec(w.reshape(-1)), Jh @ (Jh.T @ w.reshape(-1))) < tolerance(arch)


def test_softcapped_logit_kernel_has_the_spectrum_of_the_logit_entk():
    """On Gemma2 (final logit softcapping) metric='logits' gives the nonzero spectrum of the
    full-vocabulary logit eNTK J_z J_z^T; the plain unembedding metric is refused."""
    model, ids, mask, _, _ = case("gemma2", "right")
    Jz, _ = logit_jacobian(model, WEIGHTS["gemma2"], ids, mask)
    Jz = Jz.reshape(-1, Jz.shape[-1])
    op = entk_operator(model, ids, WEIGHTS["gemma2"], attention_mask=mask, metric="logits")
    dense = np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])
    k = op.shape[0]
    expected = np.sort(np.linalg.eigvalsh(Jz @ Jz.T))[::-1][:k]
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(dense))[::-1], expected, atol=1e-5 * expected[0])
    with pytest.raises(ValueError, match="caps its logits.*metric='logits'"):
        entk_operator(model, ids, WEIGHTS["gemma2"], metric="unembedding")


def test_unembedding_metric_gives_the_logit_spectrum():
    model, ids, mask, _, _ = case("llama", "none")
    Jz, _ = logit_jacobian(model, WEIGHTS["llama"], ids, mask)
    Jz = Jz.reshape(-1, Jz.shape[-1])
    op = entk_operator(model, ids, WEIGHTS["llama"])
    dense = np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])
    expected = np.sort(np.linalg.eigvalsh(Jz @ Jz.T))[::-1][:op.shape[0]]
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(dense))[::-1], expected, atol=tolerance("llama") * expected[0])


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("arch", ["gpt2", "opt", "gemma3"])
def test_padding_on_either_side_gives_the_unpadded_outputs(arch, padding):
    """Positions come from the mask and the output is read at the last real token, so a padded
    context has the outputs of the same tokens unpadded."""
    model = tiny_model(arch)
    padded, mask = contexts(padding)
    out = entk_operator(model, padded, WEIGHTS[arch], attention_mask=mask, metric=None).outputs()
    for n in range(len(padded)):
        alone = entk_operator(model, padded[n:n + 1, mask[n].bool()], WEIGHTS[arch], metric=None).outputs()[0]
        torch.testing.assert_close(out[n], alone, rtol=1e-6, atol=1e-6 * float(alone.abs().max()))


def test_explicit_positions_and_other_model_inputs():
    """An output position per context reads h there; extra inputs reach the model."""
    model, ids, _, _, _ = case("llama", "none")
    positions = torch.tensor([2, 6, 0, 4])
    op = entk_operator(model, ids, WEIGHTS["llama"], positions=positions, metric=None)
    for n, p in enumerate(positions.tolist()):
        alone = entk_operator(model, ids[n:n + 1, :p + 1], WEIGHTS["llama"], metric=None).outputs()[0]
        torch.testing.assert_close(op.outputs()[n], alone)
    gpt2 = tiny_model("gpt2")  # learned absolute positions: shifting them changes h
    shifted = torch.arange(ids.shape[1]).expand_as(ids) + 3
    moved = entk_operator(gpt2, ids, WEIGHTS["gpt2"], metric=None, model_inputs={"position_ids": shifted}).outputs()
    expected = gpt2(input_ids=ids, position_ids=shifted).logits[:, -1]
    torch.testing.assert_close(moved @ gpt2.lm_head.weight.T, expected)
    assert not torch.allclose(moved, entk_operator(gpt2, ids, WEIGHTS["gpt2"], metric=None).outputs())


def test_auto_takes_the_cheapest_path_that_applies():
    model = tiny_model("gpt2")
    ids, _ = contexts("none")
    assert entk_operator(model, ids, "transformer.h.1.mlp.c_proj.weight").path == "module"
    # a norm's weight has no module input shortcut before it inside the layer; embeddings lie outside the layers
    assert entk_operator(model, ids, "transformer.h.1.ln_1.weight").path == "module"
    assert entk_operator(model, ids, "transformer.wpe.weight").path == "full"
    with pytest.raises(ValueError, match="truncate='layer' insists on the layer path for transformer.wpe.weight, which "
                                         "cannot apply: transformer.wpe.weight is not inside a decoder layer; use "
                                         "truncate='full'"):
        entk_operator(model, ids, "transformer.wpe.weight", truncate="layer")
    with pytest.raises(ValueError, match="also the output embedding"):
        entk_operator(model, ids, "transformer.wte.weight")


def test_the_last_layer_runs_at_the_output_positions_only():
    """On the default Gemma path the last layer's keys and values come from a first call on
    every position (its query projection and norm idle), the rest at the output positions;
    the constants of the analysed layer that only fed down_proj's input are idle too."""
    model = tiny_model("gemma3")
    ids, _ = contexts("none")
    op = layer_entk_operator(model, ids, 1)
    assert "the last layer at the output positions" in op.strategy.describe()
    names = {m: n for n, m in model.named_modules()}
    assert {names[m] for m in op.strategy.keys_idle} == {"model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.q_norm"}
    dead = {names[m] for m in op.strategy.dead}
    assert {"model.layers.1.mlp.up_proj", "model.layers.1.self_attn"} <= dead
    assert "model.layers.1.post_attention_layernorm" not in dead and "model.layers.1.mlp.down_proj" not in dead


class PositionMixingNorm(torch.nn.Module):
    """Subtracts the mean over positions: not position-wise, so the last layer cannot run at
    the output positions alone."""

    def forward(self, x):
        return x - x.mean(dim=1, keepdim=True)


def test_a_shortcut_that_does_not_reproduce_the_model_falls_back_with_a_warning():
    model = tiny_model("llama")
    model.model.layers[2].post_attention_layernorm = PositionMixingNorm()
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight *= 30  # so that the wrong norm shows in h
    ids, _ = contexts("none")
    with pytest.warns(UserWarning, match="output positions.* does not reproduce the model's forward on a probe.*"
                                         r"using the module path \(from the input of model.layers.1.self_attn.o_proj\)"):
        op = entk_operator(model, ids, WEIGHTS["llama"])
    assert op.path == "module" and op.strategy.keys_idle is None
    reference = entk_operator(model, ids, WEIGHTS["llama"], truncate="full")
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    assert relative_error(op.matvec(v), reference.matvec(v)) < tolerance("llama")


def test_a_wrong_final_norm_is_caught_by_the_probe():
    model = tiny_model("llama")
    ids, _ = contexts("none")
    with pytest.raises(ValueError, match="truncate='layer' insists on the layer path for model.layers.1.self_attn.o_proj"
                                         ".*: the layer path .* does not reproduce"):
        entk_operator(model, ids, WEIGHTS["llama"], truncate="layer", final_norm=[])
    with pytest.warns(UserWarning, match="falling back to the full model"):
        assert entk_operator(model, ids, WEIGHTS["llama"], final_norm=[]).path == "full"
    assert entk_operator(model, ids, WEIGHTS["llama"], final_norm="model.norm").path == "module"


def test_a_module_called_twice_cannot_start_the_module_path():
    model = tiny_model("llama")
    model.model.layers[2].mlp.down_proj = model.model.layers[1].mlp.down_proj  # shared
    ids, _ = contexts("none")
    name = "model.layers.1.mlp.down_proj.weight"
    with pytest.raises(ValueError, match="truncate='module' insists on the module path for model.layers.1.mlp.down_proj"
                                         ".weight, which cannot apply: .*down_proj is called 2 times"):
        entk_operator(model, ids, name, truncate="module")
    op = entk_operator(model, ids, name)
    assert op.path == "layer"
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    assert relative_error(op.matvec(v), entk_operator(model, ids, name, truncate="full").matvec(v)) < tolerance("llama")


def test_layer_entk_operator_keeps_its_calls_and_layout():
    """The call before weights could be sets: one layer, one weight relative to it; the (N, d)
    row-major layout (block (n, m) couples context n with context m)."""
    model = tiny_model("gemma3", "eager")
    ids, _ = contexts("none")
    op = layer_entk_operator(model, ids, 1, param="mlp.down_proj.weight", truncate=True, chunk_size=2,
                             attention_mask=torch.ones_like(ids))
    assert op.path == "module" and list(op.weights) == ["model.layers.1.mlp.down_proj.weight"]
    assert layer_entk_operator(model, ids, 1, truncate="down_proj").path == "module"
    assert layer_entk_operator(model, ids, 1, truncate=False).path == "full"
    dense = np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])
    np.testing.assert_allclose(dense, dense.T, atol=tolerance("gemma3") * np.abs(dense).max())
    v = np.zeros(op.shape[0])
    v[2 * HIDDEN:3 * HIDDEN] = np.random.default_rng(0).standard_normal(HIDDEN)
    out = op.matvec(v).reshape(len(ids), HIDDEN)
    np.testing.assert_allclose(out[3], dense[3 * HIDDEN:4 * HIDDEN, 2 * HIDDEN:3 * HIDDEN] @ v[2 * HIDDEN:3 * HIDDEN],
                               atol=tolerance("gemma3") * np.abs(out).max())
    assert op.n_matvecs == op.shape[0] + 1


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt_neox", "llama"])
def test_truncate_down_proj_insists_on_an_mlp_output_projection(arch):
    """The legacy ``truncate="down_proj"`` starts at a down-projection's input or says why not,
    naming the path and the weight; it never runs another path in silence."""
    model = tiny_model(arch)
    ids, _ = contexts("none")
    parts = anatomy.find_anatomy(model)
    names = {m: n for n, m in model.named_modules()}
    ran, refused = [], []
    for name, _ in parts.layers[1].named_parameters(prefix=parts.layer_names[1]):
        try:
            op = entk_operator(model, ids, name, truncate="down_proj")
        except ValueError as err:
            assert f"truncate='down_proj' insists on the down_proj path for {name}, which cannot apply" in str(err)
            refused.append(name)
            continue
        assert op.path == "module" and conventions.is_mlp_output(parts, op.strategy.first), name
        ran.append(names[op.strategy.first])
    assert set(ran) == {n for n, m in model.named_modules() if conventions.is_mlp_output(parts, m)
                        and parts.layer_of(n) == 1} and refused


def test_another_output_is_one_argument_and_equals_brute_force():
    """``output=`` the per-example next-token loss: the operator is the Gram of per-example
    gradients of the loss through the model's own forward (``jacrev``, float64), with left
    padding; and a probe's k logits give (I kron W^T) K_h (I kron W)."""
    model = tiny_model("llama")
    ids, mask = contexts("left")
    targets = torch.randint(0, VOCAB, (len(ids),), generator=torch.Generator().manual_seed(3))
    U = model.get_output_embeddings().weight.detach()
    loss = lambda h, index: torch.nn.functional.cross_entropy(h @ U.T, targets[index], reduction="none")  # noqa: E731
    op = entk_operator(model, ids, WEIGHTS["llama"], attention_mask=mask, output=loss, chunk_size=3)
    assert op.shape == (len(ids), len(ids)) and op.output_size == 1 and op.metric is None
    K = np.column_stack([op.matvec(e) for e in np.eye(len(ids))])
    params = {name: p.detach() for name, p in resolve_weights(model, WEIGHTS["llama"]).items()}
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    def per_example_loss(ps, n):
        logits = functional_call(model, ps, kwargs={"input_ids": ids[n:n + 1], "attention_mask": mask[n:n + 1],
                                                    "position_ids": position_ids[n:n + 1]}).logits[0, -1]
        return torch.nn.functional.cross_entropy(logits, targets[n])

    with anatomy.math_attention():
        grads = [jacrev(per_example_loss)(params, n) for n in range(len(ids))]
    G = np.stack([torch.cat([g[k].reshape(-1) for k in params]).detach().numpy() for g in grads])
    assert relative_error(K, G @ G.T) < tolerance("llama")
    W = torch.from_numpy(np.random.default_rng(0).standard_normal((HIDDEN, 3)))
    probe = entk_operator(model, ids, WEIGHTS["llama"], attention_mask=mask, output=lambda h, index: h @ W)
    plain = entk_operator(model, ids, WEIGHTS["llama"], attention_mask=mask, metric="identity")
    Kh = np.column_stack([plain.matvec(e) for e in np.eye(plain.shape[0])])
    IW = np.kron(np.eye(len(ids)), W.numpy())
    Kp = np.column_stack([probe.matvec(e) for e in np.eye(probe.shape[0])])
    assert probe.shape == (3 * len(ids), 3 * len(ids)) and relative_error(Kp, IW.T @ Kh @ IW) < tolerance("llama")


@pytest.mark.parametrize("kwargs, message", [
    (dict(metric="logits"), "metric='logits' is a geometry of h, and output= replaces h"),
    (dict(metric=torch.eye(HIDDEN)), "is a geometry of h"),
])
def test_an_output_with_a_metric_of_h_is_refused(kwargs, message):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        entk_operator(model, contexts("none")[0], WEIGHTS["llama"], output=lambda h, index: h.sum(-1), **kwargs)
    with pytest.raises(ValueError, match=r"output\(h, index\) must return a floating-point tensor \(n,\) or \(n, k\)"):
        entk_operator(model, contexts("none")[0], WEIGHTS["llama"], output=lambda h, index: h.sum())


def test_top_eigenpairs_of_the_operator_match_the_dense_kernel():
    model = tiny_model("gemma3")
    ids, _ = contexts("none")
    op = layer_entk_operator(model, ids, 1)
    evals, evecs = top_eigenpairs(op, 4, steps=40, progress=False)
    dense_evals, dense_vecs = top_eigenpairs(np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])]), 4)
    np.testing.assert_allclose(evals, dense_evals, rtol=1e-6)
    np.testing.assert_allclose(np.abs(evecs.T @ dense_vecs), np.eye(4), atol=1e-4)


def test_weight_direction_is_j_transpose_a_v():
    """<J^T (I kron A) v, u> = <v, (I kron A) J u> for any weight-space vector u."""
    model = tiny_model("qwen2")
    ids, _ = contexts("none")
    op = entk_operator(model, ids, WEIGHTS["qwen2"])
    rng = np.random.default_rng(0)
    v = rng.standard_normal(op.shape[0])
    d = op.weight_direction(v)
    assert set(d) == set(op.weights) and all(d[k].shape == op.weights[k].shape for k in d)
    u = {k: torch.from_numpy(rng.standard_normal(tuple(t.shape))) for k, t in op.weights.items()}
    with torch.no_grad():
        Ju = (op.matvec_params(u) @ op.metric).reshape(-1).numpy()
    assert float(sum((d[k] * u[k]).sum() for k in d)) == pytest.approx(float(v @ Ju), rel=tolerance("qwen2"))
    np.testing.assert_allclose(unembedding_metric(model).numpy(), op.metric.numpy())


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gemma3"])
def test_token_output_changes_are_the_operator_at_every_prefix(arch):
    """Each position t of token_output_changes equals the operator's J step (metric applied) on
    the contexts cut after t; at the last position, K~ v for step = J^T (I kron A) v."""
    model = tiny_model(arch)
    ids, _ = contexts("none")
    op = entk_operator(model, ids, WEIGHTS[arch][:2])
    v = np.random.default_rng(1).standard_normal(op.shape[0])
    step = op.weight_direction(v)
    changes = op.token_output_changes(step, ids, chunk_size=2)
    assert changes.shape == (*ids.shape, op.hidden)
    np.testing.assert_allclose(changes[:, -1].reshape(-1).numpy(), op.matvec(v), rtol=tolerance(arch),
                               atol=tolerance(arch) * np.abs(op.matvec(v)).max())
    t = ids.shape[1] // 2
    prefix = entk_operator(model, ids[:, :t + 1], WEIGHTS[arch][:2])
    expected = (prefix.matvec_params(step) @ prefix.metric).numpy()
    np.testing.assert_allclose(changes[:, t].numpy(), expected, rtol=tolerance(arch),
                               atol=tolerance(arch) * np.abs(expected).max())
    with pytest.raises(ValueError, match="step must be a dict"):
        op.token_output_changes({"nope": step[next(iter(step))]}, ids)


@pytest.mark.parametrize("truncate", ["full", "layer", "auto"])
def test_a_token_reading_of_some_contexts_is_path_independent(truncate):
    """Recorded once on any forward path and read for a subset of the contexts in any order,
    chunked so that a chunk's batch equals neither T nor the subset: the full model's changes."""
    model = tiny_model("llama")
    ids = torch.randint(1, VOCAB, (9, 7), generator=torch.Generator().manual_seed(3))
    op = entk_operator(model, ids, WEIGHTS["llama"][:2], truncate=truncate)
    step = op.weight_direction(np.random.default_rng(2).standard_normal(op.shape[0]))
    reference = entk_operator(model, ids, WEIGHTS["llama"][:2], truncate="full").token_output_changes(step, ids)
    reading = TokenOutputChanges.of_contexts(op, ids, chunk_size=ids.shape[1])
    assert all(sl.stop - sl.start != ids.shape[1] for sl in reading.chunks) and len(reading.chunks) == 2
    rows = [len(ids) - 1, 0, 2]
    np.testing.assert_allclose(reading.changes(step, rows).numpy(), reference[rows].numpy(), rtol=tolerance("llama"),
                               atol=tolerance("llama") * reference.abs().max().item())


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer=3), r"layer must be an integer in 0\.\.2"),
    (dict(layer=-1), "layer must be"),
    (dict(layer=0, param="mlp.nope.weight"), "has no parameter"),
    (dict(layer=0, metric="logit"), "unknown metric"),
    (dict(layer=0, truncate="yes"), "truncate must be one of"),
    (dict(layer=0, chunk_size=0), "chunk_size must be"),
])
def test_bad_arguments_of_layer_entk_operator(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layer_entk_operator(tiny_model("gemma3"), contexts("none")[0], **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights="model.layers.1.mlp.down_proj.weigth"), r"no parameter or module .*did you mean 'model.layers.1.mlp.down_proj.weight'"),
    (dict(weights=[]), "must be a parameter or module name"),
    (dict(attention_mask=torch.ones(4, 3)), "attention_mask must be a 0/1 tensor shaped like input_ids"),
    (dict(attention_mask=torch.zeros(4, 7, dtype=torch.long)), r"contexts \[0, 1, 2, 3\] have no token"),
    (dict(positions=[1, 2, 3]), "positions must hold one integer position"),
    (dict(positions=[1, 2, 3, 7]), "positions must hold one integer position in 0..6"),
    (dict(positions=[0, 0, 0, 6], attention_mask=contexts("right")[1]), r"contexts \[3\] have their output position on a pad"),
    (dict(metric=torch.eye(3)), r"metric must be a \(16, 16\) tensor"),
    (dict(layers="model.norm"), "must be a non-empty ModuleList"),
    (dict(final_norm="model.nope"), "final_norm='model.nope': must be a module of the model"),
    (dict(model_inputs={"input_ids": 1}), "model_inputs must not hold"),
])
def test_bad_arguments_of_entk_operator(kwargs, message):
    args = {"weights": "model.layers.1.mlp.down_proj.weight", **kwargs}
    with pytest.raises(ValueError, match=message):
        entk_operator(tiny_model("llama"), contexts("none")[0], **args)


def test_anatomy_is_found_by_convention():
    for arch, (layers, tail) in {"gpt2": ("transformer.h", ["transformer.ln_f"]),
                                 "opt": ("model.decoder.layers", ["model.decoder.final_layer_norm", "model.decoder.project_out"]),
                                 "gpt_neox": ("gpt_neox.layers", ["gpt_neox.final_layer_norm"])}.items():
        model = tiny_model(arch)
        parts = anatomy.find_anatomy(model)
        names = {m: n for n, m in model.named_modules()}
        assert names[parts.layers] == layers
        ids, _ = contexts("none")
        traced = forward_paths.trace(parts, {"input_ids": ids, "use_cache": False})
        assert [names[m] for m in path_choice.traced_tail(parts, traced)] == tail


def test_no_hooks_or_replaced_forwards_are_left_behind():
    model = tiny_model("llama")
    ids, _ = contexts("none")
    op = entk_operator(model, ids, WEIGHTS["llama"])
    op.matvec(np.ones(op.shape[0]))
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, module
        assert "forward" not in module.__dict__, module
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(input_ids=ids).logits, tiny_model("llama")(input_ids=ids).logits)
