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
# # 2 · The layerwise eNTK of a 1-layer Transformer finds its key frequencies
#
# *Reproduces section 4 of "Feature Identification via the Empirical NTK"
# (arXiv 2510.00468).*
#
# A 1-layer Transformer trained on `(a + b) mod p` also computes with Fourier features, but
# only at a few **key frequencies** that depend on the random seed
# ([Nanda et al. 2023](https://arxiv.org/abs/2301.05217)). The paper restricts the eNTK to
# one weight matrix at a time (the *layerwise* eNTK) and finds that the leading
# eigenvectors of the unembedding's kernel span two families at those frequencies:
# `sum`, `cos/sin(2πk(a+b)/p)`, and `axis_sum`, `F(a) + F(b)`. As for the MLP, the alignment
# grows fastest as the network starts to generalise.
#
# The paper picks the key frequencies by eye. Here they are **found automatically**, and the
# eigenvector ranges of each family are read off the eigenvectors, not typed in.

# %% tags=["parameters"]
p = 29                  # modulus (odd prime)
epochs = 4000
seed = 2                # weights and minibatch order; the paper's run uses torch seed 2
split = "paper"         # "paper": the authors' one fixed split; "seeded": a split drawn with split_seed
split_seed = None       # the "seeded" split's seed (None: same as seed)
init = "paper"          # "paper": weights drawn as the authors' code draws them; "torch": our earlier draw
train_frac = 0.5
lr = 3e-4
weight_decay = 1.0
batch_size = 64
d_model = 64
n_heads = 4
d_mlp = 256
checkpoint_every = 20   # epochs between checkpoints (Figure 3 recomputes the eNTK at each)
n_eigs = 40             # leading eigenpairs examined per kernel
null_draws = 1000       # random subspaces drawn for each overlap's null distribution
init_seeds = [101, 102, 103, 104, 105]  # untrained networks whose eNTK is the second null
device = "cpu"          # "cuda" to run on a GPU
out_dir = None          # None: $ENTK_OUT_DIR or the scratch folder ../.cache/out
cache_dir = None        # None: $ENTK_CACHE_DIR or ../.cache

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from entk_utils import kernels
from entk_utils.experiments import parameters, transformer
from entk_utils.features import dynamics, fourier, nulls
from entk_utils.io import plotting, session
from entk_utils.kernels import eigen
from entk_utils.settings import modular

out_dir, cache_dir = session.start(out_dir, cache_dir)
parameters.check_transformer_notebook(globals())  # every parameter, before any work: one line per problem
print(f"torch {torch.__version__}, device {device}, p={p}, epochs={epochs}, seed={seed}, split={split}, init={init}")

# %% [markdown]
# ## The model and its training
#
# Tokens `(a, b, "=")` with `"="` the extra token `p`; one attention layer (4 heads of
# size 16, causal mask) and one ReLU MLP of width 256, no LayerNorm, no biases, learned
# positional embeddings, an untied unembedding read at the last position. AdamW
# (lr 3e-4, weight decay 1.0), minibatches of 64, cross-entropy over the `p` answer
# logits, half of the 841 pairs for training. This takes about two minutes on a 2-core CPU
# and is cached.
#
# **The split decides grokking.** The authors' code draws *one* train/test split for every
# seed (the 841 pairs in row-major order, Python's `random.seed(0)`, `random.shuffle`, the
# first 420 for training); `split="paper"` reproduces it exactly. Under that split most
# seeds grok within 4000 epochs; under other random halves of the table most do not
# (notebook 4 measures it). `init="paper"` draws the weights in the authors' order
# (`torch.manual_seed(seed)`, then one `randn` per weight), so `seed = 2` here grows the
# paper's seed-2 network; `split="seeded", init="torch"` is this project's earlier recipe.

# %%
recipe = modular.TransformerRecipe(p=p, epochs=epochs, seed=seed, split=split, split_seed=split_seed, init=init,
                                   train_frac=train_frac, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                                   d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, checkpoint_every=checkpoint_every)
run = modular.train_transformer(recipe, cache_dir=cache_dir, device=device)
model, history = run.model, run.result.history
chance = 1 / p
leaves_chance = dynamics.sustained_crossing(history.epoch, history.test_acc, 2 * chance)
half_way = dynamics.sustained_crossing(history.epoch, history.test_acc, 0.5)
print(f"final accuracy: train {history.train_acc.iloc[-1]:.3f}, test {history.test_acc.iloc[-1]:.3f}")
print(f"test accuracy stays above twice chance ({2 * chance:.3f}) from epoch {leaves_chance:.0f}, "
      f"above 50% from epoch {half_way:.0f}")

# %% [markdown]
# ## Key frequencies, found
#
# Which frequencies does the network use? We measure the share of the embedding `W_E`'s
# (non-constant) energy in each frequency `k` over the residues, and, as a second
# opinion, the share of the MLP neurons' activations (at the last position, over all
# pairs) in each frequency plane of `a + b`. `key_frequencies` sorts a spectrum and cuts it
# at its largest drop between neighbours among the leading half, provided that drop is at
# least 2×; otherwise no frequency stands out and it says so. The embedding is used first
# (as in the paper); the activations only if the embedding shows no standout frequency. If
# neither has one (a network that has not generalised), the embedding's largest drop is
# used anyway and the source says so, so that the tables below still describe the run.

# %%
pairs = run.pairs.numpy()
spectra = fourier.transformer_spectra(model, run.inputs, pairs, p)
key_source, keys = fourier.first_key_frequencies(spectra, fallback=True)  # fallback: says so in key_source
print(f"key frequencies {keys.tolist()}, found in {key_source}")
for name, power in spectra.items():
    try:
        print(f"  {name:>22}: {fourier.key_frequencies(power).tolist()}")
    except ValueError as err:
        print(f"  {name:>22}: none ({err})")

freqs = fourier.check_frequencies(None, p)
fig, axes = plt.subplots(1, len(spectra), figsize=(11, 3.2), layout="constrained")
for ax, (name, power) in zip(axes, spectra.items()):
    colours = ["C3" if k in keys else "C0" for k in freqs]
    ax.bar(freqs, power, color=colours)
    ax.set(xlabel="frequency k", ylabel="share of energy", title=name, xticks=freqs)
fig.suptitle(f"Fourier spectra, seed {seed}: key frequencies {keys.tolist()} in red")
plotting.save_figure(fig, "fig_transformer_key_frequencies", out_dir)
plt.show()

# %% [markdown]
# The paper's run with seed 2 found keys 1 and 12 (its earlier version, seed 0: 1, 3, 7,
# 10). With the authors' split and weight draw (the defaults here) seed 2 finds the same two
# keys, although our minibatch order is our own: the network grown here is, in what the
# method reads, the paper's. With other seeds, or `split="seeded", init="torch"`, the keys
# differ: which frequencies a network picks is a property of the run, and the method only
# has to find them.
#
# ## The layerwise eNTK
#
# One kernel per weight matrix, `K_W(x, x') = ⟨∂f(x)/∂W, ∂f(x')/∂W⟩` averaged over all
# `(p+1)²` logit pairs (`reduce="mean"`), on all 841 inputs; the nine layerwise kernels sum
# to the full eNTK. Every weight here is an `nn.Linear` or `nn.Embedding`, so all ten
# kernels come from the Gram factorisation in about a second. First, the check against the
# plain `torch.func` Jacobians on a subset of inputs:

# %%
layer_K = transformer.layer_kernels(model, run.inputs)
worst = kernels.dense.reference_error(model, run.inputs, layer_K, reduce="mean",
                                      n_check=parameters.TRANSFORMER_KERNEL_CHECK_INPUTS, seed=seed)
print(f"{len(transformer.WEIGHTS)} layerwise kernels of shape {tuple(layer_K['W_U'].shape)}; largest relative "
      f"difference from the torch.func reference on {parameters.TRANSFORMER_KERNEL_CHECK_INPUTS} inputs: {worst:.1e}")

# %% [markdown]
# ### The spectra
#
# The leading eigenvalues of each kernel, with the drops of at least 2× marked (these
# spectra are short and steep, so `find_cliffs` runs with the ratio rule alone).

# %%
eigenpairs = {name: eigen.top_eigenpairs(K, n_eigs) for name, K in layer_K.items()}
layer_cliffs = {name: eigen.find_cliffs(ev, min_ratio=2.0, outlier_mads=None) for name, (ev, _) in eigenpairs.items()}
fig, axes = plt.subplots(2, 5, figsize=(15, 5.5), layout="constrained", sharex=True)
for ax, (name, (ev, _)) in zip(axes.ravel(), eigenpairs.items()):
    plotting.plot_spectrum(ax, ev, layer_cliffs[name], n_show=n_eigs)
    ax.set_title(name)
    ax.set_xlabel("")
fig.suptitle(f"Layerwise eNTK spectra (top {n_eigs}), 1-layer Transformer, seed {seed}")
plotting.save_figure(fig, "fig_transformer_layer_spectra", out_dir)
plt.show()

# %% [markdown]
# ## Table 2 · Which eigenvectors hold the key-frequency families
#
# Families at the key frequencies: `sum` (cos/sin of `k(a+b)`) and `axis_sum`
# (`F(a) + F(b)`), each `2 × (number of keys)` dimensions. For each kernel an eigenvector
# *belongs* to a family when more than half of it lies in the family's span; the family's
# range runs from its first to its last such eigenvector, and we report the overlap of
# that range with the family (out of `dim`, the family's dimension or the range's length if
# shorter). A family that no eigenvector belongs to is scored on the leading `dim`
# eigenvectors (`assigned = False`).

# %%
table2 = transformer.table2(run, eigenpairs, keys, n_eigs=n_eigs, null_draws=null_draws, seed=seed,
                            init_seeds=init_seeds)
plotting.save_table(table2, "table2_transformer_overlaps", out_dir)
table2.assign(percent=table2.percent.round(1)).pivot(index="weight", columns="family", values=["eigvecs", "percent"]).loc[list(layer_K)]

# %% [markdown]
# ### Against chance
#
# As for the MLP, two nulls for each overlap: random subspaces of the same dimensions
# in the 841-dimensional space of functions on the inputs (exact mean `null_mean`, 99th
# percentile `null_q99`, empirical `null_p` from `null_draws` draws), and the same
# eigenvector ranges of the layerwise eNTKs of untrained networks (`init_mean ± init_std`,
# `init_max` over `init_seeds`).

# %%
table2[["weight", "family", "eigvecs", "overlap", "dim", "null_mean", "null_q99", "null_p", "init_mean", "init_std"]]

# %% [markdown]
# Where a family is assigned, its overlap is far above random subspaces of the same size.
# The untrained kernels separate the two families: at the same eigenvector ranges they
# hold essentially none of `sum`, which is therefore learned, but a fair part of
# `axis_sum` (`F(a) + F(b)`, a sum of functions of one input each). As for the MLP's
# first cliff, an untrained kernel already favours functions of one input, whatever their
# frequency; training concentrates them on the key frequencies.

# %% [markdown]
# The full table, rounded (this cell's output is checked by nbval):

# %% tags=["NBVAL_CHECK_OUTPUT"]
print(f"key frequencies: {keys.tolist()}")
columns = ["weight", "family", "eigvecs", "overlap", "dim", "percent", "assigned", "null_mean", "null_p", "init_mean"]
print(table2[columns].round({"overlap": 2, "percent": 1, "null_mean": 2, "null_p": 3, "init_mean": 1}).to_string(index=False))

# %%
w_u = table2[table2.weight == "W_U"].set_index("family")
for name in transformer.TABLE2_FAMILIES:
    paper_range, paper_overlap = transformer.PAPER[name]
    row = w_u.loc[name]
    print(f"W_U vs {name:>8}: ours eigenvectors {row.eigvecs}, {row.overlap:.3f}/{row.dim} ({row.percent:.1f}%); "
          f"paper eigenvectors {paper_range}, {paper_overlap:.3f}/4 ({100 * paper_overlap / 4:.1f}%); "
          f"random subspaces {row.null_mean:.3f} (99th percentile {row.null_q99:.3f}), "
          f"eNTK at init {row.init_mean:.3f} ± {row.init_std:.3f}")
print(f"cliffs (>= 2x) in the W_U spectrum after eigenvalues {layer_cliffs['W_U'].tolist()}")

# %% [markdown]
# The unembedding's kernel is where the features are cleanest: its leading eigenvectors
# hold `sum` and the next ones `axis_sum`, each close to the family's full dimension,
# as in the paper (which reports eigenvectors 0-4 and 5-8 for its seed-2 run). Where its
# spectrum has drops of 2× or more, they bound these ranges. The MLP weights (`W_in`,
# `W_out`) and `W_O` hold the families too, less cleanly; the attention scores' weights
# (`W_Q`, `W_K`) do not, which fits the known mechanism (attention here mostly copies
# the two token embeddings to the last position).
#
# ## Figure 3 · The alignment grows as the network generalises
#
# Every `checkpoint_every` epochs we recompute the unembedding's kernel and the overlap of
# its eigenvectors in the `sum` range of Table 2 with `sum`, using the **final** model's
# key frequencies (the paper's choice), and, as a check, using the key frequencies found
# at that checkpoint (where any stand out).

# %%
block = transformer.sum_block(table2)
curve = transformer.grokking_curve(run, block, keys)
epochs_at = transformer.grokking_epochs(history, curve, p)
print(f"derivative of the W_U overlap with sum peaks at epoch {epochs_at['peak']}")
print(f"test accuracy leaves chance (stays > 2/p) at epoch {epochs_at['leaves_chance']:.0f}; rises fastest (on the "
      f"checkpoint grid) at epoch {epochs_at['steepest_rise']}; passes 50% at epoch {epochs_at['half_way']:.0f}")
print(f"checkpoints where the checkpoint's own keys give a different overlap: {epochs_at['differing_checkpoints']} "
      f"of {len(curve)}")

# %%
sum_row = table2[(table2.weight == "W_U") & (table2.family == "sum")].iloc[0]
null = nulls.random_overlap_null(len(run.inputs), block[1] - block[0], sum_row.family_dim, null_draws, seed)
fig = plotting.plot_grokking(history, curve, "final keys", "d_final", onset=epochs_at["leaves_chance"],
                             onset_label="test leaves chance", null=null, n_init=len(init_seeds),
                             init_band=(sum_row.init_mean - sum_row.init_std, sum_row.init_mean + sum_row.init_std),
                             max_overlap=sum_row.family_dim, time="epoch", log_time=True,
                             checkpoint_column="checkpoint keys",
                             title=f"W_U kernel, eigenvectors {block[0]}-{block[1] - 1} vs sum at keys {keys.tolist()}")
plotting.save_figure(fig, "fig3_transformer_grokking", out_dir)
plt.show()
# the curves and the run's settings, for the seed sweep of notebook 04
plotting.save_table(curve, "curves_transformer", out_dir, markdown=False)
plotting.save_table(history, "history_transformer", out_dir, markdown=False)
_ = plotting.save_table(pd.DataFrame([dict(p=p, epochs=epochs, seed=seed, split=split, split_seed=split_seed,
                                           init=init, train_frac=train_frac)]), "run_transformer", out_dir, markdown=False)

# %% [markdown]
# (Epochs on a symmetric-log axis: the interesting part is early.) The paper's code sees
# the derivative peak around epoch 150, near where test accuracy leaves chance; in the
# default run here they fall within a few checkpoints of each other too. The
# checkpoint's own key frequencies agree with the final ones once any stand out; before
# that there are none to find and the green dots are missing.
#
# ## Summary

# %%
summary = transformer.summary(table2, keys, key_source, epochs_at, history, seed)
plotting.save_table(summary, "summary_transformer", out_dir)
summary
