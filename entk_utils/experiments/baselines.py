"""The eNTK against the field's feature finders (notebooks 03 and 06): an SAE trained and
cached here (or a published one), every finder of :data:`~entk_utils.features.finders.FINDERS`
on the same contexts, and one comparison on two metrics: the paper's (the best single
direction per label, chosen on one half and scored on the other) and SAEBench's k-sparse
probing; paired permutation tests of the eNTK against each unsupervised method with the same
budget, Holm-corrected over labels."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..features import sae as sae_tools
from ..features.finders import Directions, FinderInputs, find_directions
from ..features.scoring import best_direction_metrics, k_sparse_probe, score_directions
from ..features.significance import bootstrap_macro, holm, permutation_test
from ..io.cache import cached
from ..io.plotting import save_table

# Every finder the comparison runs, in table order; the eNTK first.
COMPARED = ("entk", "pca", "ica", "sae", "sae-all", "random", "mean-difference", "logistic")
# The paper's code at layer 16, N = 1024 (the original Gemma weights, Stanza tags): macro AUROC, AP.
PAPER_LAYER16 = {"entk": {"auroc": 0.827, "ap": 0.523}, "pca": {"auroc": 0.745, "ap": 0.409}}
PROBE_KS = (1, 2, 5)


# --------------------------------------------------------------------------- the SAE
def cached_trained_sae(cache_dir, activations: torch.Tensor, recipe: sae_tools.SAERecipe, *,
                       device: str = "cpu") -> sae_tools.TrainedSAE:
    """:func:`~entk_utils.features.sae.train_sae` on ``activations`` (M, d), cached in
    ``cache_dir`` by the activations' content, the recipe and the code."""
    def compute():
        trained = sae_tools.train_sae(activations, recipe, device=device)
        return {"state": {k: v.cpu() for k, v in trained.sae.state_dict().items()},
                "cfg": json.dumps(trained.sae.cfg.to_dict(), default=str), "quality": trained.quality}

    entry = cached(cache_dir, "sae", compute, produced_by=(*sae_tools.TRAINING_CODE, sae_tools.sae_quality),
                   activations=activations, recipe=asdict(recipe))
    return sae_tools.TrainedSAE(sae=_sae_from_entry(entry, device), quality=entry["quality"], recipe=recipe)


def _sae_from_entry(entry: dict, device: str):
    """The SAELens SAE stored by :func:`cached_trained_sae`."""
    from sae_lens import SAE

    cfg = json.loads(entry["cfg"])
    cfg["device"] = str(device)
    sae_cfg = SAE.get_sae_config_class_for_architecture(cfg["architecture"]).from_dict(cfg)
    sae = SAE.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg)
    sae.load_state_dict(entry["state"])
    return sae.to(device)


def loaded_sae(spec: str, *, device: str = "cpu"):
    """The SAE a notebook parameter names, other than ``"train"``: ``"<release>/<sae_id>"``
    (SAELens' registry, e.g. ``"gemma-scope-2-270m-pt-res-all/layer_16_width_16k_l0_small"``)
    or a folder saved by SAELens."""
    if Path(spec).is_dir():
        return sae_tools.load_sae(spec, device=device)
    if "/" not in spec:
        raise ValueError(f"sae={spec!r}: give 'train', '<release>/<sae_id>' or a folder saved by SAELens")
    release, sae_id = spec.split("/", 1)
    return sae_tools.load_published_sae(release, sae_id, device=device)


def notebook_sae(spec: str, token_activations, recipe: sae_tools.SAERecipe, *, cache_dir,
                 device: str = "cpu") -> sae_tools.TrainedSAE:
    """The SAE of notebooks 03 and 06: ``spec="train"`` trains one on ``token_activations``
    (a :class:`~entk_utils.settings.language.TokenActivations` without the scored contexts)
    with ``recipe``, cached; otherwise :func:`loaded_sae`, its quality measured on the same
    activations' held-out share (``recipe.held_out`` of them, drawn with ``recipe.seed``)."""
    X = token_activations.activations
    if spec == "train":
        return cached_trained_sae(cache_dir, X, recipe, device=device)
    sae = loaded_sae(spec, device=device)
    if sae.cfg.d_in != X.shape[1]:
        raise ValueError(f"sae={spec!r} reads {sae.cfg.d_in}-dimensional activations; this layer's are {X.shape[1]}")
    rows = np.sort(np.random.default_rng(recipe.seed).choice(len(X), min(recipe.held_out, len(X)), replace=False))
    return sae_tools.TrainedSAE(sae=sae, quality=sae_tools.sae_quality(sae, X[torch.from_numpy(rows)]), recipe=None)


def sae_report(trained: sae_tools.TrainedSAE, n_tokens: int) -> pd.Series:
    """What the SAE is and how well it reconstructs: kind and width, its training budget
    (for one trained here) next to Gemma Scope's, and its quality on held-out activations."""
    q = trained.quality
    row = {"SAE": sae_tools.describe_sae(trained.sae), "fraction of variance explained": round(q["fve"], 3),
           "L0 (active latents per token)": round(q["l0"], 1), "dead latents (on the held-out tokens)": f"{q['dead']} "
           f"({q['dead_fraction']:.1%})", "held-out tokens": q["n"]}
    if trained.recipe is not None:
        r = trained.recipe
        row["training"] = (f"{r.tokens // r.batch_size * r.batch_size:,} samples ({r.tokens / n_tokens:.1f} passes "
                           f"over {n_tokens:,} tokens), k = {r.k}")
        row["Gemma Scope, for scale"] = GEMMA_SCOPE_BUDGET
    return pd.Series(row)


# What the published SAEs were trained on, for scale (Lieberum et al. 2024, Gemma Scope on
# Gemma 2: 4 billion tokens for each 16k-latent SAE; Gemma Scope 2 gives no per-SAE count).
GEMMA_SCOPE_BUDGET = "4 billion tokens per 16k-latent SAE (Gemma Scope 1; Gemma Scope 2 states none per SAE)"


# --------------------------------------------------------------------------- the comparison
@dataclass
class Comparison:
    """What :func:`compare` found. ``directions``: the finders' output; ``per_label``: one
    row per (method, label) of the paper's metric (chosen on select, scored on evaluate);
    ``probing``: one row per (method, label, k) of k-sparse probing; ``tests``: per
    (method, label) the permutation p-value of the eNTK's AUROC minus the method's, and its
    Holm correction over labels; ``summary``: one row per method (macro values); ``dropped``:
    labels left out because a half holds a single class of them."""

    directions: dict
    per_label: pd.DataFrame
    probing: pd.DataFrame
    tests: pd.DataFrame
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    dropped: list = field(default_factory=list)


def compare(found: dict[str, Directions], labels: pd.DataFrame, select, evaluate, *, n_boot: int,
            n_permutations: int, seed: int, ks=PROBE_KS, paper: dict | None = None, progress: bool = True) -> Comparison:
    """Score every finder's directions on ``labels`` (N, L) both ways, test the eNTK against
    every unsupervised method with the same budget (not the supervised ceilings, whose fit
    would have to be repeated on every shuffle, nor the whole SAE dictionary, whose thousands
    of columns make a thousand shuffles too slow here), and summarise per method with
    bootstrap intervals of the macro AUROC and AP. ``paper``: ``{method: {"auroc", "ap"}}``
    shown beside (e.g. :data:`PAPER_LAYER16`). Labels with a single class in a half are left
    out (named in ``dropped``)."""
    halves = [labels.iloc[np.asarray(select)], labels.iloc[np.asarray(evaluate)]]
    dropped = [c for c in labels.columns if any(h[c].nunique() < 2 for h in halves)]
    labels = labels.drop(columns=dropped)
    if labels.empty:
        raise ValueError(f"every label has a single class in a half ({dropped}); use more contexts")
    Y = labels.T.to_numpy()
    per_label, probing, tests, summary = [], [], [], []
    for method, d in found.items():
        table = score_directions(d.scores, labels, select, evaluate)
        per_label.append(table.assign(method=method))
        probing.append(k_sparse_probe(d.scores, labels, select, evaluate, ks=[k for k in ks if k <= d.k])
                       .assign(method=method))
        chosen = best_direction_metrics(d.scores, Y, select, evaluate)
        boot = bootstrap_macro(chosen.chosen_scores(d.scores, evaluate), Y[:, evaluate], n_boot=n_boot, seed=seed)
        row = {"method": method, "directions": d.k, "supervised": d.supervised, "larger budget": d.larger_budget,
               "auroc": table.auroc.mean(), "auroc 95% CI": f"{boot.auroc_ci[0]:.3f}-{boot.auroc_ci[1]:.3f}",
               "ap": table.ap.mean(), "ap 95% CI": f"{boot.ap_ci[0]:.3f}-{boot.ap_ci[1]:.3f}"}
        for k in ks:
            at_k = probing[-1][probing[-1].k == k]
            row[f"probe auroc k={k}"] = at_k.auroc.mean() if len(at_k) else np.nan
        if paper is not None:
            row["paper auroc"] = paper.get(method, {}).get("auroc", np.nan)
            row["paper ap"] = paper.get(method, {}).get("ap", np.nan)
        row["description"] = d.description
        summary.append(row)
    tested = [m for m, d in found.items() if "entk" in found and m != "entk" and not (d.supervised or d.larger_budget)]
    for method in tqdm(tested, desc="permutation tests, eNTK against", disable=not progress):
        d = found[method]
        p = [permutation_test(found["entk"].scores, d.scores, labels[label].to_numpy(), select, evaluate,
                              n_permutations=n_permutations, seed=seed) for label in labels.columns]
        tests.append(pd.DataFrame({"method": method, "label": labels.columns,
                                   "entk minus method auroc": [t.observed for t in p],
                                   "p_perm": [t.p_value for t in p], "p_holm": holm([t.p_value for t in p])}))
    return Comparison(directions=found, per_label=pd.concat(per_label, ignore_index=True),
                      probing=pd.concat(probing, ignore_index=True),
                      tests=pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(),
                      summary=pd.DataFrame(summary).set_index("method"), dropped=dropped)


def save_comparison(comparison: Comparison, name: str, out_dir) -> None:
    """Write the comparison's tables to ``out_dir``: ``name`` (the summary without the
    descriptions), ``name_methods`` (what each method is), ``name_per_label`` and
    ``name_probing``."""
    summary = comparison.summary.reset_index()
    save_table(summary.drop(columns="description"), name, out_dir)
    save_table(summary[["method", "description"]], f"{name}_methods", out_dir)
    save_table(comparison.per_label, f"{name}_per_label", out_dir)
    save_table(comparison.probing.drop(columns="chosen"), f"{name}_probing", out_dir)


def significant_labels(tests: pd.DataFrame, level: float = 0.05) -> pd.DataFrame:
    """Per method: how many labels the eNTK beats and trails with Holm-corrected p < level."""
    if tests.empty:
        return pd.DataFrame(columns=["eNTK better", "eNTK worse", "labels"])
    significant = tests[tests.p_holm < level]
    return pd.DataFrame({
        "eNTK better": significant[significant["entk minus method auroc"] > 0].groupby("method").size(),
        "eNTK worse": significant[significant["entk minus method auroc"] < 0].groupby("method").size(),
        "labels": tests.groupby("method").size()}).fillna(0).astype(int)


def comparison_inputs(activations, eigenvectors, trained: sae_tools.TrainedSAE | None, labels: pd.DataFrame,
                      select) -> FinderInputs:
    """The finders' inputs for one layer: the contexts' activations (N, d), the eNTK
    eigenvectors, the SAE (or None) and the labels for the supervised finders to fit on the
    select half (those with both classes there; :func:`compare` names the others)."""
    fit = labels.iloc[np.asarray(select)]
    return FinderInputs(activations=activations, eigenvectors=eigenvectors, sae=None if trained is None else trained.sae,
                        labels=labels[[c for c in labels.columns if fit[c].nunique() == 2]], select=select)


def run_finders(inputs: FinderInputs, k: int, seed: int, methods=COMPARED) -> dict[str, Directions]:
    """:func:`~entk_utils.features.finders.find_directions` for ``methods`` (the SAE's two
    left out when there is no SAE)."""
    chosen = [m for m in methods if inputs.sae is not None or not m.startswith("sae")]
    return find_directions(chosen, inputs, k, seed)


def comparison_figure(comparison: Comparison, title: str = ""):
    """Macro held-out AUROC per method on both metrics: the best single direction (with its
    bootstrap interval) and k-sparse probing at each k. Returns the figure."""
    import matplotlib.pyplot as plt

    s = comparison.summary
    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
    x = np.arange(len(s))
    low_high = np.array([[float(v) for v in ci.split("-")] for ci in s["auroc 95% CI"]])
    ax.bar(x - 0.3, s.auroc, width=0.2, label="best single direction",
           yerr=np.abs(low_high.T - s.auroc.to_numpy()), capsize=2)
    probe_columns = [c for c in s.columns if c.startswith("probe auroc")]
    for i, column in enumerate(probe_columns):
        ax.bar(x - 0.1 + 0.2 * i, s[column], width=0.2, label=column.replace("probe auroc", "k-sparse probe,"))
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    names = [f"{m}{' (sup.)' if s.supervised[m] else ''}{' (all)' if s['larger budget'][m] else ''}" for m in s.index]
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="macro held-out AUROC", ylim=(0.4, 1), title=title)
    ax.legend(fontsize=7, ncol=2)
    return fig
