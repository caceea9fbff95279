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

Both truncated paths run the last layer at the output positions only, through the model's
key-value cache interface: a first call of the layer on every position stops at its cache
update and keeps the keys and values (the modules whose outputs do not reach them, such as
the query projection, return zeros); a second call on the output positions reads them from a
cache. Every module and all attention code are the model's own.

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


def _tensors(obj) -> list[torch.Tensor]:
    """The tensors in ``obj`` (through tuples, lists and dicts)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return [t for item in items for t in _tensors(item)]


def _map_leaves(fn, obj):
    """``obj`` with ``fn`` applied to every leaf (through tuples, lists and dicts)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_leaves(fn, x) for x in obj)
    if isinstance(obj, dict):
        return {k: _map_leaves(fn, v) for k, v in obj.items()}
    return fn(obj)


def _zeros(spec, n: int, device):
    """Materialise a spec of :func:`_spec`: zeros (taking no memory) with batch size ``n``."""
    return _map_leaves(lambda x: torch.zeros((), dtype=x.dtype, device=device).expand(n, *x.shape)
                       if isinstance(x, _Zeros) else x, spec)


@dataclass(frozen=True)
class _Zeros:
    """Stands for a module output that is replayed as zeros: its shape without the batch."""

    shape: torch.Size
    dtype: torch.dtype


def _spec(output):
    """``output`` with each tensor replaced by a :class:`_Zeros` of its shape (less the batch)."""
    return _map_tensors(lambda x: _Zeros(x.shape[1:], x.dtype), output)


def _idle(spec, n: int, device) -> Callable:
    """A forward that returns zeros shaped like ``spec``, whatever it is given."""
    return lambda *args, **kwargs: _zeros(spec, n, device)


def _replay(outputs: list) -> Callable:
    """A forward that returns the recorded ``outputs`` one call after another."""
    calls = iter(outputs)
    return lambda *args, **kwargs: next(calls)


# --------------------------------------------------------------------------- the last layer at the output rows
CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past", "past_key_value")  # a layer's key-value cache argument


class _KeysReached(Exception):
    def __init__(self, keys, values):
        super().__init__("the cache update was reached")
        self.keys, self.values = keys, values


class _Collect:
    """A key-value cache that stops the layer at its update, carrying the keys and values."""

    def update(self, keys, values, *args, **kwargs):
        raise _KeysReached(keys, values)


class _Replay:
    """A key-value cache that answers every update with the given keys and values."""

    def __init__(self, keys, values):
        self.keys, self.values = keys, values

    def update(self, keys, values, *args, **kwargs):
        return self.keys, self.values


def _with_cache(layer: nn.Module, args: tuple, kwargs: dict, cache) -> tuple[tuple, dict]:
    """A layer's (args, kwargs) with its key-value cache argument set to ``cache``;
    :class:`NotApplicable` if its forward takes none (:data:`CACHE_ARGUMENTS`)."""
    import inspect

    signature = inspect.signature(layer.forward)
    name = next((a for a in CACHE_ARGUMENTS if a in signature.parameters), None)
    if name is None:
        raise NotApplicable(f"{type(layer).__name__} takes no key-value cache argument")
    bound = signature.bind_partial(*args, **kwargs)
    bound.arguments[name] = cache
    return bound.args, bound.kwargs


def _at_rows(obj, rows: torch.Tensor, t: int):
    """The per-position tensors in a layer's arguments at the output rows only: (n or 1, T,
    ...) -> (n, 1, ...), and (n or 1, h, T, T) masks -> (n, h, 1, T) (their query rows)."""
    n = len(rows)
    batch = torch.arange(n, device=rows.device)

    def pick(x):
        if x.ndim == 4 and x.shape[-2:] == (t, t) and x.shape[0] in (1, n):
            return x.expand(n, *x.shape[1:])[batch, :, rows].unsqueeze(2)
        if x.ndim >= 2 and x.shape[1] == t and x.shape[0] in (1, n):
            return x.expand(n, *x.shape[1:])[batch, rows].unsqueeze(1)
        return x

    return _map_tensors(pick, obj)


def _masked_or_last(args: tuple, kwargs: dict, rows: torch.Tensor) -> bool:
    """Whether a layer called on the output rows alone sees the right keys: every row is the
    last position, or the layer gets a (.., T, T) attention mask (without one, attention is
    causal by position, which a single query row does not convey)."""
    t = (args[0] if args else kwargs["hidden_states"]).shape[1]
    masked = any(x.ndim == 4 and x.shape[-2:] == (t, t) for x in _tensors((args, kwargs)))
    return masked or bool((rows == t - 1).all())


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
        return f"{self.name} path"


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

    def first_entry(self, module: nn.Module) -> int | None:
        calls = self.calls.get(module)
        return min(enter for enter, _ in calls) if calls else None


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
    ``tail`` maps the last layer's output to the output embedding's input.

    With ``keys_idle`` set (a dict; None: off), the last layer computes at the output rows
    only, by its own code in two calls: the first, on every position with a key-value cache
    that stops it at its update, yields the keys and values (the modules in ``keys_idle``,
    whose outputs do not reach them, e.g. the query projection, return zeros of their
    shapes); the second runs the layer on the output rows, its attention reading those keys
    and values from a cache.
    """

    name = "layer"

    def __init__(self, anatomy: Anatomy, start: int, tail: list[nn.Module]):
        self.anatomy, self.start, self.tail = anatomy, start, tail
        self.keys_idle: dict[nn.Module, object] | None = None

    def describe(self) -> str:
        rows = "; the last layer at the output positions, its keys and values from every position" \
            if self.keys_idle is not None else ""
        return f"{self.name} path ({self._origin()}{rows})"

    def _origin(self) -> str:
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

    @torch.no_grad()
    def _recorded_forward(self, inputs: dict, handles: list) -> None:
        with _hooks(handles), math_attention():
            run_to_output(self.anatomy, inputs)

    def record(self, inputs):
        record = {}
        self._recorded_forward(inputs, self._recorders(record))
        return record

    def _replacements(self, record, rows) -> dict:
        """Module forwards replaced while the layers run (none here)."""
        return {}

    def hidden(self, record, inputs, rows):
        layers, last = self.anatomy.layers, len(self.anatomy.layers) - 1
        with _forwards(self._replacements(record, rows)):
            h = None
            for i in range(self.start, last + 1):
                args, kwargs = record[i] if i == self.start else _with_hidden(*record[i], h)
                if i == last and self.keys_idle is not None and _masked_or_last(args, kwargs, rows):
                    return self._tail(_first(self._last_at_rows(args, kwargs, rows))[:, 0])
                h = _first(layers[i](*args, **kwargs))
        return self._tail(h[torch.arange(len(rows), device=rows.device), rows])

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        """(n, d) last-layer outputs at the output rows -> the output embedding's inputs."""
        out = h.unsqueeze(1)
        for module in self.tail:
            out = _first(module(out))
        return out[:, 0]

    def _keys_and_values(self, args: tuple, kwargs: dict, idle: dict) -> tuple:
        """The last layer's keys and values at every position: its own code, run on the full
        input up to its key-value update (modules in ``idle`` replaced)."""
        layer = self.anatomy.layers[-1]
        args, kwargs = _with_cache(layer, args, kwargs, _Collect())
        try:
            with _forwards(idle):
                layer(*args, **kwargs)
        except _KeysReached as reached:
            return reached.keys, reached.values
        raise NotApplicable(f"{type(layer).__name__} never updated its key-value cache")

    def _last_at_rows(self, args: tuple, kwargs: dict, rows: torch.Tensor):
        """The last layer's output (n, 1, d) at the output rows."""
        layer = self.anatomy.layers[-1]
        n, device = len(rows), rows.device
        keys, values = self._keys_and_values(args, kwargs, {m: _idle(spec, n, device) for m, spec in self.keys_idle.items()})
        t = (args[0] if args else kwargs["hidden_states"]).shape[1]
        args, kwargs = _with_cache(layer, *_at_rows((args, kwargs), rows, t), _Replay(keys, values))
        return layer(*args, **kwargs)

    def analyse(self, inputs: dict, rows: torch.Tensor, at_rows: bool) -> None:
        """Prepare the path on the probe batch: with ``at_rows``, find the last layer's modules
        whose outputs do not reach its keys and values (:func:`_unreached`)."""
        self.keys_idle = None
        if at_rows:
            last = len(self.anatomy.layers) - 1
            args, kwargs = FromLayer(self.anatomy, last, self.tail).record(inputs)[last]
            self.keys_idle = _unreached(lambda: self._keys_and_values(args, kwargs, {}),
                                        [m for m in self.anatomy.layers[-1].modules() if m is not self.anatomy.layers[-1]])

    def can_run_last_at_rows(self) -> bool:
        return True


def _with_hidden(args: tuple, kwargs: dict, h) -> tuple[tuple, dict]:
    """A layer's (args, kwargs) with its hidden-state input (first positional argument, or
    ``hidden_states=``) replaced by ``h``."""
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


class FromModule(FromLayer):
    """From the input of ``first``, the first analysed module called in layer ``start``: that
    input is recorded, and so are the outputs of ``constants`` (the layer's submodules that
    finished before ``first`` started); those in ``dead`` (whose outputs only fed the
    recorded input) return zeros of their shapes instead."""

    name = "module"

    def __init__(self, anatomy: Anatomy, start: int, tail: list[nn.Module], first: nn.Module,
                 constants: list[nn.Module]):
        super().__init__(anatomy, start, tail)
        self.first, self.constants = first, constants
        self.dead: dict[nn.Module, object] = {}

    def _origin(self) -> str:
        return f"from the input of {self.anatomy.names()[self.first]}"

    def record(self, inputs):
        record = {"outputs": {m: [] for m in self.constants if m not in self.dead}}

        def keep_input(module, args, kwargs):
            record["first"] = (args, kwargs)

        def keep_output(module, args, output):
            record["outputs"][module].append(output)

        handles = self._recorders(record) + [self.first.register_forward_pre_hook(keep_input, with_kwargs=True)]
        self._recorded_forward(inputs, handles + [m.register_forward_hook(keep_output) for m in record["outputs"]])
        return record

    def _replacements(self, record, rows):
        replay = {m: _replay(outputs) for m, outputs in record["outputs"].items()}
        return {**replay, **{m: _idle(spec, len(rows), rows.device) for m, spec in self.dead.items()}}

    def hidden(self, record, inputs, rows):
        substitute = self.first.register_forward_pre_hook(lambda module, args, kwargs: record["first"], with_kwargs=True)
        with _hooks([substitute]):
            return super().hidden(record, inputs, rows)

    def analyse(self, inputs, rows, at_rows):
        """As :meth:`FromLayer.analyse`, after finding the constants whose outputs reach ``h``
        nowhere (they only fed the recorded input)."""
        self.dead, self.keys_idle = {}, None
        record = self.record(inputs)
        self.dead = _unreached(lambda: (self.hidden(record, inputs, rows),), self.constants)
        super().analyse(inputs, rows, at_rows)

    def can_run_last_at_rows(self) -> bool:
        return self.start < len(self.anatomy.layers) - 1  # the last layer's constants are full-length


def _unreached(run: Callable[[], tuple], modules: list[nn.Module], seed: int = 0) -> dict[nn.Module, object]:
    """``{module: output spec}`` for the ``modules`` called by ``run()`` none of whose outputs
    reach its result (a tuple of tensors): no gradient flows back to them from a random
    projection of the result (zeros added to each output by hooks carry the gradient)."""
    probes: dict[nn.Module, list] = {m: [] for m in modules}
    specs = {}

    def watch(module, args, output):
        specs.setdefault(module, _spec(output))

        def add(x):
            if not x.is_floating_point():
                return x
            z = torch.zeros_like(x, requires_grad=True)
            probes[module].append(z)
            return x + z
        return _map_tensors(add, output)

    generator = torch.Generator().manual_seed(seed)
    with _hooks([m.register_forward_hook(watch) for m in modules]), torch.enable_grad(), math_attention():
        result = [r for r in run() if r.requires_grad]
        zs = [z for found in probes.values() for z in found]
        total = sum((r * torch.randn(r.shape, generator=generator, dtype=torch.float64).to(r)).sum() for r in result)
        grads = torch.autograd.grad(total, zs, allow_unused=True) if result and zs else [None] * len(zs)
    reached = {id(z) for z, g in zip(zs, grads) if g is not None}
    return {m: specs[m] for m, found in probes.items() if found and not any(id(z) in reached for z in found)}


# --------------------------------------------------------------------------- building a path
def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module that holds parameter ``name``."""
    return model.get_submodule(name.rpartition(".")[0])


def _traced_tail(anatomy: Anatomy, tr: Trace) -> list[nn.Module]:
    """The outermost modules called after the last layer and before the output embedding, in order."""
    if anatomy.tail is not None:
        return anatomy.tail
    last_exit = max(exit_ for _, exit_ in tr.calls[anatomy.layers[-1]])
    inside = [m for m, calls in tr.calls.items()
              if all(last_exit < enter and exit_ < tr.reached for enter, exit_ in calls)]
    inner = {sub for m in inside for sub in m.modules() if sub is not m}
    return sorted((m for m in inside if m not in inner), key=tr.first_entry)


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
    layer_entry = tr.first_entry(layers[start])
    early = [name for name in names if (tr.first_entry(_owner(anatomy.model, name)) or layer_entry) < layer_entry]
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
    first = min(called, key=tr.first_entry)
    if first is layer:
        raise NotApplicable(f"a weight belongs to decoder layer {base.start} itself, not to one of its modules")
    if len(tr.calls[first]) != 1:
        raise NotApplicable(f"{anatomy.names()[first]} is called {len(tr.calls[first])} times per forward pass")
    begins = tr.first_entry(first)
    done = [m for m in layer.modules() if m is not layer and m in tr.calls
            and all(exit_ < begins for _, exit_ in tr.calls[m])]
    inner = {sub for m in done for sub in m.modules() if sub is not m}
    return FromModule(anatomy, base.start, base.tail, first, [m for m in done if m not in inner])


BUILDERS = {"module": module_path, "layer": layer_path}


# --------------------------------------------------------------------------- probes
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

    def failure(self, path: FromLayer, at_rows: bool) -> str | None:
        """Why ``path`` (prepared with or without the last layer at the output rows) does not
        reproduce the full model on the probe batch, or None if it does."""
        try:
            path.analyse(self.inputs, self.rows, at_rows)
            value, derivative = _value_and_jvp(self.anatomy, path, self.weights, self.direction,
                                               path.record(self.inputs), self.inputs, self.rows)
        except Exception as err:  # noqa: BLE001 - a shortcut that cannot run on this model falls back
            return f"the {path.describe()} fails on a probe ({type(err).__name__}: {err})"
        difference = max(_relative_difference(value, self.reference[0]), _relative_difference(derivative, self.reference[1]))
        if difference > _tolerance(value.dtype):
            return (f"the {path.describe()} does not reproduce the model's forward on a probe "
                    f"(largest relative difference {difference:.1e})")
        return None


def choose_path(anatomy: Anatomy, contexts: Contexts, weights: dict[str, torch.Tensor], truncate: str,
                seed: int = 0) -> ForwardPath:
    """The path for ``truncate`` (one of :data:`TRUNCATE`), checked on a probe batch (the first
    :data:`PROBE_CONTEXTS` contexts): its outputs and their JVP along a random weight direction
    must equal the full model's within :func:`_tolerance`.

    ``"auto"`` takes the first of ``"module"``, ``"layer"``, ``"full"`` that applies and passes
    (a failed probe is a warning); ``"layer"`` / ``"module"`` raise ``ValueError`` where they
    cannot apply or fail the probe. Running the last layer at the output positions only is
    tried first and dropped, with a warning, if only that fails.
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
        for at_rows in (True, False) if path.can_run_last_at_rows() else (False,):
            failure = probe.failure(path, at_rows)
            if failure is None:
                if failures:
                    warnings.warn("; ".join(failures) + f"; using the {path.describe()}", stacklevel=3)
                return path
            failures.append(failure)
        if truncate != "auto":
            raise ValueError(f"truncate={truncate!r}: {failures[-1]}; use truncate='full'")
    if failures:
        warnings.warn("; ".join(failures) + "; falling back to the full model", stacklevel=3)
    return full
