"""An eNTK operator's weight steps read at every token of a context: the output change
``A J(x_t) step`` at every position ``t`` (for an eigenvector's step, over its eigenvalue, the
eigenfunction extended to every token), by forward-mode AD on the operator's own forward path."""

from __future__ import annotations

import torch

from . import anatomy as model_anatomy
from . import forward_paths
from .anatomy import math_attention


class TokenReading:
    """Output changes at every token of fixed contexts ``input_ids`` (B, T) under weight steps
    of an operator's weights (``ENTKOperator.token_output_changes``): the contexts' forward pass
    is recorded once on the operator's forward path (in chunks of ``chunk_size``), and each step
    runs, by forward-mode AD, only what the path runs (from the analysed layer up)."""

    def __init__(self, op, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 chunk_size: int = 16):
        self._check(op)
        self.op = op
        self.contexts = model_anatomy.make_contexts(op.model, input_ids, attention_mask, device=op.device)
        n, t = input_ids.shape
        size = max(1, min(int(chunk_size), n))
        size -= size == t and size > 1  # a chunk's batch must differ from T (see forward_paths.select_contexts)
        self.chunks = [slice(i, min(i + size, n)) for i in range(0, n, size)]
        self.records = [op.strategy.record(self.contexts.inputs(sl)) for sl in self.chunks]

    @classmethod
    def of_operator(cls, op) -> TokenReading:
        """The reading of the operator's own contexts, from the records it already holds (no
        forward pass)."""
        cls._check(op)
        reading = cls.__new__(cls)
        reading.op, reading.contexts, reading.chunks, reading.records = op, op.contexts, op.chunks, op.records
        return reading

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
