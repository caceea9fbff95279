import numpy as np
import pytest
import torch

from entk_utils.settings import modular
from entk_utils.settings.modular import GromovMLP, TrainResult, check_modulus, modular_addition_pairs, one_hot_pairs, train, train_gromov_mlp, train_test_split
from entk_utils.features.dynamics import model_at


@pytest.mark.parametrize("p", [3, 5, 7, 29, 97])
def test_odd_primes_accepted(p):
    assert check_modulus(p) == p


@pytest.mark.parametrize("p", [1, 2, 4, 9, 15, 91, -7, 2.5, "29", True])
def test_non_primes_rejected(p):
    with pytest.raises(ValueError, match="odd prime"):
        check_modulus(p)


def test_dataset_covers_all_pairs():
    pairs, labels = modular_addition_pairs(5)
    assert pairs.shape == (25, 2) and labels.shape == (25,)
    assert {tuple(r) for r in pairs.tolist()} == {(a, b) for a in range(5) for b in range(5)}
    assert torch.equal(labels, (pairs[:, 0] + pairs[:, 1]) % 5)
    x = one_hot_pairs(pairs, 5)
    assert x.shape == (25, 10) and torch.all(x.sum(1) == 2)


def test_split_is_seeded_disjoint_and_sized():
    tr, te = train_test_split(841, 0.7, seed=0)
    assert len(tr) == 589 and len(te) == 252
    assert not set(tr) & set(te) and len(set(tr) | set(te)) == 841
    tr2, _ = train_test_split(841, 0.7, seed=0)
    tr3, _ = train_test_split(841, 0.7, seed=1)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(tr, tr3)
    with pytest.raises(ValueError, match="train_frac"):
        train_test_split(10, 1.0)


def test_paper_split_pins_the_authors_first_training_pairs():
    # The authors' split, p = 29: the 841 triples (a, b, p) row-major, random.seed(0),
    # random.shuffle, the first int(0.5 * 841) = 420 train.
    train_idx, test_idx = modular.paper_split(29 * 29, 0.5)
    assert len(train_idx) == 420 and len(test_idx) == 421
    first = [divmod(int(i), 29) for i in train_idx[:6]]
    assert first == [(18, 8), (12, 16), (19, 7), (4, 24), (23, 19), (28, 22)]
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(841))


def test_paper_split_equals_the_global_random_shuffle_and_leaves_it_alone():
    import random

    p = 11
    triples = [(a, b, p) for a in range(p) for b in range(p)]
    random.seed(0)
    random.shuffle(triples)
    expected = [a * p + b for a, b, _ in triples[: int(0.7 * p * p)]]
    random.seed(123)
    before = random.random()
    random.seed(123)
    train_idx, _ = modular.paper_split(p * p, 0.7)
    assert train_idx.tolist() == expected
    assert random.random() == before  # the global generator was not touched


def test_split_policies_paper_is_fixed_seeded_varies():
    a, _ = modular.split_indices(841, 0.5, "paper", 0)
    b, _ = modular.split_indices(841, 0.5, "paper", 7)
    c, _ = modular.split_indices(841, 0.5, "seeded", 0)
    d, _ = modular.split_indices(841, 0.5, "seeded", 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(c), np.sort(d))
    with pytest.raises(ValueError, match="split must be one of"):
        modular.split_indices(841, 0.5, "random", 0)


def test_gromov_mlp_shapes_and_init():
    model = GromovMLP(7, 300)
    assert model(torch.zeros(4, 14)).shape == (4, 7)
    assert [n for n, _ in model.named_parameters()] == ["fc1.weight", "fc2.weight"]
    w = model.fc1.weight.detach()
    assert abs(w.mean().item()) < 0.1 and abs(w.std().item() - 1) < 0.1
    with pytest.raises(ValueError, match="odd prime"):
        GromovMLP(8)


def test_training_learns_the_training_set_and_keeps_checkpoints():
    run = train_gromov_mlp(p=7, width=64, epochs=60, checkpoint_every=20, progress=False)
    h = run.result.history
    assert list(h.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert h.epoch.tolist() == list(range(61))
    assert sorted(run.result.checkpoints) == [0, 20, 40, 60]
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    assert h.train_acc.iloc[-1] == 1.0
    # the final model is the last checkpoint
    final = model_at(run.model, run.result.final_state())
    assert torch.equal(final(run.inputs), run.model(run.inputs))


def test_training_is_deterministic_and_cached(tmp_path):
    a = train_gromov_mlp(p=5, width=16, epochs=20, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("gromov_mlp-*.pt"))) == 1
    b = train_gromov_mlp(p=5, width=16, epochs=20, cache_dir=tmp_path, progress=False)  # read back
    c = train_gromov_mlp(p=5, width=16, epochs=20, progress=False)  # recomputed
    for other in (b, c):
        assert other.result.history.equals(a.result.history)
        assert torch.equal(other.model.fc1.weight, a.model.fc1.weight)
    train_gromov_mlp(p=5, width=16, epochs=20, seed=1, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("gromov_mlp-*.pt"))) == 2


def test_minibatch_cross_entropy_training():
    pairs, labels = modular_addition_pairs(5)
    x = one_hot_pairs(pairs, 5)
    tr, te = train_test_split(25, 0.6)
    result = train(GromovMLP(5, 32), x, labels, tr, te, epochs=3, lr=0.01, loss="cross_entropy",
                   batch_size=4, checkpoint_every=2, progress=False)
    assert sorted(result.checkpoints) == [0, 2, 3]
    round_trip = TrainResult.from_dict(result.to_dict())
    assert round_trip.history.equals(result.history)
    with pytest.raises(ValueError, match="loss must be"):
        train(GromovMLP(5, 4), x, labels, tr, te, epochs=1, lr=0.1, loss="hinge")


def test_reinitialised_is_a_fresh_seeded_copy():
    model = modular.GromovMLP(7, 16)
    with torch.no_grad():
        model.fc1.weight.zero_()
    fresh = modular.reinitialised(model, seed=3)
    assert type(fresh) is modular.GromovMLP and fresh.width == 16
    assert fresh.fc1.weight.abs().sum() > 0
    torch.testing.assert_close(fresh.fc2.weight, modular.reinitialised(model, seed=3).fc2.weight)
    assert not torch.equal(fresh.fc2.weight, modular.reinitialised(model, seed=4).fc2.weight)
    transformer = modular.reinitialised(modular.OneLayerTransformer(7, d_model=8, n_heads=2, d_mlp=16), seed=0)
    assert transformer.W_in.weight.shape == (16, 8)
    with pytest.raises(ValueError, match="init_args"):
        modular.reinitialised(torch.nn.Linear(2, 2), seed=0)


# ---------------------------------------------------------------- arguments checked before training
class ExplodingMLP(GromovMLP):
    """Fails if it is ever run: a check that comes after the first forward pass is too late."""

    def forward(self, x):
        raise AssertionError("the model ran before its arguments were checked")


@pytest.mark.parametrize("bad, message", [
    (dict(batch_size=-4), "batch_size=-4: must be an integer >= 1 or None"),
    (dict(batch_size=0), "batch_size=0: must be an integer >= 1 or None"),
    (dict(batch_size=2.5), "batch_size=2.5: must be an integer"),
    (dict(seed="0"), "seed='0': must be an integer >= 0"),
    (dict(seed=1.5), "seed=1.5: must be an integer >= 0"),
    (dict(lr="0.05"), "lr='0.05': must be a finite real number > 0"),
    (dict(lr=0.0), "lr=0.0: must be a finite real number > 0"),
    (dict(lr=float("nan")), "lr=nan"),
    (dict(epochs=0), "epochs=0: must be an integer >= 1"),
    (dict(epochs=True), "epochs=True: must be an integer"),
    (dict(checkpoint_every=0), "checkpoint_every=0"),
    (dict(weight_decay=-1.0), "weight_decay=-1.0: must be a finite real number >= 0"),
    (dict(n_classes=0), "n_classes=0"),
    (dict(device="gpu"), "device='gpu': must be a torch device"),
])
def test_train_rejects_bad_arguments_before_any_step(bad, message):
    pairs, labels = modular_addition_pairs(5)
    tr, te = train_test_split(25, 0.6)
    kwargs = dict(epochs=3, lr=0.01, batch_size=4, progress=False) | bad
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        train(ExplodingMLP(5, 8), one_hot_pairs(pairs, 5), labels, tr, te, **kwargs)


def test_train_rejects_empty_or_out_of_range_indices():
    pairs, labels = modular_addition_pairs(5)
    x = one_hot_pairs(pairs, 5)
    with pytest.raises(ValueError, match="train_idx must be a non-empty array"):
        train(ExplodingMLP(5, 8), x, labels, np.array([], dtype=int), np.arange(5), epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="test_idx must be a non-empty array of indices in 0..24"):
        train(ExplodingMLP(5, 8), x, labels, np.arange(5), np.array([3, 25]), epochs=1, lr=0.1)


@pytest.mark.parametrize("function, bad, message", [
    ("train_gromov_mlp", dict(epochs=0), "epochs=0: must be an integer >= 1"),
    ("train_gromov_mlp", dict(epoch=3), "unknown parameter .epoch. for MLPRecipe; valid names: checkpoint_every, epochs"),
    ("train_gromov_mlp", dict(width=0), "width=0"),
    ("train_gromov_mlp", dict(train_frac=1.0), r"train_frac=1.0: must be a finite real number in \(0, 1\)"),
    ("train_gromov_mlp", dict(split_seed="a"), "split_seed='a'"),
    ("train_gromov_mlp", dict(split_seed=None), "split_seed=None: must be an integer >= 0 under split='seeded'"),
    ("train_gromov_mlp", dict(split="random"), "split='random'"),
    ("train_transformer", dict(init="xavier"), "init='xavier'"),
    ("train_gromov_mlp", dict(lr="0.05"), "lr='0.05'"),
    ("train_transformer", dict(batch_size=-4), "batch_size=-4"),
    ("train_transformer", dict(seed=2.0), "seed=2.0"),
    ("train_transformer", dict(d_model=30, n_heads=4), "d_model=30: must be a multiple of n_heads=4"),
])
def test_training_functions_check_their_arguments_before_caching_anything(tmp_path, function, bad, message):
    with pytest.raises(ValueError, match=message):
        getattr(modular, function)(p=5, **bad, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing cached


def test_a_recipe_spells_each_argument_once_and_keys_the_cache():
    recipe = modular.MLPRecipe(p=19, width=256, epochs=300)
    assert modular.MLPRecipe.of(recipe, train_frac=0.8) == modular.MLPRecipe(p=19, width=256, epochs=300,
                                                                              train_frac=0.8)
    assert modular.MLPRecipe.of(split="paper").key()["split_seed"] is None  # the paper split ignores it
    assert modular.TransformerRecipe.of(split="seeded", seed=3).key()["split_seed"] == 3  # drawn with the seed
    assert modular.MLPRecipe.names()[-1] == "steps" and "epochs" in modular.MLPRecipe.names()
    with pytest.raises(ValueError, match="recipe must be a MLPRecipe"):
        modular.MLPRecipe.of(modular.TransformerRecipe())


def test_the_old_name_steps_is_taken_as_epochs_with_a_warning():
    with pytest.warns(DeprecationWarning, match="steps is now called epochs"):
        assert modular.MLPRecipe.of(steps=30).epochs == 30
    with pytest.raises(ValueError, match="steps=30 and epochs=40: steps is the old name of epochs"):
        modular.MLPRecipe.of(steps=30, epochs=40)
