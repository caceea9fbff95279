"""Forward paths: how an eNTK operator runs a causal LM from its analysed weights to its output.

The operator's output for context ``n`` is ``h_n`` (d,), the vector the model's output
embedding (``get_output_embeddings()``, the unembedding) receives at the context's output
position ``p_n``. A path computes ``h`` for a chunk of contexts as a function of the analysed
weights, which the caller substitutes with ``torch.func.functional_call`` (:func:`hidden`).
The paths differ in how much of the model each call runs (:data:`TRUNCATE_MODES`):

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

:func:`~entk_utils.kernels.path_choice.choose_path` builds the path for a ``truncate`` mode and verifies it against the full
model on a probe batch (values and a JVP); a shortcut that does not reproduce the model falls
back with a warning, and a mode the caller insists on that cannot apply raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from torch.func import functional_call

from ..io.hooks import removing
from .anatomy import Anatomy, NotApplicable, math_attention, run_to_output
from .conventions import CACHE_ARGUMENTS
from .module_tools import (first_output, idle_forward, map_tensors, output_spec, replaced_forwards, replay_forward,
                           tensors_in)

TRUNCATE_MODES = ("auto", "full", "layer", "module")
# The values before the vocabulary above. The third, "down_proj", insists on the module path
# from an MLP output projection's input (path_choice checks that it is one).
LEGACY_TRUNCATE = {True: "auto", False: "full"}
DOWN_PROJ = "down_proj"


# --------------------------------------------------------------------------- the last layer at the output rows


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

    return map_tensors(pick, obj)


def _masked_or_last(args: tuple, kwargs: dict, rows: torch.Tensor) -> bool:
    """Whether a layer called on the output rows alone sees the right keys: every row is the
    last position, or the layer gets a (.., T, T) attention mask (without one, attention is
    causal by position, which a single query row does not convey)."""
    t = (args[0] if args else kwargs["hidden_states"]).shape[1]
    masked = any(x.ndim == 4 and x.shape[-2:] == (t, t) for x in tensors_in((args, kwargs)))
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


class _Runner(nn.Module):
    """Holds the model, so that ``functional_call`` substitutes its weights around any function."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


def hidden(anatomy: Anatomy, path: ForwardPath, weights: dict, record, inputs: dict, rows: torch.Tensor | None
           ) -> torch.Tensor:
    """h (n, d) on ``path`` with the model's parameters named in ``weights`` replaced by the
    given tensors (differentiable in them: ``torch.func`` transforms go through); with
    ``rows=None`` at every position, (n, T, d)."""
    return functional_call(_Runner(anatomy.model), {f"model.{k}": v for k, v in weights.items()},
                           (path.hidden, record, inputs, rows))


class FullModel(ForwardPath):
    """The model's own forward, to the output embedding's input."""

    name = "full"

    def __init__(self, anatomy: Anatomy):
        self.anatomy = anatomy

    def hidden(self, record, inputs, rows):
        h = run_to_output(self.anatomy, inputs)
        return h if rows is None else h[torch.arange(len(rows), device=rows.device), rows]


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
    with removing([m.register_forward_pre_hook(enter) for m in modules] + [m.register_forward_hook(leave) for m in modules]):
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
        with removing(handles), math_attention():
            run_to_output(self.anatomy, inputs)

    def record(self, inputs):
        record = {}
        self._recorded_forward(inputs, self._recorders(record))
        return record

    def _replacements(self, record, rows) -> dict:
        """Module forwards replaced while the layers run (none here)."""
        return {}

    def hidden(self, record, inputs, rows):
        """h (n, d) at the output ``rows``, or at every position (n, T, d) for ``rows=None``."""
        layers, last = self.anatomy.layers, len(self.anatomy.layers) - 1
        with replaced_forwards(self._replacements(record, rows)):
            h = None
            for i in range(self.start, last + 1):
                args, kwargs = record[i] if i == self.start else _with_hidden(*record[i], h)
                if i == last and rows is not None and self.keys_idle is not None and _masked_or_last(args, kwargs, rows):
                    return self._tail(first_output(self._last_at_rows(args, kwargs, rows)))[:, 0]
                h = first_output(layers[i](*args, **kwargs))
        return self._tail(h) if rows is None else self._tail(h[torch.arange(len(rows), device=rows.device), rows]
                                                             .unsqueeze(1))[:, 0]

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        """(n, T', d) last-layer outputs -> the output embedding's inputs (n, T', d)."""
        for module in self.tail:
            h = first_output(module(h))
        return h

    def _keys_and_values(self, args: tuple, kwargs: dict, idle: dict) -> tuple:
        """The last layer's keys and values at every position: its own code, run on the full
        input up to its key-value update (modules in ``idle`` replaced)."""
        layer = self.anatomy.layers[-1]
        args, kwargs = _with_cache(layer, args, kwargs, _Collect())
        try:
            with replaced_forwards(idle):
                layer(*args, **kwargs)
        except _KeysReached as reached:
            return reached.keys, reached.values
        raise NotApplicable(f"{type(layer).__name__} never updated its key-value cache")

    def _last_at_rows(self, args: tuple, kwargs: dict, rows: torch.Tensor):
        """The last layer's output (n, 1, d) at the output rows."""
        layer = self.anatomy.layers[-1]
        n, device = len(rows), rows.device
        idle = {m: idle_forward(spec, n, device) for m, spec in self.keys_idle.items()}
        keys, values = self._keys_and_values(args, kwargs, idle)
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
        replay = {m: replay_forward(outputs) for m, outputs in record["outputs"].items()}
        first = tensors_in(record["first"])[0]  # its batch: the contexts of this record
        return {**replay, **{m: idle_forward(spec, len(first), first.device) for m, spec in self.dead.items()}}

    def hidden(self, record, inputs, rows):
        substitute = self.first.register_forward_pre_hook(lambda module, args, kwargs: record["first"], with_kwargs=True)
        with removing([substitute]):
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
        specs.setdefault(module, output_spec(output))

        def add(x):
            if not x.is_floating_point():
                return x
            z = torch.zeros_like(x, requires_grad=True)
            probes[module].append(z)
            return x + z
        return map_tensors(add, output)

    generator = torch.Generator().manual_seed(seed)
    with removing([m.register_forward_hook(watch) for m in modules]), torch.enable_grad(), math_attention():
        result = [r for r in run() if r.requires_grad]
        zs = [z for found in probes.values() for z in found]
        total = sum((r * torch.randn(r.shape, generator=generator, dtype=torch.float64).to(r)).sum() for r in result)
        grads = torch.autograd.grad(total, zs, allow_unused=True) if result and zs else [None] * len(zs)
    reached = {id(z) for z, g in zip(zs, grads) if g is not None}
    return {m: specs[m] for m, found in probes.items() if found and not any(id(z) in reached for z in found)}


def select_contexts(record, index: torch.Tensor, n: int):
    """A record (or model inputs) of ``n`` contexts cut to the contexts ``index``: every tensor
    of two or more dimensions whose first is ``n`` is indexed (those of batch 1 broadcast and
    stay). The caller keeps ``n`` apart from the other leading sizes (e.g. the length T)."""
    return map_tensors(lambda x: x[index] if x.ndim >= 2 and x.shape[0] == n else x, record)
