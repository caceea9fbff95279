"""Candidate explanations read from the text: the right words on either side of a context's
end, its quotation state and place in the sentence, and rare candidates dropped."""

import pytest

from entk_utils.settings import language
from entk_utils.settings.language.candidates import context_candidates, context_properties

STORY = 'Tom said, "I like the red ball." Then he ran home.'


def end_before(tokenizer, nlp, text, word_text):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for j, word in language.word_starts(nlp(text), enc.offset_mapping, text, 1):
        if word.text == word_text:
            return j, enc.offset_mapping
    raise AssertionError(f"{word_text!r} does not start at a token")


def test_the_properties_of_a_context_come_from_both_sides_of_its_end(tokenizer, nlp):
    j, offsets = end_before(tokenizer, nlp, STORY, "red")
    doc = nlp(STORY)
    props = set(context_properties(doc, offsets, STORY, j))
    red = next(w for w in doc if w.text == "red")
    assert {"last word: POS=DET", "last word = 'the'", "ends with 'like the'", f"next word: POS={red.pos_}",
            f"next word: dep={red.dep_}", "inside a quotation"} <= props
    j, offsets = end_before(tokenizer, nlp, STORY, "ran")
    props = set(context_properties(nlp(STORY), offsets, STORY, j))
    assert "inside a quotation" not in props and "last word: POS=PRON" in props and "next word: POS=VERB" in props
    assert "sentence position: words 2-3" in props and "last word: Case=Nom" in props


def test_candidates_are_one_column_each_and_rare_ones_are_dropped(tokenizer, nlp):
    ends = [end_before(tokenizer, nlp, STORY, w)[0] for w in ("red", "ball", "ran", "home")]
    table = context_candidates([STORY], [0] * 4, ends, tokenizer, nlp, min_count=1)
    assert table.shape[0] == 4 and set(table.values.ravel()) <= {0, 1}
    assert table["inside a quotation"].tolist() == [1, 1, 0, 0]
    assert (table.sum() >= 1).all() and (table.sum() <= 3).all()  # a property of all four is no candidate
    common = context_candidates([STORY], [0] * 4, ends, tokenizer, nlp, min_count=2)
    assert set(common.columns) < set(table.columns) and (common.sum() >= 2).all()
    with pytest.raises(ValueError, match="one entry per context"):
        context_candidates([STORY], [0], [1, 2], tokenizer, nlp)
    with pytest.raises(ValueError, match="is not a token of document 0"):
        context_candidates([STORY], [0], [999], tokenizer, nlp)
