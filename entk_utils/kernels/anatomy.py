"""The parts of a causal LM that an eNTK operator needs, and the inputs it runs on.

:func:`find_anatomy` finds the decoder layers, the final norm and the output embedding
(unembedding) through the model's own conventions; :func:`make_contexts` turns token ids,
an attention mask and output positions into the model's inputs; :func:`run_to_output` runs the
model's own forward up to where its output embedding receives its input. How the layers'
blocks are named is in :mod:`.conventions`; the forward paths built on these parts are in
:mod:`.forward_paths`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class NotApplicable(ValueError):
    """A path cannot run these weights on this model (the message says why)."""


def math_attention():
    """Forward-mode AD does not go through fused SDPA kernels: use the math backend."""
    return sdpa_kernel(SDPBackend.MATH)


# --------------------------------------------------------------------------- the model's parts
@dataclass
class Anatomy:
    """Where things are in a causal LM.

    model : the whole model; layers : its decoder layers (in call order); layer_names : their
    names in ``model.named_modules()``; output_embedding : the unembedding module (its input at
    the output positions is ``h``); hidden : d, the size of that input; tail : the modules from
    the last layer's output to the output embedding's input, or None to find them by tracing.
    """

    model: nn.Module
    layers: nn.ModuleList
    layer_names: list[str]
    output_embedding: nn.Module
    hidden: int
    tail: list[nn.Module] | None = None

    def names(self) -> dict[nn.Module, str]:
        """``{module: its name in the model}``."""
        return {module: name for name, module in self.model.named_modules(remove_duplicate=False)}

    def layer_of(self, name: str) -> int | None:
        """Index of the decoder layer holding the parameter or module ``name`` (None if outside)."""
        for i, prefix in enumerate(self.layer_names):
            if name.startswith(prefix + "."):
                return i
        return None


def _named(model: nn.Module, what, kind: str) -> nn.Module:
    """``what`` if it is a module of ``model``, else the submodule of that name."""
    if isinstance(what, nn.Module):
        return what
    modules = dict(model.named_modules())
    if not isinstance(what, str) or what not in modules:
        raise ValueError(f"{kind}={what!r}: must be a module of the model or the name of one")
    return modules[what]


def _find_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers: a ModuleList of one class under the decoder (``get_decoder()``, else
    the ``base_model_prefix`` attribute), of length ``num_hidden_layers`` where the config says."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None:
        decoder = getattr(model, getattr(model, "base_model_prefix", ""), model)
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text_config, "num_hidden_layers", None)
    lists = [(name, m) for name, m in decoder.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and len({type(x) for x in m}) == 1]
    fitting = [(name, m) for name, m in lists if n_layers is None or len(m) == n_layers] or lists
    if not fitting:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: pass layers= (a ModuleList or its name)")
    depth = min(name.count(".") for name, _ in fitting)
    shallowest = [m for name, m in fitting if name.count(".") == depth]
    if len(shallowest) > 1:
        raise ValueError(f"{type(model).__name__} has several candidate lists of decoder layers "
                         f"({', '.join(name for name, _ in fitting)}): pass layers=")
    return shallowest[0]


def find_anatomy(model: nn.Module, layers=None, final_norm=None) -> Anatomy:
    """The :class:`Anatomy` of a Hugging Face causal LM, found through its conventions.

    layers : None (the ModuleList of decoder layers under ``get_decoder()``), or the
        ModuleList / its name. final_norm : None (trace which modules the model calls between
        its last layer and its output embedding), or a module, a name, or a list of them
        (``[]``: nothing) applied in order to the last layer's output.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(output, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"{type(model).__name__} has no output embedding with a (V, d) weight "
                         "(get_output_embeddings()); a causal LM with an unembedding is needed")
    layers = _find_layers(model) if layers is None else _named(model, layers, "layers")
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"layers={layers!r}: must be a non-empty ModuleList of decoder layers")
    names = {module: name for name, module in model.named_modules()}
    if any(layer not in names for layer in layers):
        raise ValueError("layers= must hold modules of the model")
    tail = None
    if final_norm is not None:
        items = final_norm if isinstance(final_norm, (list, tuple)) else [final_norm]
        tail = [_named(model, item, "final_norm") for item in items]
    return Anatomy(model, layers, [names[layer] for layer in layers], output, int(weight.shape[1]), tail)


# --------------------------------------------------------------------------- the inputs
@dataclass
class Contexts:
    """The contexts and where their outputs are read.

    input_ids : (N, T); attention_mask : (N, T) of 0/1 or None; positions : (N,) the output
    position of each context; position_ids : (N, T) derived from the mask (None without one,
    or when the model does not take them); extra : further model inputs, each a tensor with
    one row per context (sliced per chunk) or anything else (passed as it is).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    positions: torch.Tensor
    position_ids: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def inputs(self, sl: slice) -> dict:
        """The model's keyword arguments for contexts ``sl``."""
        kwargs = {"input_ids": self.input_ids[sl], "use_cache": False}
        if self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask[sl]
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids[sl]
        for key, value in self.extra.items():
            kwargs[key] = value[sl] if isinstance(value, torch.Tensor) and value.shape[:1] == (len(self),) else value
        return kwargs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) positions counted over the non-pad tokens (pads get 1), so a padded context sees
    the positions it would see unpadded, on either side."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def make_contexts(model: nn.Module, input_ids, attention_mask=None, positions=None, model_inputs=None,
                  device=None) -> Contexts:
    """Validated :class:`Contexts` on ``device``: ``positions`` default to the last non-pad
    token of each context (by the mask; T - 1 without one)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or 0 in input_ids.shape \
            or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be a non-empty (N, T) integer tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    n, t = input_ids.shape
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.shape != input_ids.shape or not torch.isin(attention_mask, torch.tensor([0, 1])).all():
            raise ValueError(f"attention_mask must be a 0/1 tensor shaped like input_ids {tuple(input_ids.shape)}, "
                             f"got shape {tuple(attention_mask.shape)}")
        empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"attention_mask: contexts {empty[:10]} have no token")
    if positions is None:
        positions = (torch.full((n,), t - 1) if attention_mask is None else
                     torch.where(attention_mask.bool(), torch.arange(t), -1).max(-1).values)
    else:
        positions = torch.as_tensor(positions)
        if positions.shape != (n,) or positions.is_floating_point() or positions.min() < 0 or positions.max() >= t:
            raise ValueError(f"positions must hold one integer position in 0..{t - 1} per context ({n}), got {positions!r}")
        if attention_mask is not None and not attention_mask[torch.arange(n), positions].all():
            bad = (attention_mask[torch.arange(n), positions] == 0).nonzero().flatten().tolist()
            raise ValueError(f"positions: contexts {bad[:10]} have their output position on a pad token")
    extra = dict(model_inputs or {})
    clash = {"input_ids", "attention_mask", "use_cache"} & set(extra)
    if clash:
        raise ValueError(f"model_inputs must not hold {sorted(clash)}: pass them as arguments")
    position_ids = None
    if attention_mask is not None and "position_ids" not in extra and _takes(model, "position_ids"):
        position_ids = position_ids_from_mask(attention_mask).to(device)
    move = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
    return Contexts(input_ids.to(device), move(attention_mask), positions.long().to(device), position_ids,
                    {k: move(v) for k, v in extra.items()})


def _takes(model: nn.Module, name: str) -> bool:
    import inspect

    return name in inspect.signature(model.forward).parameters


# --------------------------------------------------------------------------- running the model
class _OutputReached(Exception):
    def __init__(self, hidden):
        super().__init__("the output embedding was reached")
        self.hidden = hidden


def run_to_output(anatomy: Anatomy, inputs: dict) -> torch.Tensor:
    """(n, T, d): what the output embedding receives, by the model's own forward (stopped
    there: no logits are formed)."""
    return output_embedding_input(anatomy, lambda: anatomy.model(**inputs))


def output_embedding_input(anatomy: Anatomy, run) -> torch.Tensor:
    """(n, T, d): what the output embedding receives when ``run()`` calls the model (e.g.
    through ``functional_call``), stopped there: no logits are formed."""
    def stop(module, args):
        raise _OutputReached(args[0])

    handle = anatomy.output_embedding.register_forward_pre_hook(stop)
    try:
        run()
    except _OutputReached as reached:
        return reached.hidden
    finally:
        handle.remove()
    raise ValueError(f"{type(anatomy.model).__name__} never called its output embedding")
