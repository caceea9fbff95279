"""The context dataset: 64-token contexts that end just before a word, kept when the model's
own greedy continuation has the same part of speech as the story's real next word."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .tags import TAGS, first_word_after


GENERATED_TOKENS = 3  # tokens of greedy continuation tagged to check a context (greedy_generate_fn)


# --------------------------------------------------------------------------- the dataset
@dataclass
class ContextDataset:
    """Context windows and what the story says next.

    input_ids : (N, context_len) Gemma token ids (no BOS), each ending just before a word.
    upos : (N,) the next word's part of speech; morph : its morphological features
        (``"Number=Sing|..."``); words : the next word; generated : the model's greedy
        continuation; story / token : where the context ends (story index, token index).
    """

    input_ids: torch.Tensor
    upos: list[str]
    morph: list[str]
    words: list[str]
    generated: list[str]
    story: list[int]
    token: list[int]
    report: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.upos)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("input_ids", "upos", "morph", "words", "generated", "story", "token", "report")}


def word_starts(nlp_doc, offsets, text: str, context_len: int):
    """Candidate positions in one story: ``[(token index, spaCy token)]`` for every word
    that begins at a Gemma token boundary with at least ``context_len`` tokens before it."""
    starts = {}
    for j, (a, _) in enumerate(offsets):
        starts.setdefault(a, j)
    out = []
    for word in nlp_doc:
        if word.is_space:
            continue
        j = None
        for back in range(0, 3):  # the token may carry the whitespace before the word
            a = word.idx - back
            if a in starts and (back == 0 or text[a:word.idx].isspace()):
                j = starts[a]
                break
        if j is not None and j >= context_len:
            out.append((j, word))
    return out


def greedy_generate_fn(model, tokenizer, max_new_tokens: int = GENERATED_TOKENS, batch_size: int = 32):
    """``generate(contexts (B, T)) -> [continuation text]``: greedy decoding with the model."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def generate(contexts: torch.Tensor) -> list[str]:
        texts = []
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start:start + batch_size].to(device)
            out = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            texts += tokenizer.batch_decode(out[:, batch.shape[1]:], skip_special_tokens=True)
        return texts

    return generate


def build_context_dataset(
    stories: Sequence[str],
    tokenizer,
    generate_fn: Callable[[torch.Tensor], list[str]],
    nlp,
    *,
    n_per_tag: int = 16,
    tags: Sequence[str] = TAGS,
    context_len: int = 64,
    seed: int = 0,
    max_rounds: int = 20,
    batch_size: int = 32,
    progress: bool = True,
) -> ContextDataset:
    """Fill a quota of ``n_per_tag`` model-agreeing contexts for each part of speech.

    Each round visits the stories in a seeded random order and draws one random, unused
    position per story among the words whose part of speech still needs examples; the
    context is the ``context_len`` Gemma tokens (no BOS) before the word. ``generate_fn``
    continues each context; spaCy tags the first generated word in context, and the example
    is kept when that tag equals the tag of the story's real next word. Rounds repeat (more
    positions per story, reported in ``report["rounds"]``) until every quota is met; if
    ``max_rounds`` or the stories run out first, ``ValueError`` names the counts reached.
    """
    if n_per_tag < 1 or context_len < 1:
        raise ValueError(f"n_per_tag and context_len must be >= 1, got {n_per_tag}, {context_len}")
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise ValueError(f"unknown tags {unknown}; supported: {TAGS}")
    rng = np.random.default_rng(seed)
    encoded, candidates = [], []
    for story in tqdm(stories, desc="tokenising and tagging", disable=not progress):
        enc = tokenizer(story, add_special_tokens=False, return_offsets_mapping=True)
        encoded.append(enc.input_ids)
        candidates.append([(j, w) for j, w in word_starts(nlp(story), enc.offset_mapping, story, context_len)
                           if w.pos_ in tags])
    used = [set() for _ in stories]
    kept = {t: [] for t in tags}
    tried = 0
    rounds = 0
    bar = tqdm(total=n_per_tag * len(tags), desc="agreeing contexts", disable=not progress)
    while any(len(kept[t]) < n_per_tag for t in tags) and rounds < max_rounds:
        rounds += 1
        chosen = []  # one new position per story, among words whose tag is still open
        open_tags = {t for t in tags if len(kept[t]) < n_per_tag}
        for s in rng.permutation(len(stories)):
            options = [(j, w) for j, w in candidates[s] if j not in used[s] and w.pos_ in open_tags]
            if options:
                j, w = options[rng.integers(len(options))]
                used[s].add(j)
                chosen.append((int(s), j, w))
        if not chosen:
            break
        for start in range(0, len(chosen), batch_size):
            chunk = [c for c in chosen[start:start + batch_size] if len(kept[c[2].pos_]) < n_per_tag]
            if not chunk:
                continue
            contexts = torch.tensor([encoded[s][j - context_len:j] for s, j, _ in chunk])
            tried += len(chunk)
            for (s, j, word), ids, cont in zip(chunk, contexts, generate_fn(contexts)):
                predicted = first_word_after(nlp, tokenizer.decode(ids.tolist()), cont)
                if predicted is not None and predicted.pos_ == word.pos_ and len(kept[word.pos_]) < n_per_tag:
                    kept[word.pos_].append((s, j, word, cont, ids))
                    bar.update(1)
    bar.close()
    counts = {t: len(kept[t]) for t in tags}
    if any(c < n_per_tag for c in counts.values()):
        raise ValueError(
            f"could not fill n_per_tag={n_per_tag} for every tag from {len(stories)} stories after {rounds} "
            f"rounds ({tried} contexts generated): reached {counts}; use more stories or a smaller n_per_tag"
        )
    rows = [row for t in tags for row in kept[t]]
    return ContextDataset(
        input_ids=torch.stack([ids for *_, ids in rows]),
        upos=[w.pos_ for _, _, w, _, _ in rows],
        morph=[str(w.morph) for _, _, w, _, _ in rows],
        words=[w.text for _, _, w, _, _ in rows],
        generated=[cont for _, _, _, cont, _ in rows],
        story=[s for s, *_ in rows],
        token=[j for _, j, *_ in rows],
        report={"rounds": rounds, "generated": tried, "stories": len(stories), "counts": counts},
    )
