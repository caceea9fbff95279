"""Contexts: windows of token ids that end just before a word, with what the text says next.

One sampler, :func:`sample_contexts`, with two policies:

* ``n_per_tag=``: a quota of contexts per part of speech of the next word, kept only where
  the model's own greedy continuation has the same part of speech (the paper's dataset,
  notebook 03);
* ``n_contexts=``: that many windows, whatever the model predicts (any model and text,
  notebook 06).

:func:`cached_contexts` runs it with a loaded model's greedy continuation and caches the
result by the text, the model and the parameters. :func:`context_tail` shows a context's end
as text; :func:`load_token_ids` reads contexts saved by ``torch.save`` (the batch job).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...io.cache import cache_key, cached
from .corpus import hash_text
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


# --------------------------------------------------------------------------- sampling
def sample_contexts(documents: Sequence[str], tokenizer, nlp, predict: Callable[[torch.Tensor], list[str]], *,
                    context_len: int, seed: int = 0, n_per_tag: int | None = None, tags: Sequence[str] = TAGS,
                    n_contexts: int | None = None, progress: bool = True) -> ContextDataset:
    """Contexts of ``context_len`` tokens (no BOS) that end just before a word of ``documents``.

    Give exactly one of ``n_per_tag`` (a quota per part of speech in ``tags``, kept where the
    model agrees: :func:`_agreeing_contexts`) and ``n_contexts`` (that many windows:
    :func:`_windows`). ``predict(contexts (B, T)) -> [continuation text]`` is the model's
    greedy continuation (:func:`greedy_generate_fn`); ``nlp`` a spaCy pipeline; ``tokenizer``
    a fast tokenizer (character offsets). Same seed, same contexts.
    """
    if (n_per_tag is None) == (n_contexts is None):
        raise ValueError(f"give exactly one of n_per_tag (a quota per part of speech) and n_contexts (windows), got "
                         f"n_per_tag={n_per_tag!r}, n_contexts={n_contexts!r}")
    if n_per_tag is not None:
        return _agreeing_contexts(documents, tokenizer, predict, nlp, n_per_tag=n_per_tag, tags=tags,
                                  context_len=context_len, seed=seed, progress=progress)
    return _windows(documents, tokenizer, nlp, predict, n_contexts=n_contexts, context_len=context_len, seed=seed,
                    progress=progress)


def _agreeing_contexts(
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


def _windows(documents: Sequence[str], tokenizer, nlp, predict: Callable[[torch.Tensor], list[str]], *,
             n_contexts: int, context_len: int, seed: int = 0, progress: bool = True) -> ContextDataset:
    """``n_contexts`` windows of ``context_len`` tokens that end just before a word.

    Documents are visited in a seeded random order, each tokenised and tagged by spaCy when
    first visited; each round draws one unused word position per document (one whose word
    starts at a token boundary with at least ``context_len`` tokens before it), until the
    count is reached. ``predict`` gives the model's continuation of each window
    (``generated``); ``upos`` / ``morph`` / ``words`` describe the word that really follows.
    ``ValueError`` if the text has too few such positions.
    """
    if n_contexts < 1 or context_len < 1:
        raise ValueError(f"n_contexts and context_len must be >= 1, got {n_contexts}, {context_len}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(documents))
    found, chosen, rounds = {}, [], 0
    with tqdm(total=n_contexts, desc="contexts", disable=not progress) as bar:
        while len(chosen) < n_contexts:
            rounds += 1
            before = len(chosen)
            for d in order:
                if d not in found:
                    enc = tokenizer(documents[d], add_special_tokens=False, return_offsets_mapping=True)
                    starts = word_starts(nlp(documents[d]), enc.offset_mapping, documents[d], context_len)
                    found[d] = (enc.input_ids, [starts[i] for i in rng.permutation(len(starts))])
                ids, starts = found[d]
                if starts:
                    j, word = starts.pop()
                    chosen.append((int(d), j, word, ids[j - context_len:j]))
                    bar.update(1)
                if len(chosen) == n_contexts:
                    break
            if len(chosen) == before:
                raise ValueError(f"the text holds only {len(chosen)} word positions with {context_len} tokens before "
                                 f"them; n_contexts={n_contexts} needs more text or a smaller context_len")
    input_ids = torch.tensor([ids for *_, ids in chosen])
    return ContextDataset(
        input_ids=input_ids, upos=[w.pos_ for _, _, w, _ in chosen], morph=[str(w.morph) for _, _, w, _ in chosen],
        words=[w.text for _, _, w, _ in chosen], generated=predict(input_ids), story=[d for d, *_ in chosen],
        token=[j for _, j, *_ in chosen], report={"rounds": rounds, "documents": len(documents), "tagged": len(found)})


# What a cached context dataset depends on besides its parameters, the text and the model.
CONTEXTS_CODE = (sample_contexts, _agreeing_contexts, _windows, word_starts, first_word_after, greedy_generate_fn,
                 ContextDataset)


def cached_contexts(cache_dir, documents: Sequence[str], lm, nlp, *, context_len: int, seed: int = 0,
                    n_per_tag: int | None = None, tags: Sequence[str] = TAGS, n_contexts: int | None = None,
                    progress: bool = True) -> ContextDataset:
    """:func:`sample_contexts` with the loaded model's (``lm``, a
    :class:`~entk_utils.settings.language.models.LoadedModel`) greedy continuation
    (:data:`GENERATED_TOKENS` tokens under a quota per tag, one token otherwise), cached in
    ``cache_dir`` by the parameters, the text's content, the model's description and
    weights, and the spaCy pipeline."""
    def compute():
        tokens = GENERATED_TOKENS if n_per_tag is not None else 1
        predict = greedy_generate_fn(lm.model, lm.tokenizer, max_new_tokens=tokens)
        return sample_contexts(documents, lm.tokenizer, nlp, predict, context_len=context_len, seed=seed,
                               n_per_tag=n_per_tag, tags=tags, n_contexts=n_contexts, progress=progress).to_dict()

    text = cache_key(n=len(documents), text=[hash_text(d) for d in documents])
    quota = {"n_per_tag": n_per_tag, "tags": list(tags)} if n_per_tag is not None else {"n_contexts": n_contexts}
    return ContextDataset(**cached(cache_dir, "contexts", compute, produced_by=CONTEXTS_CODE, **quota,
                                   context_len=context_len, seed=seed, text=text, model=lm.description,
                                   weights=lm.fingerprint, nlp=f"{nlp.meta['name']}-{nlp.meta['version']}"))


# --------------------------------------------------------------------------- reading contexts
def context_tail(tokenizer, ids: Sequence[int], n_tokens: int = 12) -> str:
    """The last ``n_tokens`` tokens of a context as text, the last one in brackets
    (``"…the big red [ball]"``), line breaks shown as ``⏎``."""
    def text(part):
        return tokenizer.decode(part).replace("\r", "").replace("\n", "⏎")

    ids = list(ids)
    last = text(ids[-1:])
    word = last.lstrip() or last
    return f"…{text(ids[-n_tokens:-1])}{last[:len(last) - len(word)]}[{word}]"


def load_token_ids(path: str | os.PathLike, *, min_contexts: int = 1, max_len: int | None = None,
                   name: str = "--contexts") -> torch.Tensor:
    """The (N, T) token ids ``torch.save``d at ``path`` (read with ``weights_only=True``),
    checked: an integer tensor of non-negative ids, N at least ``min_contexts``, T at most
    ``max_len`` (the model's longest context) when given. Errors name the value as ``name``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name}={str(path)!r}: no such file")
    try:
        ids = torch.load(file, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{name}={str(path)!r}: not a torch.save'd tensor ({type(err).__name__}: {err})") from None
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool \
            or ids.dtype.is_complex or 0 in ids.shape:
        raise ValueError(f"{name}={str(path)!r}: must hold a non-empty (N, T) integer tensor of token ids, got "
                         f"{type(ids).__name__} {tuple(getattr(ids, 'shape', ()))} {getattr(ids, 'dtype', '')}")
    if int(ids.min()) < 0:
        raise ValueError(f"{name}={str(path)!r}: token ids must be >= 0, found {int(ids.min())}")
    if len(ids) < min_contexts:
        raise ValueError(f"{name}={str(path)!r}: N={len(ids)} contexts, at least {min_contexts} needed "
                         "(every rank needs one)")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{name}={str(path)!r}: contexts of T={ids.shape[1]} tokens, longer than the model's {max_len}")
    return ids.long()
