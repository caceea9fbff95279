"""Up-front argument checks: each fails with one ``ValueError`` line that names the
argument, the value given and what is allowed (``lr='0.05': must be a finite real number > 0``).

The generic checkers (:func:`integer`, :func:`real`, :func:`one_of`, :func:`integers`,
:func:`reals`, :func:`folder`, :func:`torch_device`, :func:`known_names`) return the value in a
plain form (``int``, ``float``, ``list``); the rule sets (:func:`training`,
:func:`mlp_arguments`, :func:`transformer_arguments`) hold the rules for the training
functions' arguments in one place, for :mod:`entk_utils.settings.modular` and the notebooks'
validators (:mod:`entk_utils.experiments.parameters`) alike.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def fail(name: str, value: Any, allowed: str) -> ValueError:
    """The one-line error for argument ``name``: ``name=value: must be <allowed>``."""
    return ValueError(f"{name}={value!r}: must be {allowed}")


def _bounds(minimum, maximum, low_open=False, high_open=False) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if low_open else '['}{minimum}, {maximum}{')' if high_open else ']'}"
    if minimum is not None:
        return f" {'>' if low_open else '>='} {minimum}"
    if maximum is not None:
        return f" {'<' if high_open else '<='} {maximum}"
    return ""


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            allow_none: bool = False, note: str = "") -> int | None:
    """``value`` as an ``int`` if it is an integer (numpy integers too, not ``bool``, not a
    float or a string) within ``[minimum, maximum]``; ``None`` passes when ``allow_none``.
    ``note`` is added to the message (e.g. where a bound comes from)."""
    allowed = f"an integer{_bounds(minimum, maximum)}" + (" or None" if allow_none else "") + note
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail(name, value, allowed)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise fail(name, value, allowed)
    return int(value)


def real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
         low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a finite ``float`` (an int or float, not ``bool`` or a string) within the
    interval from ``minimum`` to ``maximum`` (ends excluded with ``low_open`` / ``high_open``)."""
    allowed = f"a finite real number{_bounds(minimum, maximum, low_open, high_open)}" + (" or None" if allow_none else "")
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise fail(name, value, allowed)
    too_low = minimum is not None and (value <= minimum if low_open else value < minimum)
    too_high = maximum is not None and (value >= maximum if high_open else value > maximum)
    if too_low or too_high:
        raise fail(name, value, allowed)
    return float(value)


def one_of(name: str, value: Any, choices: Iterable) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        raise fail(name, value, f"one of {', '.join(map(repr, choices))}")
    return value


def _sequence(name: str, value: Any, allowed: str, nonempty: bool) -> list:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise fail(name, value, allowed)
    items = list(value)
    if nonempty and not items:
        raise fail(name, value, allowed)
    return items


def integers(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
             nonempty: bool = True, unique: bool = False, note: str = "") -> list[int]:
    """``value`` as a list of ints, each within ``[minimum, maximum]`` (a list or tuple, not a
    string; non-empty unless ``nonempty=False``; no repeats with ``unique``). ``note`` is
    added to the message (e.g. why the bounds are what they are)."""
    allowed = (f"a {'non-empty ' if nonempty else ''}list of {'distinct ' if unique else ''}"
               f"integers{_bounds(minimum, maximum)}{note}")
    items = _sequence(name, value, allowed, nonempty)
    try:
        out = [integer(name, v, minimum=minimum, maximum=maximum) for v in items]
    except ValueError:
        raise fail(name, value, allowed) from None
    if unique and len(set(out)) < len(out):
        raise fail(name, value, allowed)
    return out


def reals(name: str, value: Any, *, minimum: float | None = None, low_open: bool = False,
          nonempty: bool = True) -> list[float]:
    """``value`` as a list of finite floats, each above ``minimum`` (or at it, unless
    ``low_open``); a list or tuple, non-empty unless ``nonempty=False``."""
    allowed = f"a {'non-empty ' if nonempty else ''}list of finite real numbers{_bounds(minimum, None, low_open)}"
    items = _sequence(name, value, allowed, nonempty)
    try:
        return [real(name, v, minimum=minimum, low_open=low_open) for v in items]
    except ValueError:
        raise fail(name, value, allowed) from None


def folder(name: str, value: Any, *, allow_none: bool = True) -> str | None:
    """``value`` as a string path if it is a non-empty string or ``os.PathLike`` (``None``
    passes with ``allow_none``). Only the type is checked: the folder may not exist yet."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise fail(name, value, "a folder path (a non-empty string)" + (" or None" if allow_none else ""))
    return str(value)


def torch_device(name: str, value: Any) -> Any:
    """``value`` if torch understands it as a device and it is available here
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; a ``torch.device`` too)."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise fail(name, value, "a torch device such as 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise fail(name, value, f"an available device: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                "use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise fail(name, value, "an available device: MPS is not available here; use 'cpu'")
    return str(value) if isinstance(value, str) else value


def known_names(names: Iterable[str], valid: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` if any of ``names`` is not in ``valid``, listing the valid names.

    ``where`` says whose names they are (e.g. ``"notebook 01_mlp_modular_addition.ipynb"``).
    """
    valid = sorted(valid)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"for {where}; valid names: {', '.join(valid)}")


# --------------------------------------------------------------------------- rule sets
def training(*, epochs: Any, lr: Any, weight_decay: Any, checkpoint_every: Any, seed: Any,
             batch_size: Any = None) -> None:
    """The rules for :func:`entk_utils.settings.modular.train`'s schedule: ``epochs`` and
    ``checkpoint_every`` positive integers, ``lr`` a real > 0, ``weight_decay`` a real >= 0,
    ``seed`` an integer >= 0, ``batch_size`` a positive integer or ``None`` (full batch)."""
    integer("epochs", epochs, minimum=1)
    real("lr", lr, minimum=0, low_open=True)
    real("weight_decay", weight_decay, minimum=0)
    integer("checkpoint_every", checkpoint_every, minimum=1)
    integer("seed", seed, minimum=0)
    integer("batch_size", batch_size, minimum=1, allow_none=True)


def check_modulus(p: int) -> int:
    """Return ``p`` if it is an odd prime, else raise ``ValueError`` saying why."""
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
        raise ValueError(f"modulus p must be an odd prime integer, got {p!r}")
    p = int(p)
    if p < 3 or p % 2 == 0 or any(p % d == 0 for d in range(3, math.isqrt(p) + 1, 2)):
        raise ValueError(f"modulus p must be an odd prime (3, 5, 7, 11, ...), got {p}")
    return p


def index_array(idx: Any, n: int, name: str, *, min_size: int = 1) -> np.ndarray:
    """``idx`` as a 1-D integer index array into ``range(n)``: ``None`` means all of it, a
    boolean mask of length ``n`` its true positions; a tensor is read as an array. Raises
    ``ValueError`` naming ``name`` for another shape, fewer than ``min_size`` indices or an
    index outside ``0..n-1``."""
    if idx is None:
        return np.arange(n)
    if hasattr(idx, "detach"):
        idx = idx.detach().cpu().numpy()
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean {name} must have shape ({n},), got {idx.shape}")
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or idx.size < min_size or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of at least {min_size} integer indices into range({n}), "
                         f"got shape {idx.shape} and dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name} has indices outside range({n}): min {idx.min()}, max {idx.max()}")
    return idx.astype(np.int64)
