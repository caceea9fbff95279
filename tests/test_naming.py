"""Naming directions after features (:mod:`entk_utils.features.naming`)."""

import numpy as np
import pandas as pd
import pytest

from entk_utils.features import naming
from entk_utils.features.scoring import auroc_matrix
from entk_utils.features.significance import holm, monte_carlo_draws


def test_name_directions_names_a_planted_direction_only_holm_over_every_method():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"A": rng.random(80) < 0.3, "B": rng.random(80) < 0.5}).astype(int)
    scores = rng.standard_normal((80, 3))
    scores[:, 1] -= 2.5 * labels.B  # direction 1 holds B at its low end
    table = naming.name_directions({"entk": scores, "pca": rng.standard_normal((80, 2))}, labels, seed=0)
    assert list(table.method) == ["entk"] * 3 + ["pca"] * 2 and list(table.direction) == [0, 1, 2, 0, 1]
    assert table.loc[1, ["feature", "sign", "named", "name"]].tolist() == ["B", -1, True, "B"]
    assert (table.n_permutations == monte_carlo_draws(5)).all()  # set from the family: 5 directions
    assert table.loc[1, "auroc"] > 0.9 and table.loc[1, "p_perm"] == pytest.approx(1 / (monte_carlo_draws(5) + 1))
    assert table.named.sum() == 1 and set(table.name[table.index != 1]) == {"-"}
    np.testing.assert_allclose(table.p_holm, holm(table.p_perm))  # one family over both methods
    with pytest.raises(ValueError, match="no feature has enough positives"):
        naming.name_directions({"entk": scores}, labels.iloc[:, :0])
    with pytest.raises(ValueError, match="n_permutations=50 can never reach"):
        naming.name_directions({"entk": scores, "pca": scores}, labels, n_permutations=50)


def test_oriented_auroc_is_the_auroc_of_the_better_sign():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"A": rng.random(60) < 0.4, "B": rng.random(60) < 0.6}).astype(int)
    scores = rng.standard_normal((60, 4))
    oriented = naming.oriented_auroc(scores, labels)
    plain = auroc_matrix(scores, labels.T.to_numpy())
    assert list(oriented.index) == ["A", "B"] and oriented.shape == (2, 4)
    np.testing.assert_allclose(oriented.to_numpy(), np.maximum(plain, 1 - plain))
    np.testing.assert_allclose(naming.oriented_auroc(-scores, labels).to_numpy(), oriented.to_numpy())
