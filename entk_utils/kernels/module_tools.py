"""Small tools for running a model's modules in other ways than its own forward does: a
module's ``forward`` replaced for a while, its outputs replayed or stood in for by zeros,
and nested outputs (tuples, lists, dicts of tensors) walked. The forward paths
(:mod:`.forward_paths`) are built from them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@contextmanager
def replaced_forwards(replacements: dict[nn.Module, Callable]) -> Iterator[None]:
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


def first_output(output):
    """A module's main output: the first item of a tuple or list, else the output itself."""
    return output[0] if isinstance(output, (tuple, list)) else output


def map_leaves(fn, obj):
    """``obj`` with ``fn`` applied to every leaf (through tuples, lists and dicts)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_leaves(fn, x) for x in obj)
    if isinstance(obj, dict):
        return {k: map_leaves(fn, v) for k, v in obj.items()}
    return fn(obj)


def map_tensors(fn, obj):
    """``obj`` with ``fn`` applied to every tensor in it (through tuples, lists and dicts)."""
    return map_leaves(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, obj)


def tensors_in(obj) -> list[torch.Tensor]:
    """The tensors in ``obj`` (through tuples, lists and dicts)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return [t for item in items for t in tensors_in(item)]


@dataclass(frozen=True)
class Zeros:
    """Stands for a module output that is replayed as zeros: its shape without the batch."""

    shape: torch.Size
    dtype: torch.dtype


def output_spec(output):
    """``output`` with each tensor replaced by a :class:`Zeros` of its shape (less the batch)."""
    return map_tensors(lambda x: Zeros(x.shape[1:], x.dtype), output)


def zeros_like_spec(spec, n: int, device):
    """Materialise an :func:`output_spec`: zeros (taking no memory) with batch size ``n``."""
    return map_leaves(lambda x: torch.zeros((), dtype=x.dtype, device=device).expand(n, *x.shape)
                      if isinstance(x, Zeros) else x, spec)


def idle_forward(spec, n: int, device) -> Callable:
    """A forward that returns zeros shaped like ``spec``, whatever it is given."""
    return lambda *args, **kwargs: zeros_like_spec(spec, n, device)


def replay_forward(outputs: list) -> Callable:
    """A forward that returns the recorded ``outputs`` one call after another."""
    calls = iter(outputs)
    return lambda *args, **kwargs: next(calls)
