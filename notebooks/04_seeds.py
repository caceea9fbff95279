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
# again for several seeds, every run into its own folder, and we gather what they wrote:
# the Table 1 / Table 2 overlaps over seeds, the epoch at which the alignment's derivative
# peaks and the epoch of the grokking onset for every seed, and how well the two agree.
# Each run's full notebook (figures, tables, prose) stays in its folder.
#
# For the Transformer a second question comes first: **does the recipe grok reliably at
# all?** The paper's code draws one fixed train/test split for every seed; a split drawn
# anew per seed is the other natural choice. We run the Transformer under both split
# policies, and then train several fixed splits from several initialisations to tell "the
# authors' split is an easy one" from "a fixed split is easy".

# %% tags=["parameters"]
seeds = [0, 1, 2, 3, 4]      # MLP: one run per seed (weights and split)
mlp_parameters = {}          # papermill parameters for notebook 01 (default: its own defaults)
transformer_seeds = [0, 1, 2, 3, 4]  # Transformer: one run per seed under each split policy
split_policies = ["paper", "seeded"]  # notebook 02's `split`: the authors' fixed split, a split per seed
transformer_parameters = {}  # papermill parameters for notebook 02 (besides seed and split)
grid_splits = ["paper", 0, 1, 2]  # split x init experiment: "paper" or a split seed per row...
grid_init_seeds = [0, 1, 2]  # ...each trained from these init seeds (training only, no eNTK)
out_dir = None               # None: $ENTK_OUT_DIR or the scratch folder ../.cache/out
cache_dir = None             # trained models, shared with notebooks 01/02 (None: $ENTK_CACHE_DIR or ../.cache)
runs_dir = None              # where each run's outputs go (None: <cache_dir>/seeds)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from entk_utils.experiments import parameters, seed_sweep
from entk_utils.io import plotting, session, sweep

out_dir, cache_dir = session.start(out_dir, cache_dir)
parameters.check_seeds_notebook(globals())  # every parameter, before any work: one line per problem
runs_dir = Path(runs_dir or Path(cache_dir) / "seeds")
print(f"MLP seeds {seeds}; Transformer seeds {transformer_seeds} under split policies {split_policies}; "
      f"runs in {runs_dir}")

# %% [markdown]
# ## The MLP (notebook 1), one run per seed
#
# `seed` and `split_seed` both take the seed. A finished run is not repeated.

# %%
mlp_runs = sweep.run_seeds("01_mlp_modular_addition.ipynb", seeds, runs_dir / "mlp", parameters=mlp_parameters,
                           seed_parameters=("seed", "split_seed"), cache_dir=cache_dir)
table1 = sweep.gather(mlp_runs, "table1_mlp_overlaps")
p_mlp = int(sweep.gather(mlp_runs, "run_mlp").p.iloc[0])
print("cliff blocks per seed:")
print(table1.groupby("seed").eigvecs.unique().map(list).to_string())

# %% [markdown]
# For each seed and family we take the block that overlaps the family most (the first cliff
# for `a`, `b`; the second for `sum`, `diff` when the spectrum looks as in notebook 1) and
# summarise its overlap over seeds, next to the two nulls of notebook 1.

# %%
mlp_overlaps = seed_sweep.mlp_overlaps(table1)
plotting.save_table(mlp_overlaps, "table_seeds_mlp_overlaps", out_dir)
mlp_overlaps.round(2)

# %% [markdown]
# ## When does the alignment grow, and when does the network generalise?
#
# Per seed: the step at which the derivative of the `sum` overlap peaks, the step at which
# test accuracy rises fastest and the step from which it stays above 50%.

# %%
mlp_times = seed_sweep.grokking_table(mlp_runs, "curves_mlp", "history_mlp", "d_sum", 1 / p_mlp)
plotting.save_table(mlp_times, "table_seeds_mlp_timing", out_dir, floatfmt=".2f")
mlp_times

# %%
mlp_agreement = pd.DataFrame([seed_sweep.peak_onset_agreement(mlp_times, o) for o in ("steepest_rise", "half_way")])
mlp_agreement.round(2)

# %% [markdown]
# A negative gap means the derivative peaks *before* the onset. With a handful of seeds a
# correlation is a rough number; the gap per seed (above) says more.

# %%
fig = seed_sweep.seed_band_figure({f"MLP, {len(seeds)} seeds": (sweep.gather(mlp_runs, "history_mlp"),
                                                                 sweep.gather(mlp_runs, "curves_mlp"), mlp_times.peak)},
                                  "sum", time="step")
plotting.save_figure(fig, "fig2_mlp_grokking_seeds", out_dir)
plt.show()

# %% [markdown]
# ## The Transformer (notebook 2): one run per seed, under each split policy
#
# `seed` sets the weights and the minibatch order. Under `split="paper"` every run trains
# on the authors' one fixed half of the 841 pairs; under `split="seeded"` each run draws
# its own half with its seed. The key frequencies are found anew in every run.

# %%
tf_runs = {policy: sweep.run_seeds("02_transformer_modular_addition.ipynb", transformer_seeds,
                                   runs_dir / "transformer" / policy, parameters={**transformer_parameters, "split": policy},
                                   cache_dir=cache_dir)
           for policy in split_policies}
per_run = pd.concat([seed_sweep.transformer_runs_table(runs).assign(policy=policy) for policy, runs in tf_runs.items()],
                    ignore_index=True)
per_run = per_run[["policy", *[c for c in per_run.columns if c != "policy"]]]
plotting.save_table(per_run, "table_seeds_transformer", out_dir, floatfmt=".2f")
per_run[["policy", "seed", "key frequencies", "sum percent", "axis_sum percent", "final_test_acc", "t95", "peak",
         "leaves_chance"]]

# %% [markdown]
# ### How reliably does it grok?
#
# A run *groks* here when its test accuracy reaches 95% within the training epochs; `t95`
# is the first epoch at which it does. Left: the fraction of runs grokked by each epoch,
# per split policy. Middle: every run's test accuracy. Right: each run's `t95` (crosses:
# never within the run).

# %%
histories = {policy: {seed: h for seed, h in sweep.gather(runs, "history_transformer").groupby("seed")}
             for policy, runs in tf_runs.items()}
curves = seed_sweep.fraction_grokked_curves(histories)
colours = {policy: f"C{i}" for i, policy in enumerate(split_policies)}
fig, (ax_frac, ax_runs, ax_t95) = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
plotting.plot_fraction_grokked(ax_frac, curves, colours)
for policy, runs in tf_runs.items():
    plotting.plot_run_lines(ax_runs, sweep.gather(runs, "history_transformer"), "test_acc", colours[policy], policy)
plotting.plot_grok_epochs(ax_t95, per_run, "policy", colours)
ax_frac.set_title("fraction of runs at 95% test accuracy")
ax_runs.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy, one line per run")
ax_t95.set_title("epoch of 95% test accuracy")
for ax in (ax_frac, ax_runs):
    ax.legend(fontsize=8)
plotting.save_figure(fig, "fig_transformer_grokking_reliability", out_dir)
plt.show()

# %% [markdown]
# ### Table 2 and the onset over grokked runs and over all runs
#
# The W_U overlaps with `sum` and `axis_sum` as percentages of each run's families (the
# families' dimension is twice the number of key frequencies, which differs between runs),
# and the gap between the derivative's peak and the epoch test accuracy leaves chance for
# good, per policy, over all runs and over the grokked runs only.

# %%
reliability = seed_sweep.reliability_summary(per_run, by="policy")
plotting.save_table(reliability, "table_seeds_transformer_overlaps", out_dir, floatfmt=".1f")
reliability.round(1)

# %% [markdown]
# ### Is the authors' split easy, or is any fixed split?
#
# Several fixed splits (`"paper"` and splits drawn with a few split seeds), each trained
# from the same few initialisations (training only; runs already made above come from the
# cache). If whether a run groks depended on the initialisation only, every row would look
# alike; if the split decided it, rows would be uniform and differ from each other. The
# permutation test shuffles the outcomes over all cells (the null "the split does not
# matter") and compares the variance of the rows' grokked fractions; the same test over
# the columns asks whether the initialisation decides.

# %%
grid = seed_sweep.split_init_grid(grid_splits, grid_init_seeds, cache_dir=cache_dir,
                                **seed_sweep.training_arguments(transformer_parameters))
plotting.save_table(grid, "table_split_init_grid", out_dir)
effects = {by: seed_sweep.grid_effect(grid, by) for by in ("split", "init_seed")}
plotting.save_figure(seed_sweep.grid_figure(grid, effects), "fig_split_init_grid", out_dir)
plt.show()
for by, e in effects.items():
    print(f"grokked per {by}: {e['per_group']}; permutation p = {e['p_value']:.3f} over {e['runs']} runs")

# %% [markdown]
# ### The alignment over training, every run
#
# Bands over the runs of each policy: test accuracy and the W_U overlap with `sum`, each run
# at its own key frequencies (dotted: the derivative's peak per run).

# %%
panels = {f"split={policy!r}, {len(runs)} seeds": (sweep.gather(runs, "history_transformer"),
                                                  sweep.gather(runs, "curves_transformer"),
                                                  per_run[per_run.policy == policy].peak)
          for policy, runs in tf_runs.items()}
fig = seed_sweep.seed_band_figure(panels, "final keys", time="epoch", log_time=True)
plotting.save_figure(fig, "fig3_transformer_grokking_seeds", out_dir)
plt.show()

# %% [markdown]
# ## Summary

# %%
summary = seed_sweep.summary(mlp_overlaps, mlp_times, per_run, reliability, effects,
                             f"MLP seeds {seeds}; Transformer seeds {transformer_seeds}")
plotting.save_table(summary, "summary_seeds", out_dir)
summary

# %% [markdown]
# **What it means.** The MLP's result is a property of the recipe: every seed finds the same
# cliffs and overlaps, and its alignment's derivative peaks about a checkpoint before the
# test accuracy rises fastest. The Transformer's result is a property of a grokked run. Under
# the authors' fixed split (and their weight draw) more runs grok than under a split drawn
# per seed, as with the authors' own code (7 of 8 seeds, measured outside this repository); where a run
# groks, the W_U eigenvectors align with the `sum` family almost completely and the
# derivative peaks near the rise of test accuracy, as in the paper's single run; where it does
# not, neither does the alignment. The grid says that grokking within the paper's 4000 epochs
# belongs to the pair of split and initialisation rather than to either alone. Five seeds
# and a 4 × 3 grid are a first look: the paper profile (`make seeds-paper`, 10 seeds per
# policy and a 7 × 4 grid) gives the numbers quoted in `docs/results.md`.
