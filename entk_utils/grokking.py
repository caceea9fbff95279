"""How reliably a recipe groks: per-run grokking epochs, fractions over runs, split x init grids.

A run *groks* here when its test accuracy reaches ``level`` (0.95 by default) within the
epochs it was trained for; ``t_level`` (``t95``) is the first epoch at which it does. Runs
that never get there are censored at the end of training, so their ``t95`` is NaN and they
count as not grokked at every epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .modular import train_transformer

GROK_LEVEL = 0.95


def first_epoch_at(history: pd.DataFrame, level: float = GROK_LEVEL, column: str = "test_acc") -> float:
    """The first epoch at which ``history[column] >= level`` (NaN if it never is).

    history : one row per evaluated epoch with columns ``epoch`` and ``column``.
    """
    if not 0 < level <= 1:
        raise ValueError(f"level must lie in (0, 1], got {level}")
    hit = history.epoch[history[column] >= level]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def run_outcome(history: pd.DataFrame, level: float = GROK_LEVEL) -> dict:
    """``final_test_acc``, ``t95`` (first epoch at ``level``, NaN if never), ``grokked``
    (whether it got there) and ``epochs`` (how long the run was trained) of one run."""
    t = first_epoch_at(history, level)
    return {"final_test_acc": float(history.test_acc.iloc[-1]), "t95": t, "grokked": bool(np.isfinite(t)),
            "epochs": int(history.epoch.iloc[-1])}


def fraction_grokked(t95: Iterable[float], epochs: Sequence[float]) -> np.ndarray:
    """(len(epochs),) fraction of runs whose ``t95 <= epoch``, for each epoch.

    t95 : one value per run, NaN for runs that never reached the level (never counted).
    """
    t = np.asarray(list(t95), dtype=float)
    if t.size == 0:
        raise ValueError("need at least one run")
    return np.array([(t <= e).sum() / t.size for e in np.asarray(epochs, dtype=float)])


def fraction_grokked_curves(histories: Mapping[str, Mapping[int, pd.DataFrame]], level: float = GROK_LEVEL
                            ) -> pd.DataFrame:
    """Fraction of runs grokked by each epoch, one curve per group (e.g. per split policy).

    histories : ``{group: {run id: history}}``. Returns a long DataFrame with columns
    ``group, epoch, fraction, runs``, on the union of the groups' evaluated epochs.
    """
    frames = []
    for group, runs in histories.items():
        if not runs:
            raise ValueError(f"group {group!r} has no runs")
        epochs = np.unique(np.concatenate([h.epoch.to_numpy() for h in runs.values()]))
        t95 = [first_epoch_at(h, level) for h in runs.values()]
        frames.append(pd.DataFrame({"group": group, "epoch": epochs, "fraction": fraction_grokked(t95, epochs),
                                    "runs": len(runs)}))
    return pd.concat(frames, ignore_index=True)


def split_init_grid(split_seeds: Sequence[int | str], init_seeds: Sequence[int], *, cache_dir=None,
                    level: float = GROK_LEVEL, progress: bool = True, **train_kwargs) -> pd.DataFrame:
    """Train the Transformer once per (split, init seed) and record whether each run groks.

    split_seeds : each an int (a split drawn with that seed, ``split="seeded"``) or the
        string ``"paper"`` (the authors' fixed split).
    init_seeds : the ``seed`` of each run (weights and minibatch order).
    train_kwargs : passed to :func:`entk_utils.modular.train_transformer` (e.g. ``p``,
        ``epochs``, ``init``); runs are cached in ``cache_dir``, so a grid shares runs with
        notebook 02 / the seed sweep and resumes where it stopped.

    Returns one row per run: ``split, init_seed`` and :func:`run_outcome`'s columns.
    """
    split_seeds, init_seeds = list(split_seeds), [int(s) for s in init_seeds]
    for s in split_seeds:
        if not (s == "paper" or (isinstance(s, (int, np.integer)) and not isinstance(s, bool))):
            raise ValueError(f"each split seed must be an int or 'paper', got {s!r}")
    if not split_seeds or not init_seeds:
        raise ValueError(f"need at least one split and one init seed, got {split_seeds} and {init_seeds}")
    cells = [(s, i) for s in split_seeds for i in init_seeds]
    rows = []
    for split_seed, init_seed in tqdm(cells, desc="split x init runs", disable=not progress):
        split = "paper" if split_seed == "paper" else "seeded"
        run = train_transformer(seed=init_seed, split=split, split_seed=None if split == "paper" else int(split_seed),
                                cache_dir=cache_dir, progress=False, **train_kwargs)
        rows.append({"split": str(split_seed), "init_seed": init_seed, **run_outcome(run.result.history, level)})
    return pd.DataFrame(rows)


def split_effect(grid: pd.DataFrame, n_permutations: int = 10_000, seed: int = 0) -> dict:
    """Does whether a run groks depend on its split more than chance would make it?

    The statistic is the variance over splits of each split's fraction grokked; the null
    reshuffles the ``grokked`` outcomes over all runs (keeping how many runs each split
    has), i.e. "the split does not matter". Returns ``statistic``, ``p_value`` (with the
    +1 correction), ``splits``, ``runs`` and ``per_split`` (fraction grokked per split).
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    codes, labels = pd.factorize(grid.split)
    y = grid.grokked.to_numpy(dtype=float)

    sizes = np.bincount(codes)

    def stat(values):
        return float(np.var(np.bincount(codes, weights=values) / sizes))

    observed = stat(y)
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(y)) for _ in range(n_permutations)])
    per_split = grid.groupby("split", sort=False).grokked.mean()
    return {"statistic": observed, "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + n_permutations)),
            "splits": len(labels), "runs": len(y), "per_split": per_split.to_dict()}



def transformer_runs_table(runs: Mapping[int, "os.PathLike"], level: float = GROK_LEVEL) -> pd.DataFrame:
    """One row per run of notebook 02 (``{seed: folder}`` from :func:`entk_utils.sweep.run_seeds`),
    from the tables each run wrote.

    Columns: ``seed``, ``key frequencies`` (with their source), the W_U rows of Table 2 as
    ``<family> eigvecs / overlap / dim / percent``, :func:`entk_utils.sweep.grokking_table`'s
    epochs (``peak``, ``leaves_chance``, ...), ``gap`` (peak minus leaves_chance), and
    :func:`run_outcome`'s ``t95``, ``grokked``, ``epochs``.
    """
    from .sweep import gather, grokking_table

    settings = gather(runs, "run_transformer").set_index("seed")
    if settings.p.nunique() != 1:
        raise ValueError(f"the runs use different moduli {sorted(settings.p.unique())}; compare like with like")
    table2 = gather(runs, "table2_transformer_overlaps")
    summaries = gather(runs, "summary_transformer").set_index("seed")
    this_run = summaries.filter(like="this run").bfill(axis=1).iloc[:, 0]  # one "this run (seed s)" column per seed
    keys = this_run[summaries.quantity == "key frequencies (seed-dependent)"].rename("key frequencies")
    w_u = table2[table2.weight == "W_U"].pivot(index="seed", columns="family",
                                                values=["eigvecs", "overlap", "dim", "percent"])
    w_u.columns = [f"{family} {what}" for what, family in w_u.columns]
    times = grokking_table(runs, "curves_transformer", "history_transformer", "d_final", 1 / settings.p.iloc[0])
    histories = gather(runs, "history_transformer")
    outcomes = pd.DataFrame([{"seed": seed, **run_outcome(h, level)} for seed, h in histories.groupby("seed")])
    table = pd.concat([keys, w_u, times.set_index("seed"), outcomes.set_index("seed")[["t95", "grokked", "epochs"]]],
                      axis=1)
    table["gap"] = table.peak - table.leaves_chance
    return table.rename_axis("seed").reset_index()


def reliability_summary(table: pd.DataFrame, by: str = "policy") -> pd.DataFrame:
    """Per group (e.g. split policy), over all runs and over the grokked runs only: how many
    runs, how many grokked, the median ``t95``, the W_U overlaps with ``sum`` and
    ``axis_sum`` (percent of the family, mean and sd) and the peak-minus-onset ``gap``.

    table : :func:`transformer_runs_table` rows with a ``by`` column.
    """
    rows = []
    for group, runs in table.groupby(by, sort=False):
        for subset, part in (("all runs", runs), ("grokked runs", runs[runs.grokked.astype(bool)])):
            row = {by: group, "runs": subset, "n": len(part), "grokked": int(part.grokked.astype(bool).sum()),
                   "median t95": part.t95.median()}
            for family in ("sum", "axis_sum"):
                pct = part[f"{family} percent"].astype(float)
                row[f"W_U vs {family} (% of family)"] = pct.mean()
                row[f"sd {family}"] = pct.std()
            row["mean gap peak - leaves_chance"] = part.gap.mean()
            row["mean |gap|"] = part.gap.abs().mean()
            rows.append(row)
    return pd.DataFrame(rows)


def training_arguments(notebook_parameters: Mapping) -> dict:
    """The entries of notebook 02's parameters that :func:`entk_utils.modular.train_transformer`
    takes (so a grid trains exactly the runs the notebook would, and shares their cache),
    without those the grid sets per run (``seed``, ``split``, ``split_seed``) or itself
    (``cache_dir``, ``progress``)."""
    import inspect

    accepted = set(inspect.signature(train_transformer).parameters) - {"seed", "split", "split_seed", "cache_dir",
                                                                        "progress"}
    return {k: v for k, v in notebook_parameters.items() if k in accepted}
