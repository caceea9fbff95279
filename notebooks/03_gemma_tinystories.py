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

# %% [markdown] papermill={"duration": 0.001203, "end_time": "2026-11-25T10:31:07.347822+00:00", "exception": false, "start_time": "2026-11-25T10:31:07.346619+00:00", "status": "completed"}
# # 3 · Gemma-3-270M on TinyStories: eNTK eigendirections vs. grammar features vs. PCA
#
# *Will reproduce section 5 of "Feature Identification via the Empirical NTK"
# (arXiv 2510.00468): Gemma-3-270M on TinyStories context windows: matrix-free layer eNTK eigendirections scored against spaCy part-of-speech and morphology labels, next to a same-budget PCA (Table 3).*
#
# **Not implemented yet** (tracked as issue 4). This placeholder exists so that
# `make figures` runs every notebook; it computes nothing and writes no figures.

# %% papermill={"duration": 0.008362, "end_time": "2026-11-25T10:31:07.357471+00:00", "exception": false, "start_time": "2026-11-25T10:31:07.349109+00:00", "status": "completed"} tags=["parameters"]
seed = 0
out_dir = None

# %% papermill={"duration": 0.005021, "end_time": "2026-11-25T10:31:07.363638+00:00", "exception": false, "start_time": "2026-11-25T10:31:07.358617+00:00", "status": "completed"}
print("03_gemma_tinystories: not implemented yet; see the project's issue tracker (issue 4).")
