"""Notebook 06's tables (:mod:`entk_utils.experiments.your_model`)."""

import numpy as np
import pandas as pd
import pytest

transformers = pytest.importorskip("transformers")
from tiny_models import TEXT  # noqa: E402

from entk_utils.experiments import your_model  # noqa: E402
from entk_utils.settings import language  # noqa: E402

def test_strongest_contexts_are_the_top_scores_in_the_named_orientation(tokenizer, nlp):
    documents = TEXT.split("\n\n")
    data = language.sample_contexts(documents, tokenizer, nlp, lambda ids: ["x"] * len(ids), n_contexts=10,
                                    context_len=4, progress=False)
    scores = np.random.default_rng(0).standard_normal((10, 2))
    scores[3, 0] = -5  # an unnamed direction is oriented by its largest score
    directions = pd.DataFrame({"direction": [0, 1], "name": ["-", "NOUN"], "sign": [1, -1], "named": [False, True]})
    table = your_model.strongest_contexts(scores, data, tokenizer, directions, top=3)
    assert table.groupby("direction").size().tolist() == [3, 3]
    np.testing.assert_allclose(table[table.direction == 1].score, np.sort(-scores[:, 1])[::-1][:3])
    np.testing.assert_allclose(table[table.direction == 0].score, np.sort(-scores[:, 0])[::-1][:3])
    assert table.loc[table.direction == 0, "context"].iloc[0] == language.context_tail(tokenizer, data.input_ids[3].tolist())
