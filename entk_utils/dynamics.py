"""Feature alignment over training: the overlap at each checkpoint and its derivative."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .alignment import subspace_overlap
from .eigen import top_eigenpairs
from .kernels import entk
from .modular import model_at


def overlap_over_training(
    model: nn.Module,
    checkpoints: Mapping[int, dict[str, torch.Tensor]],
    inputs: torch.Tensor,
    block: tuple[int, int],
    features: Mapping[str, np.ndarray],
    *,
    params=None,
    reduce: str = "trace",
    progress: bool = True,
) -> pd.DataFrame:
    """Overlap of a block of top eNTK eigenvectors with feature families, per checkpoint.

    For each ``{epoch: state_dict}`` the eNTK on ``inputs`` (N, ...) is computed, its
    eigenvectors ``block = (start, stop)`` (in descending order) are taken, and their
    :func:`~entk_utils.alignment.subspace_overlap` with each (N, d) feature matrix is
    recorded. Returns a DataFrame with columns ``epoch`` and one per family, sorted by epoch.
    """
    start, stop = block
    if not 0 <= start < stop <= len(inputs):
        raise ValueError(f"block must satisfy 0 <= start < stop <= N={len(inputs)}, got {block}")
    rows = []
    for epoch in tqdm(sorted(checkpoints), desc="eNTK per checkpoint", disable=not progress):
        K = entk(model_at(model, checkpoints[epoch]), inputs, params, reduce)
        _, vecs = top_eigenpairs(K, stop)
        rows.append({"epoch": epoch, **{name: subspace_overlap(vecs[:, start:stop], F) for name, F in features.items()}})
    return pd.DataFrame(rows)


def derivative(x, y) -> np.ndarray:
    """dy/dx by central differences (one-sided at the ends), for non-uniform ``x`` too."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got {x.shape} and {y.shape}")
    return np.gradient(y, x)


def steepest_rise(x, y) -> float:
    """The ``x`` at which ``y`` increases fastest (argmax of the central-difference slope)."""
    return float(np.asarray(x)[np.argmax(derivative(x, y))])
