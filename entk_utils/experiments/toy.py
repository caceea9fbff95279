"""Notebook 07's analyses: every finder against features that are known, on toy models of
superposition (:mod:`entk_utils.settings.toy`). One function per result: the directions of
every method on one trained model (:func:`toy_directions`), their scores by the same numbers
(:func:`score_toy`), a configuration x seed sweep (:func:`toy_sweep`) and its summary over
seeds (:func:`sweep_summary`), beside the parameter decompositions' published numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..features import ground_truth as truth
from ..features.directions import entk_scores
from ..features.finders import Directions, FinderInputs, find_directions, independent_components
from ..features.geometry import subspace_overlap
from ..features.sae import SAERecipe, train_sae
from ..features.scoring import score_directions, stratified_halves
from ..features.significance import CONFIDENCE
from ..kernels.dense import entk, output_jacobian
from ..kernels.eigen import cliff_blocks, find_cliffs, jacobian_eigenpairs, top_eigenpairs
from ..settings.toy import TMSRecipe, TMSRun, recipe_of, train_tms

# The eNTK's variants and the other finders, in table order. k = n for every method that can
# give n directions; PCA and ICA give at most m (marked in the table's ``k`` column).
ENTK_VARIANTS = ("entk", "entk-rotated", "entk-W", "entk-trace")
FINDERS_AT_M = ("pca", "ica")
FINDERS_AT_N = ("sae", "sae-all", "random", "mean-difference", "logistic")
# The reference row of the parameter-space numbers: W itself as one step. Every column of it is
# its feature's column, so it scores 1 on APD/SPD's column match without separating anything.
WHOLE_W = "W itself (one step)"

# Published MMCS of the parameter decompositions' components against the columns of W
# (signed cosines, all features, one run; +- is the std over features): SPD, Bushnaq et al.
# 2025 (arXiv 2506.20790), Table 1; APD, Braun et al. 2025 (arXiv 2501.14926), section 3.1.
# Published, not rerun here: neither method installs from a package registry.
PUBLISHED_PARAMETER_MMCS = {
    ("5-2", "SPD"): 1.000, ("40-10", "SPD"): 1.000, ("5-2+ID", "SPD"): 1.000, ("40-10+ID", "SPD"): 1.000,
    ("5-2", "APD"): 0.998, ("40-10", "APD"): 0.996,
}


@dataclass
class ToyDirections:
    """Every method's directions on one toy model: ``directions`` {method: Directions} over the
    ``x`` (N, n) inputs with ``hidden`` (N, m) activations; the eNTK's ``eigenvalues`` (all of
    its nonzero spectrum, at most the number of parameters)
    and ``weight_steps`` {variant: (k, m, n)} (its steps restricted to W); ``labels`` (N, n)
    "feature j is on" and the ``select`` / ``evaluate`` halves."""

    run: TMSRun
    x: torch.Tensor
    hidden: np.ndarray
    labels: pd.DataFrame
    select: np.ndarray
    evaluate: np.ndarray
    directions: dict[str, Directions] = field(default_factory=dict)
    eigenvalues: np.ndarray | None = None
    weight_steps: dict[str, np.ndarray] = field(default_factory=dict)


def sae_recipe_for(recipe: TMSRecipe, seed: int) -> SAERecipe:
    """The SAE of a toy model's hidden activations: twice as many latents as features, TopK with
    one more active than features are on per input on average (at least 2), Adam at 3e-3 (on a
    planted case of 4 sparse features this recovers all 4; at 1e-3 or with k = 1 it merges them)."""
    k = max(2, int(round(recipe.n_features * recipe.probability)) + 1)
    return SAERecipe(width=2 * recipe.n_features, k=k, tokens=200_000, batch_size=1024, lr=3e-3, held_out=4096,
                     seed=seed)


def toy_directions(run: TMSRun, n_inputs: int = 2000, seed: int = 0, *, sae_inputs: int = 50_000) -> ToyDirections:
    """Every method's directions on ``n_inputs`` fresh inputs of ``run`` (drawn with ``seed``):
    the eNTK of all parameters, outputs scaled by the square root of their importance, as
    (N*n) x (N*n) (the paper's earlier versions' kernel; its top n eigenvectors, their hidden-space
    directions and their weight steps on W), the same eigenvectors rotated inside their span
    by ICA (``entk-rotated``), the layerwise eNTK of ``W`` alone (``entk-W``: the same outputs,
    the Jacobian's columns of ``W`` only; its weight steps live on ``W``), the trace eNTK (N x N), PCA and ICA of the hidden activations
    (at most m), random directions, an SAE trained on ``sae_inputs`` other inputs' activations
    (its n most active latents, and ``sae-all``), and the supervised ceilings."""
    recipe, model = run.recipe, run.model
    n, m = recipe.n_features, recipe.n_hidden
    x = run.inputs(n_inputs, seed)
    with torch.no_grad():
        hidden = model.hidden(x).double().numpy()
    labels = pd.DataFrame((x > 0).numpy().astype(int), columns=[f"feature {j}" for j in range(n)])
    select, evaluate = stratified_halves((x > 0).sum(1).clamp(max=3).numpy(), seed=seed)
    out = ToyDirections(run, x, hidden, labels, select, evaluate)

    J, slices = output_jacobian(model, x, output_scale=recipe.importances().sqrt())
    evals, evecs, steps = jacobian_eigenpairs(J.double().numpy(), min(J.shape))  # the whole spectrum (rank <= P)
    out.eigenvalues = evals
    evecs, steps = evecs[:, :n], steps[:n]
    scores = entk_scores(evecs, n_inputs)[0]
    on_W = steps[:, slices["W"]].reshape(n, m, n)
    out.directions["entk"] = Directions("entk", scores, f"top {n} eigenvectors of the (N*n) x (N*n) eNTK",
                                        vectors=truth.hidden_space_directions(scores, hidden))
    out.weight_steps["entk"] = on_W
    rotated = independent_components(scores, n, seed)[0]  # a linear map of the scores: R below is exact
    out.directions["entk-rotated"] = Directions("entk-rotated", rotated, "the same, rotated in their span by ICA",
                                                vectors=truth.hidden_space_directions(rotated, hidden))
    out.weight_steps["entk-rotated"] = np.einsum("ck,kmn->cmn", _rotation(scores, rotated), on_W)
    layer_evecs, layer_steps = jacobian_eigenpairs(J[:, slices["W"]].double().numpy(), n)[1:]
    layer_scores = entk_scores(layer_evecs, n_inputs)[0]
    out.directions["entk-W"] = Directions("entk-W", layer_scores, f"top {n} eigenvectors of the layerwise eNTK of W",
                                          vectors=truth.hidden_space_directions(layer_scores, hidden))
    out.weight_steps["entk-W"] = layer_steps.reshape(n, m, n)
    K = entk(model, x, reduce="trace").double().numpy()
    trace_evals, trace_vecs = top_eigenpairs(K, n)
    trace_scores = trace_vecs * np.sqrt(np.maximum(trace_evals, 0))
    out.directions["entk-trace"] = Directions("entk-trace", trace_scores, f"top {n} eigenvectors of the trace eNTK",
                                              vectors=truth.hidden_space_directions(trace_scores, hidden))

    sae_x = run.inputs(sae_inputs, seed + 10_000)
    with torch.no_grad():
        sae_hidden = model.hidden(sae_x).float()
    sae = train_sae(sae_hidden, sae_recipe_for(recipe, seed)).sae
    inputs = FinderInputs(activations=hidden, sae=sae, labels=labels, select=select)
    out.directions.update(find_directions(FINDERS_AT_M, inputs, min(m, n_inputs), seed))
    out.directions.update(find_directions(FINDERS_AT_N, inputs, n, seed))
    return out


def _rotation(scores: np.ndarray, rotated: np.ndarray) -> np.ndarray:
    """(k, k) ``R`` with ``rotated ~ scores @ R`` (centred least squares), transposed so that
    the rotated weight steps are ``R.T @ steps``."""
    R = np.linalg.lstsq(scores - scores.mean(0), rotated - rotated.mean(0), rcond=None)[0]
    return R.T


def score_toy(found: ToyDirections) -> pd.DataFrame:
    """One row per method: ``k``; the paper's metric per true feature (best single direction
    chosen on select, scored on evaluate; macro ``auroc`` / ``ap``); in hidden space ``mmcs``
    and ``recovered`` (|cos| >= 0.9) against every feature's column of W; for the eNTK in
    parameter space ``column mmcs`` (APD/SPD's match), ``matrix mmcs`` and ``recovered (parameters)``;
    a row :data:`WHOLE_W` (``W`` itself as one step: what the column match gives for free);
    and the model's ``represented`` features, the eNTK's first ``cliff`` and its top
    ``represented``-dimensional eigenspace's share of the features' span in function space
    (``eigenspace overlap``: the scores against the inputs' feature values)."""
    W = found.run.model.W.detach().double().numpy()
    features = W.T
    n_represented = int(truth.represented(features).sum())
    x = found.x.double().numpy()
    rows = []
    for method, d in found.directions.items():
        table = score_directions(d.scores, found.labels, found.select, found.evaluate)
        row = {"method": method, "k": d.k, "supervised": d.supervised, "larger budget": d.larger_budget,
               "auroc": table.auroc.mean(), "ap": table.ap.mean()}
        if d.vectors is not None:
            row["mmcs"] = truth.mmcs(d.vectors, features)
            row["recovered"] = truth.recovered(d.vectors, features)
        if method in found.weight_steps:
            steps = found.weight_steps[method]
            row["column mmcs"] = float(truth.column_cosines(steps, W).mean())
            row["matrix mmcs"] = float(truth.matrix_cosines(steps, W).mean())
            row["recovered (parameters)"] = int((truth.column_cosines(steps, W) >= truth.RECOVERED_COSINE).sum())
        rows.append(row)
    rows.append({"method": WHOLE_W, "k": 1, "supervised": False, "larger budget": False,
                 "column mmcs": float(truth.column_cosines(W[None], W).mean()),
                 "matrix mmcs": float(truth.matrix_cosines(W[None], W).mean())})
    table = pd.DataFrame(rows)
    cliffs = find_cliffs(found.eigenvalues)
    top = found.directions["entk"].scores[:, :max(n_represented, 1)]
    table["represented"] = n_represented
    table["cliff"] = cliffs[0] if len(cliffs) else np.nan
    table["eigenspace overlap"] = subspace_overlap(top, x - x.mean(0)) / max(n_represented, 1)
    return table


def sweep_recipes(configurations, probabilities, *, steps: int | None = None,
                  batch_size: int | None = None) -> dict[str, TMSRecipe]:
    """``{name: recipe}`` for every configuration name (:func:`~entk_utils.settings.toy.recipe_of`)
    at every feature probability (``"40-10 p=0.05"``); ``steps`` / ``batch_size`` replace the
    configurations' own where given."""
    return {f"{c} p={p:g}": recipe_of(c, probability=float(p), steps=steps, batch_size=batch_size)
            for c in configurations for p in probabilities}


def toy_sweep(recipes: dict[str, TMSRecipe], seeds, *, n_inputs: int = 2000, cache_dir=None,
              progress: bool = True) -> pd.DataFrame:
    """:func:`score_toy` for every configuration (``{name: recipe}``) and seed (the model's,
    the inputs' and the finders'): one row per configuration x seed x method."""
    from tqdm.auto import tqdm

    rows = []
    for name, recipe in tqdm([(n, r) for n, r in recipes.items()], desc="configurations", disable=not progress):
        for seed in seeds:
            run = train_tms(recipe, cache_dir=cache_dir, seed=int(seed), progress=False)
            table = score_toy(toy_directions(run, n_inputs, int(seed)))
            rows.append(table.assign(configuration=name, features=recipe.n_features, hidden=recipe.n_hidden,
                                     probability=recipe.probability, seed=int(seed),
                                     final_loss=float(run.losses[-1])))
    return pd.concat(rows, ignore_index=True)


SUMMARY_COLUMNS = ("auroc", "ap", "mmcs", "recovered", "column mmcs", "matrix mmcs", "recovered (parameters)",
                   "represented", "cliff", "eigenspace overlap")


def sweep_summary(sweep: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per configuration x method: the mean of each number of :data:`SUMMARY_COLUMNS` over the
    seeds that give it and the half-width of its t interval (``<column> ±``; NaN with fewer
    than two)."""
    out = []
    for (configuration, method), group in sweep.groupby(["configuration", "method"], sort=False):
        row = {"configuration": configuration, "method": method, "features": int(group.features.iloc[0]),
               "k": int(group.k.iloc[0]), "seeds": len(group)}
        for column in SUMMARY_COLUMNS:  # every column, NaN where no seed gives a value
            values = group[column].dropna().to_numpy(dtype=float) if column in group else np.array([])
            row[column] = values.mean() if len(values) else np.nan
            row[f"{column} ±"] = (stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1)
                                  / np.sqrt(len(values)) if len(values) > 1 else np.nan)
        out.append(row)
    return pd.DataFrame(out)


def published_rows() -> pd.DataFrame:
    """The parameter decompositions' published MMCS, as rows beside the sweep's (not rerun)."""
    return pd.DataFrame([{"configuration": c, "method": f"{m} (published, not rerun)", "column mmcs": v}
                         for (c, m), v in PUBLISHED_PARAMETER_MMCS.items()])


def small_sae_scores(activations: np.ndarray, k: int, active: int, seed: int) -> np.ndarray:
    """(N, k): the activations of the ``k`` most often active latents of a TopK SAE (2k
    latents, ``active`` of them on per input, Adam at 3e-3, 100,000 samples) trained on the same
    N activations (N, d), a quarter of them (at most 256) held out: the SAE of a setting whose
    every input is scored (the N = p*p pairs of modular addition)."""
    held_out = min(256, len(activations) // 4)
    recipe = SAERecipe(width=2 * k, k=min(active, 2 * k), tokens=100_000, lr=3e-3, held_out=held_out, seed=seed,
                       batch_size=min(256, len(activations) - held_out))
    sae = train_sae(torch.tensor(activations, dtype=torch.float32), recipe).sae
    return find_directions(["sae"], FinderInputs(activations=activations, sae=sae), k)["sae"].scores


def modular_finder_table(run, *, null_draws: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Notebook 01's Table 1 with the field's finders beside the eNTK, on the MLP's hidden layer
    (:func:`~entk_utils.settings.modular.hidden_activations`, N = p*p pairs): the trace eNTK's
    eigenvectors in the blocks between its cliffs up to the one that holds most of ``sum``
    (K vectors in all), and K directions of each finder as functions over the pairs: PCA's top K
    components (in the eNTK's block ranges too), the K most active latents of a TopK SAE of the
    hidden activations (2K latents, 16 active, trained on the pairs in batches of 256, a quarter
    of them, at most 256, held out), K random readouts. ICA is
    left out: FastICA's K sources span PCA's top-K subspace exactly, so its span overlaps are
    PCA's. Rows per (method, block, family) with the random-subspace null of the same sizes."""
    from ..features.directions import pca_scores, random_scores
    from ..features.geometry import overlap_table
    from ..features.nulls import with_random_null
    from ..settings.modular import hidden_activations
    from . import mlp

    evals, evecs = top_eigenpairs(entk(run.model, run.inputs, reduce="trace"))
    blocks = cliff_blocks(find_cliffs(evals))
    fams = mlp.families(run)
    fourier = mlp.fourier_block(overlap_table(evecs, dict(enumerate(blocks)), fams))
    K = blocks[fourier][1]
    ranges = {**{f"block {i}": blocks[i] for i in range(fourier + 1)}, "all": (0, K)}
    hidden = hidden_activations(run.model, run.inputs).double().numpy()
    scores = {"entk": evecs[:, :K], "pca": pca_scores(hidden, K), "sae": small_sae_scores(hidden, K, 16, seed),
              "random": random_scores(hidden, K, seed)}
    tables = []
    for method, S in scores.items():
        chosen = ranges if method in ("entk", "pca") else {"all": (0, K)}
        tables.append(overlap_table(S, chosen, fams).assign(method=method))
    table = with_random_null(pd.concat(tables, ignore_index=True), len(run.inputs), n_draws=null_draws, seed=seed)
    return table.rename(columns={"cliff": "block", "eigvecs": "directions"})[
        ["method", "block", "directions", "family", "overlap", "dim", "null_mean", "null_q99", "null_p"]]


def transformer_finder_table(run, *, n_eigs: int = 20, null_draws: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Notebook 02's Table 2 with the finders beside the eNTK, on the Transformer's final
    residual stream (the unembedding's input at the last position, N = p*p pairs), at the key
    frequencies notebook 02 finds: the eigenvectors of the unembedding's eNTK (Table 2's
    ``W_U`` rows) and PCA's top components of the residual stream, each family given its range
    by the same rule (:func:`~entk_utils.features.geometry.family_overlap_table`); and, K being
    the end of the eNTK's ranges, the span of the K most active latents of a TopK SAE of the
    residual stream (2K latents, 4 active, trained on the pairs) and of K random readouts of
    it. Rows per (method, family) with the random-subspace null of the same sizes."""
    from ..features import fourier
    from ..features.directions import pca_scores, random_scores
    from ..features.geometry import family_overlap_table, overlap_table, parse_range
    from ..features.nulls import with_random_null
    from ..kernels.dense import layerwise_entk
    from . import transformer

    keys = fourier.first_key_frequencies(fourier.transformer_spectra(run.model, run.inputs, run.pairs.numpy(), run.p),
                                         fallback=True)[1]
    fams = transformer.families(run, keys)
    evecs = top_eigenpairs(layerwise_entk(run.model, run.inputs, ["W_U"], reduce="mean")["W_U"], n_eigs)[1]
    captured = []
    handle = run.model.W_U.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            run.model(run.inputs)
    finally:
        handle.remove()
    resid = captured[0].double().numpy()
    resid = resid[:, -1] if resid.ndim == 3 else resid  # (N, d) at the last position
    tables = [family_overlap_table(evecs, fams).assign(method="entk (W_U)"),
              family_overlap_table(pca_scores(resid, n_eigs), fams).assign(method="pca")]
    K = max(parse_range(r)[1] for r in tables[0].eigvecs)
    spans = {"sae": small_sae_scores(resid, K, 4, seed),
             "random": random_scores(resid, K, seed)}
    for method, S in spans.items():
        tables.append(overlap_table(S, {"all": (0, K)}, fams).drop(columns="cliff").assign(method=method, assigned=False))
    table = with_random_null(pd.concat(tables, ignore_index=True), len(run.inputs), n_draws=null_draws, seed=seed)
    return table.assign(keys=str(keys.tolist()))[["method", "family", "eigvecs", "overlap", "dim", "assigned",
                                                   "null_mean", "null_p", "keys"]]


def recovered_figure(summary: pd.DataFrame, column: str = "recovered", title: str = ""):
    """Per configuration (x) and unsupervised method with hidden-space vectors: the share of
    the features recovered (``column`` over the features), mean over seeds with its interval."""
    import matplotlib.pyplot as plt

    rows = summary[summary[column].notna()]
    configurations = list(dict.fromkeys(rows.configuration))
    methods = list(dict.fromkeys(rows.method))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(configurations)), 3.6), layout="constrained")
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        part = rows[rows.method == method].set_index("configuration").reindex(configurations)
        x = np.arange(len(configurations)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, part[column] / part.features, width, yerr=part.get(f"{column} ±", 0) / part.features, capsize=2,
               label=method)
    ax.set_xticks(np.arange(len(configurations)), configurations, rotation=20, ha="right")
    ax.set(ylabel=f"features {column} (|cos| >= {truth.RECOVERED_COSINE})", ylim=(0, 1.05), title=title)
    ax.legend(fontsize=7, ncol=4)
    return fig


def spectrum_figure(found: ToyDirections, title: str = ""):
    """The eNTK's spectrum on one toy model, with the number of represented features marked."""
    import matplotlib.pyplot as plt

    n_represented = int(truth.represented(found.run.features).sum())
    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    ax.semilogy(np.arange(len(found.eigenvalues)), np.maximum(found.eigenvalues, 1e-12), ".-", ms=4)
    ax.axvline(n_represented - 0.5, color="C1", ls="--", label=f"{n_represented} represented features")
    ax.set(xlabel="eigenvalue index", ylabel="eigenvalue", title=title or f"eNTK spectrum, TMS {found.run.recipe.name}")
    ax.legend(fontsize=8)
    return fig


def check_toy_parameters(v) -> None:
    """Notebook 07's values: ``seeds`` distinct integers >= 0, ``configurations`` a non-empty
    list of configuration names each making a valid recipe at every ``probabilities`` value
    (in (0, 1]) with ``steps`` / ``batch_size`` (None or >= 1), ``n_inputs`` at least twice the
    largest number of features (each half needs inputs with every feature on and off),
    ``modular`` True or False, ``null_draws`` >= 1."""
    from ..io import checks

    checks.integers("seeds", v["seeds"], minimum=0, unique=True)
    for p in checks.reals("probabilities", v["probabilities"], minimum=0, low_open=True):
        checks.real("probabilities", p, minimum=0, maximum=1, low_open=True)
    checks.integer("steps", v["steps"], minimum=1, allow_none=True)
    checks.integer("batch_size", v["batch_size"], minimum=1, allow_none=True)
    if not isinstance(v["configurations"], (list, tuple)) or not v["configurations"]:
        raise checks.fail("configurations", v["configurations"], "a non-empty list of names such as '40-10'")
    recipes = sweep_recipes(v["configurations"], v["probabilities"], steps=v["steps"], batch_size=v["batch_size"])
    widest = max(r.n_features for r in recipes.values())
    checks.integer("n_inputs", v["n_inputs"], minimum=max(100, 2 * widest),
                   note=f" (at least 100 and twice the {widest} features)")
    if not isinstance(v["modular"], bool):
        raise checks.fail("modular", v["modular"], "True or False")
    checks.integer("null_draws", v["null_draws"], minimum=1)
