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
# # 1 · The eNTK of an MLP trained on modular addition finds its Fourier features
#
# *Reproduces section 3 of "Feature Identification via the Empirical NTK"
# (arXiv 2510.00468).*
#
# A one-hidden-layer MLP learns `(a + b) mod p` by building Fourier features: functions
# `cos(2πk·v/p)`, `sin(2πk·v/p)` of the inputs `a`, `b` and of `a ± b`
# ([Gromov 2023](https://arxiv.org/abs/2301.02679)). The paper's claim is that we do not
# need to know this in advance: the **top eigenvectors of the empirical NTK** of the trained
# network, computed on all `p²` input pairs, span exactly these feature families, and
# the eigenvalue spectrum shows where one family ends and the next begins through sharp
# drops ("cliffs"). It also claims that the alignment grows fastest just when the network
# starts to generalise ("grokking").
#
# This notebook trains the model, computes its eNTK, finds the cliffs without being told
# where they are, measures the overlap of each cliff's eigenvectors with each Fourier
# family, and follows that overlap through training. Each number is printed next to the
# one the paper's public code reports.

# %% tags=["parameters"]
p = 29                  # modulus (odd prime); the paper uses 29
width = 512             # hidden units
epochs = 500            # full-batch AdamW steps (one epoch is one step)
lr = 0.05
weight_decay = 0.01     # torch's AdamW default, as in the paper's code
train_frac = 0.7        # fraction of the p*p pairs used for training
seed = 0                # weight initialisation
split = "seeded"        # "seeded": a split drawn with split_seed; "paper": the Transformer code's fixed split
split_seed = 0          # train/test split of the "seeded" policy
checkpoint_every = 10   # steps between checkpoints (the eNTK is recomputed at each)
null_draws = 1000       # random subspaces drawn for each overlap's null distribution
init_seeds = [101, 102, 103, 104, 105]  # untrained networks whose eNTK is the second null
device = "cpu"          # "cuda" to run on a GPU
out_dir = None          # where figures and tables go (None: $ENTK_OUT_DIR or the scratch folder ../.cache/out)
cache_dir = None        # trained-model cache (None: $ENTK_CACHE_DIR or ../.cache)
steps = None            # the old name of epochs, still accepted

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from entk_utils import kernels
from entk_utils.experiments import mlp, parameters
from entk_utils.features import geometry, nulls
from entk_utils.io import plotting, session
from entk_utils.kernels import eigen
from entk_utils.settings import modular

out_dir, cache_dir = session.start(out_dir, cache_dir)
parameters.check_mlp_notebook(globals())  # every parameter, before any work: one line per problem
epochs = parameters.renamed("steps", steps, "epochs", epochs)
print(f"torch {torch.__version__}, device {device}, p={p}, width={width}, epochs={epochs}, seed={seed}")

# %% [markdown]
# ## The task and the model
#
# All `p² = 841` pairs, 70% for training (`split="seeded"`: drawn with `split_seed`). Input
# `concat(one_hot(a), one_hot(b))`; the network is
# `f(x) = W₂ (W₁x / √(2p))² / width` with all weights drawn from N(0, 1), trained full-batch
# with AdamW on the mean squared error against one-hot targets, exactly as in the paper's
# code. Training takes a few seconds and is cached.

# %%
recipe = modular.MLPRecipe(p=p, width=width, epochs=epochs, seed=seed, split=split, split_seed=split_seed,
                           train_frac=train_frac, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every)
run = modular.train_gromov_mlp(recipe, cache_dir=cache_dir, device=device)
history = run.result.history
print(f"{len(run.train_idx)} training pairs, {len(run.test_idx)} test pairs")
print(history.iloc[[0, len(history) // 4, len(history) // 2, -1]].to_string(index=False))

# %% [markdown]
# ## The empirical NTK
#
# For the trained parameters θ, the eNTK between two inputs is the matrix of inner
# products of output gradients, `K(x, x')_{cd} = ⟨∂f_c(x)/∂θ, ∂f_d(x')/∂θ⟩`. As in the
# paper we reduce it to one number per pair with the trace over the `p` outputs, divided
# by `p`, on all 841 inputs (train and test). `entk_utils` never builds per-example
# Jacobians for linear layers: the gradient of output `c` w.r.t. a weight matrix is the
# outer product of the gradient at the layer's output and the layer's input, so the kernel
# is an element-wise product of two small Gram matrices.
#
# In the habit of neural-tangents we first check this fast kernel against the plain
# `torch.func` Jacobian computation on a random subset of inputs.

# %%
K = kernels.entk(run.model, run.inputs, reduce="trace")
rel_err = kernels.dense.reference_error(run.model, run.inputs, K, n_check=parameters.MLP_KERNEL_CHECK_INPUTS, seed=seed)
print(f"kernel {tuple(K.shape)}; fast vs torch.func reference on {parameters.MLP_KERNEL_CHECK_INPUTS} inputs: "
      f"relative error {rel_err:.1e}")

# %% [markdown]
# ## Figure 1 · The spectrum and its cliffs
#
# We take all eigenpairs and let `find_cliffs` locate the drops: a cliff is a ratio between
# neighbouring eigenvalues of at least 1.25 that is also an outlier among all such ratios.
# The Fourier picture predicts one outlier eigenvalue, then a block of `2(p-1)` directions
# (the `a` and `b` families, `(p-1)/2` frequencies × cos/sin each), a cliff, then a
# second block of `2(p-1)` (the `a+b` and `a-b` families), a cliff, then the tail.

# %%
evals, evecs = eigen.top_eigenpairs(K)
cliffs = eigen.find_cliffs(evals)
blocks = eigen.cliff_blocks(cliffs)
expected = [1, 1 + 2 * (p - 1), 1 + 4 * (p - 1)]
print(f"cliffs found after eigenvalues {cliffs.tolist()}; the Fourier picture predicts {expected}")
print("block sizes:", [b - a for a, b in blocks])
drops = evals[cliffs - 1] / evals[cliffs]
print("drop at each cliff (ratio):", np.round(drops, 2).tolist())

fig, ax = plt.subplots(figsize=(7, 3.5))
plotting.plot_spectrum(ax, evals, cliffs, n_show=min(200, len(evals)))
ax.set_title(f"eNTK spectrum, MLP on modular addition (p={p}), trained {epochs} steps")
plotting.save_figure(fig, "fig1_mlp_spectrum", out_dir)
plt.show()

# %% [markdown]
# The top eigenvector is the outlier. It is nearly constant over the inputs: the kernel's
# shared component, the direction along which every output moves together.

# %%
constant = np.ones((len(evecs), 1))
print(f"overlap of the top eigenvector with the constant function: {geometry.subspace_overlap(evecs[:, :1], constant):.3f}")

# %% [markdown]
# ## Table 1 · What the cliffs span
#
# For every block between cliffs we measure the **subspace overlap** with each Fourier
# family: `‖Q_Kᵀ Q_F‖²_F`, the sum of squared cosines of the principal angles between the
# span of the block's eigenvectors and the span of the family's `p-1` (mean-centred)
# cos/sin functions. It is at most the family's dimension, `p-1 = 28`, reached when the
# eigenvectors contain the whole family.

# %%
table1 = mlp.table1(run, evecs, blocks, null_draws=null_draws, seed=seed, init_seeds=init_seeds)
pivot = table1.pivot(index=["cliff", "eigvecs"], columns="family", values="overlap")[list(mlp.TABLE1_FAMILIES)]
pivot.columns.name = f"overlap (max {p - 1})"
pivot.round(2)

# %% [markdown]
# ### Against chance
#
# How large would these overlaps be if the eigenvectors had nothing to do with the
# features? Two nulls, both added to the table:
#
# - **random subspaces** of the block's dimension in the same `p²`-dimensional space:
#   the exact expectation `dim_block · dim_family / N` (`null_mean`) and an empirical
#   distribution of `null_draws` seeded draws (its 99th percentile `null_q99`, and
#   `null_p`, the share of draws at least as large as ours, which cannot go below
#   `1/(null_draws + 1)`);
# - the **eNTK at initialisation**: the same architecture, the same 841 inputs, untrained
#   weights from several seeds; the same eigenvector ranges (`init_mean ± init_std`,
#   `init_max`). This kernel knows the data and the architecture, but not what training
#   learned.

# %%
plotting.save_table(table1, "table1_mlp_overlaps", out_dir)
table1[["cliff", "eigvecs", "family", "overlap", "null_mean", "null_q99", "null_p", "init_mean", "init_std", "init_max"]]

# %% [markdown]
# The two nulls tell different stories about the two cliffs.
#
# - **The second cliff is learned.** Its overlaps with `sum` and `diff` are more than ten
#   times what random subspaces reach (and than their 99th percentile), and the untrained
#   networks' eNTK puts about as much of `a ± b` in that range as random subspaces do.
# - **The first cliff is not.** The eNTK of an *untrained* network already holds the `a` and
#   `b` families in eigenvectors 1 to 2(p-1), about as completely as the trained one. This
#   is a property of the architecture and the inputs, not of learning: with one-hot inputs
#   and random weights the kernel is (nearly) unchanged when the residues are relabelled, so
#   its leading eigenfunctions are the functions of `a` alone and of `b` alone. Those span
#   the `a` and `b` families at *every* frequency, so the first cliff says nothing about
#   which frequencies the network uses.
#
# (`null_p` bottoms out at `1/(null_draws + 1)`: none of the random draws came close.)

# %% [markdown]
# The same table rounded to two decimals (this cell's output is checked by nbval):

# %% tags=["NBVAL_CHECK_OUTPUT"]
columns = ["cliff", "eigvecs", "family", "overlap", "dim", "percent", "null_mean", "null_p", "init_mean"]
print(table1[columns].round({"overlap": 2, "percent": 1, "null_mean": 2, "null_p": 3, "init_mean": 1}).to_string(index=False))

# %% [markdown]
# Block 0 is the single outlier. **Block 1 (the first cliff) spans the `a` and `b`
# families** and nothing of `a ± b`; **block 2 (the second cliff) spans `a + b` and
# `a - b`**. The paper's code reports, for the second cliff, 26.47/28 (94.5%) for `sum`
# and 25.21/28 (90.0%) for `diff`, and the first cliff spanning `a` and `b`.

# %%
fourier_block = mlp.fourier_block(table1)
second = table1[table1.cliff == fourier_block].set_index("family")
for name in ("sum", "diff"):
    row, ref = second.loc[name], mlp.PAPER[name]
    print(f"second cliff vs {name:>4}: ours {row.overlap:.2f}/{p - 1} ({100 * row.overlap / (p - 1):.1f}%), "
          f"paper {ref:.2f}/28 ({100 * ref / 28:.1f}%); random subspaces {row.null_mean:.2f} "
          f"(99th percentile {row.null_q99:.2f}), eNTK at init {row.init_mean:.2f} ± {row.init_std:.2f}")

# %% [markdown]
# At the paper's setting (the defaults: p = 29, seed 0) both overlaps land within a few
# tenths of the paper's. They cannot agree to the last digit: the paper's code draws its
# train/test split and initial weights from its own random streams, ours from
# `numpy.random.default_rng(split_seed)` and `torch.manual_seed(seed)`, so the two trained
# networks differ, and the second cliff, which is formed last, carries that difference.
#
# For the Transformer (notebook 2) the split turned out to decide whether a seed groks,
# and `split="paper"` reproduces the authors' fixed split there. For this MLP we could not
# inspect the authors' split: their MLP training code is not available to us. Below, the
# same network (same `seed`) trained on the other split policy: `split="paper"` applies the
# Transformer code's rule to the MLP (Python's `random.seed(0)` shuffle of the pairs, the
# first `int(0.7 · p²)` for training).

# %%
other_split = "paper" if split == "seeded" else "seeded"
other = modular.train_gromov_mlp(recipe, split=other_split, cache_dir=cache_dir, device=device, progress=False)
by_split = pd.DataFrame({s: mlp.fourier_block_overlaps(r) for s, r in {split: run, other_split: other}.items()})
by_split.assign(paper=pd.Series({name: mlp.PAPER[name] for name in ("sum", "diff")}))

# %% [markdown]
# At p = 29 the Transformer code's split lands further from the paper's 26.47 and 25.21
# than our default split does (26.12 and 24.62 against 26.47 and 24.90), so the default
# stays `split="seeded"`. The MLP generalises under both splits (and under every seed of
# notebook 4): for this model the split moves the second decimal of the overlaps, not the
# outcome.
#
# ## Which frequencies each cliff holds
#
# A subspace overlap says the spans agree. The heatmaps below resolve it by frequency.
# **Top row:** for each cliff block, the fraction of each frequency's 2-D cos/sin plane
# (of each family) that lies inside the block's span. This does not depend on the
# Fourier phase, nor on how the eigenvectors happen to be rotated within the block.
# **Bottom row:** the individual eigenvectors: the cosine of the angle between each
# eigenvector and each frequency plane, rows sorted by their strongest column.

# %%
fig = mlp.heatmaps(run, evecs, blocks)
plotting.save_figure(fig, "fig_mlp_heatmaps", out_dir)
plt.show()

# %% [markdown]
# The top row is the clean statement: the first cliff contains (almost) every frequency of
# `a` and of `b` and none of `a ± b`; the second every frequency of `a + b` and `a - b`
# and none of `a`, `b`. The families separate cleanly *between* the cliffs.
#
# *Within* a cliff, individual eigenvectors are not one frequency each (bottom row):
# the eigenvalues of a block are nearly equal, so eigh may return any rotation of the
# block, and each eigenvector mixes several frequencies and, in the first block, both `a`
# and `b`. The share of an eigenvector in its strongest family is printed below; a value
# near 1 would mean that the eigenvectors themselves are pure `a` / pure `b`.

# %%
mlp.eigenvector_shares(run, evecs, blocks).round(2)

# %% [markdown]
# ## Figure 2 · The alignment grows fastest when the network groks
#
# Every `checkpoint_every` steps we recompute the eNTK and the overlap of the eigenvectors
# at the position of the final model's second cliff (the block that best matches `sum`)
# with the `sum` and `diff` families, and its first derivative by central differences.

# %%
block = blocks[fourier_block]
curve = mlp.grokking_curve(run, block)
steps_at = mlp.grokking_steps(history, curve)
print(f"derivative of the sum-overlap peaks at step {steps_at['peak']}")
print(f"test accuracy rises fastest at step {steps_at['steepest_rise']}; "
      f"train accuracy reaches 99% at step {steps_at['train_99']}")

# %%
null = nulls.random_overlap_null(len(run.inputs), block[1] - block[0], p - 1, null_draws, seed)
at_init = second.loc["sum"]
fig = plotting.plot_grokking(history, curve, "sum", "d_sum", onset=steps_at["steepest_rise"],
                             onset_label="steepest test rise", null=null, n_init=len(init_seeds),
                             init_band=(at_init.init_mean - at_init.init_std, at_init.init_mean + at_init.init_std),
                             max_overlap=p - 1, title=f"eigenvectors {block[0]}-{block[1] - 1} vs sum")
plotting.save_figure(fig, "fig2_mlp_grokking", out_dir)
plt.show()
# the curves and the run's settings, for the seed sweep of notebook 04
plotting.save_table(curve, "curves_mlp", out_dir, markdown=False)
plotting.save_table(history, "history_mlp", out_dir, markdown=False)
_ = plotting.save_table(pd.DataFrame([dict(p=p, epochs=epochs, seed=seed, split=split, split_seed=split_seed,
                                           train_frac=train_frac)]), "run_mlp", out_dir, markdown=False)

# %% [markdown]
# Train accuracy saturates early; test accuracy stays near zero and then jumps. The
# `sum` overlap climbs from the level of the nulls (grey: random subspaces of the block's
# size; orange: the eNTK of untrained networks) to near the maximum, and its derivative peaks
# at the step printed above, a checkpoint or so before the step at which test accuracy
# rises fastest. The paper's code sees the derivative peak near step 70-80, where test
# accuracy starts its sharp rise (train accuracy ~100% by step 40).
#
# ## Summary
#
# The eNTK found the Fourier features without being told about them, and its alignment
# with them grows fastest as the network starts to generalise. This run against the
# paper's code:

# %%
summary = mlp.summary(run, cliffs, table1, steps_at)
plotting.save_table(summary, "summary_mlp", out_dir)
summary
