"""The comparison of finders (notebooks 03 and 06): a published SAE read offline through the
same path as from the Hub, the SAE a notebook asks for (trained and cached, or loaded), and
one comparison table on both metrics with the eNTK tested against each same-budget method on
resampled splits (the supervised ceilings refit on each), labels cleaned first."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from entk_utils.experiments import baselines
from entk_utils.features import finders, scoring
from entk_utils.features.labels import comparable_labels
from entk_utils.features.significance import holm
from entk_utils.features.sae import (GEMMA_SCOPE_RELEASE, GEMMA_SCOPE_REPO, PublishedSAEUnavailable,
                                     describe_sae, load_published_sae)
from entk_utils.settings.language import TokenActivations

D_IN, D_SAE = 8, 16
SAE_ID = "layer_16_width_16k_l0_small"


def write_gemma_scope_cache(cache: "os.PathLike", seed: int = 0) -> dict:
    """A Hugging Face Hub cache holding a tiny SAE where Gemma Scope 2 keeps
    ``resid_post_all/layer_16_width_16k_l0_small`` (``params.safetensors`` in the published
    format, and ``config.json``); returns its tensors."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    params = {"w_enc": torch.randn(D_IN, D_SAE, generator=g), "w_dec": torch.randn(D_SAE, D_IN, generator=g),
              "b_enc": torch.randn(D_SAE, generator=g) * 0.1, "b_dec": torch.randn(D_IN, generator=g) * 0.1,
              "threshold": torch.rand(D_SAE, generator=g)}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{GEMMA_SCOPE_REPO.replace('/', '--')}"
    folder = repo / "snapshots" / commit / "resid_post_all" / SAE_ID
    folder.mkdir(parents=True)
    save_file(params, folder / "params.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
                                                    "hf_hook_point_in": "model.layers.16.output"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return params


LOAD_OFFLINE = f"""
import json, sys, torch
from entk_utils.features.sae import GEMMA_SCOPE_RELEASE, load_published_sae
sae = load_published_sae(GEMMA_SCOPE_RELEASE, "{SAE_ID}")
x = torch.arange({D_IN * 3}, dtype=torch.float32).reshape(3, {D_IN}) / 10 - 1
print(json.dumps({{"latents": sae.encode(x).tolist(), "reconstruction": sae.decode(sae.encode(x)).tolist(),
                  "architecture": sae.cfg.architecture(), "hook": sae.cfg.metadata.hook_name}}))
"""


@pytest.mark.slow
def test_a_published_gemma_scope_sae_loads_offline_through_the_hub_path(tmp_path):
    params = write_gemma_scope_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD_OFFLINE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    x = torch.arange(D_IN * 3, dtype=torch.float32).reshape(3, D_IN) / 10 - 1
    pre = x @ params["w_enc"] + params["b_enc"]  # JumpReLU: keep a pre-activation above its threshold
    latents = pre * (pre > params["threshold"])
    torch.testing.assert_close(torch.tensor(result["latents"]), latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(result["reconstruction"]), latents @ params["w_dec"] + params["b_dec"],
                               rtol=1e-5, atol=1e-5)
    assert result["architecture"] == "jumprelu" and result["hook"] == "blocks.16.hook_resid_post"


def test_a_published_sae_neither_cached_nor_reachable_says_so_in_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = tmp_path / "hf" / "hub"  # empty: nothing downloaded
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read when huggingface_hub was imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishedSAEUnavailable) as raised:
        load_published_sae(GEMMA_SCOPE_RELEASE, SAE_ID)
    message = str(raised.value)
    assert isinstance(raised.value, FileNotFoundError) and "\n" not in message
    assert f"{GEMMA_SCOPE_RELEASE}/{SAE_ID}" in message and str(cache) in message
    assert "HF_HUB_OFFLINE=1" in message and "run once online" in message and "saved by SAELens" in message
    assert isinstance(raised.value.__cause__, LocalEntryNotFoundError)


def test_an_unknown_published_id_names_the_valid_ones():
    with pytest.raises(ValueError, match="not found in release gemma-scope-2-270m-pt-res-all"):
        baselines.loaded_sae("gemma-scope-2-270m-pt-res-all/layer_99")
    with pytest.raises(ValueError, match="give 'train', '<release>/<sae_id>' or a folder"):
        baselines.loaded_sae("no-such-thing")


def token_activations(n: int = 6000, seed: int = 0) -> TokenActivations:
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.standard_normal((n, D_IN)) * rng.exponential(1, (n, 1)), dtype=torch.float32)
    return TokenActivations(X, torch.zeros(n, dtype=torch.long), torch.arange(n))


SOURCE = baselines.SAESource(sae_width=D_SAE, sae_k=3, sae_tokens=12_000, sae_batch_size=500, sae_held_out=1000)


def test_the_notebook_sae_is_trained_once_and_read_back(tmp_path):
    acts = token_activations()
    first = baselines.notebook_sae(SOURCE, acts, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("sae-*.pt"))) == 1
    again = baselines.notebook_sae(SOURCE, acts, cache_dir=tmp_path)
    x = acts.activations[:20]
    torch.testing.assert_close(again.sae.encode(x), first.sae.encode(x), rtol=0, atol=0)
    assert again.quality == first.quality and describe_sae(again.sae) == f"TopK SAE, {D_SAE} latents"
    report = baselines.sae_report(again, len(acts))
    assert report["held-out tokens"] == 1000 and "2.0 passes over 6,000 tokens" in report["training"]
    assert "4 billion" in report["Gemma Scope, for scale"]


def test_a_saved_sae_is_loaded_and_measured_on_the_held_out_activations(tmp_path):
    acts = token_activations()
    trained = baselines.notebook_sae(SOURCE, acts, cache_dir=None)
    trained.sae.save_model(tmp_path / "saved")
    loaded = baselines.notebook_sae(replace(SOURCE, sae=str(tmp_path / "saved")), acts, cache_dir=None)
    torch.testing.assert_close(loaded.sae.encode(acts.activations[:5]), trained.sae.encode(acts.activations[:5]))
    assert loaded.recipe is None and loaded.quality["n"] == SOURCE.sae_held_out and 0 < loaded.quality["fve"] <= 1
    wide = TokenActivations(torch.zeros(10, D_IN + 1), torch.zeros(10, dtype=torch.long), torch.arange(10))
    with pytest.raises(ValueError, match="reads 8-dimensional activations; these are 9"):
        baselines.notebook_sae(replace(SOURCE, sae=str(tmp_path / "saved")), wide, cache_dir=None)
    with pytest.raises(ValueError, match="sae_k=17: must be an integer <= 16 \\(sae_width\\)"):  # checked once, as named
        baselines.notebook_sae(replace(SOURCE, sae_k=17), acts, cache_dir=None)
    with pytest.raises(ValueError, match="cannot hold sae_held_out=1000 plus one batch"):
        baselines.notebook_sae(SOURCE, TokenActivations(acts.activations[:1200], acts.document[:1200],
                                                        acts.position[:1200]), cache_dir=None)


def test_the_comparison_scores_every_finder_and_tests_the_same_budget_ones():
    rng = np.random.default_rng(1)
    n, d = 200, D_IN
    X = rng.standard_normal((n, d))
    strata = (X[:, 0] > 0.3).astype(int) + 2 * (X[:, 1] > 0)
    labels = pd.DataFrame({"first axis": (X[:, 0] > 0.3).astype(int), "noise": (rng.random(n) < 0.4).astype(int)})
    select, evaluate = scoring.stratified_halves(strata, seed=0)
    sae = baselines.notebook_sae(SOURCE, token_activations(), cache_dir=None)
    inputs = baselines.comparison_inputs(X, rng.standard_normal((n * 2, 6)), sae, labels, select)
    found = baselines.run_finders(inputs, k=4, seed=0)
    assert list(found) == list(finders.FINDERS)
    result = baselines.compare(found, labels, strata, select, evaluate, n_splits=12, seed=0,
                               paper=baselines.PAPER_LAYER16, progress=False)
    s = result.summary
    assert list(s.index) == list(finders.FINDERS)
    assert s.loc["sae-all", "directions"] == D_SAE and s.loc["sae-all", "larger budget"]
    assert s.loc["logistic", "supervised"] and s.loc["entk", "paper auroc"] == 0.827 and np.isnan(s.loc["ica", "paper ap"])
    assert set(result.tests.method) == {"pca", "ica", "sae", "random"}  # same budget, unsupervised
    assert len(result.tests) == 4 * 2 and result.tests.p_holm.between(0, 1).all()
    np.testing.assert_allclose(result.tests.p_holm, holm(result.tests.p))  # labels x methods: one family
    per_label = result.per_label.set_index(["method", "label"])
    assert per_label.loc[("logistic", "first axis"), "auroc"] > 0.9  # the supervised ceiling finds the planted axis
    assert per_label.loc[("logistic", "first axis"), "auroc_splits"] > 0.9  # ... refit on every split
    macro = result.resampled.macro("auroc")
    for method in finders.FINDERS:  # the summary's macro AUROC: the per-label means over the splits, averaged
        assert s.loc[method, "auroc"] == pytest.approx(per_label.loc[method, "auroc_splits"].mean())
        assert s.loc[method, "auroc"] == pytest.approx(macro.estimate[method])
        assert s.loc[method, "auroc low"] < s.loc[method, "auroc"] < s.loc[method, "auroc high"]
        assert s.loc[method, "auroc (one split)"] == pytest.approx(per_label.loc[method, "auroc"].mean())
    probe = result.probing[(result.probing.method == "pca") & (result.probing.k == 2)]
    assert s.loc["pca", "probe auroc k=2"] == pytest.approx(probe.auroc.mean())
    table = baselines.significant_labels(result.tests)
    assert list(table.columns) == ["eNTK better", "eNTK worse", "labels"] and (table["labels"] == 2).all()


def test_labels_are_cleaned_before_the_comparison_and_the_supervised_fit_must_match():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, D_IN))
    strata = (X[:, 0] > 0).astype(int)
    select, evaluate = scoring.stratified_halves(strata, seed=0)
    a = (X[:, 0] > 0).astype(int)
    labels = pd.DataFrame({"a": a, "a again": a, "one late": np.r_[np.zeros(39), 1].astype(int)})
    clean = comparable_labels(labels, select, evaluate)
    assert list(clean.labels.columns) == ["a / a again"] and clean.too_thin == ["one late"]
    inputs = baselines.comparison_inputs(X, rng.standard_normal((80, 5)), None, clean.labels, select)
    result = baselines.compare(baselines.run_finders(inputs, k=3, seed=0), labels, strata, select, evaluate,
                               n_splits=10, seed=0, progress=False)
    assert result.labels.merged == clean.merged and set(result.per_label.label) == {"a / a again"}
    unclean = baselines.comparison_inputs(X, rng.standard_normal((80, 5)), None, labels, select)
    with pytest.raises(ValueError, match="supervised finders .* were fit on other labels"):
        baselines.compare(baselines.run_finders(unclean, k=3, seed=0), labels, strata, select, evaluate, n_splits=10,
                          seed=0, progress=False)


def test_without_an_sae_the_sae_finders_are_left_out():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, D_IN))
    labels = pd.DataFrame({"a": (X[:, 0] > 0).astype(int)})
    inputs = baselines.comparison_inputs(X, rng.standard_normal((80, 5)), None, labels, np.arange(20))
    assert list(baselines.run_finders(inputs, k=3, seed=0)) == ["entk", "pca", "ica", "random", "mean-difference",
                                                               "logistic"]
