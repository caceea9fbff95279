"""Up-front argument checks: each fails with one ``ValueError`` line that names the
argument, the value given and what is allowed (``lr='0.05': must be a finite real number > 0``).

The generic checkers (:func:`integer`, :func:`real`, :func:`one_of`, :func:`integers`,
:func:`reals`, :func:`folder`, :func:`torch_device`, :func:`known_names`) return the value in a
plain form (``int``, ``float``, ``list``); the rule sets (:func:`training`,
:func:`mlp_arguments`, :func:`transformer_arguments`) hold the rules for the training
functions' arguments in one place, for :mod:`entk_utils.modular` and the notebooks'
validators (:mod:`entk_utils.parameters`) alike.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any


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
             batch_size: Any = None, epochs_name: str = "epochs") -> None:
    """The rules for :func:`entk_utils.modular.train`'s schedule: ``epochs`` (called
    ``epochs_name`` in the message, e.g. ``"steps"``) and ``checkpoint_every`` positive
    integers, ``lr`` a real > 0, ``weight_decay`` a real >= 0, ``seed`` an integer >= 0,
    ``batch_size`` a positive integer or ``None`` (full batch)."""
    integer(epochs_name, epochs, minimum=1)
    real("lr", lr, minimum=0, low_open=True)
    real("weight_decay", weight_decay, minimum=0)
    integer("checkpoint_every", checkpoint_every, minimum=1)
    integer("seed", seed, minimum=0)
    integer("batch_size", batch_size, minimum=1, allow_none=True)


def data_split(*, train_frac: Any, split: Any, split_seed: Any, none_seed: str) -> None:
    """``train_frac`` strictly between 0 and 1, ``split`` one of
    :data:`entk_utils.modular.SPLITS`, ``split_seed`` an integer >= 0, or ``None`` where
    that means something: always under ``split="paper"`` (which ignores it), under
    ``"seeded"`` only where ``none_seed`` says what (e.g. "the seed"; ``""``: nowhere)."""
    from .modular import SPLITS

    real("train_frac", train_frac, minimum=0, maximum=1, low_open=True, high_open=True)
    one_of("split", split, SPLITS)
    if split_seed is None and split == "seeded" and not none_seed:
        raise fail("split_seed", split_seed, "an integer >= 0 under split='seeded' (None would draw an unseeded split)")
    integer("split_seed", split_seed, minimum=0, allow_none=True)


def mlp_arguments(*, p: Any, width: Any, steps: Any, seed: Any, split: Any, split_seed: Any, train_frac: Any, lr: Any,
                  weight_decay: Any, checkpoint_every: Any, device: Any, cache_dir: Any = None,
                  progress: Any = True) -> None:
    """The rules for the arguments of :func:`entk_utils.modular.train_gromov_mlp` (same names)."""
    from .modular import check_modulus

    check_modulus(p)
    integer("width", width, minimum=1)
    training(epochs=steps, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every, seed=seed,
             epochs_name="steps")
    data_split(train_frac=train_frac, split=split, split_seed=split_seed, none_seed="")
    torch_device("device", device)
    folder("cache_dir", cache_dir)


def transformer_arguments(*, p: Any, epochs: Any, seed: Any, split: Any, split_seed: Any, init: Any, train_frac: Any,
                          lr: Any, weight_decay: Any, batch_size: Any, d_model: Any, n_heads: Any, d_mlp: Any,
                          checkpoint_every: Any, device: Any, cache_dir: Any = None, progress: Any = True) -> None:
    """The rules for the arguments of :func:`entk_utils.modular.train_transformer` (same names)."""
    from .modular import TRANSFORMER_INITS, check_modulus

    check_modulus(p)
    training(epochs=epochs, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every, seed=seed,
             batch_size=batch_size)
    data_split(train_frac=train_frac, split=split, split_seed=split_seed, none_seed="the seed")
    one_of("init", init, TRANSFORMER_INITS)
    integer("n_heads", n_heads, minimum=1)
    if integer("d_model", d_model, minimum=1) % n_heads:
        raise fail("d_model", d_model, f"a multiple of n_heads={n_heads}")
    integer("d_mlp", d_mlp, minimum=1)
    torch_device("device", device)
    folder("cache_dir", cache_dir)
