"""How Hugging Face causal LMs name their parts: one table of the names this package reads a
decoder layer by, and what it reads with them.

The decoder layers, final norm and output embedding are found through the model's own
interface (:func:`~entk_utils.kernels.anatomy.find_anatomy`); inside a layer, the blocks
have no common interface, only common names:

======================  =====================================================================
:data:`ATTENTION`        a decoder layer's attention block
:data:`ATTENTION_OUTPUT` that block's output projection
:data:`MLP`              a decoder layer's MLP block
:data:`MLP_LINEARS`      the MLP's linear maps where the layer holds them itself (OPT)
:data:`MLP_OUTPUT`       the MLP's output (down-) projection, inside the block or in the layer
:data:`CACHE_ARGUMENTS`  a layer's key-value cache argument
======================  =====================================================================

A model that names its parts otherwise still works everywhere: pass the weights by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .anatomy import Anatomy, find_anatomy

ATTENTION = ("self_attn", "attn", "attention", "self_attention")
ATTENTION_OUTPUT = ("o_proj", "out_proj", "c_proj", "dense", "wo")
MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
MLP_LINEARS = ("fc1", "fc2")
MLP_OUTPUT = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "wo", "fc_out")
CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past", "past_key_value")


def _anatomy(model: nn.Module | Anatomy) -> Anatomy:
    return model if isinstance(model, Anatomy) else find_anatomy(model)


def default_weights(model: nn.Module | Anatomy, layer: int | None = None) -> list[str]:
    """The attention output projection's weight and the MLP block of decoder layer ``layer``
    (default: the second-to-last) as full names, found by :data:`ATTENTION`,
    :data:`ATTENTION_OUTPUT`, :data:`MLP` (or :data:`MLP_LINEARS`); ``ValueError`` asking
    for explicit weights where the layer does not follow these names."""
    anatomy = _anatomy(model)
    n_layers = len(anatomy.layers)
    layer = max(n_layers - 2, 0) if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer!r}: must be in 0..{n_layers - 1}")
    children = dict(anatomy.layers[layer].named_children())
    prefix = anatomy.layer_names[layer]
    attention = next((a for a in ATTENTION if a in children), None)
    output = next((o for o in ATTENTION_OUTPUT if attention and isinstance(getattr(children[attention], o, None),
                                                                           torch.nn.Module)), None)
    mlp = [m for m in MLP if m in children][:1] or [m for m in MLP_LINEARS if m in children]
    if output is None or not mlp:
        raise ValueError(f"cannot tell the attention output projection and the MLP of layer {layer} of "
                         f"{type(anatomy.model).__name__} (its blocks: {', '.join(children)}); pass weights=[...] by name")
    return [f"{prefix}.{attention}.{output}.weight", *(f"{prefix}.{m}" for m in mlp)]


def highest_layer(model: nn.Module | Anatomy, weights: Sequence[str]) -> int:
    """The highest decoder layer holding one of ``weights`` (full names; the last layer if none does)."""
    anatomy = _anatomy(model)
    inside = [i for i in map(anatomy.layer_of, weights) if i is not None]
    return max(inside) if inside else len(anatomy.layers) - 1


def is_mlp_output(anatomy: Anatomy, module: nn.Module) -> bool:
    """Whether ``module`` is a decoder layer's MLP output projection (:data:`MLP_OUTPUT` inside
    an :data:`MLP` block, or ``fc2`` held by the layer itself)."""
    name = anatomy.names().get(module, "")
    layer = anatomy.layer_of(name)
    if layer is None:
        return False
    inside = name[len(anatomy.layer_names[layer]) + 1:].split(".")
    return (len(inside) == 2 and inside[0] in MLP and inside[1] in MLP_OUTPUT) or inside == ["fc2"]


def layer_weight(model: nn.Module | Anatomy, layer: int, param: str = "mlp.down_proj.weight") -> str:
    """The full parameter name of ``param`` (named inside a decoder layer) in layer ``layer``;
    ``ValueError`` naming the layer's parameters if it has none of that name."""
    anatomy = _anatomy(model)
    n_layers = len(anatomy.layers)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
        raise ValueError(f"layer must be an integer in 0..{n_layers - 1}, got {layer!r}")
    own = dict(anatomy.layers[layer].named_parameters())
    if param not in own:
        raise ValueError(f"layer {layer} has no parameter {param!r}; it has {list(own)}")
    return f"{anatomy.layer_names[layer]}.{param}"
