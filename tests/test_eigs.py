"""The batch entry point ``python -m entk_utils.eigs``: files, notebook 03's cache, failures."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from eigs_failing_rank import inject_failure  # noqa: E402
from test_distributed import LAYER, contexts, tiny_model  # noqa: E402

from entk_utils import distributed, eigs  # noqa: E402
from entk_utils.experiments import batch_job, eigenpairs, parameters  # noqa: E402
from entk_utils.io import cache  # noqa: E402
from entk_utils.kernels import operators  # noqa: E402
from entk_utils.settings import language  # noqa: E402

HERE = Path(__file__).resolve().parent
LAUNCH = [sys.executable, "-m", "entk_utils.distributed", "--nproc-per-node", "2"]
EIGS = ["-m", "entk_utils.eigs"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Gemma3 saved with save_pretrained, and N = 5 contexts (uneven over 2 ranks)."""
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model("gemma3").save_pretrained(folder / "model")
    torch.save(contexts(5), folder / "ids.pt")
    return folder


def file_job(tiny, out, *extra):
    return ["--model", str(tiny / "model"), "--contexts", str(tiny / "ids.pt"), "--layer", str(LAYER),
            "--n-eigs", "4", "--steps", "30", "--out", str(out), *extra]


def run(command, **env):
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
def test_out_file_under_torchrun_with_two_ranks_equals_the_single_process_one(tiny, tmp_path):
    one = run([sys.executable, *EIGS, *file_job(tiny, tmp_path / "one.npz")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([*LAUNCH, *EIGS, *file_job(tiny, tmp_path / "two.npz")])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert a["eigenvalues"].shape == (4,) and a["eigenvectors"].shape == (5 * 16, 4)
    assert (int(a["world_size"]), int(b["world_size"])) == (1, 2)
    np.testing.assert_allclose(b["eigenvalues"], a["eigenvalues"], rtol=1e-5)
    np.testing.assert_allclose(b["eigenvectors"], a["eigenvectors"], atol=1e-5)
    assert "all-reduce" in two.stderr and "all-gather" in two.stderr  # rank 0 logs the messages
    assert int(b["allreduce_bytes"]) == 16 * 24 * 4 and int(b["allgather_bytes"]) == 2 * 3 * 16 * 4


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
def test_a_rank_raising_mid_run_fails_the_job_with_its_error_and_writes_no_file(tiny, tmp_path):
    out = tmp_path / "never.npz"
    job = run([*LAUNCH, str(HERE / "eigs_failing_rank.py"), *file_job(tiny, out)], FAIL_RANK="1", FAIL_AT="5")
    assert job.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure in product 5" in job.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize("change, message", [
    ({"--contexts": "missing.pt"}, "--contexts='.*missing.pt': no such file"),
    ({"--layer": "3"}, "--layer=3: must be an integer in \\[0, 2\\] \\(the model has 3 decoder layers\\)"),
    ({"--n-eigs": "31"}, "--steps=30: must be an integer >= 31 \\(at least --n-eigs\\)"),
    ({"--out": "result.txt"}, "--out='.*result.txt': must end in .npz"),
    ({"--model": "nowhere"}, "--model='.*nowhere': model_source='.*nowhere': must be one of 'auto', 'hub', 'gguf', 'smollm2', an "
                             "existing model folder or .gguf file, or a Hugging Face Hub id"),
    ({"--contexts": "flat.pt"}, "must hold a non-empty \\(N, T\\) integer tensor of token ids, got Tensor \\(5,\\)"),
], ids=["missing-contexts", "layer", "steps", "out", "model", "flat-contexts"])
def test_bad_inputs_stop_the_job_with_one_line_naming_the_value(tiny, tmp_path, capsys, change, message):
    torch.save(torch.arange(5), tmp_path / "flat.pt")
    args = file_job(tiny, tmp_path / "out.npz")
    for option, value in change.items():
        args[args.index(option) + 1] = value if option in ("--layer", "--n-eigs") else str(tmp_path / value)
    assert eigs.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out.npz").exists()


def test_the_modes_options_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        eigs.parse_args(["--model", "x", "--layer", "1"])
    assert "missing --contexts --n-eigs --steps --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eigs.parse_args(["--profile", "paper", "--out", "x.npz", "--seed", "1"])
    assert "--out, --seed belong to the one-layer mode" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eigs.parse_args(file_job(Path("t"), "x.npz", "--layers", "1"))
    assert "--layers belong to the profile mode" in capsys.readouterr().err
    assert eigs.parse_args(file_job(Path("t"), "x.npz")).seed == 0


# --------------------------------------------------------------------------- notebook 03's cache
def fill(cache_dir, layers, fail_at=None):
    """``eigenpairs.fill_cache`` for the tiny Gemma3 (rank 1 failing in product ``fail_at``, if given)."""
    if fail_at is not None:
        inject_failure(1, fail_at)
    model = tiny_model("gemma3")
    metric = operators.unembedding_metric(model)
    entries = eigenpairs.fill_cache(cache_dir, model, contexts(5), layers, 3, 12, seed=0, key="tiny", metric=metric,
                                    chunk_size=2)
    return [(str(path), computed) for path, computed in entries]


def test_the_cache_entries_are_those_cached_layer_eigenpairs_reads(tmp_path):
    (path, computed), = fill(tmp_path, [LAYER])
    assert computed
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    model = tiny_model("gemma3")
    read = eigenpairs.cached_layer_eigenpairs(tmp_path, model, contexts(5), LAYER, 3, steps=12, seed=0,
                                             metric=operators.unembedding_metric(model), key="tiny", progress=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before
    stored = cache.read_entry(path)
    assert set(stored) == {"evals", "evecs", "residuals", "seconds"} and read["seconds"] == stored["seconds"]
    torch.testing.assert_close(read["evecs"], stored["evecs"])


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
def test_a_rank_failing_in_a_layer_leaves_no_entry_for_it_and_the_rerun_resumes(tmp_path):
    """Layer 1 takes products 1-12, so product 15 falls in layer 2."""
    with pytest.raises(Exception, match="injected failure in product 15"):
        distributed.run_on_local_ranks(fill, 2, tmp_path, [LAYER, 2], 15)
    first = sorted(p.name for p in tmp_path.glob("entk-eigs-*"))
    assert len(first) == 1 and first[0].startswith(f"entk-eigs-layer{LAYER}-")
    assert not list(tmp_path.glob(".*.tmp"))
    rerun = distributed.run_on_local_ranks(fill, 2, tmp_path, [LAYER, 2])
    assert [computed for _, computed in rerun[0]] == [False, True]
    assert Path(rerun[0][0][0]).name == first[0]


def test_notebook_parameters_of_the_paper_profile_are_the_18_layers_at_n_1024(monkeypatch):
    monkeypatch.delenv("ENTK_CACHE_DIR", raising=False)
    values = batch_job.notebook_parameters("paper")
    assert values["layers"] == list(range(18)) and values["n_per_tag"] * len(language.TAGS) == 1024
    assert (values["n_eigs"], values["lanczos_steps"]) == (25, 50)
    assert Path(values["cache_dir"]).resolve() == batch_job.NOTEBOOKS_DIR.parent / ".cache"  # where the notebook looks
    assert batch_job.notebook_parameters("paper16", layers=[3])["layers"] == [3]
    with pytest.raises(FileNotFoundError, match="notebook 03's profiles: gpu, paper, paper16"):
        batch_job.notebook_parameters("nope")


def test_a_parameter_file_with_a_name_notebook_03_lacks_is_an_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("n_per_tagg: 2\n")
    with pytest.raises(ValueError, match="n_per_tagg"):
        batch_job.notebook_parameters(param_file=tmp_path / "bad.yaml")


def test_the_metric_is_computed_as_the_notebook_computes_it_whatever_this_process_threads():
    """A float64 U^T U summed by another number of threads differs in the last bits, and the
    eigenpairs' key holds the metric's bits."""
    head = torch.nn.Linear(256, 20_000, bias=False)
    model = type("LM", (), {"get_output_embeddings": lambda self: head})()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        notebook = operators.unembedding_metric(model)
        torch.set_num_threads(1)
        one_thread = operators.unembedding_metric(model)
        ours = batch_job.notebook_metric(model, "cpu", threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(ours, notebook)
    if torch.equal(one_thread, notebook):
        pytest.skip("this BLAS sums U^T U alike with 1 and 2 threads, so the check above shows nothing here")


def notebook_cells_until(marker: str, values: dict) -> dict:
    """Run notebook 03's own code cells after its parameters cell with ``values`` as the
    parameters, up to and including the first cell containing ``marker``; its namespace."""
    import jupytext

    cells = [c for c in jupytext.read(batch_job.notebook_file()).cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])) + 1
    namespace = dict(values)
    for cell in cells[first:]:
        exec(compile(cell.source, "notebook 03", "exec"), namespace)
        if marker in cell.source:
            return namespace
    raise AssertionError(f"no cell of notebook 03 contains {marker!r}")


@pytest.mark.slow
def test_the_profile_job_on_two_ranks_fills_the_cache_notebook_03_then_reads(tmp_path, monkeypatch, gemma):
    """The offline Gemma, N = 16 contexts from 100 stories, layers 16 and 17: the job under
    the launcher (2 ranks, 1 thread each), then notebook 03's cells, which find every entry
    (the notebook's loader hands them the session's copy of the same model)."""
    try:
        stories = language.read_stories(language.stories_path())[:100]
    except FileNotFoundError as err:
        pytest.skip(f"no TinyStories sample here: {err}")
    (tmp_path / "stories.txt").write_text("".join(f"{s}\n{language.SEPARATOR}\n" for s in stories))
    params = {"n_per_tag": 2, "context_len": 16, "layers": [16, 17], "n_eigs": 2, "lanczos_steps": 4,
              "min_positives": 2, "min_per_half": 1, "model_source": "gguf",
              "text_path": str(tmp_path / "stories.txt")}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(params))
    cache_dir = tmp_path / "cache"
    job = run([*LAUNCH, *EIGS, "--param-file", str(tmp_path / "tiny.yaml"), "--cache-dir", str(cache_dir),
               "--notebook-threads", str(torch.get_num_threads())])
    assert job.returncode == 0, job.stderr[-5000:]
    entries = {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("entk-eigs-*")}
    assert sorted(n.split("-")[2] for n in entries) == ["layer16", "layer17"]

    monkeypatch.chdir(batch_job.NOTEBOOKS_DIR)
    monkeypatch.setattr(language, "load_model", lambda source, **kwargs: gemma if source == "gguf" else pytest.fail(source))
    values = {**parameters.declared_parameters(batch_job.notebook_file()), **params, "cache_dir": str(cache_dir),
              "out_dir": str(tmp_path / "out")}
    namespace = notebook_cells_until("gemma.score_layers", values)
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("entk-eigs-*")} == entries
    for name in entries:
        stored = cache.read_entry(cache_dir / name)
        layer = int(name.split("-")[2].removeprefix("layer"))
        np.testing.assert_array_equal(namespace["found"].spectra[layer], stored["evals"].numpy())
    assert namespace["found"].seconds[17] == cache.read_entry(next(cache_dir.glob("entk-eigs-layer17-*")))["seconds"]
