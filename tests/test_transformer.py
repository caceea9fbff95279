import numpy as np
import pytest
import torch

from entk_utils.settings import modular
from entk_utils.kernels import entk, layerwise_entk
from entk_utils.settings.modular import OneLayerTransformer, modular_addition_pairs, train_transformer, transformer_tokens


def small_model(p=7, seed=0):
    torch.manual_seed(seed)
    return OneLayerTransformer(p, d_model=16, n_heads=4, d_mlp=24)


def test_shapes_and_tokens():
    pairs, _ = modular_addition_pairs(7)
    tokens = transformer_tokens(pairs, 7)
    assert tokens.shape == (49, 3) and torch.all(tokens[:, 2] == 7)
    logits, mlp = small_model()(tokens, return_mlp=True)
    assert logits.shape == (49, 8) and mlp.shape == (49, 24)


def test_paper_sizes_and_initialisation():
    torch.manual_seed(0)
    model = OneLayerTransformer(29)
    sizes = {name: tuple(getattr(model, name).weight.shape) for name in model.WEIGHTS}
    assert sizes == {"W_E": (30, 64), "W_pos": (3, 64), "W_Q": (64, 64), "W_K": (64, 64), "W_V": (64, 64),
                     "W_O": (64, 64), "W_in": (256, 64), "W_out": (64, 256), "W_U": (30, 64)}
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    for name, std in [("W_E", 64**-0.5), ("W_in", 256**-0.5), ("W_U", 30**-0.5), ("W_out", 64**-0.5)]:
        assert getattr(model, name).weight.std().item() == pytest.approx(std, rel=0.1)


def test_attention_is_causal():
    model = small_model()
    x = torch.randn(5, 3, 16)
    pattern = model.attention_pattern(x)
    assert pattern.shape == (5, 4, 3, 3)
    assert torch.all(pattern.triu(diagonal=1) == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(5, 4, 3))
    changed = x.clone()
    changed[:, 2] = torch.randn(5, 16)  # the last position cannot change what earlier ones attend to
    torch.testing.assert_close(model.attention_pattern(changed)[:, :, :2], pattern[:, :, :2])


def test_layerwise_kernels_sum_to_full_and_match_reference():
    model = small_model().double()
    tokens = transformer_tokens(modular_addition_pairs(7)[0], 7)[::3]
    fast = layerwise_entk(model, tokens, list(model.WEIGHTS), reduce="mean")
    ref = layerwise_entk(model, tokens, list(model.WEIGHTS), reduce="mean", method="reference")
    for name in model.WEIGHTS:
        assert ((fast[name] - ref[name]).norm() / ref[name].norm()).item() < 1e-10, name
    full = entk(model, tokens, reduce="mean", method="reference")
    assert ((sum(fast.values()) - full).norm() / full.norm()).item() < 1e-10


def test_unknown_weight_name():
    with pytest.raises(ValueError, match="unknown parameter group 'W_X'"):
        layerwise_entk(small_model(), torch.zeros(2, 3, dtype=torch.long), ["W_U", "W_X"])


def test_bad_configuration():
    with pytest.raises(ValueError, match="odd prime"):
        OneLayerTransformer(30)
    with pytest.raises(ValueError, match="divisible"):
        OneLayerTransformer(29, d_model=30, n_heads=4)


def test_training_run_is_cached_and_deterministic(tmp_path):
    kwargs = dict(seed=3, lr=3e-3, train_frac=0.6, batch_size=16, d_model=16, d_mlp=32, checkpoint_every=5, progress=False)
    a = train_transformer(p=7, epochs=10, cache_dir=tmp_path, **kwargs)
    b = train_transformer(p=7, epochs=10, cache_dir=tmp_path, **kwargs)
    c = train_transformer(p=7, epochs=10, **kwargs)
    assert sorted(a.result.checkpoints) == [0, 5, 10]
    assert len(list(tmp_path.glob("transformer-*.pt"))) == 1
    for other in (b, c):
        assert other.result.history.equals(a.result.history)
    assert a.inputs.shape == (49, 3) and len(a.train_idx) == round(0.6 * 49)
    np.testing.assert_array_equal(np.sort(np.concatenate([a.train_idx, a.test_idx])), np.arange(49))


def test_paper_init_draws_each_weight_in_the_authors_order():
    p, d, d_mlp = 7, 16, 32
    model = modular.paper_transformer_init(OneLayerTransformer(p, d_model=d, n_heads=4, d_mlp=d_mlp), seed=5)
    torch.manual_seed(5)
    draws = [torch.randn(p + 1, d), torch.randn(3, d), *[torch.randn(4, d // 4, d) for _ in range(3)],
             torch.randn(d, d), torch.randn(d, d_mlp), torch.randn(d_mlp, d), torch.randn(d, p + 1)]
    torch.testing.assert_close(model.W_E.weight, draws[0] / d**0.5)
    torch.testing.assert_close(model.W_pos.weight, draws[1] / d**0.5)
    torch.testing.assert_close(model.W_Q.weight, draws[2].reshape(d, d) / d**0.5)
    torch.testing.assert_close(model.W_V.weight, draws[4].reshape(d, d) / d**0.5)
    torch.testing.assert_close(model.W_O.weight, draws[5] / d**0.5)
    torch.testing.assert_close(model.W_in.weight, draws[6].T / d_mlp**0.5)
    torch.testing.assert_close(model.W_out.weight, draws[7].T / d**0.5)
    torch.testing.assert_close(model.W_U.weight, draws[8].T / (p + 1) ** 0.5)


def test_paper_init_leaves_the_global_generator_alone():
    model = OneLayerTransformer(7, d_model=16, n_heads=4, d_mlp=32)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    modular.paper_transformer_init(model, seed=0)
    torch.testing.assert_close(torch.rand(3), expected)
