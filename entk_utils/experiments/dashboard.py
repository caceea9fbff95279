"""Feature dashboards: a card per direction for the eNTK and every baseline finder, with its
explanation, and the discovery table (notebooks 03 and 06, and a static site per run).

What a card shows, and how each number is read:

- **scores**: the direction's score of every context (:class:`~entk_utils.features.finders.Directions`),
  oriented so that its explanation's candidate (validated or only the best) sits at the high end;
  a histogram, and the contexts at the top and at score quantiles.
- **per-token reading**: the direction's score function applied at every token of a shown
  context, so that at the context's last token it *is* the context's score (checked).
  For PCA, random directions, ICA and SAE latents that is the score function of one hidden
  state (:attr:`Directions.read`) applied to each token's hidden state after the layer. An eNTK
  score is no function of one hidden state: it is the eigenvector ``v`` (eigenvalue ``lam``)
  read along its top right singular vector ``r``. It is extended to every token as the
  eigenfunction is (Nystrom): the first-order change of the outputs at token t under the weight
  step ``J^T (I kron A) v``, divided by ``lam`` and read along ``r``.
- **logit effects**: the first-order change of the next-token logits at the direction's top
  contexts (mean over them) when the model is moved along it. The eNTK by its weight step (as
  above, through every layer above the weights: exact, and free from the per-token reading);
  the others by their direct effect, as SAE dashboards read a latent's decoder row through the
  unembedding: the direction's unit vector (the principal axis, ICA's mixing column, the SAE's
  decoder row, the random vector) added to the final norm's input at the context's last token,
  the norm linearised there, skipping the layers above the direction's own layer.
- **AUROC per label** over all contexts, in the card's orientation; **explanation** from
  :func:`~entk_utils.features.explanations.explain_directions`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..features.directions import entk_axes
from ..features.explanations import ExplanationFloor, explain_directions
from ..features.finders import Directions
from ..features.scoring import auroc_matrix
from ..features.significance import FLOOR_QUANTILE, LEVEL
from ..io.site import Card, Context, write_site
from ..kernels.anatomy import find_anatomy, math_attention, output_embedding_input
from ..kernels.forward_paths import trace
from ..kernels.module_tools import first_output
from ..kernels.token_reading import TokenReading
from ..kernels.path_choice import traced_tail
from ..settings.language import ContextDataset
from ..settings.language.activations import residual_stream

CARDED = ("entk", "pca", "ica", "sae", "random")  # the same-budget unsupervised finders
QUANTILES = (0.75, 0.5, 0.25, 0.05)
READING_CHECK = 0.1  # largest relative gap allowed between a last token's reading and its context's score


@dataclass
class ENTKReading:
    """What extends eNTK eigenvectors to every token: the ``operator`` they are eigenvectors
    of (its contexts are the scored ones), ``eigenvectors`` (N*d, m) and ``eigenvalues`` (m,)."""

    operator: object
    eigenvectors: np.ndarray
    eigenvalues: np.ndarray


def explain(found: dict[str, Directions], candidates: pd.DataFrame, select, evaluate, *, methods=CARDED,
            fdr: float = LEVEL) -> dict[str, pd.DataFrame]:
    """``{method: explanations}`` (:func:`~entk_utils.features.explanations.explain_directions`,
    one false discovery rate per method over its direction x candidate pairs) for each of
    ``methods`` in ``found``."""
    return {m: explain_directions(found[m].scores, candidates, select, evaluate, fdr=fdr)[0]
            for m in methods if m in found}


def shown_contexts(scores: np.ndarray, top: int, quantiles) -> list[tuple[str, int]]:
    """``[(label, context index)]``: the ``top`` highest scores, then for each quantile the
    context whose score is nearest it among those not shown yet."""
    order = np.argsort(-scores, kind="stable")
    shown = [(f"top {i + 1}", int(n)) for i, n in enumerate(order[:top])]
    taken = {n for _, n in shown}
    for q in quantiles:
        free = np.array([n for n in range(len(scores)) if n not in taken])
        if not len(free):
            break
        n = int(free[np.argmin(np.abs(scores[free] - np.quantile(scores, q)))])
        shown.append((f"quantile {q:.2f}", n))
        taken.add(n)
    return shown


def entk_token_readings(reading: ENTKReading, j: int, rows, tokens: TokenReading | None = None
                        ) -> tuple[np.ndarray, torch.Tensor]:
    """eNTK direction ``j`` read at every token of the operator's contexts ``rows`` (Nystrom,
    see the module docstring): ``(values (B, T), the output change at each context's output
    position, metric undone (B, d))``, both over the eigenvalue. ``tokens``: the operator's
    :class:`~entk_utils.kernels.token_reading.TokenReading` (made here if not given). Where the
    operator's metric differs per context (a soft-capped model's logit metric) there is none
    for the tokens in between: they are NaN."""
    op = reading.operator
    lam = float(reading.eigenvalues[j])
    axis = torch.as_tensor(entk_axes(reading.eigenvectors[:, [j]], len(op.input_ids))[0], dtype=op.dtype_torch)
    step = op.weight_direction(reading.eigenvectors[:, j])
    rows = torch.as_tensor(rows)
    positions = op.positions[rows].cpu()
    if op.output_maps is not None:
        at_output = op.matvec_params(step)[rows] / lam  # (B, d): A_n J step at the contexts
        values = torch.full(op.input_ids[rows].shape, float("nan"), dtype=at_output.dtype)
        values[torch.arange(len(rows)), positions] = (at_output @ axis.to(at_output.device)).cpu()
        last = torch.linalg.solve(op.output_maps[rows], at_output.unsqueeze(-1))[..., 0]
        return values.double().numpy(), last.double().cpu()
    changes = (tokens or TokenReading.of_operator(op)).changes(step, rows) / lam
    last = changes[torch.arange(len(rows)), positions]
    if op.metric is not None:
        last = torch.linalg.solve(op.metric.cpu(), last.T).T
    return (changes @ axis).double().numpy(), last.double()


class FinalNorm:
    """The model's final modules (its final norm: what runs between the last decoder layer and
    the unembedding) and their inputs at the last position of contexts ``input_ids`` (B, T):
    ``inputs`` (B, d). :meth:`logit_change` is the direct effect of a vector there."""

    def __init__(self, model, input_ids: torch.Tensor, chunk_size: int = 16):
        anatomy = find_anatomy(model)
        device = next(model.parameters()).device
        self.tail = traced_tail(anatomy, trace(anatomy, {"input_ids": input_ids[:1].to(device), "use_cache": False}))
        self.unembedding = anatomy.output_embedding.weight.detach()
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
        """(V,): the first-order change of the next-token logits (before any soft cap) when
        ``vector`` (d,) is added to the final norm's input at the last position, mean over
        contexts ``rows`` (indices into ``inputs``), the norm linearised at each one's input."""
        from torch.func import jvp

        base = self.inputs[torch.as_tensor(rows)]
        v = torch.as_tensor(np.asarray(vector), dtype=base.dtype, device=base.device).expand_as(base)
        with torch.no_grad():
            change = jvp(self._final, (base,), (v,))[1].mean(0)
        return self.unembedding.to(change.dtype) @ change


def _token_texts(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(i)]).replace("\n", "⏎") for i in ids]


def _extremes(change: torch.Tensor, tokenizer, n: int) -> tuple[list, list]:
    up, down = torch.topk(change, n), torch.topk(-change, n)
    return ([(tokenizer.decode([int(i)]), float(x)) for x, i in zip(up.values, up.indices)],
            [(tokenizer.decode([int(i)]), -float(x)) for x, i in zip(down.values, down.indices)])


def _explanation_text(row, floor: ExplanationFloor | None, fdr: float) -> tuple[bool, str]:
    """(validated?, the effect in words)."""
    at = "high" if row.sign > 0 else "low"
    effect = f"held-out AUROC {row.auroc:.2f} (at the {at} end), q = {row.q:.2g} (false discovery rate {fdr:.0%})"
    if row.q >= fdr:
        return False, f"{row.candidate!r}: {effect}"
    if floor is not None:
        beyond = "stronger" if row.auroc > floor.value else "no stronger"
        effect += (f" · {beyond} than {floor.quantile:.0%} of random directions' explanations "
                   f"(held-out AUROC {floor.value:.2f})")
    return True, effect


def direction_cards(lm, data: ContextDataset, found: dict[str, Directions], explanations: dict[str, pd.DataFrame],
                    labels: pd.DataFrame, *, layer: int, entk: ENTKReading | None = None, top: int = 5,
                    quantiles=QUANTILES, logit_contexts: int = 3, n_logits: int = 8, tokens_shown: int = 32,
                    floor: ExplanationFloor | None = None, fdr: float = LEVEL, progress: bool = True) -> list[Card]:
    """One :class:`~entk_utils.io.site.Card` per direction of every method in
    ``explanations`` (see the module docstring for what each shows). ``found``: the finders'
    directions on the contexts ``data`` (their activations: the residual stream after
    ``layer`` at the last token); ``entk``: what extends the eNTK to every token (needed for
    ``"entk"``); ``logit_contexts``: how many top contexts the logit effects average over;
    ``tokens_shown``: the last tokens of each context shown. A last token's reading that
    does not give its context's score (relative gap over 10% of the largest score) is an error
    for a method read from the hidden states (activations from another layer than ``layer``)
    and a warning, also shown on the card, for the eNTK (an unconverged eigenvector)."""
    methods = list(explanations)
    if "entk" in methods and entk is None:
        raise ValueError("cards for 'entk' need entk=ENTKReading(operator, eigenvectors, eigenvalues)")
    missing = [m for m in methods if m not in found or (m != "entk" and (found[m].read is None or found[m].vectors is None))]
    if missing:
        raise ValueError(f"no cards for {missing}: a method needs its Directions with read and vectors (or the eNTK)")
    tokenizer, Y = lm.tokenizer, labels.to_numpy().T
    plan = {}  # (method, j) -> (orientation, shown contexts)
    for m in methods:
        for row in explanations[m].itertuples():
            s = found[m].scores[:, row.direction] * row.sign
            plan[m, row.direction] = (row.sign, shown_contexts(s, top, quantiles))
    rows = sorted({n for (m, _), (_, shown) in plan.items() if m != "entk" for _, n in shown})  # read from hidden
    where = {n: i for i, n in enumerate(rows)}
    with torch.no_grad():
        hidden = [residual_stream(lm.model, data.input_ids[rows[i:i + 16]], layer).float().cpu()
                  for i in range(0, len(rows), 16)]
    hidden = torch.cat(hidden).double().numpy() if hidden else None  # (R, T, d)
    tops = sorted({n for (m, _), (_, shown) in plan.items() if m != "entk" for _, n in shown[:logit_contexts]})
    at_top = {n: i for i, n in enumerate(tops)}
    final = FinalNorm(lm.model, data.input_ids[tops]) if tops else None
    tokens = TokenReading.of_operator(entk.operator) if entk is not None and entk.operator.output_maps is None else None
    cards = []
    for (m, j), (sign, shown) in tqdm(plan.items(), desc="direction cards", disable=not progress):
        d, row = found[m], explanations[m].set_index("direction").loc[j]
        scores = d.scores[:, j] * sign
        index = [n for _, n in shown]
        if m == "entk":
            values, last = entk_token_readings(entk, j, index, tokens)
            values *= sign
            change = _entk_logit_change(lm, last[:logit_contexts], sign)
            note = ("per-token reading: the eNTK eigenfunction extended to every token (output change under the "
                    "eigenvector's weight step, over its eigenvalue, along its top singular vector)")
            if entk.operator.output_maps is not None:
                note += "; read at the last token only: this model's logit metric differs per context (soft cap)"
        else:
            H = hidden[[where[n] for n in index]]
            values = d.read(H.reshape(-1, H.shape[-1]))[:, j].reshape(H.shape[:2]) * sign
            change = sign * final.logit_change(d.vectors[j], [at_top[n] for n in index[:logit_contexts]])
            note = f"per-token reading: the {m} score of each token's hidden state after layer {layer}"
        gap = np.abs(values[:, -1] - scores[index]).max() / max(np.abs(scores).max(), 1e-30)
        if gap > READING_CHECK and m == "entk":  # the eigenvector's own error: said on the card and warned
            warnings.warn(f"eNTK direction {j}: the last token's reading differs from the context's score by {gap:.1%} "
                          "of the largest score: the eigenvector is far from converged (more Lanczos steps?)")
        elif gap > READING_CHECK:
            raise ValueError(f"{m} direction {j}: the last token's reading differs from the context's score by "
                             f"{gap:.1%} of the largest score (activations from "
                             f"another layer than {layer}?)")
        up, down = _extremes(change.double(), tokenizer, n_logits)
        validated, detail = _explanation_text(row, floor, fdr)
        contexts = []
        for (label, n), vals in zip(shown, values):
            ids = data.input_ids[n].tolist()[-tokens_shown:]
            contexts.append(Context(label, float(scores[n]), _token_texts(tokenizer, ids),
                                    [float(x) for x in vals[-tokens_shown:]], data.words[n],
                                    " ".join(x for x in (data.upos[n], data.morph[n]) if x), data.generated[n]))
        aurocs = auroc_matrix(scores[:, None], Y)[:, 0]
        cards.append(Card(key=f"{m}-{j}", method=m, title=f"{m} direction {j}", explanation=row.candidate,
                          explained=validated, detail=detail, scores=scores, contexts=contexts, logits_up=up,
                          logits_down=down, aurocs=dict(zip(labels.columns, map(float, aurocs))),
                          notes=[note, f"last-token reading vs score: largest gap {gap:.1e} of the largest score",
                                 f"logit effects: mean first-order change at the top {logit_contexts} contexts"]))
    return cards


def _entk_logit_change(lm, last: torch.Tensor, sign: int) -> torch.Tensor:
    """(V,): the logit change ``U dh`` of the eNTK weight step (over lam) at the top contexts,
    mean over them, oriented by ``sign`` (``last``: (n, d) output changes, metric undone)."""
    U = lm.model.get_output_embeddings().weight.detach()
    return sign * (U @ last.mean(0).to(U.dtype))


INTRO = ("One card per direction of each method. An explanation is the candidate property of the contexts "
         "that the direction separates best on one half of them, validated on the other half (one-sided rank test, "
         f"false discovery rate controlled at {LEVEL:.0%} over all direction x candidate pairs of a method); "
         "'beyond_random' counts the explanations stronger (held-out AUROC) than those of "
         f"{FLOOR_QUANTILE:.0%} of random directions explained by the same rule, 'by_chance' the share random "
         "directions reach.")


def write_dashboard(cards: list[Card], out_dir: str | os.PathLike, *, title: str, discovery: pd.DataFrame | None = None,
                    intro: str = INTRO, folder: str = "dashboard") -> Path:
    """The run's static site: ``out_dir/<folder>/index.html`` and one page per card; returns
    the index's path."""
    return write_site(cards, Path(out_dir) / folder, title=title, intro=intro, discovery=discovery)
