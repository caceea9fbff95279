"""The layer eNTK operator over ``torch.distributed`` ranks.

Data parallelism over contexts. With a process group initialised, :func:`data_parallel_operator`
gives each of the W ranks a contiguous block of the N contexts (:func:`shard_counts`: the
first ``N mod W`` ranks hold one more) and builds the operator of
:func:`entk_utils.kernels.operators.layer_entk_operator` on that block. A product ``K~ v``, with the
whole vector ``v`` (N*d,) on every rank, is

    this rank's rows of v  @ A  -> local VJP (J_r^T)  -> all_reduce (sum): J^T (I kron A) v
    -> local JVP (J_r)  @ A  -> all_gather of the rows  -> K~ v (N*d,) on every rank,

so an eigensolver that runs the same code with the same seed on every rank (``eigen.lanczos``)
sees the same vectors everywhere, and every rank ends with the same eigenpairs. Per product,
each rank sends one weight-sized all-reduce (P numbers) and an all-gather of its output
rows (padded to the largest block); both sizes and the time spent in them are logged (rank 0)
and counted in :attr:`DataParallelOperator.stats`.

The process group itself (ranks, devices, starting and ending it, objects sent between
ranks, processes on one machine) is :mod:`entk_utils.io.ranks`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg
import torch
import torch.distributed as dist

from ..io.ranks import broadcast_object, rank_and_size
from . import operators
from .anatomy import math_attention

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers
def shard_counts(n: int, world_size: int) -> list[int]:
    """How many of ``n`` contexts each of ``world_size`` ranks holds, in rank order (contiguous
    blocks; the first ``n mod world_size`` ranks one more). ``ValueError`` if a rank would get none."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be >= 1")
    if n < world_size:
        raise ValueError(f"{n} contexts cannot be shared by {world_size} ranks: every rank needs at least one")
    base, extra = divmod(n, world_size)
    return [base + (r < extra) for r in range(world_size)]


def operator_metric(op) -> torch.Tensor | None:
    """The output metric ``A`` (d, d) of a layer operator, or None: ``.metric`` where the
    operator has it, else the older name ``.A``."""
    return op.metric if hasattr(op, "metric") else op.A


def _weight_tensors(g) -> list[torch.Tensor]:
    """The tensors of a weight-space vector: one tensor, or the values of a {name: tensor} dict."""
    return list(g.values()) if isinstance(g, dict) else [g]


def _with_tensors(g, tensors: list[torch.Tensor]):
    """``g``'s structure (a tensor or a dict, in ``g``'s key order) holding ``tensors``."""
    return dict(zip(g, tensors)) if isinstance(g, dict) else tensors[0]


def format_bytes(n: int) -> str:
    """``n`` bytes as ``"5.24 MB"`` / ``"1.5 kB"`` (decimal units)."""
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times are those of the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the operator
@dataclass
class CommStats:
    """What the products of a :class:`DataParallelOperator` cost on this rank.

    ``allreduce_bytes`` / ``allgather_bytes`` are per product: the weight-space vector
    all-reduced, and what the all-gather hands each rank (W padded blocks of rows). The
    seconds are totals over ``matvecs`` products; a collective's time includes waiting for
    the slowest rank to arrive. ``history`` holds ``(compute, allreduce, allgather)`` seconds
    per product.
    """

    world_size: int = 1
    allreduce_bytes: int = 0
    allgather_bytes: int = 0
    matvecs: int = 0
    compute_seconds: float = 0.0
    allreduce_seconds: float = 0.0
    allgather_seconds: float = 0.0
    history: list = field(default_factory=list)

    @property
    def comm_seconds(self) -> float:
        return self.allreduce_seconds + self.allgather_seconds

    @property
    def comm_share(self) -> float:
        """Fraction of the products' time spent in the two collectives (0 before any product)."""
        total = self.comm_seconds + self.compute_seconds
        return self.comm_seconds / total if total > 0 else 0.0

    def record(self, compute: float, allreduce: float, allgather: float) -> None:
        self.matvecs += 1
        self.compute_seconds += compute
        self.allreduce_seconds += allreduce
        self.allgather_seconds += allgather
        self.history.append((compute, allreduce, allgather))

    def describe(self, seconds: float) -> str:
        """One line on what the products cost (``seconds``: their wall-clock total)."""
        if self.world_size == 1:
            return f"{self.matvecs} products in {seconds:.1f} s"
        per = max(self.matvecs, 1)
        return (f"{self.matvecs} products in {seconds:.1f} s on {self.world_size} ranks; per product "
                f"{self.compute_seconds / per:.3f} s computing, all-reduce {format_bytes(self.allreduce_bytes)} in "
                f"{self.allreduce_seconds / per:.3f} s, all-gather {format_bytes(self.allgather_bytes)} in "
                f"{self.allgather_seconds / per:.3f} s ({100 * self.comm_share:.1f}% communicating)")


class DataParallelOperator(scipy.sparse.linalg.LinearOperator):
    """``K~`` over all ranks' contexts as a symmetric (N*d, N*d) ``LinearOperator``.

    Build it with :func:`data_parallel_operator`. ``matvec(v)`` must be called on every rank
    with the same float64 vector of length N*d (context ``n``, unit ``i`` at ``n*d + i``) and
    returns the same product on every rank. ``local`` is this rank's operator on contexts
    ``start:stop``; ``stats`` (:class:`CommStats`) counts the products and their costs.
    """

    def __init__(self, local, counts: list[int], group=None):
        self.local, self.counts, self.group = local, list(counts), group
        self.rank, self.world_size = rank_and_size(group)
        width = getattr(local, "output_size", local.hidden)
        if len(self.counts) != self.world_size or self.counts[self.rank] * width != local.shape[0]:
            raise ValueError(f"counts {self.counts} do not match {self.world_size} rank(s) and this rank's operator "
                             f"of shape {local.shape}")
        self.start = sum(self.counts[: self.rank])
        self.stop = self.start + self.counts[self.rank]
        self.hidden, self.output_size = local.hidden, width
        self.device, self.dtype_torch = local.device, local.dtype_torch
        self.metric = operator_metric(local)
        self._element = torch.empty((), dtype=self.dtype_torch).element_size()
        self.stats = CommStats(world_size=self.world_size,
                               allgather_bytes=self.world_size * max(self.counts) * width * self._element)
        n = sum(self.counts)
        super().__init__(dtype=np.float64, shape=(n * width, n * width))

    def _apply_metric(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.metric is None else rows @ self.metric

    def _all_reduce(self, g):
        """Sum the weight-space vector ``g`` (a tensor or {name: tensor}) over ranks, in one collective."""
        tensors = _weight_tensors(g)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=self.group)
        pieces = flat.split([t.numel() for t in tensors])
        return _with_tensors(g, [p.view_as(t) for p, t in zip(pieces, tensors)])

    def _all_gather(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, d) from every rank's (count, d) rows: blocks padded to the largest, then trimmed."""
        width = max(self.counts)
        padded = torch.zeros(width, self.output_size, dtype=rows.dtype, device=rows.device)
        padded[: len(rows)] = rows
        blocks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(blocks, padded, group=self.group)
        return torch.cat([block[:count] for block, count in zip(blocks, self.counts)])

    def _matvec(self, v):
        rows = np.asarray(v, dtype=np.float64).reshape(-1, self.output_size)[self.start: self.stop]
        rows = torch.as_tensor(rows, dtype=self.dtype_torch, device=self.device)
        parallel = self.world_size > 1
        with torch.no_grad(), math_attention():
            t0 = time.perf_counter()
            g = self.local.rmatvec_params(self._apply_metric(rows))
            self.stats.allreduce_bytes = sum(t.numel() for t in _weight_tensors(g)) * self._element
            _synchronize(self.device)
            t1 = time.perf_counter()
            g = self._all_reduce(g) if parallel else g
            _synchronize(self.device)
            t2 = time.perf_counter()
            out = self._apply_metric(self.local.matvec_params(g))
            _synchronize(self.device)
            t3 = time.perf_counter()
            out = self._all_gather(out) if parallel else out
            _synchronize(self.device)
            t4 = time.perf_counter()
        self.stats.record((t1 - t0) + (t3 - t2), t2 - t1, t4 - t3)
        if parallel and self.rank == 0:
            log.info("matvec %d: compute %.3f s; all-reduce %s in %.3f s; all-gather %s in %.3f s",
                     self.stats.matvecs, (t1 - t0) + (t3 - t2), format_bytes(self.stats.allreduce_bytes), t2 - t1,
                     format_bytes(self.stats.allgather_bytes), t4 - t3)
        return out.reshape(-1).double().cpu().numpy()

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric


def data_parallel_operator(model, input_ids: torch.Tensor, layer: int, *, metric=operators.DEFAULT_METRIC,
                           attention_mask: torch.Tensor | None = None, output=None, group=None,
                           **kwargs) -> DataParallelOperator:
    """The layer eNTK operator of :func:`~entk_utils.kernels.operators.layer_entk_operator` with its
    contexts shared over the ranks of ``group`` (default: all; none initialised: one rank).

    Call it on every rank with the same ``input_ids`` (N, T) (and ``attention_mask``); each
    rank keeps its block (:func:`shard_counts`). ``metric="unembedding"`` (the default) is
    computed on rank 0 and broadcast, so every rank applies the same ``A``; a (d, d) tensor
    or None is used as given. An ``output(h, index)`` receives the contexts' rows in the
    whole ``input_ids``. Other keywords (``param``, ``truncate``, ``chunk_size``, ...) go to
    the local operator. Returns a :class:`DataParallelOperator` of shape (N*k, N*k).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be an (N, T) tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    rank, world_size = rank_and_size(group)
    counts = shard_counts(len(input_ids), world_size)
    start = sum(counts[:rank])
    block = slice(start, start + counts[rank])
    if output is None and isinstance(metric, str) and metric == "unembedding":
        metric = broadcast_object(operators.unembedding_metric(model).cpu() if rank == 0 else None, group=group)
    elif output is not None:
        output = _shifted(output, start)
    local = operators.layer_entk_operator(model, input_ids[block], layer, metric=metric, output=output,
                                          attention_mask=None if attention_mask is None else attention_mask[block],
                                          **kwargs)
    return DataParallelOperator(local, counts, group)


def _shifted(output, start: int):
    """``output`` called with the rows of the whole ``input_ids`` by a rank whose block starts at ``start``."""
    return lambda h, index: output(h, index + start)
