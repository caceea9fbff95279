"""pytest setup for the nbval run of the notebooks (make test).

Notebook kernels inherit the environment, so pointing ENTK_OUT_DIR / ENTK_CACHE_DIR at a
temporary folder keeps the test run from rewriting the committed paper_figures/.
"""
import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="entk-nbval-")
os.environ.setdefault("ENTK_OUT_DIR", os.path.join(_tmp, "figures"))
os.environ.setdefault("ENTK_CACHE_DIR", os.path.join(_tmp, "cache"))
os.environ.setdefault("MPLBACKEND", "Agg")
# nbval reads a kernel's messages only after each cell finishes; a progress bar updated many
# times a second during a minutes-long cell overflows that queue (messages are dropped, the
# cell's end is never seen). Progress output is not compared, so update it rarely here.
os.environ.setdefault("TQDM_MININTERVAL", "30")

# Notebook 04 re-runs notebooks 01 and 02 for five seeds each (about half an hour): too long
# for nbval. tests/test_notebooks.py runs it through papermill with two seeds and the quick
# profiles instead.
# Notebook 06 at its defaults (the offline Gemma, ten minutes) likewise: it has no output for
# nbval to compare, and tests/test_notebooks.py runs it with its quick profile on a tiny model.
# Notebook 07 trains a dozen toy models (a minute or two) and prints numbers that move in the
# last digits with the thread count; tests/test_notebooks.py runs it with its quick profile.
# Notebook 08 loads two real models; tests/test_notebooks.py runs it with its quick profile on
# one of them (SmolLM2, 32 contexts).
collect_ignore = ["04_seeds.ipynb", "06_your_model.ipynb", "07_toy_superposition.ipynb", "08_does_it_hold.ipynb"]
