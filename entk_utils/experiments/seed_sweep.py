"""Notebook 04's analyses: seeds, grokking and how reliably a recipe groks.

Per run, the epochs that describe its grokking (:func:`grokking_table`) and how the
derivative's peak and the onset agree over seeds (:func:`peak_onset_agreement`); over runs,
the fraction grokked by epoch, split x init grids and the per-policy summaries.

A run *groks* here when its test accuracy reaches ``level`` (0.95 by default) within the
epochs it was trained for; ``t_level`` (``t95``) is the first epoch at which it does. Runs
that never get there are censored at the end of training, so their ``t95`` is NaN and they
count as not grokked at every epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..features.dynamics import grokking_times
from ..io.sweep import gather
from ..settings.modular import TransformerRecipe, train_transformer

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
    train_kwargs : passed to :func:`entk_utils.settings.modular.train_transformer` (e.g. ``p``,
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


def grid_effect(grid: pd.DataFrame, by: str = "split", n_permutations: int = 10_000, seed: int = 0) -> dict:
    """Does whether a run groks depend on its ``by`` (``"split"`` or ``"init_seed"``, a column
    of :func:`split_init_grid`) more than chance would make it?

    The statistic is the variance over the groups of ``by`` of each group's fraction grokked;
    the null reshuffles the ``grokked`` outcomes over all runs (keeping the group sizes), i.e.
    "``by`` does not matter". Returns ``statistic``, ``p_value`` (with the +1 correction),
    ``groups``, ``runs`` and ``per_group`` (fraction grokked per group, in grid order).
    """
    if by not in ("split", "init_seed"):
        raise ValueError(f"by must be 'split' or 'init_seed', got {by!r}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    codes, labels = pd.factorize(grid[by])
    y = grid.grokked.to_numpy(dtype=float)
    sizes = np.bincount(codes)

    def stat(values):
        return float(np.var(np.bincount(codes, weights=values) / sizes))

    observed = stat(y)
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(y)) for _ in range(n_permutations)])
    per_group = grid.groupby(by, sort=False).grokked.mean()
    return {"statistic": observed, "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + n_permutations)),
            "groups": len(labels), "runs": len(y), "per_group": per_group.to_dict()}


def policy_test(per_run: pd.DataFrame, policies: Sequence[str] = ("paper", "seeded")) -> dict | None:
    """Fisher's exact test (two-sided) of the runs grokked under two split policies (rows of
    :func:`transformer_runs_table` with a ``policy`` column). Returns ``{policy: (grokked,
    runs)}`` and ``p_value``, or None unless both policies have runs."""
    from scipy.stats import fisher_exact

    counts = {p: (int(per_run[per_run.policy == p].grokked.sum()), int((per_run.policy == p).sum())) for p in policies}
    if any(n == 0 for _, n in counts.values()):
        return None
    table = [[g, n - g] for g, n in counts.values()]
    return {"counts": counts, "p_value": float(fisher_exact(table).pvalue)}


def transformer_runs_table(runs: Mapping[int, "os.PathLike"], level: float = GROK_LEVEL) -> pd.DataFrame:
    """One row per run of notebook 02 (``{seed: folder}`` from :func:`entk_utils.io.sweep.run_seeds`),
    from the tables each run wrote.

    Columns: ``seed``, ``key frequencies`` (with their source), the W_U rows of Table 2 as
    ``<family> eigvecs / overlap / dim / percent``, :func:`entk_utils.experiments.seed_sweep.grokking_table`'s
    epochs (``peak``, ``leaves_chance``, ...), ``gap`` (peak minus leaves_chance), and
    :func:`run_outcome`'s ``t95``, ``grokked``, ``epochs``.
    """
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
    """The entries of notebook 02's parameters that are fields of its
    :class:`~entk_utils.settings.modular.TransformerRecipe` (so a grid trains exactly the runs
    the notebook would, and shares their cache), without those the grid sets per run
    (``seed``, ``split``, ``split_seed``)."""
    accepted = set(TransformerRecipe.names()) - {"seed", "split", "split_seed"}
    return {k: v for k, v in notebook_parameters.items() if k in accepted}


def grokking_table(runs: dict[int, Path], curve: str, history: str, derivative_column: str,
                   chance: float) -> pd.DataFrame:
    """One row per seed: :func:`~entk_utils.features.dynamics.grokking_times` of that run's curves.

    curve / history : the names of the tables each run wrote (checkpoint curve with a
    ``derivative_column``; per-epoch ``history``). Columns ``seed, peak, steepest_rise,
    leaves_chance, half_way, train_99, final_test_acc``.
    """
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


def mlp_overlaps(table1: pd.DataFrame) -> pd.DataFrame:
    """Over seeds (``table1``: the gathered Table 1 of every MLP run, with a ``seed`` column),
    per family the block that overlaps it most in each seed, summarised: ``eigvecs`` (the
    blocks seen), ``mean, std, min, max`` of the overlap, ``of`` (its maximum), and the mean
    nulls."""
    best = table1.loc[table1.groupby(["seed", "family"]).overlap.idxmax()]
    return best.groupby("family", sort=False).agg(
        eigvecs=("eigvecs", lambda r: ", ".join(sorted(set(r)))), mean=("overlap", "mean"), std=("overlap", "std"),
        min=("overlap", "min"), max=("overlap", "max"), of=("dim", "max"), null_mean=("null_mean", "mean"),
        init_mean=("init_mean", "mean"),
    ).reset_index()


def grid_figure(grid: pd.DataFrame, effects: Mapping[str, dict]):
    """The split x init grid's final test accuracies (rows: splits, columns: init seeds), titled
    with the permutation p-values of ``effects`` (:func:`grid_effect` by split and by init
    seed). Returns the figure."""
    import matplotlib.pyplot as plt

    from ..io.plotting import plot_outcome_grid

    rows, cols = grid.split.nunique(), grid.init_seed.nunique()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * cols, 0.9 + 0.5 * rows), layout="constrained")
    fig.colorbar(plot_outcome_grid(ax, grid), ax=ax, label="final test accuracy")
    tests = ", ".join(f"{by.replace('_', ' ')} p = {e['p_value']:.3f}" for by, e in effects.items())
    ax.set_title(f"split x init: final test accuracy\n(permutation tests: {tests})", fontsize=9)
    return fig


def seed_band_figure(panels: Mapping[str, tuple], overlap_column: str, *, time: str, log_time: bool = False):
    """Per panel row: bands over seeds of train and test accuracy (left) and of an overlap
    (right), with each seed's derivative peak dotted. ``panels`` is ``{title: (history,
    curves, peaks)}`` with the gathered per-seed histories and curves (long format, a
    ``seed`` column) and the peak epochs. Returns the figure."""
    import matplotlib.pyplot as plt

    from ..io.plotting import plot_seed_band

    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), layout="constrained", squeeze=False)
    for (title, (history, curves, peaks)), (ax_acc, ax_ov) in zip(panels.items(), axes):
        plot_seed_band(ax_acc, history, "test_acc", "C1")
        plot_seed_band(ax_acc, history, "train_acc", "C0")
        plot_seed_band(ax_ov, curves, overlap_column, "C2")
        for peak in peaks:
            ax_ov.axvline(peak, color="C3", lw=0.8, ls=":")
        for ax in (ax_acc, ax_ov):
            if log_time:
                ax.set_xscale("symlog", linthresh=100)
            ax.set(xlabel=time, xlim=(0, float(history.epoch.max())))
        ax_acc.set(ylabel="accuracy", title=title)
        ax_ov.set(ylabel=f"overlap with sum ({overlap_column})", title="overlap with sum (dotted: peaks of its derivative)")
        ax_acc.legend(fontsize=7)
    return fig


def _spread(frame: pd.DataFrame, family: str) -> str:
    row = frame.set_index("family").loc[family]
    return f"{row['mean']:.2f} ± {row['std']:.2f} (min {row['min']:.2f}) of {row['of']:.0f}; random {row.null_mean:.2f}"


def _gaps(times: pd.DataFrame, onset: str) -> str:
    """Per seed, the derivative's peak minus the onset; then the correlation over seeds."""
    per_seed = ", ".join(f"{int(r.seed)}: {r.peak - r[onset]:+.0f}" for _, r in times.iterrows())
    r = peak_onset_agreement(times, onset)
    return f"peak − {onset} per seed: {per_seed} (r = {r['pearson_r']:.2f} over {int(r['seeds'])} seeds)"


def _policy_rows(per_run: pd.DataFrame, reliability: pd.DataFrame, policy: str) -> list[tuple[str, str]]:
    runs = per_run[per_run.policy == policy]
    rel = reliability.set_index(["policy", "runs"])
    every, grokked = rel.loc[(policy, "all runs")], rel.loc[(policy, "grokked runs")]
    t95 = ", ".join(f"{int(r.seed)}: " + ("never" if np.isnan(r.t95) else f"{r.t95:.0f}") for _, r in runs.iterrows())
    return [
        (f"Transformer, split={policy!r}: runs grokked (95% test accuracy)",
         f"{int(every.grokked)} of {int(every.n)}; t95 median {every['median t95']:.0f} (per seed: {t95})"),
        (f"Transformer, split={policy!r}: W_U vs sum, all / grokked runs",
         f"{every['W_U vs sum (% of family)']:.0f}% / {grokked['W_U vs sum (% of family)']:.0f}% of the family"),
        (f"Transformer, split={policy!r}: peak − leaves_chance, all / grokked runs",
         f"mean {every['mean gap peak - leaves_chance']:+.0f} / {grokked['mean gap peak - leaves_chance']:+.0f} epochs"),
    ]


def summary(mlp_overlaps: pd.DataFrame, mlp_times: pd.DataFrame, per_run: pd.DataFrame, reliability: pd.DataFrame,
            effects: Mapping[str, dict], column: str) -> pd.DataFrame:
    """Notebook 04's summary: the MLP's overlaps and peak-onset gaps over seeds, per split
    policy the Transformer's grokking, W_U overlaps and gaps (all / grokked runs), the two
    policies compared (:func:`policy_test`), and the split x init grid's effects
    (``effects``: :func:`grid_effect` by ``"split"`` and by ``"init_seed"``). ``column``
    names the value column."""
    rows = [("MLP: best block vs sum", _spread(mlp_overlaps, "sum")),
            ("MLP: best block vs diff", _spread(mlp_overlaps, "diff")),
            ("MLP: derivative peak vs onset", _gaps(mlp_times, "steepest_rise"))]
    for policy in dict.fromkeys(per_run.policy):
        rows += _policy_rows(per_run, reliability, policy)
    compared = policy_test(per_run)
    if compared is not None:
        rows.append(("Transformer: grokked, split='paper' vs 'seeded'",
                     " vs ".join(f"{g} of {n}" for g, n in compared["counts"].values())
                     + f" (Fisher exact p = {compared['p_value']:.3f})"))
    names = {"split": "split", "init_seed": "init seed"}
    for by, effect in effects.items():
        rows.append((f"Transformer: split x init grid, grokked per {names[by]}",
                     "; ".join(f"{s}: {v:.0%}" for s, v in effect["per_group"].items())
                     + f" ({names[by]} effect p = {effect['p_value']:.3f}, {effect['runs']} runs)"))
    return pd.DataFrame(rows, columns=["quantity", column])
