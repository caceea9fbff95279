"""Texts and the contexts sampled from them (:mod:`entk_utils.settings.language`): documents
from any text file, windows that end just before a word, grammar labels, a context's end
as text. (The quota-per-tag policy on the real model is in test_language.py.)"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tiny_models import TEXT  # noqa: E402

from entk_utils.settings import language  # noqa: E402

def test_read_documents_takes_stories_or_paragraphs(tmp_path):
    stories = tmp_path / "stories.txt"
    stories.write_text(f"One.\n{language.SEPARATOR}\nTwo.\n{language.SEPARATOR}\n")
    assert language.read_documents(stories) == ["One.", "Two."]
    plain = tmp_path / "plain.txt"
    plain.write_text(TEXT)
    assert len(language.read_documents(plain)) == 3 and language.read_documents(plain)[1].startswith("Tom")
    plain.write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        language.read_documents(plain)


def test_windows_end_just_before_a_word(tokenizer, nlp):
    documents = TEXT.split("\n\n")
    predict = lambda ids: [f"p{i}" for i in range(len(ids))]  # noqa: E731
    data = language.sample_contexts(documents, tokenizer, nlp, predict, n_contexts=12, context_len=5, seed=1,
                                    progress=False)
    assert data.input_ids.shape == (12, 5) and data.generated == [f"p{i}" for i in range(12)]
    for ids, d, j, word in zip(data.input_ids, data.story, data.token, data.words):
        encoded = tokenizer(documents[d], add_special_tokens=False)
        assert ids.tolist() == encoded.input_ids[j - 5:j]
        assert tokenizer.decode(encoded.input_ids[j:]).lstrip().startswith(word)
    assert len({(d, j) for d, j in zip(data.story, data.token)}) == 12  # no position twice
    again = language.sample_contexts(documents, tokenizer, nlp, predict, n_contexts=12, context_len=5, seed=1,
                                     progress=False)
    assert torch.equal(again.input_ids, data.input_ids)
    with pytest.raises(ValueError, match="the text holds only .* word positions with 5 tokens before them; n_contexts=500"):
        language.sample_contexts(documents, tokenizer, nlp, predict, n_contexts=500, context_len=5, progress=False)
    with pytest.raises(ValueError, match="give exactly one of n_per_tag .* and n_contexts"):
        language.sample_contexts(documents, tokenizer, nlp, predict, n_contexts=5, n_per_tag=2, context_len=5)


def test_grammar_labels_without_tags_keep_the_parts_of_speech_with_enough_of_either_class():
    upos = ["NOUN"] * 5 + ["VERB"] * 4 + ["DET"] * 1
    morph = ["Number=Sing"] * 6 + ["Number=Plur"] * 4
    labels, kinds = language.grammar_labels(upos, morph, tags=None, min_positives=4)
    assert list(labels.columns) == ["NOUN", "VERB", "Number=Plur", "Number=Sing"]
    assert kinds == {"NOUN": "pos", "VERB": "pos", "Number=Plur": "morph", "Number=Sing": "morph"}
    assert labels.NOUN.tolist() == [1] * 5 + [0] * 5


def test_context_tail_marks_the_last_token(tokenizer):
    ids = tokenizer("It was a sunny day", add_special_tokens=False).input_ids
    tail = language.context_tail(tokenizer, ids, n_tokens=3)
    last = tokenizer.decode(ids[-1:]).strip()
    assert tail.startswith("…") and tail.endswith(f"[{last}]")
    assert "It was a sunny day".endswith(tail[1:].replace("[", "").replace("]", ""))
    newline = tokenizer("one\n", add_special_tokens=False).input_ids
    assert language.context_tail(tokenizer, newline).endswith("[⏎]")


def test_token_ids_from_a_file_are_checked(tmp_path):
    good = tmp_path / "ids.pt"
    torch.save(torch.arange(12).reshape(3, 4), good)
    assert language.load_token_ids(good).shape == (3, 4)
    with pytest.raises(ValueError, match="N=3 contexts, at least 4 needed"):
        language.load_token_ids(good, min_contexts=4)
    with pytest.raises(ValueError, match="contexts of T=4 tokens, longer than the model's 3"):
        language.load_token_ids(good, max_len=3)
    torch.save(-torch.ones(2, 2, dtype=torch.long), tmp_path / "negative.pt")
    with pytest.raises(ValueError, match="token ids must be >= 0, found -1"):
        language.load_token_ids(tmp_path / "negative.pt", name="ids")
