"""Which labels a comparison uses (:mod:`entk_utils.features.labels`): thin ones left out by the
one minimum-count rule, identical ones merged and named together, kinds carried over."""

import numpy as np
import pandas as pd
import pytest

from entk_utils.features.labels import MERGED_NAME, comparable_labels


def test_identical_labels_are_merged_and_thin_ones_left_out():
    select, evaluate = np.arange(0, 40, 2), np.arange(1, 40, 2)
    noun = np.r_[np.ones(10), np.zeros(30)].astype(int)
    labels = pd.DataFrame({"NOUN": noun, "Number=Sing": (np.arange(40) % 3 == 0).astype(int),
                           "CCONJ": np.roll(noun, 20), "ConjType=Cmp": np.roll(noun, 20),
                           "rare": np.r_[np.ones(3), np.zeros(37)].astype(int)})
    kinds = {"NOUN": "pos", "Number=Sing": "morph", "CCONJ": "pos", "ConjType=Cmp": "morph", "rare": "pos"}
    clean = comparable_labels(labels, select, evaluate, min_per_half=3, kinds=kinds)
    merged = f"CCONJ{MERGED_NAME}ConjType=Cmp"
    assert list(clean.labels.columns) == ["NOUN", "Number=Sing", merged]
    assert clean.merged == {merged: ["CCONJ", "ConjType=Cmp"]} and clean.too_thin == ["rare"]
    assert clean.kinds == {"NOUN": "pos", "Number=Sing": "morph", merged: "pos"}
    np.testing.assert_array_equal(clean.labels[merged], labels.CCONJ)
    assert "identical columns merged: CCONJ / ConjType=Cmp" in clean.describe() and "rare" in clean.describe()
    # 'rare' has 2 positives in select, 1 in evaluate: kept at 1 per half, not at 2
    assert "rare" in comparable_labels(labels, select, evaluate, min_per_half=1).labels.columns
    assert "rare" not in comparable_labels(labels, select, evaluate, min_per_half=2).labels.columns


def test_nothing_left_or_bad_arguments_fail_in_one_line():
    labels = pd.DataFrame({"a": np.r_[np.ones(2), np.zeros(18)].astype(int)})
    with pytest.raises(ValueError, match="no label has 3 positives and 3 negatives in each half"):
        comparable_labels(labels, np.arange(10), np.arange(10, 20), min_per_half=3)
    with pytest.raises(ValueError, match="min_per_half must be >= 1"):
        comparable_labels(labels, np.arange(10), np.arange(10, 20), min_per_half=0)
    with pytest.raises(ValueError, match="at least one column"):
        comparable_labels(labels.iloc[:, :0], np.arange(10), np.arange(10, 20))
