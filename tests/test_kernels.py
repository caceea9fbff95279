"""The fast eNTK equals the torch.func reference, on models it was not written for."""

import warnings

import pytest
import torch
from torch import nn

from entk_utils.kernels import entk, entk_contributions, layerwise_entk, resolve_params
from entk_utils.settings.modular import GromovMLP, OneLayerTransformer, modular_addition_pairs, one_hot_pairs, transformer_tokens


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


class DeepMLP(nn.Module):
    """Biases, tanh and ReLU, three layers, one of them applied twice (weight sharing)."""

    def __init__(self, d_in=6, d_hidden=10, d_out=4):
        super().__init__()
        self.inp = nn.Linear(d_in, d_hidden)
        self.mid = nn.Linear(d_hidden, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.relu(self.mid(h))
        h = torch.relu(self.mid(h))
        return self.out(h)


class Mixed(nn.Module):
    """Linear layers plus parameters the fast path does not know (falls back to reference)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 7, bias=False)
        self.gain = nn.Parameter(torch.randn(7))
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.sin(self.fc(x)) * self.gain)


class TinySeqModel(nn.Module):
    """Token ids (N, T) -> embedding -> per-position linear -> mean-pool readout.

    Linear layers see (N, T, d) inputs, so each weight is used at every position.
    """

    def __init__(self, vocab=9, d=8, n_out=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d)
        self.readout = nn.Linear(d, n_out, bias=False)

    def forward(self, ids):
        h = torch.relu(self.proj(self.embed(ids)))
        return self.readout(h.mean(1))


class Tied(nn.Module):
    """A linear layer whose weight is used a second time outside its own call."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.head(nn.functional.linear(h, self.fc.weight))


class ScaledLinear(nn.Linear):
    """An nn.Linear subclass whose forward is not x @ W.T + b."""

    def forward(self, x):
        return nn.functional.linear(x, 2.0 * self.weight**2, self.bias)


class WithScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ScaledLinear(4, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class PaddedPositional(nn.Module):
    """Token embedding with a padding id, a positional embedding, a linear readout."""

    def __init__(self, vocab=7, d=5, n_ctx=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(n_ctx, d)
        self.readout = nn.Linear(d, 3)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        h = torch.tanh(self.tok(ids) + self.pos(positions))
        return self.readout(h[:, -1] * h[:, 0])


class Mixing(nn.Module):
    """A hidden layer as wide as the readout's input whose units are mixed before it: the
    trace must not fold there (only the readout's own kernel may)."""

    def __init__(self, d=6):
        super().__init__()
        self.fc = nn.Linear(4, d)
        self.mix = nn.Parameter(torch.randn(d, d))
        self.readout = nn.Linear(d, 3)

    def forward(self, x):
        h = self.fc(x)
        return self.readout(torch.tanh(h) + h @ self.mix)


class SwitchesOn(nn.Module):
    """Element-wise between ``fc`` and the readout except for inputs whose first feature
    exceeds 10, where the units mix: a fold that holds on most inputs but not all."""

    def __init__(self, d=5):
        super().__init__()
        self.fc = nn.Linear(3, d, bias=False)
        self.mix = nn.Parameter(torch.randn(d, d))
        self.readout = nn.Linear(d, 2, bias=False)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        gate = torch.relu(x[:, :1] - 10)
        return self.readout(h + gate * (h @ self.mix))


class ConvNet(nn.Module):
    """A convolution (not factorised: reference path) under a linear readout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, kernel_size=3)
        self.readout = nn.Linear(3 * 4, 4)

    def forward(self, x):
        return self.readout(torch.relu(self.conv(x)).flatten(1))


class Normed(nn.Module):
    """LayerNorm (reference path) between two linear layers; it mixes units, so no fold."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.norm = nn.LayerNorm(6)
        self.readout = nn.Linear(6, 3)

    def forward(self, x):
        return self.readout(self.norm(torch.relu(self.fc(x))))


class EveryPosition(nn.Module):
    """Outputs at every position: (N, T) ids -> (N, T * C) logits, a readout called on
    (N, T, d) activations."""

    def __init__(self, vocab=6, d=5, n_out=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.hidden = nn.Linear(d, d)
        self.readout = nn.Linear(d, n_out)

    def forward(self, ids):
        return self.readout(torch.relu(self.hidden(self.embed(ids)))).flatten(1)


class WithUnused(nn.Module):
    """A linear layer the forward never calls: its kernel is zero."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) ** 2


class DeadLayer(nn.Module):
    """A layer used at every position whose output reaches the outputs times zero: its
    signal is zero everywhere, and so is its kernel."""

    def __init__(self, vocab=6, d=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.dead = nn.Linear(d, d)
        self.readout = nn.Linear(d, 2)

    def forward(self, ids):
        h = self.embed(ids)
        return self.readout(h[:, 0]) + 0 * self.dead(h).sum((1, 2))[:, None]


def _cases():
    torch.manual_seed(1)
    pairs, _ = modular_addition_pairs(7)
    yield "gromov", GromovMLP(7, 16), one_hot_pairs(pairs, 7)[:30], None
    yield "deep", DeepMLP(), torch.randn(17, 6), None
    yield "deep-subset", DeepMLP(), torch.randn(17, 6), ["mid", "out.bias"]
    yield "mixed", Mixed(), torch.randn(13, 5), None
    yield "sequence", TinySeqModel(), torch.randint(0, 9, (11, 4)), None
    yield "padded-positional", PaddedPositional(), torch.randint(0, 7, (12, 4)), None
    yield "tied", Tied(), torch.randn(10, 6), None
    yield "subclass", WithScaled(), torch.randn(10, 4), None
    yield "mixing", Mixing(), torch.randn(12, 4), None
    yield "switches-on", SwitchesOn(), torch.cat([torch.randn(1, 3), torch.tensor([[12.0, 0.5, -0.5]]), torch.randn(30, 3)]), None
    yield "conv", ConvNet(), torch.randn(9, 2, 6), None
    yield "layer-norm", Normed(), torch.randn(10, 5), None
    yield "every-position", EveryPosition(), torch.randint(0, 6, (10, 3)), None
    yield "unused-layer", WithUnused(), torch.randn(7, 4), None
    yield "dead-layer", DeadLayer(), torch.randint(0, 6, (8, 3)), None
    yield "transformer", OneLayerTransformer(5, d_model=8, n_heads=2, d_mlp=12), transformer_tokens(modular_addition_pairs(5)[0], 5), None


@pytest.mark.parametrize("reduce", ["trace", "mean", "full"])
@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_fast_equals_reference(case, reduce):
    _, model, x, params = case
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    ref = entk(model, x, params, reduce, method="reference", chunk_size=5)
    fast = entk(model, x, params, reduce, method="fast")
    assert fast.shape == ref.shape
    assert rel_err(fast, ref) < 1e-10


def test_fast_equals_reference_float32_gromov():
    torch.manual_seed(0)
    pairs, _ = modular_addition_pairs(11)
    model, x = GromovMLP(11, 64), one_hot_pairs(pairs, 11)
    assert rel_err(entk(model, x), entk(model, x, method="reference", chunk_size=32)) < 1e-5


@pytest.mark.parametrize("method", ["fast", "reference"])
def test_reductions_agree_with_full_kernel(method):
    model, x = DeepMLP().double(), torch.randn(9, 6).double()
    full = entk(model, x, reduce="full", method=method)
    n_out = full.shape[-1]
    assert full.shape == (9, 9, n_out, n_out)
    trace = torch.einsum("nmcc->nm", full) / n_out
    assert rel_err(entk(model, x, reduce="trace", method=method), trace) < 1e-12
    assert rel_err(entk(model, x, reduce="mean", method=method), full.mean(dim=(2, 3))) < 1e-12
    # symmetric and positive semi-definite
    K = entk(model, x)
    assert torch.allclose(K, K.T, atol=1e-12)
    assert torch.linalg.eigvalsh(K).min() > -1e-10 * K.diagonal().max()


def test_kernel_matches_explicit_gradient_inner_product():
    """Ground truth from first principles: <grad f_c(x), grad f_c(x')> by autograd."""
    model, x = Mixed().double(), torch.randn(4, 5).double()
    out = model(x)
    grads = [[torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[n, c], list(model.parameters()), retain_graph=True)])
              for c in range(3)] for n in range(4)]
    expected = torch.tensor([[sum(grads[n][c] @ grads[m][c] for c in range(3)).item() / 3 for m in range(4)] for n in range(4)],
                            dtype=torch.float64)
    assert rel_err(entk(model, x), expected) < 1e-12


def test_layerwise_groups_sum_to_full_kernel():
    model, x = DeepMLP().double(), torch.randn(12, 6).double()
    full = entk(model, x)
    per_param = layerwise_entk(model, x)
    assert set(per_param) == {n for n, _ in model.named_parameters()}
    assert rel_err(sum(per_param.values()), full) < 1e-12
    by_layer = layerwise_entk(model, x, ["inp", "mid", "out"])
    assert rel_err(sum(by_layer.values()), full) < 1e-12
    labelled = layerwise_entk(model, x, {"hidden": ["inp", "mid"], "readout": "out"})
    assert rel_err(labelled["hidden"], by_layer["inp"] + by_layer["mid"]) < 1e-12


def test_layer_kernel_equals_restricted_entk():
    model, x = DeepMLP().double(), torch.randn(8, 6).double()
    assert rel_err(layerwise_entk(model, x, ["mid"])["mid"], entk(model, x, params="mid", method="reference")) < 1e-12


@pytest.mark.parametrize("reduce", ["trace", "mean", "full"])
def test_chunk_size_does_not_change_the_kernel(reduce):
    model, x = DeepMLP().double(), torch.randn(23, 6).double()
    a = entk(model, x, reduce=reduce, chunk_size=4)
    b = entk(model, x, reduce=reduce, chunk_size=100)
    c = entk(model, x, reduce=reduce, method="reference", chunk_size=7)
    assert rel_err(a, b) < 1e-12 and rel_err(c, b) < 1e-12


def test_reference_blocks_follow_the_memory_budget(monkeypatch):
    """A budget below the Jacobians of all inputs splits them into blocks; same kernel."""
    from entk_utils.kernels import reference

    model, x = DeepMLP().double(), torch.randn(23, 6).double()
    whole = entk(model, x, method="reference")
    per_input = 4 * sum(p.numel() for p in model.parameters()) * 8  # 4 outputs, float64
    assert reference._reference_block(23, per_input) == 23
    monkeypatch.setattr(reference, "REFERENCE_MEMORY", 10 * per_input)
    assert reference._reference_block(23, per_input) == 5  # 5 blocks of at most 10 // 2 inputs
    assert rel_err(entk(model, x, method="reference"), whole) < 1e-12


@pytest.mark.parametrize("width", [64, 1024])
def test_gromov_kernel_diagonal_at_init_is_seven_over_p_squared_width(width):
    """At init (N(0,1) weights, the model's scalings) the trace eNTK's diagonal has mean
    7 / (p^2 width): with h_i = W1_i.x / sqrt(2p) ~ N(0, 1/p) for a one-hot pair, the readout
    contributes sum_i h_i^4 / width^2 = 3 / (p^2 width) and the first layer
    sum_i W2_ci^2 (2 h_i)^2 |x|^2 / (2p width^2) = 4 / (p^2 width), so the kernel is O(1/width)."""
    pairs, _ = modular_addition_pairs(5)
    K = entk(GromovMLP(5, width), one_hot_pairs(pairs, 5))
    assert K.shape == (25, 25)
    assert K.diagonal().mean().item() == pytest.approx(7 / (25 * width), rel=0.15)


def test_model_mode_is_restored():
    model = DeepMLP().train()
    entk(model, torch.randn(3, 6))
    assert model.training


@pytest.mark.parametrize("kwargs, message", [
    (dict(reduce="sum"), "unknown reduce"),
    (dict(method="fastest"), "unknown method"),
    (dict(params=["nope"]), "unknown parameter group 'nope'"),
    (dict(params=[]), "empty list"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        entk(DeepMLP(), torch.randn(3, 6), **kwargs)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size_raises(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        entk(DeepMLP(), torch.randn(3, 6), chunk_size=chunk_size)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="at least one example"):
        entk(DeepMLP(), torch.randn(0, 6))


def test_non_matrix_output_raises():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x).reshape(-1)

    with pytest.raises(ValueError, match=r"\(N, C\) outputs"):
        entk(Bad(), torch.randn(4, 3))


def test_overlapping_groups_raise():
    with pytest.raises(ValueError, match="both group"):
        layerwise_entk(DeepMLP(), torch.randn(3, 6), {"x": "mid", "y": "mid.weight"})


def test_resolve_params_prefix_and_order():
    model = DeepMLP()
    assert resolve_params(model, "mid") == ["mid.weight", "mid.bias"]
    assert resolve_params(model, ["out.bias", "inp"]) == ["inp.weight", "inp.bias", "out.bias"]
    assert entk_contributions(model, torch.randn(2, 6), "out").keys() == {"out.weight", "out.bias"}


@pytest.mark.parametrize("model_cls, n_in", [(Tied, 6), (WithScaled, 4)])
def test_factorisation_check_is_what_keeps_the_fast_path_right(monkeypatch, model_cls, n_in):
    """Without its check the factorisation would be silently wrong on these models."""
    from entk_utils.kernels import gram

    model, x = model_cls().double(), torch.randn(10, n_in).double()
    ref = entk(model, x, method="reference")
    monkeypatch.setattr(gram, "_factorisation_holds", lambda model, out, owners, x, g: set(owners))
    assert rel_err(entk(model, x, method="fast"), ref) > 1e-3


@pytest.mark.parametrize("reduce", ["trace", "mean", "full"])
@pytest.mark.parametrize("model, ids", [
    (PaddedPositional(), torch.randint(0, 7, (9, 4))),
    (OneLayerTransformer(5, d_model=8, n_heads=2, d_mlp=12), transformer_tokens(modular_addition_pairs(5)[0], 5)),
], ids=["padded-positional", "transformer"])
def test_embeddings_and_attention_take_the_fast_path(monkeypatch, model, ids, reduce):
    """Embedding and attention-model kernels come from the Gram factorisation (signals by
    one backward pass), not the Jacobian fallback."""
    from entk_utils.kernels import gram

    def no_reference(*args, **kwargs):
        raise AssertionError("reference path used")

    model = model.double()
    ref = entk(model, ids, reduce=reduce, method="reference")
    monkeypatch.setattr(gram, "reference_contributions", no_reference)
    assert rel_err(entk(model, ids, reduce=reduce, method="fast"), ref) < 1e-10


@pytest.mark.parametrize("reduce", ["trace", "mean"])
@pytest.mark.parametrize("cost", [-10**9, 10**9], ids=["factorised", "per-example"])
@pytest.mark.parametrize("model, ids", [
    (TinySeqModel(), torch.randint(0, 9, (11, 4))),
    (PaddedPositional(), torch.randint(0, 7, (9, 4))),
    (OneLayerTransformer(5, d_model=8, n_heads=2, d_mlp=12), transformer_tokens(modular_addition_pairs(5)[0], 5)),
], ids=["sequence", "padded-positional", "transformer"])
def test_both_formulas_for_layers_at_several_positions(monkeypatch, model, ids, cost, reduce):
    """A layer used at T > 1 positions has two exact kernels (product of (N T)^2 Grams, or
    Gram of per-example gradients); ELEMENTWISE_COST picks one. Both equal the reference."""
    from entk_utils.kernels import gram

    model = model.double()
    ref = entk(model, ids, reduce=reduce, method="reference")
    monkeypatch.setattr(gram, "ELEMENTWISE_COST", cost)
    assert rel_err(entk(model, ids, reduce=reduce, method="fast"), ref) < 1e-10


def _folds(model, x):
    """``({layer: point}, rejected)``: the folds the probe picks for the trace eNTK of all of
    ``model``'s parameters, and those the check on every input then rejects."""
    from entk_utils.kernels import gram

    owners = gram._owners(model, resolve_params(model))
    safe, folds = gram._probe(model, x, owners, "trace")
    layers = sorted({owners[p][0] for p in safe})
    _, rejected = gram._collect(model, x, layers, folds, "trace", len(x))
    return {layer: point for layer, (point, _) in folds.items()}, rejected


def test_trace_folds_only_where_exact():
    """Readouts fold at the output; a hidden layer folds at the readout's input only when
    its units reach it one to one (Gromov's square activation, sin times a gain)."""
    torch.manual_seed(0)
    pairs, _ = modular_addition_pairs(7)
    assert _folds(GromovMLP(7, 16), one_hot_pairs(pairs, 7)) == ({"fc2": None, "fc1": "fc2"}, set())
    assert _folds(Mixed(), torch.randn(8, 5)) == ({"head": None, "fc": "head"}, set())
    assert _folds(Mixing(), torch.randn(8, 4)) == ({"readout": None}, set())  # units mixed by `mix`
    assert _folds(Normed(), torch.randn(8, 5)) == ({"readout": None}, set())  # LayerNorm mixes units
    assert _folds(DeepMLP(), torch.randn(8, 6)) == ({"out": None}, set())  # `mid`'s first call is far from the readout
    assert _folds(EveryPosition(), torch.randint(0, 6, (8, 3))) == ({}, set())  # outputs at several positions


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_fold_is_rechecked_on_every_input(chunk_size):
    """SwitchesOn mixes its units on one input (index 1), which the probe (every second
    input here) misses: the fold it picks is rejected by the check on every input, the
    layer recomputed with per-output signals, and the kernel is exact."""
    from entk_utils.kernels import gram

    model = SwitchesOn().double()
    x = torch.cat([torch.randn(1, 3), torch.tensor([[12.0, 0.5, -0.5]]), torch.randn(30, 3)]).double()
    assert 1 not in torch.linspace(0, len(x) - 1, gram.PROBE_SIZE).round().long().tolist()
    assert _folds(model, x) == ({"readout": None, "fc": "readout"}, {"fc"})
    ref = entk(model, x, method="reference")
    assert rel_err(entk(model, x, chunk_size=chunk_size), ref) < 1e-10


def test_fold_checks_are_what_keep_the_trace_right(monkeypatch):
    """With every check passing blindly, Mixing's hidden layer would fold and be wrong."""
    from entk_utils.kernels import gram

    model, x = Mixing().double(), torch.randn(12, 4).double()
    ref = entk(model, x, method="reference")
    monkeypatch.setattr(gram, "_close", lambda a, b: True)
    assert rel_err(entk(model, x, method="fast"), ref) > 1e-3


@pytest.mark.parametrize("method", ["fast", "reference"])
def test_non_finite_values_warn(method):
    model, x = DeepMLP(), torch.randn(5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entk(model, x, method=method)  # finite: no warning
    x[2, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match="inputs hold non-finite values") as record:
        entk(model, x, method=method)
    assert len(record) == 1
    with torch.no_grad():
        model.mid.weight[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="kernels of .*mid.weight.* hold non-finite values"):
        entk(model, torch.randn(5, 6), method=method)
