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
from ..features.scoring import best_direction_metrics, mean_abs_cosine, score_directions
from ..features.significance import bonferroni, bootstrap_macro, holm, permutation_test
from ..kernels.eigen import fix_signs
from ..kernels.operators import layer_entk_operator, resolve_weights
from ..settings.language import ContextDataset, LoadedModel, last_token_activations
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
    ``eigenvectors`` (N*d, n_eigs) and ``seconds`` of Lanczos, ``activations`` (N, h) the
    residual stream after the layer at the contexts' last token (what PCA reads)."""

    table: pd.DataFrame
    scores: dict = field(default_factory=dict)
    spectra: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)
    eigenvectors: dict = field(default_factory=dict)
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
        result.eigenvectors[layer] = eig["evecs"].numpy()
        result.shares[layer] = entk_scores(result.eigenvectors[layer], len(data))[1]
        result.activations[layer] = last_token_activations(lm.model, data.input_ids, layer).numpy()
        inputs = FinderInputs(activations=result.activations[layer], eigenvectors=result.eigenvectors[layer])
        for method, found in find_directions(DIRECTION_METHODS, inputs, n_eigs, seed).items():
            result.scores[method, layer] = found.scores
            table = score_directions(found.scores, labels, select, evaluate)
            rows.append(table.assign(layer=layer, method=method, kind=table.label.map(kinds)))
    result.table = pd.concat(rows, ignore_index=True)
    return result


TABLE3_COLUMNS = ["label", "kind", "layer", "method", "auroc", "ap", "p_perm", "p_bonferroni", "p_holm",
                  "precision_at_quota", "enrichment", "base_rate", "direction", "sign"]


def with_permutation_tests(table3: pd.DataFrame, at_best: dict, labels: pd.DataFrame, select, evaluate, *,
                           n_permutations: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per label, the permutation test of the eNTK-minus-PCA AUROC difference (each method at
    its best layer, ``at_best[method]`` its (N, m) scores), corrected by Bonferroni and Holm.
    Returns Table 3 with ``p_perm, p_bonferroni, p_holm`` on its best-layer eNTK and PCA rows
    (columns :data:`TABLE3_COLUMNS`), and the p-values per label with ``auroc_difference``."""
    tests = {label: permutation_test(at_best["entk"], at_best["pca"], labels[label].to_numpy(), select, evaluate,
                                     n_permutations=n_permutations, seed=seed) for label in labels.columns}
    p_perm = pd.Series({label: t.p_value for label, t in tests.items()})
    pvalues = pd.DataFrame({"label": p_perm.index, "p_perm": p_perm.values, "p_bonferroni": bonferroni(p_perm.values),
                            "p_holm": holm(p_perm.values), "auroc_difference": [t.observed for t in tests.values()]})
    table3 = table3.merge(pvalues.drop(columns="auroc_difference"), on="label", how="left")
    tested = (table3.layer == "best") & table3.method.isin(["entk", "pca"])
    table3.loc[~tested, ["p_perm", "p_bonferroni", "p_holm"]] = np.nan  # the tests compare the best-layer rows
    return table3[TABLE3_COLUMNS], pvalues


def macro_intervals(at_best: dict, labels: pd.DataFrame, select, evaluate, *, n_boot: int, seed: int, top: int):
    """Per method: bootstrap intervals of the macro AUROC and AP of its chosen directions on
    the ``evaluate`` contexts, and the mean |cosine| of its ``top`` score vectors with each
    label. Returns ``({method: BootstrapResult}, {method: (L,) mean |cosine| per label})``."""
    Y = labels.T.to_numpy()
    intervals, cosines = {}, {}
    for method, scores in at_best.items():
        chosen = best_direction_metrics(scores, Y, select, evaluate)
        intervals[method] = bootstrap_macro(chosen.chosen_scores(scores, evaluate), Y[:, evaluate], n_boot=n_boot,
                                            seed=seed)
        cosines[method] = mean_abs_cosine(scores, Y, top=top)
    return intervals, cosines


def summary(table3: pd.DataFrame, intervals: dict, cosines: dict, best_layer, survivors: int) -> pd.DataFrame:
    """Macro AUROC and AP per method at its best layer, with bootstrap intervals, the mean
    |cosine| of the top score vectors, the best layer and the number of labels whose
    eNTK-PCA difference survives Bonferroni."""
    out = table3[table3.layer == "best"].groupby("method")[["auroc", "ap"]].mean().loc[list(DIRECTION_METHODS)]
    out["auroc 95% CI"] = [f"{intervals[m].auroc_ci[0]:.2f}-{intervals[m].auroc_ci[1]:.2f}" for m in out.index]
    out["ap 95% CI"] = [f"{intervals[m].ap_ci[0]:.2f}-{intervals[m].ap_ci[1]:.2f}" for m in out.index]
    out["mean abs cosine, top 10"] = [cosines[m].mean() for m in out.index]
    out["best layer"] = best_layer
    out["labels with eNTK vs PCA significant (Bonferroni 5%)"] = survivors
    return out


def auroc_figure(table3: pd.DataFrame, labels: pd.DataFrame, n: int):
    """Held-out AUROC of each method's best direction per label (best layer per method), a bar
    group per label. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
    best = table3[table3.layer == "best"].pivot(index="label", columns="method", values="auroc")
    order = list(labels.columns)
    x = np.arange(len(order))
    for i, method in enumerate(DIRECTION_METHODS):
        ax.bar(x + (i - 1) * 0.27, best.loc[order, method], width=0.27, label=method)
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xticks(x, order, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="held-out AUROC", ylim=(0, 1), title=f"Best direction per label, best layer per method (N = {n})")
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
