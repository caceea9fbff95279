"""Choosing a forward path (:mod:`.forward_paths`) for some weights and checking it.

:func:`layer_path` and :func:`module_path` build the truncated paths from a trace of the
model's calls (:func:`~entk_utils.kernels.forward_paths.trace`), or say why they cannot apply;
:func:`choose_path` builds the path for a ``truncate`` mode and verifies it against the full
model on a probe batch (values and a JVP): a shortcut that does not reproduce the model falls
back with a warning, and a mode the caller insists on that cannot apply raises ``ValueError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp

from .anatomy import Anatomy, Contexts, NotApplicable, math_attention
from .conventions import is_mlp_output
from .forward_paths import DOWN_PROJ, FromLayer, FromModule, ForwardPath, FullModel, Trace, hidden, trace

PROBE_CONTEXTS = 8  # contexts in the probe batch that a shortcut is checked on


# --------------------------------------------------------------------------- building a path
def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module that holds parameter ``name``."""
    return model.get_submodule(name.rpartition(".")[0])


def traced_tail(anatomy: Anatomy, tr: Trace) -> list[nn.Module]:
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
    return FromLayer(anatomy, start, traced_tail(anatomy, tr))


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


def _down_projection_path(anatomy: Anatomy, tr: Trace, names: Sequence[str]) -> FromModule:
    """The ``"module"`` path, insisted on starting at an MLP output projection's input (the
    legacy ``truncate="down_proj"``); :class:`NotApplicable` if its first module is another."""
    path = module_path(anatomy, tr, names)
    if not is_mlp_output(anatomy, path.first):
        raise NotApplicable(f"its first analysed module, {anatomy.names()[path.first]}, is not an MLP output "
                            "(down-) projection")
    return path


BUILDERS = {"module": module_path, "layer": layer_path, DOWN_PROJ: _down_projection_path}
INSTEAD = {"module": "'layer' or 'full'", DOWN_PROJ: "'module', 'layer' or 'full'", "layer": "'full'"}


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
    """The path for ``truncate`` (one of :data:`~entk_utils.kernels.forward_paths.TRUNCATE_MODES`,
    or ``"down_proj"``: the module path from an MLP output projection's input), checked on a
    probe batch (the first :data:`PROBE_CONTEXTS` contexts): its outputs and their JVP along a
    random weight direction must equal the full model's within :func:`_tolerance`.

    ``"auto"`` takes the first of ``"module"``, ``"layer"``, ``"full"`` that applies and passes
    (a failed probe is a warning); an insisted path (``"layer"``, ``"module"``,
    ``"down_proj"``) raises ``ValueError`` naming the path and the weights where it cannot
    apply or fails the probe. Running the last layer at the output positions only is tried
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
    insisted = f"truncate={truncate!r} insists on the {truncate} path for {', '.join(weights)}"
    failures = []
    for mode in ("module", "layer") if truncate == "auto" else (truncate,):
        try:
            path = BUILDERS[mode](anatomy, tr, list(weights))
        except NotApplicable as err:
            if truncate == "auto":
                continue
            raise ValueError(f"{insisted}, which cannot apply: {err}; use truncate={INSTEAD[mode]}") from None
        for at_rows in (True, False) if path.can_run_last_at_rows() else (False,):
            failure = probe.failure(path, at_rows)
            if failure is None:
                if failures:
                    warnings.warn("; ".join(failures) + f"; using the {path.describe()}", stacklevel=3)
                return path
            failures.append(failure)
        if truncate != "auto":
            raise ValueError(f"{insisted}: {failures[-1]}; use truncate='full'")
    if failures:
        warnings.warn("; ".join(failures) + "; falling back to the full model", stacklevel=3)
    return full
