"""What every notebook does first: where its outputs and its cache go, and the display style.

Outputs go to ``out_dir`` when given, else ``$ENTK_OUT_DIR``, else the scratch folder
``../.cache/out`` (relative to the notebooks' folder), so running a notebook interactively
never overwrites the committed ``paper_figures/``: only the make targets, which set
``ENTK_OUT_DIR`` (or pass ``out_dir``), write there. Trained models and eigenpairs are cached
in ``cache_dir``, else ``$ENTK_CACHE_DIR``, else ``../.cache``.
"""

from __future__ import annotations

import os

OUT_ENV, CACHE_ENV = "ENTK_OUT_DIR", "ENTK_CACHE_DIR"
SCRATCH_OUT_DIR = "../.cache/out"
DEFAULT_CACHE_DIR = "../.cache"


def start(out_dir: str | None = None, cache_dir: str | None = None) -> tuple[str, str]:
    """Resolve a notebook's ``(out_dir, cache_dir)`` as the module docstring says, and apply
    the project's matplotlib style and pandas display precision (3 decimals)."""
    import pandas as pd

    from .plotting import set_style

    set_style()
    pd.set_option("display.precision", 3)
    return (out_dir or os.environ.get(OUT_ENV) or SCRATCH_OUT_DIR,
            cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
