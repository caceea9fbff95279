"""The notebooks stay paired with their sources, their committed outputs are clean, and the
notebooks that nbval does not execute run headlessly with their quick profiles.

Each notebook is executed once per `make test`: nbval re-executes the committed notebooks
01, 02, 03 and 05 with their defaults and compares the cells tagged NBVAL_CHECK_OUTPUT
(see notebooks/conftest.py); notebook 04 (which re-runs 01 and 02 per seed) runs here with
its quick profile.
"""

import re
from pathlib import Path

import jupytext
import numpy as np
import pandas as pd
import papermill
import pytest
import yaml

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROGRESS_BAR = re.compile(r"\d+%\|")    # tqdm's text bar, e.g. "  0%|          | 0/51"
PATH_REPR = re.compile(r"^\[?\s*(Posix|Windows)?Path\(")


def profile(name, which):
    return yaml.safe_load((NOTEBOOKS / "profiles" / f"{name}.{which}.yaml").read_text())


def execute(name, tmp_path, **parameters):
    out_dir, cache_dir = tmp_path / "figures", tmp_path / "cache"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters={**parameters, "out_dir": str(out_dir), "cache_dir": str(cache_dir)},
        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
    )
    return out_dir


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_is_paired_with_its_source(source):
    notebook = source.with_suffix(".ipynb")
    assert notebook.exists(), f"{notebook.name} is missing: run `make sync`"
    cells = lambda path: [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]
    assert cells(notebook) == cells(source), f"{notebook.name} differs from {source.name}: run `make sync`"
    tags = [c.metadata.get("tags", []) for c in jupytext.read(source).cells]
    assert any("parameters" in t for t in tags), "papermill needs a cell tagged 'parameters'"


def committed_outputs():
    """(notebook, cell index, output) for every output of every committed notebook."""
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(jupytext.read(path).cells):
            for output in cell.get("outputs", []):
                yield path.name, i, output


def plain_text(output):
    """The text/plain form of an output (empty if it has none)."""
    text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def test_committed_outputs_hold_no_progress_bar_widgets():
    # JupyterLab shows an untrusted notebook's widget views by their text/plain fallback, which
    # for a tqdm bar is the bar as it started: a stale "0%".
    stale = [f"{name} cell {i}: {plain_text(o).strip()}" for name, i, o in committed_outputs()
             if WIDGET_VIEW in o.get("data", {}) and PROGRESS_BAR.search(plain_text(o))]
    assert not stale, "progress-bar widgets in committed outputs:\n" + "\n".join(stale)


def test_committed_outputs_hold_no_path_reprs():
    # e.g. "[PosixPath('../paper_figures/history_mlp.csv')]", the value of a cell's last line
    stray = [f"{name} cell {i}: {plain_text(o).strip()}" for name, i, o in committed_outputs()
             if o.get("output_type") == "execute_result" and PATH_REPR.match(plain_text(o))]
    assert not stray, "stray path reprs in committed outputs:\n" + "\n".join(stray)


@pytest.mark.notebook
def test_seeds_notebook_quick_profile(tmp_path):
    params = profile("04_seeds", "quick")
    out = execute("04_seeds", tmp_path, **params, runs_dir=str(tmp_path / "runs"))
    for name in ("fig2_mlp_grokking_seeds.png", "fig3_transformer_grokking_seeds.png", "summary_seeds.csv",
                 "table_seeds_mlp_overlaps.csv", "table_seeds_transformer.csv", "table_seeds_mlp_timing.csv",
                 "fig_transformer_grokking_reliability.png", "table_seeds_transformer_overlaps.csv",
                 "table_split_init_grid.csv", "fig_split_init_grid.png"):
        assert (out / name).stat().st_size > 0, name
    # one run folder per seed and notebook (and split policy), each with its own tables
    for kind, table in (("mlp", "table1_mlp_overlaps.csv"), ("transformer/paper", "table2_transformer_overlaps.csv"),
                        ("transformer/seeded", "table2_transformer_overlaps.csv")):
        assert sorted(d.name for d in (tmp_path / "runs" / kind).iterdir()) == ["seed0", "seed1"]
        assert (tmp_path / "runs" / kind / "seed1" / table).exists()
    per_run = pd.read_csv(out / "table_seeds_transformer.csv")
    assert per_run[["policy", "seed"]].values.tolist() == [["paper", 0], ["paper", 1], ["seeded", 0], ["seeded", 1]]
    grid = pd.read_csv(out / "table_split_init_grid.csv")
    assert grid[["split", "init_seed"]].astype(str).values.tolist() == [["paper", "0"], ["paper", "1"], ["0", "0"], ["0", "1"]]
    # the grid's (paper split, seed s) runs are the sweep's: same training, same outcome
    sweep_paper = per_run[per_run.policy == "paper"].set_index("seed").final_test_acc
    grid_paper = grid[grid.split.astype(str) == "paper"].set_index("init_seed").final_test_acc
    pd.testing.assert_series_equal(sweep_paper, grid_paper, check_names=False, check_index_type=False)
    timing = pd.read_csv(out / "table_seeds_mlp_timing.csv")
    assert timing.seed.tolist() == [0, 1] and timing.peak.notna().all()
    overlaps = pd.read_csv(out / "table_seeds_mlp_overlaps.csv").set_index("family")
    # at the quick profile every seed groks: the families sit far above the random null
    assert (overlaps["min"] > 5 * overlaps.null_mean).all(), overlaps


@pytest.mark.notebook
def test_your_model_notebook_quick_profile_on_a_tiny_random_llama(tmp_path):
    """Notebook 06 on a model folder as a researcher would bring it: a random tiny Llama and a
    tokenizer trained offline, written by save_pretrained; the default text."""
    from tiny_models import save_tiny_llama

    from entk_utils.settings import language

    folder = save_tiny_llama(tmp_path / "model", language.read_stories()[:300])
    params = profile("06_your_model", "quick")
    out = execute("06_your_model", tmp_path, **params, model_source=str(folder))
    for name in ("fig_your_model_spectrum.png", "fig_your_model_features.png", "table_your_model_directions.csv",
                 "table_your_model_contexts.csv", "summary_your_model.csv"):
        assert (out / name).stat().st_size > 0, name
    directions = pd.read_csv(out / "table_your_model_directions.csv")
    n_eigs = params["n_eigs"]
    assert directions.groupby("method").direction.apply(list).to_dict() == {m: list(range(n_eigs)) for m in ("entk", "pca")}
    entk = directions[directions.method == "entk"]
    assert (entk["eigenvalue or variance"] > 0).all() and entk["eigenvalue or variance"].is_monotonic_decreasing
    assert ((directions.auroc >= 0.5) & (directions.auroc <= 1) & directions.p_holm.between(0, 1)).all()
    contexts = pd.read_csv(out / "table_your_model_contexts.csv")
    assert len(contexts) == n_eigs * params["top_contexts"] and contexts.context.str.endswith("]").all()
    summary = pd.read_csv(out / "summary_your_model.csv").set_index("method")
    assert list(summary.index) == ["entk", "pca"] and (summary.N == params["n_contexts"]).all()
    finders = pd.read_csv(out / "table_your_model_finders.csv").set_index("method")
    assert list(finders.index) == ["entk", "pca", "ica", "sae", "sae-all", "random", "mean-difference", "logistic"]
    assert finders.loc["sae-all", "directions"] == params["sae_width"] and finders.loc["sae", "directions"] == n_eigs
    assert finders.auroc.between(0, 1).all() and finders.loc[["mean-difference", "logistic"], "supervised"].all()
    assert (finders["auroc low"] <= finders.auroc).all() and (finders.auroc <= finders["auroc high"]).all()
    tests = pd.read_csv(out / "table_your_model_finders_tests.csv")
    assert set(tests.method) == {"pca", "ica", "sae", "random"} and tests.p_holm.between(0, 1).all()
    assert (tests.p_holm >= tests.p).all()
    discovery = pd.read_csv(out / "table_your_model_discovery.csv").set_index("method")
    assert list(discovery.index) == ["entk", "pca", "ica", "sae", "random"] and (discovery.directions == n_eigs).all()
    assert discovery.explained.between(0, 1).all() and (discovery.beyond_random <= discovery.explained).all()
    assert discovery.p_vs_chance.between(0, 1).all() and np.isnan(discovery.p_vs_entk["entk"])
    site = out / "dashboard_your_model"
    pages = {p.name for p in site.iterdir()}
    assert pages == {"index.html"} | {f"{m}-{j}.html" for m in discovery.index for j in range(n_eigs)}
    assert "span class=\"tok\"" in (site / "entk-0.html").read_text()


@pytest.mark.notebook
def test_replication_notebook_quick_profile(tmp_path):
    """Notebook 08 with its quick profile (SmolLM2, 32 contexts): Table 3 over every layer, the
    tagger and quantisation tables, the figure."""
    params = profile("08_does_it_hold", "quick")
    out = execute("08_does_it_hold", tmp_path, **params)
    for name in ("fig8_layers.png", "table8_tagger.csv", "table8_quantisation.csv",
                 "table8_quantisation_extrapolated.csv"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table8_layers_smollm2.csv")
    assert set(table["layers used"]) == {"layer 27", "extreme over layers", "layer chosen on select"}
    assert set(table.method) == {"entk", "pca", "ica", "random"} and table.auroc.between(0, 1).all()
    extreme = table[table["layers used"] == "extreme over layers"].set_index(["method", "labels"])
    assert extreme.loc[("pca", "parts of speech"), "layers"] == "0-29"
    assert extreme.loc[("entk", "parts of speech"), "layers"] == "27"
    per_layer = pd.read_csv(out / "table8_per_layer_smollm2.csv")
    assert sorted(per_layer[per_layer.method == "ica"].layer.unique()) == list(range(30))
    probe = pd.read_csv(out / "table8_quantisation.csv")
    assert (probe[probe.bits.notna()]["added error"] > 0).all()


@pytest.mark.notebook
def test_toy_notebook_quick_profile(tmp_path):
    """Notebook 07 with its quick profile: one small model, every method scored, the tables
    and figures written."""
    params = profile("07_toy_superposition", "quick")
    out = execute("07_toy_superposition", tmp_path, **params)
    for name in ("fig7_toy_spectrum.png", "fig7_toy_recovered.png", "table7_toy_sweep.csv", "table7_toy_summary.csv"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "table7_toy_summary.csv").set_index("method")
    assert {"entk", "entk-rotated", "pca", "ica", "sae", "random", "logistic"} <= set(summary.index)
    assert summary.loc["pca", "k"] == 2 and summary.loc["entk", "k"] == 5
    assert summary.loc[["entk", "pca", "sae", "random"], "mmcs"].between(0, 1).all()
