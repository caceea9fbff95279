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

from ..io.checks import check_modulus

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


def fourier_power(W, p: int) -> np.ndarray:
    """Share of the non-constant energy of token-indexed rows ``W`` in each frequency.

    W : (p, d) or more rows (e.g. an embedding with extra tokens; only the first ``p`` rows,
        the residues, are used).

    Returns (p-1)/2 values summing to 1: entry ``k-1`` is
    ``||C_k^T W||_F^2 / ||W - mean||_F^2`` with ``C_k`` the orthonormal cos/sin basis of
    frequency ``k`` on Z_p.
    """
    p = check_modulus(p)
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 1:
        W = W[:, None]
    if W.ndim != 2 or W.shape[0] < p:
        raise ValueError(f"W must have at least p={p} token-indexed rows, got shape {W.shape}")
    W = W[:p] - W[:p].mean(0)
    basis = fourier_family(np.arange(p), p) * np.sqrt(2 / p)  # orthonormal columns on a full period
    energy = ((basis.T @ W) ** 2).sum(1).reshape(-1, 2).sum(1)
    total = energy.sum()
    if total == 0:
        raise ValueError("W has no non-constant component over the residues")
    return energy / total


def family_power(A, pairs, p: int, family: str = "sum") -> np.ndarray:
    """Share of the centred energy of pair-indexed data ``A`` (N, d) in each frequency plane
    of ``family`` (see :func:`feature_family`): (p-1)/2 values, each in [0, 1].

    For example the MLP activations of a modular-addition network over all ``p*p`` pairs
    against ``family="sum"`` show which frequencies of ``a + b`` the neurons compute.
    """
    A = np.asarray(A, dtype=np.float64)
    A = A - A.mean(0)
    total = (A**2).sum()
    if total == 0:
        raise ValueError("A is constant over the inputs")
    shares = []
    for plane in frequency_planes(pairs, p, family):
        Q, _ = np.linalg.qr(plane)
        shares.append(((Q.T @ A) ** 2).sum() / total)
    return np.array(shares)


def key_frequencies(power, max_keys: int | None = None, min_ratio: float = 2.0) -> np.ndarray:
    """The frequencies whose power stands out from the rest, found without a hand-set count.

    power : ((p-1)/2,) power per frequency ``1..(p-1)/2`` (e.g. from :func:`fourier_power`).
    max_keys : at most this many keys (default: half the frequencies).
    min_ratio : the drop that separates keys from the rest must be at least this factor.

    Criterion: sort the powers in descending order and cut at the largest ratio between
    neighbours among the leading ``max_keys + 1``; the frequencies above the cut are the
    keys. That drop must be at least ``min_ratio``, otherwise no frequency stands out and
    ``ValueError`` is raised (e.g. an untrained network). Returns the key frequencies (1-based)
    in ascending order.
    """
    power = np.asarray(power, dtype=np.float64)
    if power.ndim != 1 or power.size < 2:
        raise ValueError(f"power must be a 1-D spectrum over at least 2 frequencies, got shape {power.shape}")
    if np.any(power < 0):
        raise ValueError("power must be non-negative")
    max_keys = power.size // 2 if max_keys is None else int(max_keys)
    if not 1 <= max_keys < power.size:
        raise ValueError(f"max_keys must lie in 1..{power.size - 1}, got {max_keys}")
    order = np.argsort(power)[::-1]
    top = np.maximum(power[order[: max_keys + 1]], np.finfo(float).tiny)
    ratios = top[:-1] / top[1:]
    cut = int(np.argmax(ratios)) + 1
    if ratios[cut - 1] < min_ratio:
        raise ValueError(
            f"no frequency stands out: the largest drop among the top {max_keys + 1} powers is "
            f"{ratios[cut - 1]:.2f}x < min_ratio={min_ratio}"
        )
    return np.sort(order[:cut] + 1)


def first_key_frequencies(spectra, *, fallback: bool = False, **kwargs) -> tuple[str, np.ndarray]:
    """Key frequencies from the first spectrum in which some stand out.

    spectra : ``{source name: power per frequency}`` in order of preference (e.g. the
    embedding first, then the neuron activations). Other arguments go to
    :func:`key_frequencies`.
    fallback : when no spectrum has a standout frequency, take the frequencies above the
        largest drop of the first spectrum anyway, and say so in the source name (for a
        network that has not generalised, whose overlaps are still worth tabulating).

    Returns ``(source, keys)``; without ``fallback`` raises ``ValueError`` with every
    source's reason when none has a standout frequency.
    """
    reasons = []
    for source, power in spectra.items():
        try:
            return source, key_frequencies(power, **kwargs)
        except ValueError as err:
            reasons.append(f"{source}: {err}")
    if fallback:
        source, power = next(iter(spectra.items()))
        keys = key_frequencies(power, **{**kwargs, "min_ratio": 1.0})
        return f"{source}, largest drop although below {kwargs.get('min_ratio', 2.0)}x (none stands out)", keys
    raise ValueError("no key frequencies found; " + "; ".join(reasons))


def transformer_spectra(model, tokens, pairs, p: int) -> dict[str, np.ndarray]:
    """Two readings of which frequencies a modular-addition Transformer uses.

    ``{"W_E": fourier_power of the token embedding over the residues,
    "MLP activations (a+b)": family_power of the last-position MLP activations in the a+b
    planes}``, in that order of preference for :func:`first_key_frequencies`. ``model`` is a
    :class:`~entk_utils.settings.modular.OneLayerTransformer`; tokens (N, 3), pairs (N, 2).
    """
    import torch

    with torch.no_grad():
        _, activations = model(tokens, return_mlp=True)
    return {
        "W_E": fourier_power(model.W_E.weight.detach().cpu(), p),
        "MLP activations (a+b)": family_power(activations.cpu().numpy(), np.asarray(pairs), p, "sum"),
    }
