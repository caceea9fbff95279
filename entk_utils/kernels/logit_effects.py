"""What a change of the final hidden state does to the next-token logits: the model's
unembedding (:func:`unembedding`, its one accessor here), a change of the unembedding's input
read as a logit change (:func:`logit_change`), and the direct effect of a vector added before
the final norm, the norm linearised at each context (:class:`FinalNorm`).

Every logit change is **centred over the vocabulary** (its mean over the V tokens taken off):
the softmax ignores a shift of every logit, so only the centred change says which tokens a
change favours (positive) and disfavours (negative)."""

from __future__ import annotations

import numpy as np
import torch

from .anatomy import find_anatomy, math_attention, output_embedding_input
from .forward_paths import trace
from .module_tools import first_output
from .path_choice import traced_tail


def unembedding(model) -> torch.Tensor:
    """(V, d): the model's output embedding (the unembedding), detached."""
    return find_anatomy(model).output_embedding.weight.detach()


def centred(change: torch.Tensor) -> torch.Tensor:
    """A logit change (..., V) less its mean over the vocabulary."""
    return change - change.mean(dim=-1, keepdim=True)


def logit_change(model, hidden_change: torch.Tensor) -> torch.Tensor:
    """(V,): the first-order logit change (before any soft cap) of a change of the
    unembedding's input ``hidden_change`` (n, d), mean over the n rows, centred."""
    U = unembedding(model)
    return centred(U @ hidden_change.mean(0).to(U.device, U.dtype))


class FinalNorm:
    """The model's final modules (its final norm: what runs between the last decoder layer and
    the unembedding) and their inputs at the last position of contexts ``input_ids`` (B, T):
    ``inputs`` (B, d). :meth:`logit_change` is the direct effect of a vector there."""

    def __init__(self, model, input_ids: torch.Tensor, chunk_size: int = 16):
        anatomy = find_anatomy(model)
        device = next(model.parameters()).device
        self.model = model
        self.tail = traced_tail(anatomy, trace(anatomy, {"input_ids": input_ids[:1].to(device), "use_cache": False}))
        captured = []
        handle = anatomy.layers[-1].register_forward_hook(lambda m, a, out: captured.append(first_output(out)[:, -1]))
        try:
            with torch.no_grad(), math_attention():
                for i in range(0, len(input_ids), chunk_size):
                    inputs = {"input_ids": input_ids[i:i + chunk_size].to(device), "use_cache": False}
                    output_embedding_input(anatomy, lambda: model(**inputs))
        finally:
            handle.remove()
        self.inputs = torch.cat(captured)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for module in self.tail:
            x = first_output(module(x))
        return x[:, 0]

    def logit_change(self, vector, rows) -> torch.Tensor:
        """(V,): the first-order change of the next-token logits (before any soft cap, centred)
        when ``vector`` (d,) is added to the final norm's input at the last position, mean over
        contexts ``rows`` (indices into ``inputs``), the norm linearised at each one's input."""
        from torch.func import jvp

        base = self.inputs[torch.as_tensor(rows)]
        v = torch.as_tensor(np.asarray(vector), dtype=base.dtype, device=base.device).expand_as(base)
        with torch.no_grad():
            change = jvp(self._final, (base,), (v,))[1]
        return logit_change(self.model, change)
