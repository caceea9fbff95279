"""Forward paths: how an eNTK operator runs a causal LM from its analysed weights to its output.

The operator's output for context ``n`` is ``h_n`` (d,), the vector the model's output
embedding (``get_output_embeddings()``, the unembedding) receives at the context's output
position ``p_n``. A path computes ``h`` for a chunk of contexts as a function of the analysed
weights, which the caller substitutes with ``torch.func.functional_call`` (:func:`hidden`).
The paths differ in how much of the model each call runs (:data:`TRUNCATE`):

* ``"full"`` (:class:`FullModel`): the model's own forward, stopped where the output
  embedding receives its input (no logits are formed). The reference for the others.
* ``"layer"`` (:class:`FromLayer`): the layers below the lowest analysed decoder layer do not
  depend on the weights, so what every layer from there up receives (the residual stream
  entering that layer; the masks, rotary embeddings and other arguments of each) is recorded
  once by hooks, and each call runs those layers and the modules between the last layer and
  the output embedding (the final norm, found by the order in which the model calls them).
* ``"module"`` (:class:`FromModule`): inside that lowest layer, the input of the first
  analysed module (e.g. ``down_proj`` or ``o_proj``) does not depend on any analysed weight
  either; it is recorded, and the layer's own forward runs with every submodule that
  finished before that module replaced by its recorded output (or by zeros where an autograd
  probe shows the output reaches nothing: it only fed the recorded input).

Both truncated paths also compute position-wise modules (linear maps, norms, activations)
only at the output positions where an autograd probe shows that nothing else of their
output reaches ``h``; in practice, most of the last layer (its keys and values stay
everywhere). Attention itself is always the model's own code.

:func:`choose_path` builds the path for a ``truncate`` mode and verifies it against the full
model on a probe batch (values and a JVP); a shortcut that does not reproduce the model falls
back with a warning, and a mode the caller insists on that cannot apply raises ``ValueError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

TRUNCATE = ("auto", "full", "layer", "module")
LEGACY_TRUNCATE = {True: "auto", False: "full", "down_proj": "module"}  # the values before the vocabulary above
PROBE_CONTEXTS = 8  # contexts in the probe batch that a shortcut is checked on


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
    def stop(module, args):
        raise _OutputReached(args[0])

    handle = anatomy.output_embedding.register_forward_pre_hook(stop)
    try:
        anatomy.model(**inputs)
    except _OutputReached as reached:
        return reached.hidden
    finally:
        handle.remove()
    raise ValueError(f"{type(anatomy.model).__name__} never called its output embedding")


class _Runner(nn.Module):
    """Holds the model, so that ``functional_call`` substitutes its weights around any function."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


def hidden(anatomy: Anatomy, path: ForwardPath, weights: dict, record, inputs: dict, rows: torch.Tensor) -> torch.Tensor:
    """h (n, d) on ``path`` with the model's parameters named in ``weights`` replaced by the
    given tensors (differentiable in them: ``torch.func`` transforms go through)."""
    return functional_call(_Runner(anatomy.model), {f"model.{k}": v for k, v in weights.items()},
                           (path.hidden, record, inputs, rows))


@contextmanager
def _forwards(replacements: dict[nn.Module, Callable]) -> Iterator[None]:
    """Replace the ``forward`` of some modules (their hooks still run) and put them back."""
    saved = {module: module.__dict__.get("forward") for module in replacements}
    try:
        for module, forward in replacements.items():
            module.forward = forward
        yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


@contextmanager
def _hooks(handles: list) -> Iterator[list]:
    """Remove the given hook handles (and any appended inside) on exit."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _map_tensors(fn, obj):
    """``obj`` with ``fn`` applied to every tensor in it (through tuples, lists and dicts)."""
    return _map_leaves(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, obj)


def _map_leaves(fn, obj):
    """``obj`` with ``fn`` applied to every leaf (through tuples, lists and dicts)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_leaves(fn, x) for x in obj)
    if isinstance(obj, dict):
        return {k: _map_leaves(fn, v) for k, v in obj.items()}
    return fn(obj)


def _rows_only(forward: Callable, rows: torch.Tensor) -> Callable:
    """A position-wise module's forward computed at the output rows only: (n, T, ...) in,
    (n, T, ...) out with zeros elsewhere (for inputs of another shape, the plain forward)."""
    batch = torch.arange(len(rows), device=rows.device)

    def restricted(x, *args, **kwargs):
        if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[0] != len(rows):
            return forward(x, *args, **kwargs)
        y = forward(x[batch, rows].unsqueeze(1), *args, **kwargs)
        return y.new_zeros((*x.shape[:2], *y.shape[2:])).index_put((batch, rows), y[:, 0])

    return restricted


# --------------------------------------------------------------------------- the paths
class ForwardPath:
    """How ``h`` is computed: ``record(inputs)`` once per chunk (no gradients), then
    ``hidden(record, inputs, rows)`` as often as needed (weights substituted by the caller)."""

    name = ""

    def record(self, inputs: dict):
        return None

    def hidden(self, record, inputs: dict, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class FullModel(ForwardPath):
    """The model's own forward, to the output embedding's input."""

    name = "full"

    def __init__(self, anatomy: Anatomy):
        self.anatomy = anatomy

    def hidden(self, record, inputs, rows):
        h = run_to_output(self.anatomy, inputs)
        return h[torch.arange(len(rows), device=rows.device), rows]


@dataclass
class Trace:
    """Which modules the model called, in what order, on one forward pass.

    calls : {module: [(enter, exit)]} event indices; reached : index of the output embedding's entry.
    """

    calls: dict[nn.Module, list[tuple[int, int]]]
    reached: int


@torch.no_grad()
def trace(anatomy: Anatomy, inputs: dict) -> Trace:
    """Record the order of module calls of one forward pass (to the output embedding)."""
    calls, events, open_calls = {}, [0], {}

    def enter(module, args):
        open_calls.setdefault(module, []).append(events[0])
        events[0] += 1

    def leave(module, args, output):
        calls.setdefault(module, []).append((open_calls[module].pop(), events[0]))
        events[0] += 1

    modules = [m for m in anatomy.model.modules() if m is not anatomy.model]
    with _hooks([m.register_forward_pre_hook(enter) for m in modules] + [m.register_forward_hook(leave) for m in modules]):
        with math_attention():
            run_to_output(anatomy, inputs)
    return Trace(calls, open_calls[anatomy.output_embedding][0])


class FromLayer(ForwardPath):
    """From decoder layer ``start`` up, its inputs (and the other layers' arguments) recorded;
    ``tail`` maps the last layer's output to the output embedding's input; ``restricted``
    modules run at the output positions only."""

    name = "layer"

    def __init__(self, anatomy: Anatomy, start: int, tail: list[nn.Module]):
        self.anatomy, self.start, self.tail = anatomy, start, tail
        self.restricted: list[nn.Module] = []

    def describe(self) -> str:
        names = self.anatomy.names()
        only = f"; at the output positions only: {', '.join(names[m] for m in self.restricted)}" if self.restricted else ""
        return f"{self.name} path ({self._origin(names)}{only})"

    def _origin(self, names) -> str:
        return f"from layer {self.start}"

    def _recorders(self, record: dict) -> list:
        """Hooks that store each layer's (args, kwargs) from ``start`` up in ``record[i]``."""
        def make(i):
            def hook(module, args, kwargs):
                # layers above the first recompute their hidden state: keep only their other arguments
                record[i] = (args, kwargs) if i == self.start else _with_hidden(args, kwargs, None)
            return hook

        return [self.anatomy.layers[i].register_forward_pre_hook(make(i), with_kwargs=True)
                for i in range(self.start, len(self.anatomy.layers))]

    def _recorded_forward(self, inputs: dict, handles: list) -> None:
        with _hooks(handles), math_attention():
            run_to_output(self.anatomy, inputs)

    @torch.no_grad()
    def record(self, inputs):
        record = {}
        self._recorded_forward(inputs, self._recorders(record))
        return record

    def _replacements(self, record, rows) -> dict:
        return {m: _rows_only(m.forward, rows) for m in self.restricted}

    def hidden(self, record, inputs, rows):
        layers = self.anatomy.layers
        with _forwards(self._replacements(record, rows)):
            args, kwargs = record[self.start]
            h = _first(layers[self.start](*args, **kwargs))
            for i in range(self.start + 1, len(layers)):
                args, kwargs = _with_hidden(*record[i], h)
                h = _first(layers[i](*args, **kwargs))
            out = h[torch.arange(len(rows), device=rows.device), rows].unsqueeze(1)
            for module in self.tail:
                out = _first(module(out))
        return out[:, 0]

    def candidates(self) -> list[nn.Module]:
        """Modules that may run at the output positions only, if :func:`_analyse` allows: the
        submodules of the layers from ``start`` up."""
        return [m for layer in self.anatomy.layers[self.start:] for m in layer.modules() if m is not layer]

    def watched(self) -> list[nn.Module]:
        """Modules whose outputs :func:`_analyse` follows."""
        return self.candidates()


def _with_hidden(args: tuple, kwargs: dict, h) -> tuple[tuple, dict]:
    """A layer's (args, kwargs) with its hidden-state input (first positional argument, or
    ``hidden_states=``) replaced by ``h``."""
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


@dataclass(frozen=True)
class _Zeros:
    """Stands for a recorded tensor that is replayed as zeros."""

    shape: torch.Size
    dtype: torch.dtype


class FromModule(FromLayer):
    """From the input of ``first``, the first analysed module called in layer ``start``: that
    input is recorded, and so are the outputs of ``constants`` (the layer's submodules that
    finished before ``first`` started); those in ``dead`` (outputs that only fed the recorded
    input) replay zeros instead."""

    name = "module"

    def __init__(self, anatomy: Anatomy, start: int, tail: list[nn.Module], first: nn.Module,
                 constants: list[nn.Module]):
        super().__init__(anatomy, start, tail)
        self.first, self.constants = first, constants
        self.dead: list[nn.Module] = []

    def _origin(self, names) -> str:
        return f"from the input of {names[self.first]}"

    @torch.no_grad()
    def record(self, inputs):
        record = {"outputs": {m: [] for m in self.constants}}

        def keep_input(module, args, kwargs):
            record["first"] = (args, kwargs)

        def keep_output(module, args, output):
            dead = module in self.dead
            record["outputs"][module].append(_map_tensors(lambda x: _Zeros(x.shape, x.dtype), output) if dead else output)

        handles = self._recorders(record) + [self.first.register_forward_pre_hook(keep_input, with_kwargs=True)]
        self._recorded_forward(inputs, handles + [m.register_forward_hook(keep_output) for m in self.constants])
        return record

    def _replacements(self, record, rows):
        replacements = super()._replacements(record, rows)
        for module in self.constants:
            replacements[module] = _replay(record["outputs"][module], rows.device)
        return replacements

    def hidden(self, record, inputs, rows):
        substitute = self.first.register_forward_pre_hook(lambda module, args, kwargs: record["first"], with_kwargs=True)
        with _hooks([substitute]):
            return super().hidden(record, inputs, rows)

    def candidates(self):
        """As :meth:`FromLayer.candidates`, less the constants, what they hold (never called)
        and what holds them or ``first`` (those run on recorded full-length tensors)."""
        replayed = {sub for m in self.constants for sub in m.modules()}
        targets = replayed | {self.first}
        holders = {m for m in self.anatomy.layers[self.start].modules()
                   if any(sub in targets for sub in m.modules() if sub is not m)}
        return [m for m in super().candidates() if m not in replayed and m not in holders]

    def watched(self):
        return self.candidates() + self.constants


def _replay(outputs: list, device) -> Callable:
    """A forward that returns the recorded ``outputs`` one call after another."""
    calls = iter(outputs)

    def materialise(x):  # zeros that take no memory (every element is the same one)
        return torch.zeros((), dtype=x.dtype, device=device).expand(x.shape) if isinstance(x, _Zeros) else x

    def forward(*args, **kwargs):
        return _map_leaves(materialise, next(calls))

    return forward


# --------------------------------------------------------------------------- building a path
def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module that holds parameter ``name``."""
    return model.get_submodule(name.rpartition(".")[0])


def _first_entry(tr: Trace, module: nn.Module) -> int | None:
    calls = tr.calls.get(module)
    return min(enter for enter, _ in calls) if calls else None


def _traced_tail(anatomy: Anatomy, tr: Trace) -> list[nn.Module]:
    """The outermost modules called after the last layer and before the output embedding, in order."""
    if anatomy.tail is not None:
        return anatomy.tail
    last_exit = max(exit_ for _, exit_ in tr.calls[anatomy.layers[-1]])
    inside = [m for m, calls in tr.calls.items()
              if all(last_exit < enter and exit_ < tr.reached for enter, exit_ in calls)]
    inner = {sub for m in inside for sub in m.modules() if sub is not m}
    return sorted((m for m in inside if m not in inner), key=lambda m: _first_entry(tr, m))


def layer_path(anatomy: Anatomy, tr: Trace, names: Sequence[str]) -> FromLayer:
    """The ``"layer"`` path for the weights ``names``; :class:`NotApplicable` if one lies
    outside the decoder layers, or the layers are not each called once after one another."""
    starts = {name: anatomy.layer_of(name) for name in names}
    outside = [name for name, i in starts.items() if i is None]
    if outside:
        raise NotApplicable(f"{', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not inside a decoder layer")
    start = min(starts.values())
    layers = anatomy.layers
    if any(len(tr.calls.get(layers[i], ())) != 1 for i in range(start, len(layers))):
        raise NotApplicable(f"the decoder layers from {start} up are not each called once per forward pass")
    layer_entry = _first_entry(tr, layers[start])
    early = [name for name in names if (_first_entry(tr, _owner(anatomy.model, name)) or layer_entry) < layer_entry]
    if early:
        raise NotApplicable(f"{', '.join(early)} {'is' if len(early) == 1 else 'are'} also used before layer {start}")
    return FromLayer(anatomy, start, _traced_tail(anatomy, tr))


def module_path(anatomy: Anatomy, tr: Trace, names: Sequence[str]) -> FromModule:
    """The ``"module"`` path for the weights ``names``; :class:`NotApplicable` where the
    ``"layer"`` path is, or where the first analysed module is the layer itself, is not
    called exactly once, or no analysed module of that layer is called."""
    base = layer_path(anatomy, tr, names)
    layer = anatomy.layers[base.start]
    owners = {_owner(anatomy.model, name) for name in names if anatomy.layer_of(name) == base.start}
    called = [m for m in owners if m in tr.calls]
    if not called:
        raise NotApplicable(f"no module holding the weights in layer {base.start} is called")
    first = min(called, key=lambda m: _first_entry(tr, m))
    if first is layer:
        raise NotApplicable(f"a weight belongs to decoder layer {base.start} itself, not to one of its modules")
    if len(tr.calls[first]) != 1:
        raise NotApplicable(f"{anatomy.names()[first]} is called {len(tr.calls[first])} times per forward pass")
    begins = _first_entry(tr, first)
    done = [m for m in layer.modules() if m is not layer and m in tr.calls
            and all(exit_ < begins for _, exit_ in tr.calls[m])]
    inner = {sub for m in done for sub in m.modules() if sub is not m}
    return FromModule(anatomy, base.start, base.tail, first, [m for m in done if m not in inner])


BUILDERS = {"module": module_path, "layer": layer_path}


# --------------------------------------------------------------------------- probes
def _analyse(path: FromLayer, record, inputs: dict, rows: torch.Tensor, seed: int = 0) -> None:
    """Set ``path.restricted`` and, on a :class:`FromModule`, ``path.dead``, from the gradient
    of a random projection of ``h`` (on the probe batch ``inputs``) w.r.t. every input and
    output of the watched modules (zeros added to them by hooks).

    A candidate is restricted to the output rows where, on every call, neither the gradient
    of its output nor that of its first input (the part that flows through this module) is
    nonzero at any other row: the module then acts on each position alone as far as ``h``
    can tell, and only its output rows reach ``h``. Only the outermost such modules are kept
    (an MLP block rather than its linear maps). A constant is dead where no output of it
    reaches ``h`` at all.
    """
    n, t = inputs["input_ids"].shape
    outputs: dict[nn.Module, list] = {m: [] for m in path.watched()}
    firsts: dict[nn.Module, list] = {m: [] for m in outputs}

    def probe(store):
        def add(x):
            if not x.is_floating_point():
                return x
            z = torch.zeros_like(x, requires_grad=True)
            store.append(z)
            return x + z
        return add

    def watch_input(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].shape[:2] == (n, t):
            return (probe(firsts[module])(args[0]), *args[1:])
        firsts[module].append(None)  # not a call on hidden states: never restricted
        return None

    def watch_output(module, args, output):
        return _map_tensors(probe(outputs[module]), output)

    handles = [m.register_forward_pre_hook(watch_input) for m in outputs] + \
              [m.register_forward_hook(watch_output) for m in outputs]
    with _hooks(handles), torch.enable_grad(), math_attention():
        h = path.hidden(record, inputs, rows)
        zs = [z for store in (*outputs.values(), *firsts.values()) for z in store if z is not None]
        r = torch.randn(h.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(h)
        grads = torch.autograd.grad((h * r).sum(), zs, allow_unused=True) if h.requires_grad and zs else [None] * len(zs)
    grad_of = dict(zip(map(id, zs), grads))
    elsewhere = torch.ones(n, t, dtype=torch.bool, device=rows.device)
    elsewhere[torch.arange(n, device=rows.device), rows] = False

    def rows_only(z):
        g = grad_of[id(z)]
        return g is None or (g.ndim >= 2 and g.shape[:2] == (n, t) and not g[elsewhere].any())

    fits = {m for m in path.candidates() if firsts[m] and None not in firsts[m]
            and all(map(rows_only, firsts[m])) and all(map(rows_only, outputs[m]))}
    inner = {sub for m in fits for sub in m.modules() if sub is not m}
    path.restricted = [m for m in path.candidates() if m in fits and m not in inner]
    if isinstance(path, FromModule):
        path.dead = [m for m in path.constants if all(grad_of[id(z)] is None for z in outputs[m])]


def _tolerance(dtype: torch.dtype) -> float:
    """Largest relative difference accepted between a shortcut and the full model: rounding
    differs where matrix shapes do (and some models norm in float32 whatever their dtype)."""
    return {torch.float64: 1e-6, torch.float32: 1e-4}.get(dtype, 3e-2)


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max()
    return float((a - b).abs().max() / scale) if scale > 0 else float((a - b).abs().max())


def _value_and_jvp(anatomy, path, weights, direction, record, inputs, rows):
    with torch.no_grad(), math_attention():
        return jvp(lambda w: hidden(anatomy, path, w, record, inputs, rows), (weights,), (direction,))


@dataclass
class _Probe:
    """The probe batch, a random weight direction and the full model's outputs and JVP there."""

    anatomy: Anatomy
    inputs: dict
    rows: torch.Tensor
    weights: dict
    direction: dict
    reference: tuple

    def failure(self, path: FromLayer) -> str | None:
        """Why ``path`` (analysed on the probe batch first) does not reproduce the full model
        there, or None if it does."""
        try:
            value, derivative = _value_and_jvp(self.anatomy, path, self.weights, self.direction,
                                               path.record(self.inputs), self.inputs, self.rows)
        except Exception as err:  # noqa: BLE001 - a shortcut that cannot run on this model falls back
            return f"the {path.describe()} fails on a probe ({type(err).__name__}: {err})"
        difference = max(_relative_difference(value, self.reference[0]), _relative_difference(derivative, self.reference[1]))
        if difference > _tolerance(value.dtype):
            return (f"the {path.describe()} does not reproduce the model's forward on a probe "
                    f"(largest relative difference {difference:.1e})")
        return None

    def passes(self, path: FromLayer, failures: list[str]) -> bool:
        """Analyse ``path`` and probe it, with its modules restricted to the output rows and
        then without; keep the first variant that passes. Failures are appended."""
        try:
            _analyse(path, path.record(self.inputs), self.inputs, self.rows)
        except Exception as err:  # noqa: BLE001
            failures.append(f"the {path.describe()} fails on a probe ({type(err).__name__}: {err})")
            return False
        for restricted in ([path.restricted, []] if path.restricted else [[]]):
            path.restricted = restricted
            failure = self.failure(path)
            if failure is None:
                return True
            failures.append(failure)
        return False


def choose_path(anatomy: Anatomy, contexts: Contexts, weights: dict[str, torch.Tensor], truncate: str,
                seed: int = 0) -> ForwardPath:
    """The path for ``truncate`` (one of :data:`TRUNCATE`), checked on a probe batch (the first
    :data:`PROBE_CONTEXTS` contexts): its outputs and their JVP along a random weight direction
    must equal the full model's within :func:`_tolerance`.

    ``"auto"`` takes the first of ``"module"``, ``"layer"``, ``"full"`` that applies and passes
    (a failed probe is a warning); ``"layer"`` / ``"module"`` raise ``ValueError`` where they
    cannot apply or fail the probe. Restricting modules to the output positions is tried
    first and dropped, with a warning, if only that fails.
    """
    full = FullModel(anatomy)
    if truncate == "full":
        return full
    sl = slice(0, min(PROBE_CONTEXTS, len(contexts)))
    inputs, rows = contexts.inputs(sl), contexts.positions[sl]
    tr = trace(anatomy, inputs)
    generator = torch.Generator().manual_seed(seed)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=torch.float64).to(v) for k, v in weights.items()}
    probe = _Probe(anatomy, inputs, rows, weights, direction,
                   _value_and_jvp(anatomy, full, weights, direction, None, inputs, rows))
    failures = []
    for mode in ("module", "layer") if truncate == "auto" else (truncate,):
        try:
            path = BUILDERS[mode](anatomy, tr, list(weights))
        except NotApplicable as err:
            if truncate == "auto":
                continue
            instead = "'layer' or 'full'" if mode == "module" else "'full'"
            raise ValueError(f"truncate={truncate!r} cannot apply: {err}; use truncate={instead}") from None
        if probe.passes(path, failures):
            if failures:
                warnings.warn("; ".join(failures) + f"; using the {path.describe()}", stacklevel=3)
            return path
        if truncate != "auto":
            raise ValueError(f"truncate={truncate!r}: {failures[-1]}; use truncate='full'")
    if failures:
        warnings.warn("; ".join(failures) + "; falling back to the full model", stacklevel=3)
    return full
