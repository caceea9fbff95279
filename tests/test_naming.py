"""Naming directions after features (:mod:`entk_utils.features.naming`)."""

import numpy as np
import pandas as pd
import pytest

from entk_utils.features import naming
from entk_utils.features.scoring import auroc_matrix


def test_name_directions_names_a_planted_direction_only():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"A": rng.random(80) < 0.3, "B": rng.random(80) < 0.5}).astype(int)
    scores = rng.standard_normal((80, 3))
    scores[:, 1] -= 2.5 * labels.B  # direction 1 holds B at its low end
    table = naming.name_directions(scores, labels, n_permutations=500, seed=0)
    assert table.loc[1, ["feature", "sign", "named", "name"]].tolist() == ["B", -1, True, "B"]
    assert table.loc[1, "auroc"] > 0.9 and table.loc[1, "p_perm"] == pytest.approx(1 / 501)
    assert not table.loc[[0, 2], "named"].any() and set(table.loc[[0, 2], "name"]) == {"-"}
    assert (table.p_holm >= table.p_perm).all()
    with pytest.raises(ValueError, match="no feature has enough positives"):
        naming.name_directions(scores, labels.iloc[:, :0])


def test_oriented_auroc_is_the_auroc_of_the_better_sign():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"A": rng.random(60) < 0.4, "B": rng.random(60) < 0.6}).astype(int)
    scores = rng.standard_normal((60, 4))
    oriented = naming.oriented_auroc(scores, labels)
    plain = auroc_matrix(scores, labels.T.to_numpy())
    assert list(oriented.index) == ["A", "B"] and oriented.shape == (2, 4)
    np.testing.assert_allclose(oriented.to_numpy(), np.maximum(plain, 1 - plain))
    np.testing.assert_allclose(naming.oriented_auroc(-scores, labels).to_numpy(), oriented.to_numpy())
