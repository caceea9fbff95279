"""Notebook 03's analyses (Gemma-3-270M on TinyStories): one function per table or figure.
Its contexts come from :func:`~entk_utils.settings.language.cached_contexts`, its eigenpairs
from :func:`~entk_utils.experiments.eigenpairs.cached_layer_eigenpairs`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..features.causal import next_token_shift
from ..features.directions import entk_scores
from ..features.finders import FinderInputs, find_directions
from ..features.probing import mean_abs_cosine
from ..features.resampling import Resampled
from ..features.scoring import choose_layer, score_directions
from ..features.significance import LEVEL
from ..kernels.eigen import fix_signs
from ..kernels.operators import layer_entk_operator, resolve_weights
from ..settings.language import ContextDataset, LoadedModel, residual_stream
from .baselines import significant_labels
from .eigenpairs import cached_layer_eigenpairs

# The direction-finding methods every table compares (in this order).
DIRECTION_METHODS = ("entk", "pca", "random")


def operator_check(model, input_ids: torch.Tensor, layer: int, metric, seed: int) -> dict[str, float]:
    """Two checks of the layer operator on a few contexts and two seeded random vectors u, v:
    ``symmetry`` = |<u, K v> - <K u, v>| / |<u, K v>|, and ``truncation`` = the relative
    difference between the truncated forward pass and the full model's."""
    op_t = layer_entk_operator(model, input_ids, layer, metric=metric)
    op_f = layer_entk_operator(model, input_ids, layer, metric=metric, truncate=False)
    u, v = np.random.default_rng(seed).standard_normal((2, op_t.shape[0]))
    Ku, Kv = op_t.matvec(u), op_t.matvec(v)
    return {"symmetry": abs(u @ Kv - Ku @ v) / abs(u @ Kv),
            "truncation": np.linalg.norm(Ku - op_f.matvec(u)) / np.linalg.norm(Ku)}


@dataclass
class LayerScores:
    """What :func:`score_layers` found. ``table``: one row per (layer, method, label) of
    :func:`~entk_utils.features.scoring.score_directions` with ``layer, method, kind``;
    ``scores[method, layer]`` (N, n_eigs) per-context scores; per layer ``spectra``
    (n_eigs,), ``shares`` (n_eigs,) of :func:`~entk_utils.features.directions.entk_scores`,
    ``eigenvectors`` (N*d, n_eigs), their ``keys`` (what
    :class:`~entk_utils.kernels.token_reading.Eigenfunctions` checks) and ``seconds`` of Lanczos,
    ``activations`` (N, h) the residual stream after the layer at the contexts' last token
    (what PCA reads)."""

    table: pd.DataFrame
    scores: dict = field(default_factory=dict)
    spectra: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)
    eigenvectors: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    activations: dict = field(default_factory=dict)


def score_layers(lm: LoadedModel, data: ContextDataset, labels: pd.DataFrame, kinds: dict, layers, *, n_eigs: int,
                 lanczos_steps: int, seed: int, metric, select, evaluate, cache_dir, key: str) -> LayerScores:
    """For each layer: the top eigenpairs of the ``down_proj`` operator (cached), the eNTK,
    PCA and random scores with the same budget in the residual stream after that layer, and
    each method's best direction per label (chosen on ``select``, scored on ``evaluate``); the
    directions come from the finders' registry (:func:`~entk_utils.features.finders.find_directions`)."""
    result, rows = LayerScores(table=pd.DataFrame()), []
    for layer in layers:
        eig = cached_layer_eigenpairs(cache_dir, lm.model, data.input_ids, layer, n_eigs, steps=lanczos_steps,
                                      seed=seed, metric=metric, key=key)
        result.spectra[layer], result.seconds[layer] = eig["evals"].numpy(), eig["seconds"]
        result.eigenvectors[layer], result.keys[layer] = eig["evecs"].numpy(), eig["key"]
        result.shares[layer] = entk_scores(result.eigenvectors[layer], len(data))[1]
        result.activations[layer] = residual_stream(lm.model, data.input_ids, layer, positions=-1).numpy()
        inputs = FinderInputs(activations=result.activations[layer], eigenvectors=result.eigenvectors[layer])
        for method, found in find_directions(DIRECTION_METHODS, inputs, n_eigs, seed).items():
            result.scores[method, layer] = found.scores
            table = score_directions(found.scores, labels, select, evaluate)
            rows.append(table.assign(layer=layer, method=method, kind=table.label.map(kinds)))
    result.table = pd.concat(rows, ignore_index=True)
    return result


def layer_candidates(found: LayerScores) -> dict[str, dict[int, np.ndarray]]:
    """``{method: {layer: scores (N, n_eigs)}}``: each method's directions at every analysed
    layer, what :func:`~entk_utils.features.resampling.resample_halves` chooses a layer from."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for (method, layer), scores in found.scores.items():
        out.setdefault(method, {})[layer] = scores
    return out


def chosen_layers(found: LayerScores, labels: pd.DataFrame, select) -> dict[str, int]:
    """Per method, the layer whose directions do best on the ``select`` half
    (:func:`~entk_utils.features.scoring.choose_layer`): the evaluate half plays no part."""
    Y = labels.T.to_numpy().astype(np.float64)
    return {method: choose_layer(by_layer, Y, np.asarray(select)) for method, by_layer in layer_candidates(found).items()}


TABLE3_COLUMNS = ["label", "kind", "layer", "method", "auroc", "ap", "auroc_splits", "entk minus method auroc",
                  "low", "high", "p", "p_holm", "precision_at_quota", "enrichment", "base_rate", "direction", "sign"]


def with_tests(table3: pd.DataFrame, resampled: Resampled, tested=("pca", "random")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 with the paired tests of the eNTK against each method of ``tested`` per label
    (:meth:`~entk_utils.features.resampling.Resampled.differences`: the eNTK's held-out AUROC
    minus the method's, mean over the splits, each split choosing its layers and directions
    on its own select half; Holm over labels x methods) on that method's best-layer rows, and
    each label's mean held-out AUROC over the splits (``auroc_splits``) on every best-layer
    row. Returns ``(table3, tests)``, table 3's columns :data:`TABLE3_COLUMNS`."""
    tests = resampled.differences("entk", list(tested)).rename(columns={"difference": "entk minus method auroc"})
    means = pd.DataFrame(resampled.values["auroc"].mean(axis=0), index=list(resampled.methods),
                         columns=list(resampled.labels)).stack().rename("auroc_splits")
    best = table3.layer == "best"
    keyed = table3[best].set_index(["method", "label"])
    keyed = keyed.join(means.rename_axis(["method", "label"])).join(
        tests.drop(columns="se").set_index(["method", "label"]))
    table3 = pd.concat([table3[~best], keyed.reset_index()], ignore_index=True)
    return table3.reindex(columns=TABLE3_COLUMNS), tests


def summary(table3: pd.DataFrame, resampled: Resampled, cosines: dict, best_layer: dict, tests: pd.DataFrame,
            level: float = LEVEL) -> pd.DataFrame:
    """Per method: macro AUROC and AP over the resampled splits with their intervals, the same
    on the table's one split, the mean |cosine| of its top score vectors, the layer chosen on
    the table's select half and how often the splits chose it, and (for each method the eNTK
    is tested against) the labels where the eNTK is significantly better / worse (Holm over
    labels x methods at ``level``)."""
    out = resampled.macro_table().loc[list(DIRECTION_METHODS)]
    one_split = table3[table3.layer == "best"].groupby("method")[["auroc", "ap"]].mean()
    out["auroc (one split)"], out["ap (one split)"] = one_split.auroc, one_split.ap
    out["mean abs cosine, top 10"] = [cosines[m].mean() for m in out.index]
    out["layer"] = [best_layer[m] for m in out.index]
    out["layer chosen in share of splits"] = [float(np.mean(resampled.layers[:, resampled.methods.index(m)] ==
                                                            best_layer[m])) for m in out.index]
    counts = significant_labels(tests, level)
    for side in ("better", "worse"):
        out[f"labels eNTK {side} (Holm {level:.0%})"] = counts[f"eNTK {side}"].reindex(out.index)
    return out


def top_cosines(found: LayerScores, best_layer: dict, labels: pd.DataFrame, top: int) -> dict:
    """Per method: the mean |cosine| of its ``top`` score vectors at its chosen layer with each
    label, (L,) (:func:`~entk_utils.features.probing.mean_abs_cosine`)."""
    Y = labels.T.to_numpy()
    return {method: mean_abs_cosine(found.scores[method, best_layer[method]], Y, top=top) for method in DIRECTION_METHODS}


def auroc_figure(table3: pd.DataFrame, labels: pd.DataFrame, n: int):
    """Held-out AUROC of each method's best direction per label (at the method's layer chosen on
    the select half; the table's one split), a bar group per label. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
    best = table3[table3.layer == "best"].pivot(index="label", columns="method", values="auroc")
    order = list(labels.columns)
    x = np.arange(len(order))
    for i, method in enumerate(DIRECTION_METHODS):
        ax.bar(x + (i - 1) * 0.27, best.loc[order, method], width=0.27, label=method)
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xticks(x, order, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="held-out AUROC", ylim=(0, 1),
           title=f"Best direction per label, at each method's layer chosen on the select half (N = {n})")
    ax.legend()
    return fig


def top_contexts(scores: np.ndarray, data: ContextDataset, direction: int, top: int = 20) -> dict:
    """The contexts that score highest on one eNTK direction (oriented so that its largest
    score is positive): ``{"tags": the 3 most common next-word tags among the top
    ``top``, "words": the next words of the top 10}``."""
    s = fix_signs(scores[:, [direction]])[:, 0]
    best = np.argsort(-s)[:min(top, len(s))]
    return {"tags": pd.Series(np.asarray(data.upos)[best]).value_counts().head(3).to_dict(),
            "words": [data.words[i] for i in best[:10]]}


def causal_shift(lm: LoadedModel, data: ContextDataset, labels: pd.DataFrame, layer: int, entk_best: pd.DataFrame,
                 eigenvectors: np.ndarray, chosen_labels, *, metric, relative_norms, causal_contexts, seed: int
                 ) -> pd.DataFrame:
    """The causal test: move ``down_proj``'s weight of ``layer`` along ``J^T (I kron A) v``
    for the eNTK direction ``v`` chosen for each label (``entk_best.direction``), and along a
    seeded random weight direction of the same length, by ``relative_norms`` of the weight's
    norm; the mean next-token KL on the scored contexts with and without the label, and
    their ratio (``selectivity``)."""
    op = layer_entk_operator(lm.model, data.input_ids, layer, metric=metric)
    (weight, param), = resolve_weights(lm.model, list(op.weights)).items()
    steps = {label: op.weight_direction(eigenvectors[:, int(entk_best.loc[label, "direction"])])[weight]
             for label in chosen_labels}
    steps["random"] = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed))
    scored = np.arange(len(data))
    if causal_contexts is not None and causal_contexts < len(data):
        scored = np.sort(np.random.default_rng(seed).choice(len(data), causal_contexts, replace=False))
    weight_norm = float(param.detach().norm())
    shifts = next_token_shift(lm.model, data.input_ids[scored], param, steps, [r * weight_norm for r in relative_norms],
                              progress=True)
    rows = []
    for label in chosen_labels:
        positive = labels[label].to_numpy()[scored].astype(bool)
        for name, kl in ((f"eNTK direction for {label}", shifts[label]), ("random weight direction", shifts["random"])):
            for r, row in zip(relative_norms, kl):
                rows.append({"label": label, "direction": name, "relative_norm": r,
                             "kl_with_label": row[positive].mean(), "kl_without_label": row[~positive].mean(),
                             "selectivity": row[positive].mean() / row[~positive].mean()})
    return pd.DataFrame(rows)


def causal_figure(table: pd.DataFrame):
    """Mean next-token KL against the step length, per label (a panel): the eNTK direction and
    the random one, on contexts with and without the label. Returns the figure."""
    import matplotlib.pyplot as plt

    chosen = list(dict.fromkeys(table.label))
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 3.4), layout="constrained", squeeze=False)
    for ax, label in zip(axes[0], chosen):
        frame = table[table.label == label]
        for (name, sub), colour in zip(frame.groupby("direction", sort=False), ("C3", "0.5")):
            ax.plot(sub.relative_norm, sub.kl_with_label, "o-", color=colour, label=f"{name}: contexts with {label}")
            ax.plot(sub.relative_norm, sub.kl_without_label, "o--", color=colour, label="… without")
        ax.set(xscale="log", yscale="log", xlabel="step / norm of the weight",
               ylabel="mean KL of next-token distribution", title=label)
        ax.legend(fontsize=6)
    return fig
