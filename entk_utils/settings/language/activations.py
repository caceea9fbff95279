"""Residual-stream activations at every token of a text: the training data of a sparse
autoencoder (:mod:`entk_utils.features.sae`).

Documents are tokenised as the contexts are (no BOS, :func:`~.contexts.sample_contexts`), run
through the model in length-sorted, right-padded batches, and the residual stream after one
decoder block is kept at every position (but the first ``skip_first`` of each document, if
asked). :func:`cached_token_activations` stores them in float32 (Gemma-3's residual stream
has norms near 3e4 and entries up to 5e4, too close to float16's 6.5e4) by the text, the
model, the layer and this code; :meth:`TokenActivations.excluding` drops the positions of
contexts that are scored, so an SAE never sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...io.cache import cache_key, cached
from .corpus import hash_text


@dataclass
class TokenActivations:
    """Activations at token positions of a list of documents.

    activations : (M, d) float32; document : (M,) int64 index into the documents;
    position : (M,) int64 token index inside its document (tokenised without BOS).
    """

    activations: torch.Tensor
    document: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return len(self.document)

    def to_dict(self) -> dict:
        return {"activations": self.activations, "document": self.document, "position": self.position}

    def excluding(self, document_index: Sequence[int], ends: Sequence[int], context_len: int) -> TokenActivations:
        """These activations without the positions inside the contexts of document
        ``document_index[i]``, tokens ``ends[i] - context_len .. ends[i] - 1`` (a context
        dataset's ``story`` and ``token``): what an SAE may train on when those contexts are scored."""
        if len(document_index) != len(ends):
            raise ValueError(f"document_index and ends must have one entry per context, got {len(document_index)} and "
                             f"{len(ends)}")
        drop = np.zeros(len(self), dtype=bool)
        doc, pos = self.document.numpy(), self.position.numpy()
        by_document: dict[int, list[int]] = {}
        for d, end in zip(document_index, ends):
            by_document.setdefault(int(d), []).append(int(end))
        for d, doc_ends in by_document.items():
            rows = np.flatnonzero(doc == d)
            for end in doc_ends:
                drop[rows[(pos[rows] >= end - context_len) & (pos[rows] < end)]] = True
        keep = torch.from_numpy(~drop)
        return TokenActivations(self.activations[keep], self.document[keep], self.position[keep])


@torch.no_grad()
def residual_stream(model, input_ids: torch.Tensor, layer: int, attention_mask: torch.Tensor | None = None, *,
                    positions: int | slice | None = None, chunk_size: int = 64) -> torch.Tensor:
    """The residual stream after decoder block ``layer`` (``hidden_states[layer + 1]`` of the
    model's decoder, ``get_decoder()``; after the final norm for the last layer) of contexts
    ``input_ids`` (B, T), read in chunks of ``chunk_size`` contexts, as float32 on the CPU:
    (B, T, d) at every position, or (B, d) at one ``positions`` index (e.g. ``-1``, the last
    token), or (B, T', d) at a slice of them. The one reader of hidden states in the package."""
    device = next(model.parameters()).device
    decoder, out = model.get_decoder(), []
    for start in range(0, len(input_ids), chunk_size):
        rows = slice(start, start + chunk_size)
        mask = None if attention_mask is None else attention_mask[rows].to(device)
        hidden = decoder(input_ids=input_ids[rows].to(device), attention_mask=mask, output_hidden_states=True,
                         use_cache=False).hidden_states[layer + 1]
        out.append((hidden if positions is None else hidden[:, positions]).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def residual_streams(model, input_ids: torch.Tensor, layers, *, positions: int = -1,
                     chunk_size: int = 64) -> dict[int, torch.Tensor]:
    """``{layer: (B, d)}``: :func:`residual_stream` at one ``positions`` index for several
    ``layers`` from one forward pass per chunk (what a table over every layer needs)."""
    device = next(model.parameters()).device
    decoder, out = model.get_decoder(), {int(layer): [] for layer in layers}
    for start in range(0, len(input_ids), chunk_size):
        hidden = decoder(input_ids=input_ids[start:start + chunk_size].to(device), output_hidden_states=True,
                         use_cache=False).hidden_states
        for layer, parts in out.items():
            parts.append(hidden[layer + 1][:, positions].float().cpu())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


@torch.no_grad()
def token_activations(model, tokenizer, documents: Sequence[str], layer: int, *, max_len: int = 512,
                      skip_first: int = 0, batch_tokens: int = 4096, progress: bool = True) -> TokenActivations:
    """The residual stream after block ``layer`` at every token of ``documents`` but the first
    ``skip_first`` of each (see the module docstring). A document longer than ``max_len``
    tokens is read as consecutive pieces of ``max_len`` tokens, each a sequence of its own.
    Batches hold about ``batch_tokens`` padded tokens."""
    if max_len <= skip_first or skip_first < 0:
        raise ValueError(f"need 0 <= skip_first < max_len, got skip_first={skip_first}, max_len={max_len}")
    pieces = []  # (document, first token, ids)
    for d, text in enumerate(tqdm(documents, desc="tokenising", disable=not progress)):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids), max_len):
            if len(ids) - start > skip_first:
                pieces.append((d, start, ids[start:start + max_len]))
    if not pieces:
        raise ValueError(f"the {len(documents)} documents hold no piece longer than skip_first={skip_first} tokens")
    pieces.sort(key=lambda p: (len(p[2]), p[0], p[1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    acts, docs, positions = [], [], []
    bar = tqdm(total=sum(len(p[2]) - skip_first for p in pieces), desc=f"activations after layer {layer}",
               unit="tok", disable=not progress)
    i = 0
    while i < len(pieces):
        width = len(pieces[i][2])
        batch = [pieces[i]]
        while i + len(batch) < len(pieces) and (len(batch) + 1) * len(pieces[i + len(batch)][2]) <= batch_tokens:
            batch.append(pieces[i + len(batch)])
        i += len(batch)
        width = len(batch[-1][2])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, piece) in enumerate(batch):
            ids[row, :len(piece)] = torch.tensor(piece)
            mask[row, :len(piece)] = 1
        hidden = residual_stream(model, ids, layer, mask, chunk_size=len(ids))
        for row, (d, start, piece) in enumerate(batch):
            acts.append(hidden[row, skip_first:len(piece)])
            positions.append(torch.arange(start + skip_first, start + len(piece)))
            docs.append(torch.full((len(piece) - skip_first,), d))
        bar.update(sum(len(p[2]) - skip_first for p in batch))
    bar.close()
    out = torch.cat(acts)
    order = np.lexsort((torch.cat(positions).numpy(), torch.cat(docs).numpy()))  # by document, then position
    order = torch.from_numpy(order)
    return TokenActivations(out[order], torch.cat(docs)[order], torch.cat(positions)[order])


def cached_token_activations(cache_dir, lm, documents: Sequence[str], layer: int, *, max_len: int = 512,
                             skip_first: int = 0, batch_tokens: int = 4096, progress: bool = True) -> TokenActivations:
    """:func:`token_activations` of the loaded model ``lm``, cached in ``cache_dir`` by the
    documents' content, the model's description and weights, the layer, the batching (padded
    batches change the last bits) and the code."""
    def compute():
        return token_activations(lm.model, lm.tokenizer, documents, layer, max_len=max_len, skip_first=skip_first,
                                 batch_tokens=batch_tokens, progress=progress).to_dict()

    text = cache_key(n=len(documents), text=[hash_text(d) for d in documents])
    return TokenActivations(**cached(cache_dir, "token-activations", compute,
                                     produced_by=(token_activations, residual_stream, TokenActivations), text=text,
                                     model=lm.description, weights=lm.fingerprint, layer=layer, max_len=max_len,
                                     skip_first=skip_first, batch_tokens=batch_tokens))
