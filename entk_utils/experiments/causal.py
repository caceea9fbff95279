"""Notebook 05's analyses (causal tests of the modular models): ablations of direction spans
from the logits, weight steps along projection gradients, Table 4, Figure 4 and the summary.

``run`` is a :class:`~entk_utils.settings.modular.ModularRun` throughout; its first ``p``
outputs are the scored logits (the Transformer has one more, the "=" token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..features import causal
from ..features.directions import pca_directions, random_directions
from ..settings.modular import hidden_activations


def _logits(run) -> np.ndarray:
    """(N, p) scored logits of the run's model over all its inputs."""
    return causal.model_logits(run.model, run.inputs, n_scored=run.p).detach().cpu().numpy()


def comparison_functions(run, span: np.ndarray, label: str, seed: int) -> dict[str, np.ndarray]:
    """The span to test (N, k) beside same-size baselines: ``{label: span, "PCA ...": the
    top k principal components of the hidden layer, "random ...": k random functions}``."""
    k = span.shape[1]
    hidden = hidden_activations(run.model, run.inputs).cpu().numpy()
    return {label: span, f"PCA top {k}": pca_directions(hidden, min(k, hidden.shape[1])),
            f"random functions ({k})": random_directions(len(run.inputs), k, seed=seed)}


def ablations(run, evecs: np.ndarray, k_max: int, seed: int, extra_ks: Sequence[int] = ()) -> pd.DataFrame:
    """Test accuracy and losses after removing the first k of each method's directions
    from the logits (:func:`~entk_utils.features.causal.ablation_curve`), for the powers of
    two up to ``k_max`` plus ``extra_ks``; methods "eNTK" (``evecs`` in order),
    "PCA of hidden activations" and "random"."""
    ks = sorted({*(2**i for i in range(int(np.log2(k_max)) + 1)), *(k for k in extra_ks if k <= k_max)})
    hidden = hidden_activations(run.model, run.inputs).cpu().numpy()
    methods = {"eNTK": evecs[:, :k_max],
               "PCA of hidden activations": pca_directions(hidden, min(k_max, hidden.shape[1])),
               "random": random_directions(len(run.inputs), k_max, seed=seed)}
    return causal.ablation_curve(_logits(run), run.labels.numpy(), run.test_idx, methods, ks)


def ablate_spans(run, spans: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per span (N, k): the test metrics after removing the whole span from the logits."""
    logits = _logits(run)
    rows = [causal.ablation_curve(logits, run.labels.numpy(), run.test_idx, {name: span}, [span.shape[1]]).iloc[-1]
            for name, span in spans.items()]
    return pd.DataFrame(rows).reset_index(drop=True)


def perturbations(run, span: np.ndarray, label: str, relative_norms: Sequence[float], seed: int) -> pd.DataFrame:
    """Test metrics after steps ``theta - eps * d`` along the projection gradient of the span
    and of its PCA and random-function baselines (:func:`comparison_functions`) and along a
    random weight direction, ``eps`` given as fractions of the norm of all weights (column
    ``relative_norm``)."""
    directions = {name: causal.projection_gradient(run.model, run.inputs, V, n_scored=run.p)
                  for name, V in comparison_functions(run, span, f"eNTK {label}", seed).items()}
    directions["random weights"] = causal.random_weight_direction(run.model, seed=seed)
    weight_norm = causal.direction_norm({n: q.detach() for n, q in run.model.named_parameters()})
    curve = causal.perturbation_curve(run.model, run.inputs, run.labels.numpy(), run.test_idx, directions,
                                      [r * weight_norm for r in relative_norms], n_scored=run.p)
    return curve.assign(relative_norm=curve.norm / weight_norm)


TABLE4_COLUMNS = ["setting", "test", "method", "k", "relative_norm", "accuracy", "loss_ce", "loss_mse", "delta_loss_ce"]


def table4(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Table 4: ``{setting: (ablation, whole spans, perturbation)}`` stacked with ``setting``
    and ``test`` columns."""
    parts = [frame.assign(setting=setting, test=test)
             for setting, frames in results.items()
             for frame, test in zip(frames, ("ablate top k", "ablate a whole span", "move weights"))]
    return pd.concat(parts, ignore_index=True)[TABLE4_COLUMNS]


def accuracy_at(ablation: pd.DataFrame, k: int) -> dict[str, float]:
    """``{method: test accuracy}`` after removing the top ``k`` directions (2 decimals)."""
    return ablation[ablation.k == k].set_index("method").accuracy.round(2).to_dict()


def loss_at_largest_step(perturbation: pd.DataFrame) -> dict[str, float]:
    """``{method: change of test cross-entropy}`` at the largest step (2 decimals)."""
    last = perturbation[perturbation.relative_norm == perturbation.relative_norm.max()]
    return last.set_index("method").delta_loss_ce.round(2).to_dict()


def summary(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]]) -> pd.DataFrame:
    """The numbers the verdict rests on: ``{setting: (ablation, whole spans, perturbation,
    k)}`` to rows ``setting, measure, directions, value`` (accuracy after removing the top k,
    after removing each whole span, and the loss change at the largest step)."""
    rows = []
    for name, (ablation, whole, perturbation, k) in results.items():
        largest = perturbation.relative_norm.max()
        rows += [(name, f"test accuracy after removing the top {k} directions", method, value)
                 for method, value in accuracy_at(ablation, k).items()]
        rows += [(name, "test accuracy after removing a whole span", method, value)
                 for method, value in whole.set_index("method").accuracy.round(2).items()]
        rows += [(name, f"test cross-entropy change, step {largest:.0%} of the weights' norm", method, value)
                 for method, value in loss_at_largest_step(perturbation).items()]
    return pd.DataFrame(rows, columns=["setting", "measure", "directions", "value"])


def figure4(results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]]):
    """Figure 4: per setting (a row), test accuracy against the number of directions removed
    and the change of test cross-entropy against the step length, one line per method.
    ``results`` is ``{setting: (ablation, perturbation)}``; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4 * len(results)), layout="constrained", squeeze=False)
    for row, (name, (ablation, perturbation)) in enumerate(results.items()):
        for method, frame in ablation.groupby("method", sort=False):
            axes[row, 0].plot(frame.k.clip(lower=0.5), frame.accuracy, "o-", ms=3, label=method)
        axes[row, 0].set(xscale="log", xlabel="k directions removed from the logits (k=0 drawn at 0.5)",
                         ylabel="test accuracy", title=f"{name}: function-space ablation")
        for method, frame in perturbation.groupby("method", sort=False):
            axes[row, 1].plot(frame.relative_norm, frame.delta_loss_ce, "o-", ms=3, label=method)
        axes[row, 1].set(xlabel="step length / norm of the weights", ylabel="change of test cross-entropy",
                         title=f"{name}: weight-space perturbation")
        for ax in axes[row]:
            ax.legend(fontsize=8)
    return fig
