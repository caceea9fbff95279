"""Feature alignment over training: the overlap at each checkpoint and its derivative."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..kernels.dense import entk
from ..kernels.eigen import top_eigenpairs
from .geometry import subspace_overlap


def model_at(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with the given checkpoint loaded, in eval mode."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(state_dict)
    return clone.eval()


def overlap_over_training(
    model: nn.Module,
    checkpoints: Mapping[int, dict[str, torch.Tensor]],
    inputs: torch.Tensor,
    block: tuple[int, int],
    features: Mapping[str, np.ndarray] | Callable[[nn.Module], Mapping[str, np.ndarray | None]],
    *,
    params=None,
    reduce: str = "trace",
    progress: bool = True,
) -> pd.DataFrame:
    """Overlap of a block of top eNTK eigenvectors with feature families, per checkpoint.

    For each ``{epoch: state_dict}`` the eNTK on ``inputs`` (N, ...) is computed (restricted
    to ``params``, e.g. one layer), its eigenvectors ``block = (start, stop)`` (in
    descending order) are taken, and their :func:`~entk_utils.features.geometry.subspace_overlap`
    with each (N, d) feature matrix is recorded.

    ``features`` is a mapping ``{name: (N, d)}``, or a function of the checkpoint's model
    returning one (features that depend on the checkpoint, e.g. its own key frequencies;
    a ``None`` value records NaN).

    Returns a DataFrame with columns ``epoch`` and one per feature name, sorted by epoch.
    """
    start, stop = block
    if not 0 <= start < stop <= len(inputs):
        raise ValueError(f"block must satisfy 0 <= start < stop <= N={len(inputs)}, got {block}")
    rows = []
    for epoch in tqdm(sorted(checkpoints), desc="eNTK per checkpoint", disable=not progress):
        snapshot = model_at(model, checkpoints[epoch])
        K = entk(snapshot, inputs, params, reduce)
        _, vecs = top_eigenpairs(K, stop)
        feats = features(snapshot) if callable(features) else features
        rows.append({"epoch": epoch, **{name: np.nan if F is None else subspace_overlap(vecs[:, start:stop], F)
                                        for name, F in feats.items()}})
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


def sustained_crossing(x, y, level: float) -> float:
    """The first ``x`` from which ``y`` stays at or above ``level`` to the end (NaN if never).

    E.g. the epoch at which test accuracy leaves chance for good:
    ``sustained_crossing(epochs, test_acc, 2 / p)``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    below = np.flatnonzero(y < level)
    if below.size == 0:
        return float(x[0])
    return float(x[below[-1] + 1]) if below[-1] + 1 < len(x) else float("nan")


def grokking_times(curve_epoch, d_overlap, history, chance: float) -> dict[str, float]:
    """The epochs that describe one run's grokking, from its curves.

    curve_epoch, d_overlap : (T,) checkpoint epochs and the derivative of the overlap;
    history : DataFrame with ``epoch, train_acc, test_acc`` (every evaluated epoch);
    chance : chance accuracy (1/p). Returns ``peak`` (argmax of the derivative),
    ``steepest_rise`` (of test accuracy), ``leaves_chance`` (test accuracy stays above
    2 * chance from then on), ``half_way`` (stays above 50%) and ``train_99`` (train
    accuracy first reaches 99%); NaN where a run never gets there.
    """
    d = np.asarray(d_overlap, dtype=float)
    train_99 = history.epoch[history.train_acc >= 0.99]
    return {
        "peak": float(np.asarray(curve_epoch)[np.nanargmax(d)]),
        "steepest_rise": steepest_rise(history.epoch, history.test_acc),
        "leaves_chance": sustained_crossing(history.epoch, history.test_acc, 2 * chance),
        "half_way": sustained_crossing(history.epoch, history.test_acc, 0.5),
        "train_99": float(train_99.iloc[0]) if len(train_99) else float("nan"),
    }
