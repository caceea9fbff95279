"""An eNTK operator's weight steps at every token of a context: the output change
``A J(x_t) step`` at every position ``t`` (:class:`TokenOutputChanges`, by forward-mode AD on
the operator's own forward path) and, for an eigenvector's step over its eigenvalue, the
eigenfunction extended to every token (:class:`Eigenfunctions`, which refuses eigenvectors
computed from other contexts or weights than the operator's: :func:`eigenvectors_key`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch

from . import anatomy as model_anatomy
from . import forward_paths
from .anatomy import math_attention


class TokenOutputChanges:
    """Output changes at every token of fixed contexts under weight steps of an operator's
    weights (``ENTKOperator.token_output_changes``): the contexts' forward pass is recorded once
    on the operator's forward path, and each step runs, by forward-mode AD, only what the path
    runs (from the analysed layer up). Build it with :meth:`of_contexts` (any contexts
    ``input_ids`` (B, T)) or :meth:`of_operator` (the operator's own, no forward pass)."""

    def __init__(self, op, contexts, chunks: list[slice], records: list):
        self._check(op)
        self.op, self.contexts, self.chunks, self.records = op, contexts, chunks, records

    @classmethod
    def of_contexts(cls, op, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    chunk_size: int = 16) -> TokenOutputChanges:
        """The changes at the contexts ``input_ids`` (B, T), recorded in chunks of ``chunk_size``."""
        cls._check(op)
        contexts = model_anatomy.make_contexts(op.model, input_ids, attention_mask, device=op.device)
        n, t = input_ids.shape
        size = max(1, min(int(chunk_size), n))
        size -= size == t and size > 1  # a chunk's batch must differ from T (see forward_paths.select_contexts)
        chunks = [slice(i, min(i + size, n)) for i in range(0, n, size)]
        return cls(op, contexts, chunks, [op.strategy.record(contexts.inputs(sl)) for sl in chunks])

    @classmethod
    def of_operator(cls, op) -> TokenOutputChanges:
        """The changes at the operator's own contexts, from the records it already holds."""
        return cls(op, op.contexts, op.chunks, op.records)

    @staticmethod
    def _check(op) -> None:
        if op.output is not None or op.output_maps is not None:
            raise ValueError("token_output_changes needs the operator's outputs to be h (or A h): this one has "
                             + ("an output function" if op.output is not None else "a per-context metric folded in"))

    def changes(self, step: dict[str, torch.Tensor], rows=None) -> torch.Tensor:
        """(len(rows), T, d): ``A J(x_t) step`` at every token of contexts ``rows`` (default: all)."""
        import torch.autograd.forward_ad as fwAD

        op = self.op
        if not isinstance(step, dict) or set(step) != set(op.weights):
            raise ValueError(f"step must be a dict with the keys {sorted(op.weights)}")
        rows = torch.arange(len(self.contexts)) if rows is None else torch.as_tensor(rows).reshape(-1)
        out = torch.empty(len(rows), self.contexts.input_ids.shape[1], op.hidden, dtype=op.dtype_torch)
        with torch.no_grad(), math_attention(), fwAD.dual_level():
            duals = {name: fwAD.make_dual(w, step[name].to(w.device, w.dtype)) for name, w in op.weights.items()}
            for sl, record in zip(self.chunks, self.records):
                mine = ((rows >= sl.start) & (rows < sl.stop)).nonzero().flatten()
                if not len(mine):
                    continue
                n = sl.stop - sl.start
                index = (rows[mine] - sl.start).to(op.device)
                inputs = forward_paths.select_contexts(self.contexts.inputs(sl), index, n)
                h = forward_paths.hidden(op.anatomy, op.strategy, duals,
                                         forward_paths.select_contexts(record, index, n), inputs, None)
                change = fwAD.unpack_dual(h).tangent
                change = torch.zeros_like(h) if change is None else change  # the weights do not reach h
                out[mine] = (change @ op.metric if op.metric is not None else change).cpu()
        return out


class TokenReading(TokenOutputChanges):
    """The name until 2026-12, kept for ``ENTKOperator.token_output_changes``:
    ``TokenReading(op, input_ids, attention_mask, chunk_size)`` is
    :meth:`TokenOutputChanges.of_contexts`."""

    def __new__(cls, op, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, chunk_size: int = 16):
        return TokenOutputChanges.of_contexts(op, input_ids, attention_mask, chunk_size)


def eigenvectors_key(input_ids: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> str:
    """A hash of what an operator's eigenvectors depend on besides the metric: the contexts'
    token ids (N, T) and the weights' names, shapes and values."""
    digest = hashlib.sha256(np.ascontiguousarray(input_ids.cpu().numpy()).tobytes())
    for name in sorted(weights):
        w = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}{tuple(w.shape)}{w.dtype}".encode())
        digest.update(w.view(torch.uint8).numpy().tobytes() if w.numel() else b"")
    return digest.hexdigest()[:16]


class Eigenfunctions:
    """Eigenvectors (N*d, m) of an operator ``op`` with their eigenvalues (m,), extended to
    every token of the operator's contexts as the eigenfunction is (Nystrom): the first-order
    output change at token t under the weight step ``J^T (I kron A) v_j``, over ``lam_j``. At a
    context's output position it is ``(K~ v_j / lam_j)`` there, i.e. ``v_j``'s own row for a
    converged eigenvector.

    ``key``: :func:`eigenvectors_key` of the contexts and weights the eigenvectors were
    computed from (e.g. ``cached_eigenpairs(...)["key"]``); ``ValueError`` if they are not
    the operator's."""

    def __init__(self, op, eigenvectors, eigenvalues, key: str):
        if key != eigenvectors_key(op.input_ids, op.weights):
            raise ValueError("these eigenvectors were computed from other contexts or weights than the operator's "
                             f"(key {key!r} != {eigenvectors_key(op.input_ids, op.weights)!r})")
        self.eigenvectors = np.asarray(eigenvectors)
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        if self.eigenvectors.ndim != 2 or self.eigenvectors.shape != (op.shape[0], len(self.eigenvalues)):
            raise ValueError(f"eigenvectors must be ({op.shape[0]}, {len(self.eigenvalues)}) for this operator and "
                             f"{len(self.eigenvalues)} eigenvalues, got {self.eigenvectors.shape}")
        self.op = op
        self._changes = TokenOutputChanges.of_operator(op) if op.output_maps is None else None

    @property
    def every_token(self) -> bool:
        """False where the operator's metric differs per context (a soft-capped model's logit
        metric): there is no metric for the tokens in between, only the output position is read."""
        return self._changes is not None

    def at_tokens(self, j: int, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenfunction ``j`` at every token of the operator's contexts ``rows`` (B,):
        ``(changes (B, T, d), hidden (B, d))``, both over the eigenvalue: the output change in
        the operator's output space at every token (NaN off the output position where not
        :attr:`every_token`), and the change of the final hidden state at each context's output
        position with the metric undone (what the unembedding turns into logit changes)."""
        op, lam = self.op, float(self.eigenvalues[j])
        step = op.weight_direction(self.eigenvectors[:, j])
        rows = torch.as_tensor(rows).reshape(-1)
        positions = op.positions[rows].cpu()
        if self._changes is None:
            at_output = (op.matvec_params(step)[rows] / lam).cpu()
            changes = torch.full((*op.input_ids[rows].shape, at_output.shape[-1]), float("nan"), dtype=at_output.dtype)
            changes[torch.arange(len(rows)), positions] = at_output
            hidden = torch.linalg.solve(op.output_maps[rows].cpu(), at_output.unsqueeze(-1))[..., 0]
            return changes.double(), hidden.double()
        changes = self._changes.changes(step, rows) / lam
        hidden = changes[torch.arange(len(rows)), positions]
        if op.metric is not None:
            hidden = torch.linalg.solve(op.metric.cpu(), hidden.T).T
        return changes.double(), hidden.double()
