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
  step ``J^T (I kron A) v``, divided by ``lam`` and read along ``r``
  (:class:`~entk_utils.kernels.token_reading.Eigenfunctions`).
- **logit effects**: the first-order change of the next-token logits at the direction's top
  contexts (mean over them) when the model is moved along it, centred over the vocabulary (the
  softmax ignores a shift of every logit: what it raises is positive, what it lowers negative). The eNTK by its weight step (as
  above, through every layer above the weights: exact, and free from the per-token reading);
  the others by their direct effect, as SAE dashboards read a latent's decoder row through the
  unembedding: the direction's unit vector (the principal axis, ICA's mixing column, the SAE's
  decoder row, the random vector) added to the final norm's input at the context's last token,
  the norm linearised there, skipping the layers above the direction's own layer
  (:class:`~entk_utils.kernels.logit_effects.FinalNorm`).
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
from ..features.finders import Directions, carded_finders
from ..features.scoring import auroc_matrix
from ..features.significance import FLOOR_QUANTILE, LEVEL
from ..io.site import Card, Context, write_site
from ..kernels.logit_effects import FinalNorm, logit_change
from ..kernels.token_reading import Eigenfunctions
from ..settings.language import ContextDataset
from ..settings.language.activations import residual_stream

QUANTILES = (0.75, 0.5, 0.25, 0.05)
READING_CHECK = 0.1  # largest relative gap allowed between a last token's reading and its context's score
LOGIT_NOTE = "logit effects: mean first-order change at the top {n} contexts, centred over the vocabulary"


def explain(directions: dict[str, Directions], candidates: pd.DataFrame, select, evaluate, *, methods=None,
            fdr: float = LEVEL) -> dict[str, pd.DataFrame]:
    """``{method: explanations}`` (:func:`~entk_utils.features.explanations.explain_directions`,
    one false discovery rate per method over its direction x candidate pairs) for each of
    ``methods`` (default: the carded finders, :func:`~entk_utils.features.finders.carded_finders`)
    in ``directions``."""
    return {m: explain_directions(directions[m].scores, candidates, select, evaluate, fdr=fdr)[0]
            for m in (carded_finders() if methods is None else methods) if m in directions}


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


def entk_token_values(eigenfunctions: Eigenfunctions, j: int, rows) -> tuple[np.ndarray, torch.Tensor]:
    """eNTK direction ``j`` at every token of the operator's contexts ``rows``: ``(values (B,
    T), hidden (B, d))``, its eigenfunction read along the eigenvector's top right singular
    vector (so that at the output position it is the direction's score) and the final hidden
    state's change there, both over the eigenvalue. NaN between output positions where the
    operator's metric differs per context (a soft-capped model's logit metric)."""
    n = len(eigenfunctions.op.input_ids)
    axis = torch.as_tensor(entk_axes(eigenfunctions.eigenvectors[:, [j]], n)[0], dtype=torch.float64)
    changes, hidden = eigenfunctions.at_tokens(j, rows)
    return (changes @ axis).numpy(), hidden


# --------------------------------------------------------------------------- plan, measure, render
@dataclass
class CardPlan:
    """One card to make: ``method``'s direction ``direction``, oriented by ``sign`` (its
    explanation at the high end), showing the contexts ``shown`` ([(label, index)])."""

    method: str
    direction: int
    sign: int
    shown: list[tuple[str, int]]


@dataclass
class Measured:
    """What a card shows beyond the scores: per shown context its per-token ``values`` (B, T),
    the oriented ``logit_change`` (V,), the last token's largest relative ``gap`` to its score
    and a ``note`` on how the values were read."""

    values: np.ndarray
    logit_change: torch.Tensor
    gap: float
    note: str


def plan_cards(directions: dict[str, Directions], explanations: dict[str, pd.DataFrame], *, top: int = 5,
               quantiles=QUANTILES) -> list[CardPlan]:
    """A :class:`CardPlan` per explained direction of each method of ``explanations``."""
    return [CardPlan(m, int(row.direction), int(row.sign),
                     shown_contexts(directions[m].scores[:, row.direction] * row.sign, top, quantiles))
            for m in explanations for row in explanations[m].itertuples()]


def measure_cards(lm, data: ContextDataset, directions: dict[str, Directions], plans: list[CardPlan], *, layer: int,
                  entk: Eigenfunctions | None, logit_contexts: int = 3, progress: bool = True) -> list[Measured]:
    """The model passes behind the cards: each shown context read at every token along its
    direction and the logit effect at its top ``logit_contexts`` (module docstring). A last
    token's reading that misses its context's score by over :data:`READING_CHECK` of the
    largest score is an error for a method read from hidden states (activations of another
    layer than ``layer``) and a warning for the eNTK (an unconverged eigenvector)."""
    read = sorted({n for p in plans if p.method != "entk" for _, n in p.shown})  # read from hidden states
    hidden = residual_stream(lm.model, data.input_ids[read], layer, chunk_size=16).double().numpy() if read else None
    tops = sorted({n for p in plans if p.method != "entk" for _, n in p.shown[:logit_contexts]})
    final = FinalNorm(lm.model, data.input_ids[tops]) if tops else None
    where, at_top = {n: i for i, n in enumerate(read)}, {n: i for i, n in enumerate(tops)}
    out = []
    for p in tqdm(plans, desc="direction cards", disable=not progress):
        d, index = directions[p.method], [n for _, n in p.shown]
        if p.method == "entk":
            values, last = entk_token_values(entk, p.direction, index)
            change = p.sign * logit_change(lm.model, last[:logit_contexts])
            note = ("per-token reading: the eNTK eigenfunction extended to every token (output change under the "
                    "eigenvector's weight step, over its eigenvalue, along its top singular vector)")
            if not entk.every_token:
                note += "; read at the last token only: this model's logit metric differs per context (soft cap)"
        else:
            H = hidden[[where[n] for n in index]]
            values = d.read(H.reshape(-1, H.shape[-1]))[:, p.direction].reshape(H.shape[:2])
            change = p.sign * final.logit_change(d.vectors[p.direction], [at_top[n] for n in index[:logit_contexts]])
            note = f"per-token reading: the {p.method} score of each token's hidden state after layer {layer}"
        values = values * p.sign
        scores = d.scores[:, p.direction] * p.sign
        gap = float(np.abs(values[:, -1] - scores[index]).max() / max(np.abs(scores).max(), 1e-30))
        if gap > READING_CHECK and p.method == "entk":  # the eigenvector's own error: said on the card and warned
            warnings.warn(f"eNTK direction {p.direction}: the last token's reading differs from the context's score "
                          f"by {gap:.1%} of the largest score: the eigenvector is far from converged (more Lanczos "
                          "steps?)")
        elif gap > READING_CHECK:
            raise ValueError(f"{p.method} direction {p.direction}: the last token's reading differs from the "
                             f"context's score by {gap:.1%} of the largest score (activations from another layer "
                             f"than {layer}?)")
        out.append(Measured(values, change.double(), gap, note))
    return out


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


def render_cards(tokenizer, data: ContextDataset, directions: dict[str, Directions], explanations: dict[str, pd.DataFrame],
                 labels: pd.DataFrame, plans: list[CardPlan], measured: list[Measured], *,
                 floor: ExplanationFloor | None = None, fdr: float = LEVEL, n_logits: int = 8, tokens_shown: int = 32,
                 logit_contexts: int = 3) -> list[Card]:
    """The :class:`~entk_utils.io.site.Card` of each plan with what was measured for it."""
    Y, cards = labels.to_numpy().T, []
    for p, m in zip(plans, measured):
        row = explanations[p.method].set_index("direction").loc[p.direction]
        scores = directions[p.method].scores[:, p.direction] * p.sign
        up, down = _extremes(m.logit_change, tokenizer, n_logits)
        validated, detail = _explanation_text(row, floor, fdr)
        contexts = []
        for (label, n), vals in zip(p.shown, m.values):
            ids = data.input_ids[n].tolist()[-tokens_shown:]
            contexts.append(Context(label, float(scores[n]), _token_texts(tokenizer, ids),
                                    [float(x) for x in vals[-tokens_shown:]], data.words[n],
                                    " ".join(x for x in (data.upos[n], data.morph[n]) if x), data.generated[n]))
        aurocs = auroc_matrix(scores[:, None], Y)[:, 0]
        cards.append(Card(key=f"{p.method}-{p.direction}", method=p.method, title=f"{p.method} direction {p.direction}",
                          explanation=row.candidate, explained=validated, detail=detail, scores=scores,
                          contexts=contexts, logits_up=up, logits_down=down,
                          aurocs=dict(zip(labels.columns, map(float, aurocs))),
                          notes=[m.note, f"last-token reading vs score: largest gap {m.gap:.1e} of the largest score",
                                 LOGIT_NOTE.format(n=logit_contexts)]))
    return cards


def direction_cards(lm, data: ContextDataset, directions: dict[str, Directions], explanations: dict[str, pd.DataFrame],
                    labels: pd.DataFrame, *, layer: int, entk: Eigenfunctions | None = None, top: int = 5,
                    quantiles=QUANTILES, logit_contexts: int = 3, n_logits: int = 8, tokens_shown: int = 32,
                    floor: ExplanationFloor | None = None, fdr: float = LEVEL, progress: bool = True) -> list[Card]:
    """One :class:`~entk_utils.io.site.Card` per direction of every method in
    ``explanations`` (see the module docstring for what each shows): :func:`plan_cards`,
    :func:`measure_cards`, :func:`render_cards`. ``directions``: the finders' directions on the
    contexts ``data`` (their activations: the residual stream after ``layer`` at the last
    token); ``entk``: the eNTK's :class:`~entk_utils.kernels.token_reading.Eigenfunctions`
    (needed for ``"entk"``); ``logit_contexts``: how many top contexts the logit effects average
    over; ``tokens_shown``: the last tokens of each context shown."""
    methods = list(explanations)
    if "entk" in methods and entk is None:
        raise ValueError("cards for 'entk' need entk=Eigenfunctions(operator, eigenvectors, eigenvalues, key)")
    missing = [m for m in methods if m not in directions or (m != "entk" and (directions[m].read is None or directions[m].vectors is None))]
    if missing:
        raise ValueError(f"no cards for {missing}: a method needs its Directions with read and vectors (or the eNTK)")
    plans = plan_cards(directions, explanations, top=top, quantiles=quantiles)
    measured = measure_cards(lm, data, directions, plans, layer=layer, entk=entk, logit_contexts=logit_contexts,
                             progress=progress)
    return render_cards(lm.tokenizer, data, directions, explanations, labels, plans, measured, floor=floor, fdr=fdr,
                        n_logits=n_logits, tokens_shown=tokens_shown, logit_contexts=logit_contexts)


INTRO = ("One card per direction of each method. An explanation is the candidate property of the contexts "
         "that the direction separates best on one half of them, validated on the other half (one-sided rank test, "
         f"false discovery rate controlled at {LEVEL:.0%} over all direction x candidate pairs of a method); "
         "'beyond_random' counts the explanations stronger (held-out AUROC) than those of "
         f"{FLOOR_QUANTILE:.0%} of random directions explained by the same rule, 'by_chance' the share random "
         "directions reach. Logit effects are centred over the vocabulary.")


def write_dashboard(cards: list[Card], out_dir: str | os.PathLike, *, title: str, discovery: pd.DataFrame | None = None,
                    intro: str = INTRO, folder: str = "dashboard") -> Path:
    """The run's static site: ``out_dir/<folder>/index.html`` and one page per card; returns
    the index's path."""
    return write_site(cards, Path(out_dir) / folder, title=title, intro=intro, discovery=discovery)
