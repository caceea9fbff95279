"""Candidate explanations of contexts, read from the text with spaCy: binary properties of
each context for :func:`~entk_utils.features.explanations.explain_directions` to test.

For a context that ends just before token ``j`` of document ``s`` (a
:class:`~.contexts.ContextDataset`'s ``story`` and ``token``): the part of speech,
morphological features, dependency relation and entity type of its last word and of the
next word; its last word itself and the two words that end it; whether it ends inside a
quotation; where its last word sits in its sentence; whether the next word ends a sentence.
Candidates that hold (or fail) for fewer than ``min_count`` contexts are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

QUOTES_OPEN, QUOTES_CLOSE = "“", "”"


def _word_properties(word, role: str) -> list[str]:
    """``role: POS=NOUN``, ``role: Number=Sing``, ``role: dep=nsubj``, ``role: entity=PERSON``."""
    out = [f"{role}: POS={word.pos_}", f"{role}: dep={word.dep_}"]
    out += [f"{role}: {feature}" for feature in str(word.morph).split("|") if feature]
    if word.ent_type_:
        out.append(f"{role}: entity={word.ent_type_}")
    return out


def _inside_quotation(text: str) -> bool:
    """Whether ``text`` (a story up to the context's end) leaves a quotation open: an odd
    number of straight double quotes, or more opening than closing curly ones."""
    return text.count('"') % 2 == 1 or text.count(QUOTES_OPEN) > text.count(QUOTES_CLOSE)


def _sentence_position(index: int) -> str:
    return ("first word" if index == 0 else "words 2-3" if index < 3 else "words 4-10" if index < 10
            else "word 11 or later")


def context_properties(doc, offsets, text: str, end: int) -> list[str]:
    """The candidate properties of the context of one document that ends before token
    ``end`` (``offsets``: the tokenizer's character offsets of the document's tokens; ``doc``
    its spaCy parse)."""
    cut = offsets[end][0]  # the context's text is text[:cut] (up to whitespace)
    before = [w for w in doc if w.idx < cut and not w.is_space]
    after = [w for w in doc if w.idx >= cut and not w.is_space]
    out = []
    if before:
        last = before[-1]
        out += _word_properties(last, "last word") + [f"last word = {last.lower_!r}",
                                                      f"sentence position: {_sentence_position(last.i - last.sent.start)}"]
        if len(before) > 1:
            out.append(f"ends with {before[-2].lower_ + ' ' + last.lower_!r}")
    if after:
        out += _word_properties(after[0], "next word")
        if after[0].is_sent_end or after[0].text in (".", "!", "?"):
            out.append("next word ends the sentence")
    if _inside_quotation(text[:cut]):
        out.append("inside a quotation")
    return out


def context_candidates(documents: Sequence[str], document_index: Sequence[int], ends: Sequence[int], tokenizer, nlp,
                       *, min_count: int = 8) -> pd.DataFrame:
    """(N, C) 0/1 DataFrame of candidate explanations (columns named in words, see the
    module docstring) for N contexts ending before token ``ends[i]`` of document
    ``documents[document_index[i]]`` (a context dataset's ``story`` and ``token``); candidates
    with fewer than ``min_count`` positives or negatives are dropped. Each document is
    tokenised and parsed once."""
    if len(document_index) != len(ends):
        raise ValueError(f"document_index and ends must have one entry per context, got {len(document_index)} and "
                         f"{len(ends)}")
    parsed: dict[int, tuple] = {}
    rows = []
    for s, end in zip(document_index, ends):
        if s not in parsed:
            text = documents[s]
            parsed[s] = (nlp(text), tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping)
        doc, offsets = parsed[s]
        if not 0 < end < len(offsets):
            raise ValueError(f"context end {end} is not a token of document {s} (it has {len(offsets)} tokens)")
        rows.append(context_properties(doc, offsets, documents[s], int(end)))
    names = sorted({name for row in rows for name in row})
    table = pd.DataFrame(np.zeros((len(rows), len(names)), dtype=np.int8), columns=names)
    column = {name: i for i, name in enumerate(names)}
    for i, row in enumerate(rows):
        table.iloc[i, [column[name] for name in row]] = 1
    counts = table.sum()
    return table.loc[:, (counts >= min_count) & (counts <= len(table) - min_count)]
