"""The reference eNTK: explicit per-example Jacobians with ``torch.func`` (one ``vmap(jacrev)``
per block of inputs, blocks sized by :data:`REFERENCE_MEMORY`; one matrix product per
parameter). Correct for any model whose examples do not interact; the fast path
(:mod:`.gram`) is checked against it and falls back to it."""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap

REFERENCE_MEMORY = 2 * 2**30  # bytes of per-example Jacobians held at once


def check_output(out: torch.Tensor) -> torch.Tensor:
    """``out`` if it is a batch of output vectors (n, C), else ``ValueError``."""
    if out.ndim != 2:
        raise ValueError(f"the model must map (N, ...) inputs to (N, C) outputs, got output shape {tuple(out.shape)}")
    return out


def _mirror(block: torch.Tensor, reduce: str) -> torch.Tensor:
    """Kernel block ``K[cols, rows]`` from ``K[rows, cols]`` (the kernel is symmetric)."""
    return block.permute(1, 0, 3, 2) if reduce == "full" else block.T


# --------------------------------------------------------------------------- reference path
def _reference_block(n: int, per_example_bytes: int) -> int:
    """Inputs per Jacobian block: all ``n`` if their Jacobians fit in ``REFERENCE_MEMORY``,
    else equal blocks two of which fit (a row block and a column block)."""
    if n * per_example_bytes <= REFERENCE_MEMORY:
        return n
    n_blocks = -(-n // max(1, REFERENCE_MEMORY // (2 * per_example_bytes)))
    return -(-n // n_blocks)


def _jacobian_gram(ja: torch.Tensor, jb: torch.Tensor, reduce: str) -> torch.Tensor:
    """Kernel block from one parameter's Jacobians ``ja`` (n, c, ...) and ``jb`` (m, c, ...).

    ``c`` is 1 for ``reduce="mean"`` (Jacobians of the mean output). Returns (n, m), or
    (n, m, c, c) for ``reduce="full"``.
    """
    n, c = ja.shape[:2]
    m = jb.shape[0]
    if reduce == "full":
        return (ja.reshape(n * c, -1) @ jb.reshape(m * c, -1).T).view(n, c, m, c).transpose(1, 2)
    return ja.reshape(n, -1) @ jb.reshape(m, -1).T / c


def reference_contributions(model, inputs, names, reduce, chunk_size):
    """Per-parameter kernels ``{name: K}`` from explicit per-example Jacobians.

    ``chunk_size`` inputs per ``vmap(jacrev)`` call; ``None`` sizes the blocks by
    ``REFERENCE_MEMORY``. For ``reduce="mean"`` the Jacobian is that of the mean output.
    """
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    fixed.update({n: b.detach() for n, b in model.named_buffers()})
    chosen = {n: params[n].detach() for n in names}

    def example_outputs(theta, x):  # one example -> its (C,) outputs, or (1,) their mean
        out = check_output(functional_call(model, {**fixed, **theta}, (x.unsqueeze(0),)))[0]
        return out.mean(0, keepdim=True) if reduce == "mean" else out

    jacobians = vmap(jacrev(example_outputs), in_dims=(None, 0))
    n = len(inputs)
    with torch.no_grad():
        n_out = check_output(model(inputs[:1])).shape[1]
    n_rows = 1 if reduce == "mean" else n_out
    itemsize = next(iter(chosen.values())).element_size()
    block = chunk_size or _reference_block(n, n_rows * sum(p.numel() for p in chosen.values()) * itemsize)
    blocks = [slice(i, min(i + block, n)) for i in range(0, n, block)]
    shape = (n, n, n_out, n_out) if reduce == "full" else (n, n)
    kernels = {k: inputs.new_empty(shape, dtype=p.dtype) for k, p in chosen.items()}
    for i, rows in enumerate(blocks):
        j_rows = jacobians(chosen, inputs[rows])
        for cols in blocks[i:]:
            j_cols = j_rows if cols == rows else jacobians(chosen, inputs[cols])
            for k in names:
                kernels[k][rows, cols] = gram = _jacobian_gram(j_rows[k], j_cols[k], reduce)
                if cols != rows:
                    kernels[k][cols, rows] = _mirror(gram, reduce)
    return kernels
