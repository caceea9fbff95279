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
# # 3 · Gemma-3-270M on TinyStories: eNTK eigendirections vs grammar vs PCA
#
# *Reproduces section 5 of "Feature Identification via the Empirical NTK"
# (arXiv 2510.00468).*
#
# Does the method scale to a pretrained language model, where nobody knows the features in
# advance? The paper takes contexts from children's stories, restricts the eNTK to the
# MLP output weight (`down_proj`) of one layer of Gemma-3-270M, and asks whether its top
# eigenvectors pick out grammatical categories of the *next* word (part of speech,
# morphology) better than the same number of principal components of the activations.
#
# The kernel here is far too big to form (`N · 640` rows), so it is used only through
# matrix-vector products (one VJP and one JVP), and its top eigenpairs come from Lanczos.
#
# **Scale.** The defaults run on a 2-core CPU in minutes: 8 contexts per part of speech
# (N = 64) and one layer. `notebooks/profiles/03_gemma_tinystories.paper.yaml` is the
# paper's scale (128 per tag, N = 1024, all 18 layers: hours on a CPU, or use the GPU
# profile). Small-N numbers are noisy; read them as a check that the pipeline works.

# %% tags=["parameters"]
seed = 0
n_per_tag = 8            # contexts per part of speech (paper: 128)
context_len = 64         # Gemma tokens before the target word (no BOS)
layers = [16]            # decoder layers to analyse (paper: all 18, best reported)
n_eigs = 25              # eNTK directions = PCA components = random directions
lanczos_steps = 50
min_positives = 6        # morphological features need this many positives (paper: 30 at N = 1024)
model_source = "auto"    # "auto" | "hub" | "gguf" | a local path
stories_path = None      # None: $ENTK_TINYSTORIES or shared/data/tinystories/validation_first1000.txt
device = "cpu"
out_dir = None           # None: $ENTK_OUT_DIR or ../paper_figures
cache_dir = None         # None: $ENTK_CACHE_DIR or ../.cache

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from entk_utils import alignment, language, operators, plotting

out_dir = out_dir or os.environ.get("ENTK_OUT_DIR", "../paper_figures")
cache_dir = cache_dir or os.environ.get("ENTK_CACHE_DIR", "../.cache")
plotting.set_style()
torch.manual_seed(seed)
stories = language.load_stories("local", language.stories_path(stories_path))
lm = language.load_gemma(model_source, device=device, cache_dir=cache_dir)
n_layers = lm.model.config.num_hidden_layers
bad = [layer for layer in layers if not 0 <= layer < n_layers]
if bad:
    raise ValueError(f"layers {bad} out of range: Gemma-3-270M has layers 0..{n_layers - 1}")
print(f"model: {lm.description}")
print(f"{len(stories)} stories; torch {torch.__version__}, device {device}")

# %% [markdown]
# ## The data: contexts whose next word the model gets grammatically right
#
# An example is a word in a story with at least 64 Gemma tokens before it; the context is
# exactly those 64 tokens. Gemma continues the context greedily for 3 tokens, spaCy tags
# the first generated word, and the example is kept only if that part of speech equals the
# real next word's, so the model's computation at the last position is about a category it
# actually predicts. We fill a quota per part of speech (PUNCT, PRON, PROPN, DET, ADV,
# CCONJ, NOUN, VERB); the dataset is cached.

# %%
nlp = language.load_spacy()
data = language.cached_context_dataset(cache_dir, stories, lm, nlp, n_per_tag=n_per_tag,
                                       context_len=context_len, seed=seed)
print(f"N = {len(data)} contexts; {data.report['generated']} continuations generated "
      f"in {data.report['rounds']} round(s) over {data.report['stories']} stories")
if data.report["rounds"] > 1:
    print("(one position per story did not fill every quota, so more positions per story were drawn)")
labels, kinds = language.grammar_labels(data.upos, data.morph, min_positives=min_positives)
print(f"{len(labels.columns)} labels: {sum(k == 'pos' for k in kinds.values())} parts of speech, "
      f"{sum(k == 'morph' for k in kinds.values())} morphological features with >= {min_positives} positives")
examples = pd.DataFrame({"tag": data.upos, "context (end)": [lm.tokenizer.decode(ids[-12:].tolist()) for ids in data.input_ids],
                         "next word": data.words, "model continues": data.generated})
examples.groupby("tag").head(1)

# %% [markdown]
# ## Directions: eNTK eigenvectors, principal components, random
#
# For each layer: the top eigenpairs of the `down_proj` eNTK operator
# `K~ = (I ⊗ A) J Jᵀ (I ⊗ A)`, `A = (UᵀU)^½` from the unembedding (so it has the spectrum
# of the full-vocabulary logit eNTK). Each eigenvector is an `N × 640` array; its top
# singular component gives one signed score per context. The baselines use the same budget
# in the residual stream after that layer: its top principal components, and random
# directions. First a check of the operator on two random vectors: symmetric, and the
# truncated forward pass (from the analysed layer up) equals the full model's.

# %%
metric = operators.unembedding_metric(lm.model)
check_ids = data.input_ids[:4]
op_t = operators.layer_entk_operator(lm.model, check_ids, layers[0], metric=metric)
op_f = operators.layer_entk_operator(lm.model, check_ids, layers[0], metric=metric, truncate=False)
rng = np.random.default_rng(seed)
u, v = rng.standard_normal((2, op_t.shape[0]))
Ku, Kv = op_t.matvec(u), op_t.matvec(v)
print(f"symmetry |<u,Kv> - <Ku,v>| / |<u,Kv>| = {abs(u @ Kv - Ku @ v) / abs(u @ Kv):.1e}; "
      f"truncated vs full model: {np.linalg.norm(Ku - op_f.matvec(u)) / np.linalg.norm(Ku):.1e}")

# %%
key = language.hash_text(repr((data.upos, data.input_ids.tolist(), lm.description)))
classes = np.array(data.upos)
select, evaluate = alignment.stratified_halves(classes, seed=seed)
results, spectra, shares, entk_by_layer = [], {}, {}, {}
for layer in layers:
    eig = operators.cached_layer_eigenpairs(cache_dir, lm.model, data.input_ids, layer, n_eigs, steps=lanczos_steps,
                                            seed=seed, metric=metric, key=key)
    spectra[layer] = eig["evals"].numpy()
    entk_by_layer[layer], shares[layer] = language.entk_scores(eig["evecs"].numpy(), len(data))
    entk_s = entk_by_layer[layer]
    acts = language.last_token_activations(lm.model, data.input_ids, layer).numpy()
    for method, scores in {"entk": entk_s, "pca": language.pca_scores(acts, n_eigs),
                           "random": language.random_scores(acts, n_eigs, seed=seed)}.items():
        table = alignment.score_directions(scores, labels, select, evaluate)
        results.append(table.assign(layer=layer, method=method, kind=table.label.map(kinds)))
    print(f"layer {layer}: {n_eigs} eigenpairs in {eig['seconds'] / 60:.1f} min; top eigenvalues "
          f"{np.round(spectra[layer][:3], 2).tolist()}; median top-singular share {np.median(shares[layer]):.2f}")
per_layer = pd.concat(results, ignore_index=True)

# %% [markdown]
# ## Table 3 · How well each method's best direction picks out each label
#
# For each label we choose, among the 25 directions of a method and both signs, the one
# with the best average precision on one half of the contexts (split stratified by part of
# speech), and report its AUROC and AP on the other half. Rows per layer, plus the best
# layer per method (by macro AUROC).

# %%
table3, best_layer = alignment.with_best_layer(per_layer, by="auroc")
table3 = table3[["label", "kind", "layer", "method", "auroc", "ap", "precision_at_quota", "enrichment",
                 "base_rate", "direction", "sign"]]
plotting.save_table(table3, "table3_gemma_auroc", out_dir)
wide = table3[table3.layer == "best"].pivot(index=["kind", "label"], columns="method", values="auroc")[["entk", "pca", "random"]]
wide.loc[("macro", "all labels"), :] = wide.mean()
wide.round(3)

# %% [markdown]
# The macro averages (this cell's output is checked by nbval):

# %% tags=["NBVAL_CHECK_OUTPUT"]
summary = table3[table3.layer == "best"].groupby("method")[["auroc", "ap"]].mean().loc[["entk", "pca", "random"]]
summary["best layer"] = best_layer
plotting.save_table(summary.reset_index().assign(N=len(data), labels=len(labels.columns)), "summary_gemma", out_dir)
print(f"N = {len(data)}, {len(labels.columns)} labels, chance AP for a part of speech = {1 / 8:.3f}")
print(summary.round(2).to_string())

# %% [markdown]
# The paper's code at layer 16 (N = 1024, the original Gemma weights, Stanza tags): macro
# AUROC eNTK .827 vs PCA .745; macro AP .523 vs .409 (chance .125); e.g. DET .758 vs .602,
# ADV .803 vs .596, NOUN .981 vs .940. Ours differ in three stated ways: the model is a
# 4-bit quantisation dequantised to float32 (a perturbed Gemma), the tags come from spaCy,
# not Stanza, and the default run has 16× fewer contexts, so each AUROC rests on a handful
# of held-out positives. Run the paper profile before reading anything into the gap.

# %%
fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
best = table3[table3.layer == "best"].pivot(index="label", columns="method", values="auroc")
order = list(labels.columns)
x = np.arange(len(order))
for i, method in enumerate(["entk", "pca", "random"]):
    ax.bar(x + (i - 1) * 0.27, best.loc[order, method], width=0.27, label=method)
ax.axhline(0.5, color="k", lw=0.8, ls=":")
ax.set_xticks(x, order, rotation=60, ha="right", fontsize=8)
ax.set(ylabel="held-out AUROC", ylim=(0, 1), title=f"Best direction per label, best layer per method (N = {len(data)})")
ax.legend()
plotting.save_figure(fig, "fig_gemma_auroc", out_dir)
plt.show()

# %%
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
for layer, evals in spectra.items():
    ax.semilogy(np.arange(len(evals)), evals, ".-", ms=4, label=f"layer {layer}")
ax.set(xlabel="eigenvalue index", ylabel="eigenvalue", title="Top eNTK eigenvalues of down_proj (Lanczos)")
ax.legend(fontsize=8)
plotting.save_figure(fig, "fig_gemma_spectrum", out_dir)
plt.show()

# %% [markdown]
# ## What the top directions respond to
#
# The contexts that score highest on a few eNTK directions, with the words that follow
# them. (Signs of eigenvectors are arbitrary; we orient each direction so that its largest
# scores are positive.)

# %%
layer = int(best_layer["entk"])
entk_s = entk_by_layer[layer]
for j in range(3):
    s = entk_s[:, j] * np.sign(entk_s[np.argmax(np.abs(entk_s[:, j])), j])
    top = np.argsort(-s)[:min(20, len(s))]
    tags = pd.Series(classes[top]).value_counts().head(3).to_dict()
    print(f"direction {j} (layer {layer}): most common next-word tags among its top {len(top)}: {tags}")
    print("   next words:", ", ".join(repr(data.words[i]) for i in top[:10]))
