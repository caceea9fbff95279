"""Run a notebook once per seed with papermill and gather the tables each run wrote.

A seed sweep is the same notebook executed with different ``seed`` parameters; each run
writes its figures and tables into its own folder ``out_root/seed<seed>/`` (with the
executed notebook beside them), so one run can be opened and read like any other. A run
executes into a temporary folder that replaces ``seed<seed>/`` only when it has finished,
with a marker file recording its parameters written last; so a folder never mixes two runs,
a run that finished with the same parameters is not repeated, and trained models come from
the shared ``cache_dir``, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import checks
from .notebooks import check_declared

DONE = "sweep_done.json"


def _as_json(params: dict) -> dict:
    """``params`` as they read back from JSON (tuples become lists), so that a marker
    compares equal to the parameters that wrote it; ``ValueError`` naming a parameter
    that JSON cannot hold."""
    for name, value in params.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise checks.fail(name, value, "JSON data for papermill (numbers, strings, None, lists, dicts)") from None
    return json.loads(json.dumps(params, sort_keys=True))


def _replace_folder(new: Path, folder: Path) -> None:
    """Put the finished run ``new`` at ``folder`` (a sibling), removing an older run there."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        folder.rename(old / folder.name)
    new.rename(folder)
    if old is not None:
        shutil.rmtree(old)


def run_seeds(notebook, seeds, out_root, *, parameters: dict | None = None, seed_parameters=("seed",),
              cache_dir=None, kernel_name: str = "python3", progress: bool = True) -> dict[int, Path]:
    """Execute ``notebook`` once per seed; return ``{seed: folder with that run's outputs}``.

    notebook : path of the ``.ipynb`` (it runs with the notebook's folder as working directory).
    seeds : distinct integers >= 0.
    parameters : papermill parameters shared by every run (e.g. a profile's); every name
        must be one the notebook declares (checked, with the valid names, before any run),
        and none of those the sweep sets itself (``seed_parameters``, ``out_dir``,
        ``cache_dir``).
    seed_parameters : the parameter names set to the seed in each run (e.g. ``("seed",
        "split_seed")`` to vary the data split too).
    cache_dir : passed to the notebook as ``cache_dir`` (trained models are shared there).

    A run that fails leaves the previous run's folder as it was; its own partial outputs
    are kept in ``out_root/seed<seed>.failed/`` for inspection, and the error is raised.
    """
    import papermill

    notebook = Path(notebook).resolve()
    if not notebook.exists():
        raise FileNotFoundError(f"no notebook {notebook}")
    seeds = checks.integers("seeds", seeds, minimum=0, unique=True)
    parameters = dict(parameters or {})
    set_here = [*seed_parameters, "out_dir", "cache_dir"]
    clash = [name for name in parameters if name in set_here]
    if clash:
        raise ValueError(f"parameters {clash} are set by the sweep itself ({', '.join(set_here)}); leave them out")
    sweep_names = [*seed_parameters, "out_dir"] + (["cache_dir"] if cache_dir is not None else [])
    check_declared(notebook, {**parameters, **{name: None for name in sweep_names}})
    out_root = Path(out_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    runs = {}
    for seed in tqdm(seeds, desc=f"{notebook.stem} seeds", disable=not progress):
        folder = out_root / f"seed{seed}"
        params = {**parameters, **{name: seed for name in seed_parameters}, "out_dir": str(folder)}
        if cache_dir is not None:
            params["cache_dir"] = str(Path(cache_dir).resolve())
        params = _as_json(params)
        if _marker(folder) != params:
            _run_one(papermill, notebook, folder, params, kernel_name)
        runs[seed] = folder
    return runs


def _marker(folder: Path) -> dict | None:
    """The parameters recorded by the finished run in ``folder`` (``None`` if there is none)."""
    try:
        return json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None


def _run_one(papermill, notebook: Path, folder: Path, params: dict, kernel_name: str) -> None:
    """Execute one run into a temporary sibling of ``folder``, write the marker, and move
    it to ``folder``; on failure keep it as ``<folder>.failed`` and raise."""
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.running-", dir=folder.parent))
    try:
        papermill.execute_notebook(str(notebook), str(work / notebook.name), parameters={**params, "out_dir": str(work)},
                                   kernel_name=kernel_name, cwd=str(notebook.parent), progress_bar=False)
    except BaseException as err:
        failed = folder.with_name(f"{folder.name}.failed")
        shutil.rmtree(failed, ignore_errors=True)
        work.rename(failed)
        err.add_note(f"the run of {notebook.name} for {folder.name} failed: its outputs are in {failed}; "
                     f"{folder} keeps the previous run, if any")
        raise
    (work / DONE).write_text(json.dumps(params, sort_keys=True))
    _replace_folder(work, folder)


def gather(runs: dict[int, Path], table: str) -> pd.DataFrame:
    """Concatenate ``<table>.csv`` of every run, with a ``seed`` column first."""
    frames = []
    for seed, folder in runs.items():
        path = Path(folder) / f"{table}.csv"
        if not path.exists():
            raise FileNotFoundError(f"the run for seed {seed} wrote no {path.name} (looked in {folder})")
        frames.append(pd.read_csv(path).assign(seed=seed))
    out = pd.concat(frames, ignore_index=True)
    return out[["seed", *[c for c in out.columns if c != "seed"]]]
