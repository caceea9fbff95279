# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2 · The eNTK of a 1-layer Transformer on modular addition
#
# *Will reproduce section 4 of "Feature Identification via the Empirical NTK"
# (arXiv 2510.00468): a 1-layer Transformer trained on modular addition: layerwise eNTKs, key frequencies found automatically, Table 2 and Figure 3.*
#
# **Not implemented yet** (tracked as issue 3). This placeholder exists so that
# `make figures` runs every notebook; it computes nothing and writes no figures.

# %% tags=["parameters"]
seed = 0
out_dir = None

# %%
print("02_transformer_modular_addition: not implemented yet; see the project's issue tracker (issue 3).")
