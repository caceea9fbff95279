"""Run a notebook once per seed with papermill and gather the tables each run wrote.

A seed sweep is the same notebook executed with different ``seed`` parameters; each run
writes its figures and tables into its own folder ``out_root/seed<seed>/`` (with the
executed notebook beside them), so one run can be opened and read like any other. A run
that finished with the same parameters is not repeated (a marker file records them), and
trained models come from the shared ``cache_dir``, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

DONE = "sweep_done.json"


def run_seeds(notebook, seeds, out_root, *, parameters: dict | None = None, seed_parameters=("seed",),
              cache_dir=None, kernel_name: str = "python3", progress: bool = True) -> dict[int, Path]:
    """Execute ``notebook`` once per seed; return ``{seed: folder with that run's outputs}``.

    notebook : path of the ``.ipynb`` (it runs with the notebook's folder as working directory).
    parameters : papermill parameters shared by every run (e.g. a profile's).
    seed_parameters : the parameter names set to the seed in each run (e.g. ``("seed",
        "split_seed")`` to vary the data split too).
    cache_dir : passed to the notebook as ``cache_dir`` (trained models are shared there).
    """
    import papermill

    notebook = Path(notebook).resolve()
    if not notebook.exists():
        raise FileNotFoundError(f"no notebook {notebook}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    runs = {}
    for seed in tqdm(seeds, desc=f"{notebook.stem} seeds", disable=not progress):
        folder = Path(out_root).resolve() / f"seed{seed}"
        params = {**(parameters or {}), **{name: seed for name in seed_parameters}, "out_dir": str(folder)}
        if cache_dir is not None:
            params["cache_dir"] = str(Path(cache_dir).resolve())
        marker = folder / DONE
        if not (marker.exists() and json.loads(marker.read_text()) == params):
            folder.mkdir(parents=True, exist_ok=True)
            papermill.execute_notebook(str(notebook), str(folder / notebook.name), parameters=params,
                                       kernel_name=kernel_name, cwd=str(notebook.parent), progress_bar=False)
            marker.write_text(json.dumps(params, sort_keys=True))
        runs[seed] = folder
    return runs


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


def grokking_table(runs: dict[int, Path], curve: str, history: str, derivative_column: str,
                   chance: float) -> pd.DataFrame:
    """One row per seed: :func:`entk_utils.dynamics.grokking_times` of that run's curves.

    curve / history : the names of the tables each run wrote (checkpoint curve with a
    ``derivative_column``; per-epoch ``history``). Columns ``seed, peak, steepest_rise,
    leaves_chance, half_way, train_99, final_test_acc``.
    """
    from .dynamics import grokking_times

    rows = []
    for seed, folder in runs.items():
        c = pd.read_csv(Path(folder) / f"{curve}.csv")
        h = pd.read_csv(Path(folder) / f"{history}.csv")
        rows.append({"seed": seed, **grokking_times(c.epoch, c[derivative_column], h, chance),
                     "final_test_acc": h.test_acc.iloc[-1]})
    return pd.DataFrame(rows)


def peak_onset_agreement(times: pd.DataFrame, onset: str) -> dict:
    """How the derivative's peak and an onset (a column of :func:`grokking_table`) agree over
    seeds: ``onset, seeds`` (with both defined), ``pearson_r`` (NaN below 3 seeds),
    ``mean_gap`` and ``mean_abs_gap`` (peak minus onset)."""
    ok = times[["peak", onset]].dropna()
    gap = ok.peak - ok[onset]
    r = ok.peak.corr(ok[onset]) if len(ok) > 2 else float("nan")
    return {"onset": onset, "seeds": len(ok), "pearson_r": r, "mean_gap": gap.mean(), "mean_abs_gap": gap.abs().mean()}
