"""The architecture conventions of :mod:`entk_utils.kernels.conventions`: which weights a
layer's blocks are, found by the usual names, on tiny models of several architectures."""

import pytest
import torch

pytest.importorskip("transformers")
from tiny_models import tiny_model  # noqa: E402

from entk_utils.kernels import conventions  # noqa: E402
from entk_utils.kernels.anatomy import find_anatomy  # noqa: E402


@pytest.mark.parametrize("arch, expected", [
    ("llama", ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp"]),
    ("gpt2", ["transformer.h.1.attn.c_proj.weight", "transformer.h.1.mlp"]),
    ("opt", ["model.decoder.layers.1.self_attn.out_proj.weight", "model.decoder.layers.1.fc1",
             "model.decoder.layers.1.fc2"]),
    ("gpt_neox", ["gpt_neox.layers.1.attention.dense.weight", "gpt_neox.layers.1.mlp"]),
])
def test_default_weights_are_one_layers_attention_output_and_mlp(arch, expected):
    model = tiny_model(arch)
    assert conventions.default_weights(model) == expected  # the second-to-last of 3 layers
    assert conventions.default_weights(model, layer=0) == [name.replace(".1.", ".0.") for name in expected]
    assert conventions.highest_layer(model, expected) == 1
    assert conventions.highest_layer(model, [*expected, expected[0].replace(".1.", ".2.")]) == 2


def test_default_weights_ask_for_names_where_the_layer_is_unusual():
    model = tiny_model("llama")
    model.model.layers[1].mlp = torch.nn.Identity()
    del model.model.layers[1].mlp
    with pytest.raises(ValueError, match="cannot tell the attention output projection and the MLP of layer 1 .*"
                                         "pass weights="):
        conventions.default_weights(model)
    with pytest.raises(ValueError, match="layer=3: must be in 0..2"):
        conventions.default_weights(tiny_model("llama"), layer=3)


@pytest.mark.parametrize("arch, outputs", [
    ("llama", "model.layers.{}.mlp.down_proj"), ("gpt2", "transformer.h.{}.mlp.c_proj"),
    ("opt", "model.decoder.layers.{}.fc2"), ("gpt_neox", "gpt_neox.layers.{}.mlp.dense_4h_to_h"),
    ("phi3", "model.layers.{}.mlp.down_proj"),
])
def test_the_mlp_output_projection_is_told_from_every_other_module(arch, outputs):
    model = tiny_model(arch)
    anatomy = find_anatomy(model)
    found = [name for name, module in model.named_modules() if conventions.is_mlp_output(anatomy, module)]
    assert found == [outputs.format(i) for i in range(len(anatomy.layers))]


def test_layer_weight_names_a_parameter_of_one_layer():
    model = tiny_model("llama")
    assert conventions.layer_weight(model, 2) == "model.layers.2.mlp.down_proj.weight"
    assert conventions.layer_weight(model, 0, "self_attn.o_proj.weight") == "model.layers.0.self_attn.o_proj.weight"
    with pytest.raises(ValueError, match="layer must be an integer in 0..2, got 3"):
        conventions.layer_weight(model, 3)
    with pytest.raises(ValueError, match="layer 1 has no parameter 'mlp.nope'; it has"):
        conventions.layer_weight(model, 1, "mlp.nope")
