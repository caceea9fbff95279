# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -papermill,-execution
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -papermill,-widgets
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4 · How much of it is one lucky seed?
#
# *Goes beyond the paper, which reports one run per setting.*
#
# Notebooks 1 and 2 each analyse one trained network. Here papermill runs each of them
# again for several seeds (weights, and for the MLP also the train/test split), every run
# into its own folder, and we gather what they wrote: the Table 1 / Table 2 overlaps as
# mean ± standard deviation, the epoch at which the alignment's derivative peaks and the
# epoch of the grokking onset for every seed, and how well the two agree across seeds.
# Each run's full notebook (figures, tables, prose) stays in its folder.

# %% tags=["parameters"]
seeds = [0, 1, 2, 3, 4]
mlp_parameters = {}          # papermill parameters for notebook 01 (default: its own defaults)
transformer_parameters = {}  # papermill parameters for notebook 02
out_dir = None               # None: $ENTK_OUT_DIR or ../paper_figures
cache_dir = None             # trained models, shared with notebooks 01/02 (None: $ENTK_CACHE_DIR or ../.cache)
runs_dir = None              # where each run's outputs go (None: <cache_dir>/seeds)

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from entk_utils import plotting, sweep

out_dir = out_dir or os.environ.get("ENTK_OUT_DIR", "../paper_figures")
cache_dir = cache_dir or os.environ.get("ENTK_CACHE_DIR", "../.cache")
runs_dir = Path(runs_dir or Path(cache_dir) / "seeds")
plotting.set_style()
print(f"seeds {seeds}; runs in {runs_dir}")

# %% [markdown]
# ## The MLP (notebook 1), one run per seed
#
# `seed` and `split_seed` both take the seed. A finished run is not repeated.

# %%
def modulus(table):
    """p from an overlap table: its null_mean is n_vectors * family_dim / p**2 exactly."""
    return int(round(np.sqrt((table.n_vectors * table.family_dim / table.null_mean).iloc[0])))


mlp_runs = sweep.run_seeds("01_mlp_modular_addition.ipynb", seeds, runs_dir / "mlp", parameters=mlp_parameters,
                           seed_parameters=("seed", "split_seed"), cache_dir=cache_dir)
table1 = sweep.gather(mlp_runs, "table1_mlp_overlaps")
p_mlp = modulus(table1)
print("cliff blocks per seed:")
print(table1.groupby("seed").eigvecs.unique().map(list).to_string())

# %% [markdown]
# For each seed and family we take the block that overlaps the family most (the first cliff
# for `a`, `b`; the second for `sum`, `diff` when the spectrum looks as in notebook 1) and
# summarise its overlap over seeds, next to the two nulls of notebook 1.

# %%
best = table1.loc[table1.groupby(["seed", "family"]).overlap.idxmax()]
mlp_overlaps = best.groupby("family", sort=False).agg(
    eigvecs=("eigvecs", lambda r: ", ".join(sorted(set(r)))), mean=("overlap", "mean"), std=("overlap", "std"),
    min=("overlap", "min"), max=("overlap", "max"), of=("dim", "max"), null_mean=("null_mean", "mean"),
    init_mean=("init_mean", "mean"),
).reset_index()
plotting.save_table(mlp_overlaps, "table_seeds_mlp_overlaps", out_dir)
mlp_overlaps.round(2)

# %% [markdown]
# ## When does the alignment grow, and when does the network generalise?
#
# Per seed: the step at which the derivative of the `sum` overlap peaks, the step at which
# test accuracy rises fastest and the step from which it stays above 50%.

# %%
mlp_times = sweep.grokking_table(mlp_runs, "curves_mlp", "history_mlp", "d_sum", 1 / p_mlp)
plotting.save_table(mlp_times, "table_seeds_mlp_timing", out_dir, floatfmt=".2f")
mlp_times

# %%
mlp_agreement = pd.DataFrame([sweep.peak_onset_agreement(mlp_times, o) for o in ("steepest_rise", "half_way")])
mlp_agreement.round(2)

# %% [markdown]
# A negative gap means the derivative peaks *before* the onset. With a handful of seeds a
# correlation is a rough number; the gap per seed (above) says more.

# %%
def seed_bands(runs, curve_name, history_name, overlap_column, ax_acc, ax_ov):
    history = sweep.gather(runs, history_name)
    plotting.plot_seed_band(ax_acc, history, "test_acc", "C1")
    plotting.plot_seed_band(ax_acc, history, "train_acc", "C0")
    plotting.plot_seed_band(ax_ov, sweep.gather(runs, curve_name), overlap_column, "C2")


fig, (ax_acc, ax_ov) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
seed_bands(mlp_runs, "curves_mlp", "history_mlp", "sum", ax_acc, ax_ov)
for peak in mlp_times.peak:
    ax_ov.axvline(peak, color="C3", lw=0.8, ls=":")
ax_acc.set(xlabel="step", ylabel="accuracy", title=f"MLP, {len(seeds)} seeds")
ax_ov.set(xlabel="step", ylabel="overlap with sum", title="second-cliff overlap with sum (dotted: peaks of its derivative)")
ax_acc.legend(fontsize=7)
plotting.save_figure(fig, "fig2_mlp_grokking_seeds", out_dir)
plt.show()

# %% [markdown]
# ## The Transformer (notebook 2), one run per seed
#
# `seed` sets the weights, the minibatch order and the split. The key frequencies are
# found anew in every run.

# %%
tf_runs = sweep.run_seeds("02_transformer_modular_addition.ipynb", seeds, runs_dir / "transformer",
                          parameters=transformer_parameters, cache_dir=cache_dir)
table2 = sweep.gather(tf_runs, "table2_transformer_overlaps")
summaries = sweep.gather(tf_runs, "summary_transformer").set_index("seed")
this_run = summaries.filter(like="this run").bfill(axis=1).iloc[:, 0]  # one "this run (seed s)" column per seed
keys = this_run[summaries.quantity == "key frequencies (seed-dependent)"].rename("key frequencies")
w_u = table2[table2.weight == "W_U"].pivot(index="seed", columns="family", values=["eigvecs", "overlap", "dim"])
w_u.columns = [f"{family} {what}" for what, family in w_u.columns]
tf_times = sweep.grokking_table(tf_runs, "curves_transformer", "history_transformer", "d_final", 1 / modulus(table2))
per_seed = pd.concat([keys, w_u, tf_times.set_index("seed")], axis=1)
plotting.save_table(per_seed.reset_index(), "table_seeds_transformer", out_dir, floatfmt=".2f")
per_seed

# %% [markdown]
# Which seeds grokked (final test accuracy near 1) matters for everything after: a run that
# never generalises has no onset to compare with, and its key frequencies, if any stand
# out, describe a memorising network. The W_U overlaps over seeds, as percentages of the
# largest possible overlap (each seed's families have their own dimension), with the
# random-subspace null of notebook 2:

# %%
# the families' dimensions differ between seeds (2 per key frequency), so compare percentages
w_u_rows = table2[table2.weight == "W_U"].assign(null_percent=lambda t: 100 * t.null_mean / t.dim)
tf_overlaps = w_u_rows.groupby("family", sort=False).agg(
    mean=("percent", "mean"), std=("percent", "std"), min=("percent", "min"), max=("percent", "max"),
    null_mean=("null_percent", "mean"),
).reset_index()
grokked = tf_times.final_test_acc >= 0.9
tf_overlaps["mean (grokked seeds)"] = tf_overlaps.family.map(
    w_u_rows[w_u_rows.seed.isin(tf_times.seed[grokked])].groupby("family").percent.mean())
plotting.save_table(tf_overlaps, "table_seeds_transformer_overlaps", out_dir)
print(f"{int(grokked.sum())} of {len(seeds)} seeds reach 90% test accuracy")
tf_overlaps.round(3)

# %%
tf_agreement = pd.DataFrame([sweep.peak_onset_agreement(tf_times, o) for o in ("leaves_chance", "steepest_rise", "half_way")])
tf_agreement.round(2)

# %%
fig, (ax_acc, ax_ov) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
seed_bands(tf_runs, "curves_transformer", "history_transformer", "final keys", ax_acc, ax_ov)
for peak in tf_times.peak:
    ax_ov.axvline(peak, color="C3", lw=0.8, ls=":")
for ax in (ax_acc, ax_ov):
    ax.set(xscale="symlog", xlabel="epoch")
ax_acc.set(ylabel="accuracy", title=f"1-layer Transformer, {len(seeds)} seeds")
ax_ov.set(ylabel="overlap with sum (own keys)", title="W_U eigenvectors vs sum (dotted: peaks of its derivative)")
ax_acc.legend(fontsize=7)
plotting.save_figure(fig, "fig3_transformer_grokking_seeds", out_dir)
plt.show()

# %% [markdown]
# Each run's overlap is measured at its own key frequencies, so the bands compare like
# with like even though the frequencies differ.
#
# ## Summary

# %%
def spread(frame, family):
    row = frame.set_index("family").loc[family]
    if "of" in row:
        return f"{row['mean']:.2f} ± {row['std']:.2f} (min {row['min']:.2f}) of {row['of']:.0f}; random {row.null_mean:.2f}"
    return f"{row['mean']:.0f}% ± {row['std']:.0f}% (min {row['min']:.0f}%) of the family; random {row.null_mean:.1f}%"


def gaps(times, onset):
    """Per seed, the derivative's peak minus the onset; then the correlation over seeds."""
    per_seed = ", ".join(f"{int(r.seed)}: {r.peak - r[onset]:+.0f}" for _, r in times.iterrows())
    r = sweep.peak_onset_agreement(times, onset)
    return f"peak − {onset} per seed: {per_seed} (r = {r['pearson_r']:.2f} over {int(r['seeds'])} seeds)"


summary = pd.DataFrame([
    ("MLP: best block vs sum", spread(mlp_overlaps, "sum")),
    ("MLP: best block vs diff", spread(mlp_overlaps, "diff")),
    ("MLP: derivative peak vs onset", gaps(mlp_times, "steepest_rise")),
    ("Transformer: key frequencies per seed", "; ".join(f"{s}: {k}" for s, k in keys.items())),
    ("Transformer: seeds reaching 90% test accuracy", f"{int(grokked.sum())} of {len(seeds)}"),
    ("Transformer: W_U vs sum", spread(tf_overlaps, "sum")),
    ("Transformer: W_U vs axis_sum", spread(tf_overlaps, "axis_sum")),
    ("Transformer: final test accuracy per seed", ", ".join(f"{int(r.seed)}: {r.final_test_acc:.2f}" for _, r in tf_times.iterrows())),
    ("Transformer: derivative peak vs onset", gaps(tf_times, "leaves_chance")),
], columns=["quantity", f"over seeds {seeds} (mean ± sd)"])
plotting.save_table(summary, "summary_seeds", out_dir)
summary

# %% [markdown]
# **The MLP** is a stable object: over five seeds the second cliff's overlaps with `sum`
# and `diff` vary in the second decimal, every seed groks at nearly the same step, and the
# derivative of the overlap peaks a checkpoint or so *before* test accuracy rises fastest
# in every seed. (A correlation over seeds means little here: the peaks fall on a
# 10-step checkpoint grid and barely vary.)
#
# **The Transformer** is not: with the paper's recipe and our random streams, only some
# seeds generalise within 4000 epochs (final test accuracies above), each picks its own
# key frequencies, and the W_U overlaps are high only where the network has grokked. In
# four of the five seeds the overlap's derivative peaks shortly before test accuracy leaves
# chance; in seed 0, which generalises least and whose embedding shows no standout
# frequency, it peaks much later. The paper's single-seed statement holds per grokking run,
# not per recipe.
