"""Every notebook parameter is checked before any work: names by the runners, values by one
validator per notebook."""

import re
from pathlib import Path

import pytest
import yaml

from entk_utils.experiments import parameters, replication
from entk_utils.settings import language

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PROFILES = sorted((NOTEBOOKS / "profiles").glob("*.yaml"))
VALIDATORS = {
    "01_mlp_modular_addition": (parameters.check_mlp_notebook, parameters.MLP_NOTEBOOK),
    "02_transformer_modular_addition": (parameters.check_transformer_notebook, parameters.TRANSFORMER_NOTEBOOK),
    "03_gemma_tinystories": (parameters.check_gemma_notebook, parameters.GEMMA_NOTEBOOK),
    "04_seeds": (lambda values: parameters.check_seeds_notebook(values, notebook=NOTEBOOKS / "04_seeds.py"),
                 parameters.SEEDS_NOTEBOOK),
    "05_causal": (parameters.check_causal_notebook, parameters.CAUSAL_NOTEBOOK),
    "06_your_model": (parameters.check_your_model_notebook, parameters.YOUR_MODEL_NOTEBOOK),
    "07_toy_superposition": (parameters.check_toy_notebook, parameters.TOY_NOTEBOOK),
    "08_does_it_hold": (replication.check_notebook, replication.REPLICATION_NOTEBOOK),
}


def defaults(name):
    """The parameters a notebook's source declares, with their defaults."""
    return parameters.declared_parameters(NOTEBOOKS / f"{name}.py")


# ---------------------------------------------------------------- names
def test_declared_parameters_read_every_assignment_of_the_parameters_cell(tmp_path):
    source = tmp_path / "nb.py"
    source.write_text('# %% tags=["parameters"]\nn_eigs = 25  # the top n = 25 (an "=" in a comment)\n'
                      'layers = [16]\nout_dir = None\nscale: float = 2.0\nderived = n_eigs * 2\n\n# %%\nlater = 1\n')
    assert parameters.declared_parameters(source) == {"n_eigs": 25, "layers": [16], "out_dir": None, "scale": 2.0,
                                                      "derived": "n_eigs * 2"}


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_papermill_infers_every_declared_parameter(name):
    """papermill's own reading of the parameters cell (``--help-notebook``, its warnings) finds
    every name ours does: a line it cannot parse is reported as an unknown parameter."""
    from papermill.inspection import inspect_notebook
    inferred = set(inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb")))
    assert inferred == set(defaults(name))


def test_an_unknown_name_is_rejected_with_the_valid_names():
    notebook = NOTEBOOKS / "01_mlp_modular_addition.ipynb"
    with pytest.raises(ValueError, match=r"unknown parameter 'stepz' for notebook 01_mlp_modular_addition.ipynb; "
                                         r"valid names: cache_dir, checkpoint_every, .*, steps, .*"):
        parameters.check_parameter_names(notebook, {"steps": 30, "stepz": 30})
    parameters.check_parameter_names(notebook, {"steps": 30})  # the old name of epochs, still accepted
    parameters.check_parameter_names(notebook, {"epochs": 30})


@pytest.mark.parametrize("notebook, inner", [
    ("04_seeds", {"mlp_parameters": {"stepz": 30}}),
    ("04_seeds", {"transformer_parameters": {"epoch": 30}}),
    ("04_seeds", {"transformer_parameters": {"split": "paper"}}),  # the notebook sets split itself
    ("05_causal", {"mlp_parameters": {"stepz": 30}}),
    ("05_causal", {"transformer_parameters": {"device": "cpu"}}),  # the notebook passes device itself
])
def test_unknown_names_inside_passed_on_dicts_are_rejected(notebook, inner):
    (name, value), = inner.items()
    (bad,) = value
    with pytest.raises(ValueError, match=f"unknown parameter '{bad}' for .* \\(in {name} of {notebook}.py\\); "
                                         "valid names: "):
        parameters.check_parameter_names(NOTEBOOKS / f"{notebook}.py", inner)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_committed_profile_names_only_its_notebooks_parameters(profile):
    notebook = NOTEBOOKS / f"{profile.name.split('.')[0]}.py"
    assert parameters.check_profile(notebook, profile) == yaml.safe_load(profile.read_text())


def test_check_profile_command_exits_with_the_error(tmp_path, capsys):
    profile = tmp_path / "typo.yaml"
    profile.write_text("stepz: 30\n")
    notebook = str(NOTEBOOKS / "01_mlp_modular_addition.ipynb")
    assert parameters.main(["check-profile", notebook, str(profile)]) == 2
    assert f"profile {profile}: unknown parameter 'stepz'" in capsys.readouterr().err
    profile.write_text("steps: 30\n")
    assert parameters.main(["check-profile", notebook, str(profile)]) == 0
    profile.write_text("- steps\n")
    assert parameters.main(["check-profile", notebook, str(profile)]) == 2
    assert "must be a mapping" in capsys.readouterr().err


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("name", VALIDATORS)
def test_each_validator_knows_every_parameter_of_its_notebook(name):
    _, known = VALIDATORS[name]
    assert set(defaults(name)) <= set(known)


def runs(names):
    """(notebook, profile or None) for the defaults and every committed profile of ``names``."""
    return [(n, None) for n in names] + [(p.name.split(".")[0], p) for p in PROFILES if p.name.split(".")[0] in names]


def check_run(name, profile, monkeypatch, **extra):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # the gpu profiles ask for cuda
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    VALIDATORS[name][0]({**defaults(name), **(yaml.safe_load(profile.read_text()) if profile else {}), **extra})


@pytest.mark.parametrize("name, profile", runs(["01_mlp_modular_addition", "02_transformer_modular_addition",
                                                "04_seeds", "05_causal", "07_toy_superposition",
                                                "08_does_it_hold"]),
                         ids=lambda x: getattr(x, "stem", x))
def test_the_defaults_and_profiles_pass(name, profile, monkeypatch):
    check_run(name, profile, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name, profile", runs(["03_gemma_tinystories", "06_your_model"]), ids=lambda x: getattr(x, "stem", x))
def test_the_gemma_defaults_and_profiles_pass_against_the_offline_model(name, profile, monkeypatch, outline_cache):
    source = (yaml.safe_load(profile.read_text()) if profile else {}).get("model_source", "gguf")  # e.g. smollm2
    check_run(name, profile, monkeypatch, cache_dir=str(outline_cache), model_source=source)


MLP_CASES = [
    (dict(p=3), f"p=3: must be an odd prime with p*p >= {parameters.MLP_KERNEL_CHECK_INPUTS}"),
    (dict(p=5), f"p=5: must be an odd prime with p*p >= {parameters.MLP_KERNEL_CHECK_INPUTS}"),
    (dict(p=21), "odd prime"),
    (dict(seed="0"), "seed='0': must be an integer >= 0"),
    (dict(seed=0.5), "seed=0.5"),
    (dict(lr="0.05"), "lr='0.05': must be a finite real number > 0"),
    (dict(epochs=0), "epochs=0: must be an integer >= 1"),
    (dict(steps=0, epochs=500), "epochs=0: must be an integer >= 1"),  # the old name wins where given
    (dict(null_draws=0), "null_draws=0: must be an integer >= 1"),
    (dict(init_seeds=[]), "init_seeds=[]: must be a non-empty list"),
    (dict(init_seeds=101), "init_seeds=101"),
    (dict(train_frac=0), "train_frac=0"),
    (dict(split="random"), "split='random': must be one of 'paper', 'seeded'"),
    (dict(split_seed=-1), "split_seed=-1: must be an integer >= 0 or None"),
    (dict(split_seed=None), "split_seed=None: must be an integer >= 0 under split='seeded'"),
    (dict(device="gpu"), "device='gpu'"),
    (dict(out_dir=3), "out_dir=3: must be a folder path"),
]


@pytest.mark.parametrize("bad, message", MLP_CASES, ids=[m.split(":")[0] for _, m in MLP_CASES])
def test_mlp_notebook_values(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parameters.check_mlp_notebook(defaults("01_mlp_modular_addition"), **bad)


def test_mlp_notebook_accepts_no_split_seed_under_the_paper_split():
    parameters.check_mlp_notebook(defaults("01_mlp_modular_addition"), split="paper", split_seed=None)


TRANSFORMER_CASES = [
    (dict(batch_size=-4), "batch_size=-4: must be an integer >= 1 or None"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(seed="2"), "seed='2'"),
    (dict(lr="3e-4"), "lr='3e-4'"),
    (dict(null_draws=0), "null_draws=0"),
    (dict(p=7), f"p=7: must be an odd prime with p*p >= {parameters.TRANSFORMER_KERNEL_CHECK_INPUTS}"),
    (dict(n_eigs=2), f"n_eigs=2: must be an integer in [{parameters.MIN_SPECTRUM}, "
                    f"{defaults('02_transformer_modular_addition')['p'] ** 2}]"),
    (dict(d_model=30), "d_model=30: must be a multiple of n_heads=4"),
    (dict(init="xavier"), "init='xavier': must be one of 'paper', 'torch'"),
    (dict(split="random"), "split='random': must be one of 'paper', 'seeded'"),
]


@pytest.mark.parametrize("bad, message", TRANSFORMER_CASES, ids=[m.split(":")[0] for _, m in TRANSFORMER_CASES])
def test_transformer_notebook_values(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parameters.check_transformer_notebook(defaults("02_transformer_modular_addition"), **bad)


def test_transformer_notebook_accepts_a_seeded_split_that_follows_the_seed():
    parameters.check_transformer_notebook(defaults("02_transformer_modular_addition"), split="seeded", split_seed=None)


def test_a_validator_rejects_unknown_or_missing_names():
    values = defaults("01_mlp_modular_addition")
    with pytest.raises(ValueError, match="unknown parameter 'stepz' for the validator of notebook 01"):
        parameters.check_mlp_notebook(values, stepz=3)
    del values["null_draws"]
    with pytest.raises(ValueError, match="missing parameter\\(s\\) null_draws of notebook 01"):
        parameters.check_mlp_notebook(values)
    parameters.check_mlp_notebook({**values, "null_draws": 5, "In": [], "_": None})  # e.g. globals(): extras ignored


CAUSAL_CASES = [
    (dict(mlp_parameters={"epochs": 0}), "mlp_parameters: epochs=0: must be an integer >= 1"),
    (dict(mlp_parameters={"steps": 0}), "mlp_parameters: epochs=0: must be an integer >= 1"),
    (dict(transformer_parameters={"batch_size": -4}), "transformer_parameters: batch_size=-4"),
    (dict(mlp_parameters={"stepz": 30}), "unknown parameter 'stepz'"),
    (dict(mlp_parameters=[("p", 19)]), "mlp_parameters=\\[\\('p', 19\\)\\]: must be a dict"),
    (dict(n_directions=0), "n_directions=0"),
    (dict(relative_norms=[]), "relative_norms=\\[\\]: must be a non-empty list"),
    (dict(relative_norms=[0.1, -0.1]), "relative_norms=\\[0.1, -0.1\\]: must be a non-empty list of finite real "
                                       "numbers >= 0"),
]


@pytest.mark.parametrize("bad, message", CAUSAL_CASES, ids=[m.split(":")[0][:40] for _, m in CAUSAL_CASES])
def test_causal_notebook_values(bad, message):
    with pytest.raises(ValueError, match=message):
        parameters.check_causal_notebook(defaults("05_causal"), **bad)


# ---------------------------------------------------------------- notebook 03, without loading Gemma
TINY_CONTEXT = 48


@pytest.fixture
def tiny_model(tmp_path):
    """A local model folder with a Gemma-3 config only (no weights): 4 layers, TINY_CONTEXT positions."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tiny"
    transformers.Gemma3TextConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                  max_position_embeddings=TINY_CONTEXT).save_pretrained(folder)
    return folder


@pytest.fixture
def gemma_values(tiny_model, tmp_path):
    stories = tmp_path / "stories.txt"
    stories.write_text(f"Once upon a time.\n{language.SEPARATOR}\nThe end.\n{language.SEPARATOR}\n")
    return {**defaults("03_gemma_tinystories"), "model_source": str(tiny_model), "text_path": str(stories),
            "layers": [3], "context_len": 40, "n_eigs": 10, "cache_dir": str(tmp_path / "cache")}


def test_gemma_notebook_values_pass(gemma_values):
    parameters.check_gemma_notebook(gemma_values)


GEMMA_CASES = [
    (dict(layers=[]), "layers=\\[\\]: must be a non-empty list of distinct integers >= 0"),
    (dict(layers="3"), "layers='3': must be a non-empty list"),
    (dict(layers=[1, 1]), "layers=\\[1, 1\\]: must be a non-empty list of distinct"),
    (dict(layers=[4]), "layers=\\[4\\]: must be a non-empty list of distinct integers in \\[0, 3\\] "
                       "\\(the model has 4 decoder layers\\)"),
    (dict(context_len=46), f"context_len=46: must be an integer <= {TINY_CONTEXT - language.GENERATED_TOKENS} "
                           f"\\(the model reads {TINY_CONTEXT} tokens, {language.GENERATED_TOKENS} of them"),
    (dict(context_len=0), "context_len=0: must be an integer >= 1"),
    (dict(n_per_tag=1), "n_per_tag=1: must be an integer >= 2"),
    (dict(n_per_tag="8"), "n_per_tag='8'"),
    (dict(n_eigs=60), f"n_eigs=60: must be an integer in \\[1, {defaults('03_gemma_tinystories')['lanczos_steps']}\\]"),
    (dict(n_eigs=17), "n_eigs=17: must be an integer <= 16 \\(the model's hidden size\\)"),
    (dict(causal_contexts=0), "causal_contexts=0: must be an integer >= 1 or None"),
    (dict(relative_norms=[0.0, 0.1]), "relative_norms=\\[0.0, 0.1\\]: must be a non-empty list of finite real "
                                      "numbers > 0"),
    (dict(model_source="no such model"), "model_source='no such model': must be one of 'auto', 'hub', 'gguf', 'smollm2', an "
                                        "existing"),
    (dict(sae="gemma-scope-2-270m-pt-res-all/layer_99_width_16k"), "sae='gemma-scope-2-270m-pt-res-all/layer_99_width_"
                                                                   "16k': must be 'train', an existing folder"),
    (dict(sae=""), "sae='': must be 'train'"),
    (dict(sae_k=600), "sae_k=600: must be an integer <= 512 \\(sae_width\\)"),
    (dict(sae_documents=0), "sae_documents=0: must be an integer >= 1 or None"),
    (dict(sae_tokens=1.5), "sae_tokens=1.5: must be an integer"),
    (dict(candidate_min_count=0), "candidate_min_count=0: must be an integer in \\[1, "),
    (dict(min_per_half=5), "min_per_half=5: must be an integer in \\[1, 4\\] \\(each half holds n_per_tag // 2"),
    (dict(n_splits=5), "n_splits=5: must be an integer >= 10 \\(the splits' variance is the interval"),
]


def test_notebook_03_warns_that_n_permutations_is_no_longer_used(gemma_values):
    with pytest.warns(FutureWarning, match="n_permutations is no longer used by notebook 03"):
        parameters.check_gemma_notebook({**gemma_values, "n_permutations": 1000})


def test_a_published_sae_from_the_registry_passes(gemma_values):
    parameters.check_gemma_notebook({**gemma_values, "sae": "gemma-scope-2-270m-pt-res-all/layer_16_width_16k_l0_small"})


@pytest.mark.parametrize("bad, message", GEMMA_CASES, ids=[m.split(":")[0] for _, m in GEMMA_CASES])
def test_gemma_notebook_values(gemma_values, bad, message):
    with pytest.raises(ValueError, match=message):
        parameters.check_gemma_notebook({**gemma_values, **bad})


@pytest.mark.parametrize("content, error, message", [
    (None, FileNotFoundError, "stories file .*missing.txt not found"),
    (b"", ValueError, "stories file .*stories.txt is empty"),
    (b"One story, no separator.\n", ValueError, "stories file .*stories.txt has no <\\|endoftext\\|> separator"),
    (b"caf\xe9\n<|endoftext|>\n", ValueError, "stories file .*stories.txt is not UTF-8 text: .* at byte offset 3"),
])
def test_gemma_notebook_checks_the_stories_file_first(gemma_values, tmp_path, content, error, message):
    path = tmp_path / ("missing.txt" if content is None else "stories.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        parameters.check_gemma_notebook({**gemma_values, "text_path": str(path), "model_source": "gguf"})
    with pytest.raises(error, match=message):  # text_path's old name, alone, is the file checked
        parameters.check_gemma_notebook({**gemma_values, "text_path": None, "stories_path": str(path),
                                         "model_source": "gguf"})
    assert not (tmp_path / "cache").exists()  # the model was not looked at


@pytest.mark.parametrize("bad, message", [
    ({"seeds": []}, "seeds=\\[\\]"),
    ({"transformer_seeds": [1, 1]}, "distinct"),
    ({"split_policies": ["paper", "random"]}, "split_policies"),
    ({"split_policies": []}, "split_policies"),
    ({"mlp_parameters": {"stepz": 30}}, "stepz"),
    ({"mlp_parameters": {"epochs": -1}}, "mlp_parameters: epochs=-1"),
    ({"mlp_parameters": {"steps": -1}}, "mlp_parameters: epochs=-1"),
    ({"transformer_parameters": {"batch_size": 0}}, "transformer_parameters: batch_size=0"),
    ({"transformer_parameters": {"p": 5}}, "transformer_parameters: p=5"),
    ({"grid_splits": ["paper", "paper"]}, "grid_splits"),
    ({"grid_splits": ["Paper"]}, "grid_splits"),
    ({"grid_splits": [-1]}, "grid_splits"),
    ({"grid_init_seeds": "0, 1"}, "grid_init_seeds"),
])
def test_seeds_notebook_values(bad, message):
    with pytest.raises(ValueError, match=message):
        VALIDATORS["04_seeds"][0]({**defaults("04_seeds"), **bad})


# ---------------------------------------------------------------- notebook 06, from a config alone
@pytest.fixture
def your_model_values(tmp_path):
    """Notebook 06's defaults against a local folder holding only a tiny Llama config."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "llama"
    transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                             num_attention_heads=2, max_position_embeddings=TINY_CONTEXT).save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("A first paragraph.\n\nA second one.\n")
    return {**defaults("06_your_model"), "model_source": str(folder), "text_path": str(text), "context_len": 40,
            "cache_dir": str(tmp_path / "cache")}


def test_your_model_notebook_values_pass(your_model_values):
    parameters.check_your_model_notebook(your_model_values)
    parameters.check_your_model_notebook(your_model_values, weights=["model.layers.1.mlp", "model.norm.weight"])


YOUR_MODEL_CASES = [
    (dict(n_contexts=31), "n_contexts=31: must be an integer >= 32 \\(twice min_positives"),
    (dict(n_eigs=31), "n_eigs=31: must be an integer in \\[1, 30\\] \\(at most lanczos_steps and n_contexts"),
    (dict(n_eigs=17), "n_eigs=17: must be an integer <= 16 \\(the model's hidden size\\)"),
    (dict(context_len=TINY_CONTEXT + 1), f"context_len={TINY_CONTEXT + 1}: must be an integer <= {TINY_CONTEXT} "
                                         f"\\(the model reads {TINY_CONTEXT} tokens\\)"),
    (dict(weights="model.layers.1.mlp"), "weights='model.layers.1.mlp': must be None or a non-empty list"),
    (dict(weights=["model.layers.1.mlp", "model.layers.1.mlp"]), "must be None or a non-empty list of distinct"),
    (dict(weights=["model.layers.1.mlpp"]), "weights: model .* has no parameter or module 'model.layers.1.mlpp'; "
                                            "did you mean 'model.layers.1.mlp'"),
    (dict(text_path="/no/such/file.txt"), "text_path='/no/such/file.txt': must be None or an existing text file"),
    (dict(model_source="not a model"), "model_source='not a model': must be one of 'auto', 'hub', 'gguf', 'smollm2', an existing"),
    (dict(min_positives=0), "min_positives=0: must be an integer >= 1"),
    (dict(top_contexts=0), "top_contexts=0"),
    (dict(candidate_min_count=1000), "candidate_min_count=1000: must be an integer in \\[1, 128\\] \\(half the contexts"),
    (dict(n_permutations=0), "n_permutations=0"),
    (dict(n_permutations=300), "n_permutations=300 can never reach significance: .* correction over 20 tests; give "
                               "at least 399"),
    (dict(min_per_half=65), "min_per_half=65: must be an integer in \\[1, 64\\] \\(a quarter of n_contexts"),
    (dict(n_splits=3), "n_splits=3: must be an integer >= 10"),
    (dict(device="gpu"), "device='gpu'"),
]


@pytest.mark.parametrize("bad, message", YOUR_MODEL_CASES, ids=[m.split(":")[0] for _, m in YOUR_MODEL_CASES])
def test_your_model_notebook_values(your_model_values, bad, message):
    with pytest.raises(ValueError, match=message):
        parameters.check_your_model_notebook({**your_model_values, **bad})


def test_your_model_notebook_checks_the_text_before_the_model(your_model_values, tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="text file .*latin1.txt is not UTF-8 text: .* at byte offset 3"):
        parameters.check_your_model_notebook({**your_model_values, "text_path": str(text), "model_source": "gguf"})
    assert not (tmp_path / "cache").exists()  # the model was not looked at


@pytest.mark.parametrize("bad, message", [
    (dict(configurations=["40x10"]), "configuration='40x10': must be '<features>-<hidden>'"),
    (dict(configurations=[]), "configurations=\\[\\]: must be a non-empty list"),
    (dict(probabilities=[1.5]), "probabilities=1.5: must be a finite real number in \\(0, 1\\]"),
    (dict(seeds=[0, 0]), "seeds=\\[0, 0\\]: must be a non-empty list of distinct integers"),
    (dict(steps=0), "steps=0: must be an integer >= 1 or None"),
    (dict(n_inputs=60), "n_inputs=60: must be an integer >= 100"),
])
def test_toy_notebook_values_are_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        parameters.check_toy_notebook({**defaults("07_toy_superposition"), **bad})
