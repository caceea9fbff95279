# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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

# %% [markdown] papermill={"duration": 0.001419, "end_time": "2026-11-25T09:47:22.786220+00:00", "exception": false, "start_time": "2026-11-25T09:47:22.784801+00:00", "status": "completed"}
# # 2 · The eNTK of a 1-layer Transformer on modular addition
#
# *Will reproduce section 4 of "Feature Identification via the Empirical NTK"
# (arXiv 2510.00468): a 1-layer Transformer trained on modular addition: layerwise eNTKs, key frequencies found automatically, Table 2 and Figure 3.*
#
# **Not implemented yet** (tracked as issue 3). This placeholder exists so that
# `make figures` runs every notebook; it computes nothing and writes no figures.

# %% papermill={"duration": 0.008275, "end_time": "2026-11-25T09:47:22.795847+00:00", "exception": false, "start_time": "2026-11-25T09:47:22.787572+00:00", "status": "completed"} tags=["parameters"]
seed = 0
out_dir = None

# %% papermill={"duration": 0.00638, "end_time": "2026-11-25T09:47:22.803420+00:00", "exception": false, "start_time": "2026-11-25T09:47:22.797040+00:00", "status": "completed"}
print("02_transformer_modular_addition: not implemented yet; see the project's issue tracker (issue 3).")
