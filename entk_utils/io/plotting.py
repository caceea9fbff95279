"""Shared figure style and savers: every figure and table a notebook shows goes to ``out_dir``."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 10,
    "legend.frameon": False,
    # Stable PNG bytes across runs: no timestamp or software tag in the file.
    "savefig.metadata": {"Software": None},
}


def set_style() -> None:
    """Apply the project's matplotlib style."""
    mpl.rcParams.update({k: v for k, v in STYLE.items() if k != "savefig.metadata"})


def _out(out_dir) -> Path:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: plt.Figure, name: str, out_dir) -> Path:
    """Write ``fig`` as ``out_dir/name`` (PNG; ``.png`` added if missing) and return the path."""
    path = _out(out_dir) / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, metadata={"Software": None})
    return path


def save_table(df: pd.DataFrame, name: str, out_dir, floatfmt: str = ".3f", markdown: bool = True) -> list[Path]:
    """Write ``df`` as ``out_dir/name.csv`` and (unless ``markdown=False``, e.g. for curve
    data) ``out_dir/name.md``; return the paths written."""
    out = _out(out_dir)
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    df.to_csv(csv, index=False)
    if not markdown:
        return [csv]
    md.write_text(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return [csv, md]


def plot_spectrum(ax, evals, cliffs=(), n_show: int = 200, label: str | None = None):
    """Eigenvalues (descending) on a log scale with each cliff marked by a dashed line."""
    lam = np.asarray(evals)[:n_show]
    ax.semilogy(np.arange(len(lam)), lam, ".", ms=3, label=label)
    for c in cliffs:
        if c < n_show:
            ax.axvline(c - 0.5, color="C3", ls="--", lw=0.8)
            ax.annotate(f"{c}", (c - 0.5, lam.max()), xytext=(3, 0), textcoords="offset points",
                        color="C3", fontsize=8, va="top")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue")
    return ax


def plot_heatmap(ax, values, xlabels, ylabel: str, title: str, vmax: float = 1.0):
    """A (rows, cols) heatmap in [0, vmax] with one x tick per column label."""
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(False)
    return im


def plot_seed_band(ax, frame: pd.DataFrame, column: str, colour: str, x: str = "epoch"):
    """Mean over seeds of ``frame[column]`` against ``x``, with ±1 sd and min-max bands.

    frame : long format, one row per (seed, x), e.g. :func:`entk_utils.io.sweep.gather`'s output.
    """
    stats = frame.groupby(x)[column].agg(["mean", "std", "min", "max"])
    ax.plot(stats.index, stats["mean"], color=colour, label=f"{column} (mean)")
    ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=colour,
                    alpha=0.3, lw=0, label="± 1 sd")
    ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.1, lw=0, label="min-max")


def plot_fraction_grokked(ax, curves: pd.DataFrame, colours: dict | None = None):
    """Fraction of runs grokked by each epoch, a step curve per group.

    curves : :func:`entk_utils.experiments.seed_sweep.fraction_grokked_curves`'s output (``group, epoch,
    fraction, runs``).
    """
    for i, (group, c) in enumerate(curves.groupby("group", sort=False)):
        colour = (colours or {}).get(group, f"C{i}")
        ax.step(c.epoch, c.fraction, where="post", color=colour, label=f"{group} ({int(c.runs.iloc[0])} runs)")
    ax.set(ylim=(-0.02, 1.02), xlabel="epoch", ylabel="fraction of runs grokked")
    return ax


def plot_run_lines(ax, frame: pd.DataFrame, column: str, colour: str, label: str, x: str = "epoch",
                   run: str = "seed"):
    """One thin line per run of ``frame[column]`` against ``x`` (long format, a ``run``
    column telling the runs apart); the first line carries ``label``."""
    for i, (_, r) in enumerate(frame.groupby(run)):
        ax.plot(r[x], r[column], color=colour, lw=0.7, alpha=0.7, label=label if i == 0 else None)
    return ax


def plot_grok_epochs(ax, table: pd.DataFrame, group: str, colours: dict | None = None, never_at: float | None = None):
    """The epoch each run reached the grokking level (``t95``), one column of dots per group;
    runs that never did are drawn as crosses at ``never_at`` (default: above the largest epoch)."""
    groups = list(dict.fromkeys(table[group]))
    never_at = never_at if never_at is not None else 1.08 * float(table.epochs.max())
    rng = np.random.default_rng(0)  # horizontal jitter only, for legibility
    for i, g in enumerate(groups):
        rows = table[table[group] == g]
        colour = (colours or {}).get(g, f"C{i}")
        jitter = i + rng.uniform(-0.15, 0.15, len(rows))
        done = rows.t95.notna().to_numpy()
        ax.plot(jitter[done], rows.t95[done], "o", color=colour, ms=5)
        ax.plot(jitter[~done], np.full((~done).sum(), never_at), "x", color=colour, ms=6)
    ax.axhline(float(table.epochs.max()), color="0.5", lw=0.8, ls=":")
    ax.set_xticks(range(len(groups)), groups)
    ax.set(xlim=(-0.6, len(groups) - 0.4), ylabel="epoch of 95% test accuracy (x: never)")
    return ax


def plot_outcome_grid(ax, grid: pd.DataFrame, value: str = "final_test_acc"):
    """A (split, init seed) heatmap of ``grid[value]``, each cell annotated; the grid is
    :func:`entk_utils.experiments.seed_sweep.split_init_grid`'s output."""
    table = grid.pivot(index="split", columns="init_seed", values=value).loc[list(dict.fromkeys(grid.split))]
    im = ax.imshow(table.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for (r, c), v in np.ndenumerate(table.to_numpy()):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="k" if v > 0.6 else "w")
    ax.set_xticks(range(table.shape[1]), table.columns)
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set(xlabel="init seed", ylabel="split (seed)")
    ax.grid(False)
    return im


def plot_grokking(history: pd.DataFrame, curve: pd.DataFrame, column: str, derivative: str, *, onset: float,
                  onset_label: str, null: np.ndarray, init_band: tuple[float, float], n_init: int, title: str,
                  max_overlap: int, time: str = "step", log_time: bool = False,
                  checkpoint_column: str | None = None):
    """Figures 2 and 3: the alignment grows as the network generalises.

    Left: train and test accuracy over ``history`` (``epoch, train_acc, test_acc``), with the
    grokking ``onset`` and the peak of ``curve[derivative]`` marked. Right: the overlap
    ``curve[column]`` against ``curve.epoch``, above the 1-99% band of the random-subspace
    ``null`` draws and the ``init_band`` (mean ± sd of the eNTK at init over ``n_init``
    seeds), with the derivative on a twin axis; ``checkpoint_column`` adds a second overlap
    as dots. ``time`` names the x axis ("step", "epoch"); ``log_time`` makes it symmetric-log
    from 0. Returns the figure.
    """
    import matplotlib.pyplot as plt

    peak = float(curve.epoch[curve[derivative].idxmax()])
    fig, (ax_acc, ax_ov) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    if log_time:
        for ax in (ax_acc, ax_ov):
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(0, float(history.epoch.max()))
    ax_acc.plot(history.epoch, history.train_acc, label="train")
    ax_acc.plot(history.epoch, history.test_acc, label="test")
    ax_acc.axvline(onset, color="C1", ls=":", lw=1, label=f"{onset_label} ({onset:.0f})")
    ax_acc.axvline(peak, color="C3", ls=":", lw=1, label=f"peak d(overlap) ({peak:.0f})")
    ax_acc.set(xlabel=time, ylabel="accuracy", title="accuracy")
    ax_ov.axhspan(*np.quantile(null, [0.01, 0.99]), color="0.75", alpha=0.6, label="random subspaces (1-99%)")
    ax_ov.axhspan(*init_band, color="C1", alpha=0.3, label=f"eNTK at init, {n_init} seeds (±1 sd)")
    ax_ov.plot(curve.epoch, curve[column], "o-" if len(curve) <= 100 else "-", ms=3, label=column)
    if checkpoint_column is not None:
        ax_ov.plot(curve.epoch, curve[checkpoint_column], ".", ms=3, color="C2", label=checkpoint_column)
    ax_ov.set(xlabel=time, ylabel=f"overlap (max {max_overlap})", title=title)
    ax_d = ax_ov.twinx()
    ax_d.plot(curve.epoch, curve[derivative], color="C3", lw=1, label=f"d overlap / d {time}")
    ax_d.axvline(peak, color="C3", ls=":", lw=1)
    ax_d.set_ylabel("derivative", color="C3")
    ax_d.grid(False)
    ax_acc.legend(fontsize=8)
    ax_ov.legend(fontsize=8, loc="center left")
    return fig
