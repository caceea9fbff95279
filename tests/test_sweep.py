"""A seed sweep never mixes two runs in one folder and recognises a finished run by value."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from entk_utils.io import sweep

PARAMETERS = '''seed = 0
tag = "A"
shape = (2, 3)       # a tuple: papermill and the marker hold it as a list
fail_seed = None     # this seed fails after writing part of its tables
log = None           # every execution appends a line here
out_dir = None
'''
BODY = '''from pathlib import Path
import pandas as pd

Path(log).open("a").write(f"{tag} {seed}\\n")
pd.DataFrame({"tag": [tag], "rows": [shape[0]]}).to_csv(Path(out_dir) / "table.csv", index=False)
if seed == fail_seed:
    raise RuntimeError("this run fails part-way")
pd.DataFrame({"tag": [tag]}).to_csv(Path(out_dir) / "second.csv", index=False)
'''


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fake.ipynb"
    nbformat.write(nb, path)
    return path


def executions(log):
    return log.read_text().split("\n")[:-1] if log.exists() else []


@pytest.mark.slow
def test_a_failed_run_never_mixes_with_the_previous_one(notebook, tmp_path):
    out, log = tmp_path / "runs", tmp_path / "log.txt"
    a = {"tag": "A", "shape": (2, 3), "log": str(log)}
    runs = sweep.run_seeds(notebook, [0, 1], out, parameters=a, progress=False)
    assert executions(log) == ["A 0", "A 1"]
    assert sweep.gather(runs, "table").tag.tolist() == ["A", "A"]

    # B fails for seed 1 after writing table.csv: seed 1 keeps run A, whole and marked as A
    b = {"tag": "B", "shape": (2, 3), "log": str(log), "fail_seed": 1}
    with pytest.raises(Exception, match="fails part-way") as failure:
        sweep.run_seeds(notebook, [0, 1], out, parameters=b, progress=False)
    assert any(str(out / "seed1.failed") in note for note in failure.value.__notes__)
    assert executions(log)[2:] == ["B 0", "B 1"]
    assert pd.read_csv(out / "seed1" / "table.csv").tag.tolist() == ["A"]
    assert pd.read_csv(out / "seed1" / "second.csv").tag.tolist() == ["A"]
    assert json.loads((out / "seed1" / sweep.DONE).read_text())["tag"] == "A"
    assert pd.read_csv(out / "seed1.failed" / "table.csv").tag.tolist() == ["B"]  # the failed run, for inspection
    assert not (out / "seed1.failed" / sweep.DONE).exists()
    assert pd.read_csv(out / "seed0" / "second.csv").tag.tolist() == ["B"]

    # rerun A: seed 0 (now B) runs again; seed 1 is a finished A run (tuple parameter and all): skipped
    runs = sweep.run_seeds(notebook, [0, 1], out, parameters=a, progress=False)
    assert executions(log)[4:] == ["A 0"]
    assert sweep.gather(runs, "table").tag.tolist() == ["A", "A"]
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed1", "seed1.failed"]  # no temporary folder left


def test_unknown_parameter_names_are_rejected_before_any_run(notebook, tmp_path):
    with pytest.raises(ValueError, match="unknown parameter 'tagg' for notebook fake.ipynb; valid names: fail_seed, "
                                         "log, out_dir, seed, shape, tag"):
        sweep.run_seeds(notebook, [0, 1], tmp_path / "runs", parameters={"tagg": "A"}, progress=False)
    with pytest.raises(ValueError, match="unknown parameter 'split_seed'"):  # a seed parameter it does not declare
        sweep.run_seeds(notebook, [0], tmp_path / "runs", seed_parameters=("seed", "split_seed"), progress=False)
    with pytest.raises(ValueError, match="set by the sweep itself"):
        sweep.run_seeds(notebook, [0], tmp_path / "runs", parameters={"seed": 3}, progress=False)
    with pytest.raises(ValueError, match="seeds=\\[0, 0\\]: must be a non-empty list of distinct integers"):
        sweep.run_seeds(notebook, [0, 0], tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_unknown_names_for_a_notebook_passed_on_by_the_sweep_notebook_are_rejected(tmp_path):
    """Notebook 04 hands mlp_parameters to notebook 01 through run_seeds."""
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "01_mlp_modular_addition.ipynb"
    with pytest.raises(ValueError, match="unknown parameter 'stepz' for notebook 01_mlp_modular_addition.ipynb"):
        sweep.run_seeds(notebook, [0], tmp_path / "runs", parameters={"stepz": 30}, progress=False)
    assert not (tmp_path / "runs").exists()
