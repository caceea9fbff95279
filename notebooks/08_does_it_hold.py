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
# # 8 · Does the Gemma result hold?
#
# *Checking the paper.* Notebook 03 compares the eNTK's directions with PCA's at Gemma-3-270M's
# layer 16. Its number and the paper's differ in several stated ways, and rest on one model.
# Here each difference is measured where it can be, and the comparison is repeated on a second
# model:
#
# 1. **Layers.** The authors' README says Table 3's directions were computed for every layer and
#    each label's AUROC "extremized" across them. We compute PCA, ICA and random directions at
#    every layer (one forward pass) and the eNTK at the layer at the paper's depth, and report
#    three ways of using the layers: that layer alone; each label's best over layers (our reading
#    of the paper's: the choice reads the held-out half, so it flatters every method, more so
#    with more layers); one layer per method chosen on the select half (our rule).
# 2. **Labels.** The authors' notebook macro-averages over the 8 parts of speech (and reports
#    morphology apart); notebook 03 over both together. Each set is reported.
# 3. **Tags.** spaCy's small model tags our contexts; the authors used Stanza, which needs a
#    download this machine cannot make. A second tagger that installs offline (NLTK's Brill
#    tagger trained on UD English-EWT) relabels the same words.
# 4. **Weights.** Our Gemma is a 4-bit quantisation. Quantising it again, coarser (3 and 2 bits,
#    round to nearest in blocks of 32), and following the result along the added error back to
#    zero estimates what the 4-bit weights did.
# 5. **A second model.** SmolLM2-135M-Instruct (an instruction-tuned Llama-architecture model of
#    30 layers, in 4-bit Q4_1), with the eNTK at layer 27, the depth of the paper's 16 of 18.
#    Notebook 03's whole pipeline on it is `make smollm2-n1024`.
#
# The contexts and eigenpairs are notebook 03's own cache entries: with the same parameters
# they are read, not recomputed.

# %% tags=["parameters"]
seed = 0
models = ["gguf", "smollm2"]  # model sources: the offline Gemma, then SmolLM2 (any model_source of notebook 03)
n_per_tag = 8                 # contexts per part of speech (paper: 128)
context_len = 64
n_eigs = 25                   # directions per method and layer
lanczos_steps = 50
min_positives = 6             # paper: 30 with 1024 contexts
min_per_half = 4
second_tagger = True          # relabel the first model's contexts with the second tagger
quantisation_bits = [3, 2]    # requantise the first model to these widths ([]: skip the probe)
quantisation_contexts = None  # contexts the probe uses (None: all; fewer is faster)
text_path = None              # None: $ENTK_TINYSTORIES or shared/data/tinystories/validation_first1000.txt
device = "cpu"
out_dir = None                # None: $ENTK_OUT_DIR or the scratch folder ../.cache/out
cache_dir = None              # None: $ENTK_CACHE_DIR or ../.cache

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from entk_utils.experiments import replication
from entk_utils.experiments.eigenpairs import eigenpairs_key
from entk_utils.io import plotting, session
from entk_utils.kernels.operators import unembedding_metric
from entk_utils.settings import language

out_dir, cache_dir = session.start(out_dir, cache_dir)
replication.check_notebook(globals())  # every parameter, before any work
torch.manual_seed(seed)
documents = language.load_stories("local", language.stories_path(text_path))
nlp = language.load_spacy()
settings = {source: replication.setting(source, documents, nlp, n_per_tag=n_per_tag, context_len=context_len,
                                        seed=seed, min_positives=min_positives, min_per_half=min_per_half,
                                        cache_dir=cache_dir, device=device) for source in models}
for source, s in settings.items():
    print(f"{source}: {s.lm.description}\n   N = {len(s.data)}, {len(s.labels.columns)} labels, "
          f"{len(s.layers)} layers, the eNTK at layer {s.layer}")

# %% [markdown]
# ## 1-2 · Table 3 over every layer, by label set
#
# Every method's best direction per label (chosen on the select half, scored on the evaluate
# half) at every layer it has, then the macro average under each way of using the layers.
# `paper auroc` / `paper ap` are the authors' notebook's numbers at their layer 16 (the original
# Gemma, Stanza tags, N = 1024), set beside Gemma's rows at that layer and over layers.

# %%
found = {source: replication.setting_scores(s, k=n_eigs, lanczos_steps=lanczos_steps, seed=seed, cache_dir=cache_dir)
         for source, s in settings.items()}
tables = {}
for source, s in settings.items():
    tables[source] = replication.table3_over_layers(found[source], s.labels, s.select, single_layer=s.layer,
                                                    paper="gemma-3-270m" in s.lm.description.lower())
    plotting.save_table(tables[source], f"table8_layers_{source}", out_dir)
    plotting.save_table(found[source].table, f"table8_per_layer_{source}", out_dir)
table8 = pd.concat(tables, names=["model"]).reset_index(level=0)
table8.round(3)

# %%
fig = replication.layer_figure({s.lm.description.split(":")[0]: found[source].table for source, s in settings.items()})
plotting.save_figure(fig, "fig8_layers", out_dir)
plt.show()

# %% [markdown]
# ## 3 · Tags: the same words, a second tagger
#
# The first model's contexts relabelled by the second tagger (the same words, split by spaCy,
# tagged within their sentence), and each part of speech scored again with the same directions
# at the eNTK's layer. `taggers agree`: on the contexts either tagger gives that tag, the share
# both give it.

# %%
if second_tagger:
    s = settings[models[0]]
    other = language.next_word_upos(documents, s.data.story, s.data.token, s.lm.tokenizer, nlp,
                                    language.load_second_tagger())
    tag_table = replication.tagger_effect(found[models[0]], s.layer, s.data.upos, other, language.TAGS, s.select,
                                          s.evaluate)
    plotting.save_table(tag_table, "table8_tagger", out_dir)
    print(f"the taggers agree on {pd.Series(s.data.upos).eq(other).mean():.1%} of the {len(other)} next words")
    print(tag_table.groupby("method")[["spaCy", "second tagger", "difference"]].mean().round(3).to_string())

# %% [markdown]
# ## 4 · Weights: what the 4-bit quantisation does
#
# The first model requantised to each width, the eNTK's eigenpairs and PCA recomputed at its
# layer on the same contexts and labels, and the macro numbers followed back along the error.

# %%
if quantisation_bits:
    s = replication.subset(settings[models[0]], quantisation_contexts, seed)
    probe = replication.quantisation_probe(s.lm, s.data.input_ids, s.labels, s.kinds, s.layer, bits=quantisation_bits,
                                           k=n_eigs, lanczos_steps=lanczos_steps, seed=seed, select=s.select,
                                           evaluate=s.evaluate, metric=unembedding_metric(s.lm.model),
                                           cache_dir=cache_dir, key=eigenpairs_key(s.data.input_ids, s.lm))
    plotting.save_table(probe, "table8_quantisation", out_dir)
    print(probe.round(4).to_string())
    if len(quantisation_bits) > 1:
        back = replication.extrapolated(probe)
        plotting.save_table(back, "table8_quantisation_extrapolated", out_dir)
        print(back.round(4).to_string())

# %% [markdown]
# **What it shows** is read in `docs/results.md`, section 6, from the committed `paper` run.
