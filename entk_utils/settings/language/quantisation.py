"""Quantising a model's weights further, to measure what quantisation does to a result.

The offline models are 4-bit quantisations, dequantised; the original float weights are out of
reach here. What 4-bit quantisation does to a number can still be estimated: quantise the
weights again, coarser (3 and 2 bits), measure the number at each, and extrapolate back along
the added error. :func:`round_to_nearest` is the plain quantiser of GGUF's ``Q4_1`` family at
any bit width: blocks of ``block`` consecutive weights of a row, each mapped to ``2**bits``
evenly spaced levels between its own minimum and maximum, and back.
"""

from __future__ import annotations

import copy

import torch

BLOCK = 32  # GGUF's block size for Q4_0 / Q4_1 and the sub-blocks of its K-quants


def round_to_nearest(weight: torch.Tensor, bits: int, block: int = BLOCK) -> torch.Tensor:
    """``weight`` (..., n) with each block of ``block`` consecutive entries of its last axis
    rounded to ``2**bits`` levels spanning the block's [min, max] (asymmetric round to nearest),
    returned dequantised, in ``weight``'s dtype. The last axis must be a multiple of ``block``."""
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must lie in 1..16, got {bits}")
    if weight.shape[-1] % block:
        raise ValueError(f"the last axis ({weight.shape[-1]}) is not a multiple of block={block}")
    w = weight.detach().double().reshape(-1, block)
    low, high = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    step = (high - low) / (2 ** int(bits) - 1)
    step = torch.where(step == 0, torch.ones_like(step), step)  # a constant block stays as it is
    q = torch.round((w - low) / step).clamp(0, 2 ** int(bits) - 1)
    return (low + q * step).reshape(weight.shape).to(weight.dtype)


def requantised(model: torch.nn.Module, bits: int, block: int = BLOCK) -> tuple[torch.nn.Module, float]:
    """A copy of ``model`` with every matrix (every parameter of two or more dimensions whose
    last axis is a multiple of ``block``: the projections and the embedding, as GGUF quantises
    them; norms and biases stay) passed through :func:`round_to_nearest`, and the added error
    ``||W' - W||^2 / ||W||^2`` over all of them together. Tied matrices are quantised once."""
    copied = copy.deepcopy(model)
    added, total = 0.0, 0.0
    with torch.no_grad():
        for _, p in copied.named_parameters():  # named_parameters lists a tied matrix once
            if p.dim() >= 2 and p.shape[-1] % block == 0:
                q = round_to_nearest(p, bits, block)
                added += float(((q.double() - p.double()) ** 2).sum())
                total += float((p.double() ** 2).sum())
                p.copy_(q)
    if total == 0:
        raise ValueError(f"no matrix of the model has a last axis that is a multiple of block={block}")
    return copied, added / total
