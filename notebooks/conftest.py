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
