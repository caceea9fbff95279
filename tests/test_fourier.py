import numpy as np
import pytest

from entk_utils.features.geometry import subspace_overlap
from entk_utils.features.fourier import FAMILIES, check_frequencies, family_power, feature_family, first_key_frequencies, fourier_family, fourier_power, frequency_planes, key_frequencies, transformer_spectra
from entk_utils.settings.modular import modular_addition_pairs

P = 13
PAIRS = modular_addition_pairs(P)[0].numpy()


def test_fourier_family_is_orthogonal_on_a_full_period():
    F = fourier_family(np.arange(P), P)
    assert F.shape == (P, P - 1)
    np.testing.assert_allclose(F.T @ F, (P / 2) * np.eye(P - 1), atol=1e-10)
    np.testing.assert_allclose(F.mean(0), 0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_full_rank_and_orthogonal_columns(family):
    F = feature_family(PAIRS, P, family)
    assert F.shape == (P * P, P - 1)
    gram = F.T @ F
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-8)
    assert np.linalg.matrix_rank(F) == P - 1


def test_families_are_mutually_orthogonal_where_theory_says():
    fams = {f: feature_family(PAIRS, P, f) for f in ("a", "b", "sum", "diff")}
    for x in fams:
        for y in fams:
            expected = P - 1 if x == y else 0
            assert subspace_overlap(fams[x], fams[y]) == pytest.approx(expected, abs=1e-8)
    # 2a is a relabelling of a's frequencies: same span
    assert subspace_overlap(feature_family(PAIRS, P, "2a"), fams["a"]) == pytest.approx(P - 1)
    # axis_sum F(a) + F(b) lies inside span(a) + span(b)
    both = np.column_stack([fams["a"], fams["b"]])
    assert subspace_overlap(feature_family(PAIRS, P, "axis_sum"), both) == pytest.approx(P - 1)


def test_frequency_subsets_and_planes():
    F = feature_family(PAIRS, P, "sum", freqs=[1, 4])
    assert F.shape == (P * P, 4)
    planes = frequency_planes(PAIRS, P, "sum", [1, 4])
    assert [pl.shape for pl in planes] == [(P * P, 2)] * 2
    np.testing.assert_allclose(np.column_stack(planes), F)


def test_values_are_taken_mod_p():
    np.testing.assert_allclose(fourier_family([1, 1 + P], P, center=False)[0], fourier_family([1, 1 + P], P, center=False)[1], atol=1e-12)


@pytest.mark.parametrize("freqs, message", [([0], r"outside 1\.\.6"), ([7], r"outside 1\.\.6"), ([2.5], "outside"), ([], "empty")])
def test_bad_frequencies(freqs, message):
    with pytest.raises(ValueError, match=message):
        check_frequencies(freqs, P)


def test_bad_family_and_modulus():
    with pytest.raises(ValueError, match="unknown family 'prod'"):
        feature_family(PAIRS, P, "prod")
    with pytest.raises(ValueError, match="odd prime"):
        fourier_family(np.arange(4), 15)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        feature_family(np.arange(5), P, "a")


def planted(p, freqs, d=32, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return fourier_family(np.arange(p), p, freqs) @ rng.standard_normal((2 * len(freqs), d)) + noise * rng.standard_normal((p, d))


@pytest.mark.parametrize("p, freqs", [(29, [1, 12]), (29, [1, 3, 7, 10]), (31, [5]), (23, [2, 3, 10])])
@pytest.mark.parametrize("seed", [0, 1])
def test_key_frequencies_recovers_planted_frequencies(p, freqs, seed):
    power = fourier_power(planted(p, freqs, seed=seed), p)
    assert power.shape == ((p - 1) // 2,) and power.sum() == pytest.approx(1)
    np.testing.assert_array_equal(key_frequencies(power), freqs)


def test_key_frequencies_sees_through_extra_tokens_and_unequal_power():
    W = planted(29, [4, 9])
    W[:, :16] *= 3  # one frequency stronger than the other is still a key
    with_equals_token = np.vstack([W, 100 * np.ones((1, W.shape[1]))])
    np.testing.assert_array_equal(key_frequencies(fourier_power(with_equals_token, 29)), [4, 9])


def test_no_key_frequency_in_noise():
    noise = np.random.default_rng(0).standard_normal((29, 64))
    with pytest.raises(ValueError, match="no frequency stands out"):
        key_frequencies(fourier_power(noise, 29))


def test_family_power_on_planted_sum_features():
    pairs = modular_addition_pairs(13)[0].numpy()
    A = feature_family(pairs, 13, "sum", [2, 5]) @ np.random.default_rng(0).standard_normal((4, 10))
    power = family_power(A, pairs, 13, "sum")
    assert power[[1, 4]].sum() == pytest.approx(1)
    np.testing.assert_array_equal(key_frequencies(power), [2, 5])
    assert family_power(A, pairs, 13, "diff").max() < 1e-20


def test_first_key_frequencies_falls_back_in_order():
    flat, peaked = np.ones(14) / 14, fourier_power(planted(29, [6]), 29)
    assert first_key_frequencies({"flat": flat, "peaked": peaked})[0] == "peaked"
    with pytest.raises(ValueError, match="flat: no frequency stands out"):
        first_key_frequencies({"flat": flat})


def test_first_key_frequencies_fallback_takes_the_largest_drop_and_says_so():
    weak = np.array([3.0, 2.0, 1.9, 1.8, 1.7, 1.6])  # largest drop 1.5x, after frequency 1
    source, keys = first_key_frequencies({"W_E": weak, "other": weak}, fallback=True)
    assert keys.tolist() == [1]
    assert source.startswith("W_E") and "none stands out" in source


@pytest.mark.parametrize("power, kwargs, message", [
    (np.ones(14), {"max_keys": 14}, "max_keys"),
    (-np.ones(14), {}, "non-negative"),
    (np.ones(1), {}, "at least 2"),
])
def test_key_frequencies_bad_input(power, kwargs, message):
    with pytest.raises(ValueError, match=message):
        key_frequencies(power, **kwargs)


@pytest.mark.slow
def test_trained_transformers_embedding_and_neurons_agree_on_keys(model_cache):
    """Two independent readings of a trained network (embedding, MLP neurons) find the same
    keys (the notebook-02 quick profile's network, which groks)."""
    import torch

    from entk_utils.settings.modular import train_transformer

    p = 23
    run = train_transformer(p=p, epochs=1500, seed=1, split="seeded", init="torch", lr=3e-3, train_frac=0.6, batch_size=None,
                            checkpoint_every=1500, cache_dir=model_cache, progress=False)
    assert run.result.history.test_acc.iloc[-1] > 0.9
    spectra = transformer_spectra(run.model, run.inputs, run.pairs, p)
    from_embedding = key_frequencies(spectra["W_E"])
    from_neurons = key_frequencies(spectra["MLP activations (a+b)"])
    with torch.no_grad():  # the spectra are what their names say
        _, acts = run.model(run.inputs, return_mlp=True)
    np.testing.assert_allclose(spectra["W_E"], fourier_power(run.model.W_E.weight.detach(), p))
    np.testing.assert_allclose(spectra["MLP activations (a+b)"], family_power(acts.numpy(), run.pairs.numpy(), p, "sum"))
    assert 1 <= len(from_embedding) <= (p - 1) // 4
    np.testing.assert_array_equal(from_embedding, from_neurons)
