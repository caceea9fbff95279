"""Fourier feature families on Z_p.

A family is a set of functions of the inputs ``(a, b)``: for each frequency ``k`` the pair
``cos(2 pi k v / p), sin(2 pi k v / p)`` of a variable ``v`` (``a``, ``b``, ``a + b``,
``a - b``, ``2a``, ``2b``), or ``axis_sum`` = ``F(a) + F(b)``. Frequencies run over
``1..(p-1)/2`` by default (frequency ``k`` and ``p - k`` span the same plane), so a full
family has ``p - 1`` columns. Columns are mean-centred over the given inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .modular import check_modulus

FAMILIES = ("a", "b", "sum", "diff", "2a", "2b", "axis_sum")


def check_frequencies(freqs: Sequence[int] | None, p: int) -> np.ndarray:
    """``freqs`` as an int array, defaulting to ``1..(p-1)/2``; each must lie in that range."""
    p = check_modulus(p)
    top = (p - 1) // 2
    if freqs is None:
        return np.arange(1, top + 1)
    freqs = np.atleast_1d(np.asarray(freqs))
    if freqs.size == 0:
        raise ValueError("freqs is empty; pass None for all frequencies")
    bad = [int(k) for k in freqs if not (float(k).is_integer() and 1 <= k <= top)]
    if bad:
        raise ValueError(f"frequencies {bad} are outside 1..{top} (= (p-1)/2 for p={p})")
    return freqs.astype(int)


def fourier_family(values, p: int, freqs: Sequence[int] | None = None, center: bool = True) -> np.ndarray:
    """Cos/sin features of integer ``values`` (N,) mod ``p``.

    Returns (N, 2 * len(freqs)) with columns ``[cos k1, sin k1, cos k2, sin k2, ...]``,
    mean-centred over the N values when ``center``.
    """
    freqs = check_frequencies(freqs, p)
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    angle = 2 * np.pi * v * freqs.reshape(1, -1) / p
    feats = np.stack([np.cos(angle), np.sin(angle)], axis=2).reshape(len(v), -1)
    return feats - feats.mean(0, keepdims=True) if center else feats


def feature_family(pairs, p: int, family: str, freqs: Sequence[int] | None = None) -> np.ndarray:
    """The named family evaluated on (N, 2) pairs ``(a, b)``: (N, 2 * len(freqs)).

    ``family`` is one of ``FAMILIES``: ``a``, ``b``, ``sum`` (a+b), ``diff`` (a-b), ``2a``,
    ``2b``, or ``axis_sum`` (F(a) + F(b)).
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (N, 2), got {pairs.shape}")
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    if family == "axis_sum":
        return fourier_family(a, p, freqs) + fourier_family(b, p, freqs)
    values = {"a": a, "b": b, "sum": a + b, "diff": a - b, "2a": 2 * a, "2b": 2 * b}
    if family not in values:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    return fourier_family(values[family] % p, p, freqs)


def frequency_planes(pairs, p: int, family: str, freqs: Sequence[int] | None = None) -> list[np.ndarray]:
    """One (N, 2) cos/sin plane of ``family`` per frequency (see :func:`feature_family`)."""
    return [feature_family(pairs, p, family, [k]) for k in check_frequencies(freqs, p)]
