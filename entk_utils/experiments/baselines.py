"""The eNTK against the field's feature finders (notebooks 03 and 06): an SAE trained and
cached here (or a published one), every finder of :data:`~entk_utils.features.finders.FINDERS`
on the same contexts, and one comparison on two metrics: the paper's (the best single
direction per label, chosen on one half and scored on the other) and SAEBench's k-sparse
probing. Every interval, and the paired test of the eNTK against each unsupervised method with
the same budget (labels x methods corrected together), comes from the same repeated half-splits
(:func:`~entk_utils.features.resampling.resample_halves`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..features import sae as sae_tools
from ..features.finders import FINDERS, Directions, FinderInputs, find_directions
from ..features.labels import ComparableLabels, comparable_labels
from ..features.probing import k_sparse_probe
from ..features.resampling import MIN_REPEATS, Resampled, resample_halves
from ..features.scoring import has_both_classes, score_directions
from ..features.significance import LEVEL
from ..io import checks
from ..io.cache import cached
from ..io.plotting import save_table

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


@dataclass(frozen=True)
class SAESource:
    """The SAE of a finder study, as notebooks 03 and 06 name it (its fields are their
    parameters): ``sae`` ``"train"`` (a TopK SAE trained here: ``sae_width`` latents,
    ``sae_k`` active, ``sae_tokens`` samples in batches of ``sae_batch_size``, ``sae_held_out``
    activations kept out to measure it, seeded by ``seed``), ``"<release>/<sae_id>"`` of
    SAELens' registry, or a folder saved by SAELens; ``sae_documents``: how many documents of
    the text its activations come from (None: all). :meth:`check` validates every field once."""

    sae: str = "train"
    sae_documents: int | None = 100
    sae_width: int = 512
    sae_k: int = 16
    sae_tokens: int = 100_000
    sae_batch_size: int = 1024
    sae_held_out: int = 2048
    seed: int = 0

    @classmethod
    def of_parameters(cls, values: Mapping[str, Any]) -> SAESource:
        """The source a notebook's parameters (``globals()``) name."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def recipe(self) -> sae_tools.SAERecipe:
        """How an SAE is trained here (:class:`~entk_utils.features.sae.SAERecipe`)."""
        return sae_tools.SAERecipe(width=self.sae_width, k=self.sae_k, tokens=self.sae_tokens,
                                   batch_size=self.sae_batch_size, held_out=self.sae_held_out, seed=self.seed)

    def check(self, n_activations: int | None = None) -> None:
        """One line naming the first parameter that cannot work: ``sae`` (a registry id is
        looked up offline), then the recipe's fields (for ``n_activations`` inputs, where given)."""
        spec = self.sae
        if not isinstance(spec, str) or not spec:
            raise checks.fail("sae", spec, "'train', a folder saved by SAELens, or '<release>/<sae_id>'")
        if spec != "train" and not Path(spec).is_dir():
            release, _, sae_id = spec.partition("/")
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

            directory = get_pretrained_saes_directory()
            if release not in directory or sae_id not in directory[release].saes_map:
                raise checks.fail("sae", spec, "'train', an existing folder saved by SAELens, or '<release>/<sae_id>' "
                                               "of SAELens' registry (e.g. 'gemma-scope-2-270m-pt-res-all/"
                                               "layer_16_width_16k_l0_small')")
        checks.integer("sae_documents", self.sae_documents, minimum=1, allow_none=True)
        self.recipe().check(n_activations if spec == "train" else None,
                            names={f: f"sae_{f}" for f in ("width", "k", "tokens", "batch_size", "held_out")})


def notebook_sae(source: SAESource, activations, *, cache_dir, device: str = "cpu") -> sae_tools.TrainedSAE:
    """The SAE ``source`` names, over ``activations`` ((M, d) tensor, or a
    :class:`~entk_utils.settings.language.TokenActivations` without the scored contexts):
    trained on them (cached) for ``"train"``; otherwise :func:`loaded_sae`, its quality measured
    on a held-out share of them (``sae_held_out``, drawn with ``seed``)."""
    X = getattr(activations, "activations", activations)
    source.check(len(X))
    if source.sae == "train":
        return cached_trained_sae(cache_dir, X, source.recipe(), device=device)
    sae = loaded_sae(source.sae, device=device)
    if sae.cfg.d_in != X.shape[1]:
        raise ValueError(f"sae={source.sae!r} reads {sae.cfg.d_in}-dimensional activations; these are {X.shape[1]}")
    rows = np.sort(np.random.default_rng(source.seed).choice(len(X), min(source.sae_held_out, len(X)), replace=False))
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
    """What :func:`compare` gives. ``directions``: the finders' output; ``labels``: the
    labels compared (:func:`~entk_utils.features.labels.comparable_labels`: identical ones
    merged, thin ones left out); ``per_label``: one row per (method, label) of the paper's
    metric on the table's split (chosen on select, scored on evaluate) with ``auroc_splits``
    / ``ap_splits``, its mean over the resampled splits; ``probing``: one row per (method,
    label, k) of k-sparse probing; ``resampled``: every split's values; ``tests``: per (method,
    label) the eNTK's AUROC minus the method's over the splits, its interval, the paired
    test's p-value and its Holm correction over all rows; ``summary``: one row per method."""

    directions: dict
    labels: ComparableLabels
    per_label: pd.DataFrame
    probing: pd.DataFrame
    resampled: Resampled
    tests: pd.DataFrame
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)


def tested_methods(directions: dict[str, Directions], reference: str = "entk") -> list[str]:
    """The methods the eNTK is tested against: every unsupervised one with the same budget
    (the supervised ceilings and the whole SAE dictionary are reference rows, not rivals)."""
    return [m for m, d in directions.items() if reference in directions and m != reference
            and not (d.supervised or d.larger_budget)]


def compare(directions: dict[str, Directions], labels: pd.DataFrame, strata, select, evaluate, *, n_splits: int,
            seed: int, min_per_half: int = 1, ks=PROBE_KS, paper: dict | None = None,
            progress: bool = True) -> Comparison:
    """Score every finder's directions on ``labels`` (N, L) both ways and resample the paper's
    metric over ``n_splits`` half-splits stratified by ``strata`` (N,) (the same splits for
    every method; the supervised ceilings refit on each), which gives every interval and the
    paired tests of the eNTK against :func:`tested_methods`. ``select`` / ``evaluate``: the
    table's split (the one the notebook shows per label and the dashboards use). Labels with
    fewer than ``min_per_half`` positives or negatives in a half are left out and identical
    ones merged (``Comparison.labels`` names them). ``paper``: ``{method: {"auroc", "ap"}}``
    shown beside (e.g. :data:`PAPER_LAYER16`)."""
    clean = comparable_labels(labels, select, evaluate, min_per_half=min_per_half)
    labels = clean.labels
    refit = [m for m, d in directions.items() if d.supervised and d.k != labels.shape[1]]
    if refit:
        raise ValueError(f"the supervised finders {refit} were fit on other labels than the {labels.shape[1]} compared "
                         f"({clean.describe()}): give comparison_inputs the labels of comparable_labels")
    resampled = resample_halves({m: d.refit or d.scores for m, d in directions.items()}, labels, strata,
                                repeats=n_splits, seed=seed, progress=progress)
    splits = {metric: pd.DataFrame(resampled.values[metric].mean(axis=0), index=list(directions), columns=labels.columns)
              for metric in ("auroc", "ap")}
    macro = resampled.macro_table()
    per_label, probing, summary = [], [], []
    for method, d in directions.items():
        table = score_directions(d.scores, labels, select, evaluate)
        table["auroc_splits"] = splits["auroc"].loc[method, table.label].to_numpy()
        table["ap_splits"] = splits["ap"].loc[method, table.label].to_numpy()
        per_label.append(table.assign(method=method))
        probing.append(k_sparse_probe(d.scores, labels, select, evaluate, ks=[k for k in ks if k <= d.k])
                       .assign(method=method))
        row = {"method": method, "directions": d.k, "supervised": d.supervised, "larger budget": d.larger_budget,
               **macro.loc[method].to_dict(), "auroc (one split)": table.auroc.mean(), "ap (one split)": table.ap.mean()}
        for k in ks:
            at_k = probing[-1][probing[-1].k == k]
            row[f"probe auroc k={k}"] = at_k.auroc.mean() if len(at_k) else np.nan
        if paper is not None:
            row["paper auroc"] = paper.get(method, {}).get("auroc", np.nan)
            row["paper ap"] = paper.get(method, {}).get("ap", np.nan)
        row["description"] = d.description
        summary.append(row)
    tested = tested_methods(directions)
    tests = resampled.differences("entk", tested) if tested else pd.DataFrame()
    return Comparison(directions=directions, labels=clean, per_label=pd.concat(per_label, ignore_index=True),
                      probing=pd.concat(probing, ignore_index=True), resampled=resampled,
                      tests=tests.rename(columns={"difference": "entk minus method auroc"}),
                      summary=pd.DataFrame(summary).set_index("method"))


def save_comparison(comparison: Comparison, name: str, out_dir) -> None:
    """Write the comparison's tables to ``out_dir``: ``name`` (the summary without the
    descriptions), ``name_methods`` (what each method is), ``name_per_label``,
    ``name_probing`` and ``name_tests``."""
    summary = comparison.summary.reset_index()
    save_table(summary.drop(columns="description"), name, out_dir)
    save_table(summary[["method", "description"]], f"{name}_methods", out_dir)
    save_table(comparison.per_label, f"{name}_per_label", out_dir)
    save_table(comparison.probing.drop(columns="chosen"), f"{name}_probing", out_dir)
    if not comparison.tests.empty:
        save_table(comparison.tests, f"{name}_tests", out_dir)


def significant_labels(tests: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per method: how many labels the eNTK beats and trails with Holm-corrected p < level
    (the correction over every label x method of ``tests``)."""
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
    fit = has_both_classes(labels.to_numpy().T[:, np.asarray(select)])
    return FinderInputs(activations=activations, eigenvectors=eigenvectors, sae=None if trained is None else trained.sae,
                        labels=labels.loc[:, fit], select=select)


def run_finders(inputs: FinderInputs, k: int, seed: int, methods=None) -> dict[str, Directions]:
    """:func:`~entk_utils.features.finders.find_directions` for ``methods`` (default: every
    finder of :data:`~entk_utils.features.finders.FINDERS`, in its order; those that read an SAE
    left out when there is none)."""
    chosen = [m for m in (FINDERS if methods is None else methods) if inputs.sae is not None
              or "sae" not in FINDERS[m].needs]
    return find_directions(chosen, inputs, k, seed)


def comparison_figure(comparison: Comparison, title: str = ""):
    """Macro held-out AUROC per method on both metrics: the best single direction (with its
    bootstrap interval) and k-sparse probing at each k. Returns the figure."""
    import matplotlib.pyplot as plt

    s = comparison.summary
    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
    x = np.arange(len(s))
    yerr = np.abs(s[["auroc low", "auroc high"]].to_numpy().T - s.auroc.to_numpy())
    ax.bar(x - 0.3, s.auroc, width=0.2, label="best single direction (mean over splits)", yerr=yerr, capsize=2)
    probe_columns = [c for c in s.columns if c.startswith("probe auroc")]
    for i, column in enumerate(probe_columns):
        ax.bar(x - 0.1 + 0.2 * i, s[column], width=0.2, label=column.replace("probe auroc", "k-sparse probe,"))
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    names = [f"{m}{' (sup.)' if s.supervised[m] else ''}{' (all)' if s['larger budget'][m] else ''}" for m in s.index]
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="macro held-out AUROC", ylim=(0.4, 1), title=title)
    ax.legend(fontsize=7, ncol=2)
    return fig


# --------------------------------------------------------------------------- the notebooks' parameters
def check_comparison_parameters(v: Mapping[str, Any], half: int, note: str) -> None:
    """Notebooks 03 and 06's statistics: ``min_per_half`` in 1..``half`` (``note`` says why),
    ``n_splits`` at least :data:`~entk_utils.features.resampling.MIN_REPEATS` (``n_boot``, its
    old name, None or an integer: the notebook has taken it as ``n_splits`` already)."""
    checks.integer("min_per_half", v["min_per_half"], minimum=1, maximum=half, note=note)
    checks.integer("n_splits", v["n_splits"], minimum=MIN_REPEATS,
                   note=" (the splits' variance is the interval: fewer give no usable spread)")
    checks.integer("n_boot", v["n_boot"], minimum=MIN_REPEATS, allow_none=True)


def check_finder_parameters(v: Mapping[str, Any], n_contexts: int) -> None:
    """Notebooks 03 and 06's finder and explanation parameters: the SAE's (:class:`SAESource`)
    and ``candidate_min_count`` <= half the ``n_contexts``."""
    SAESource.of_parameters(v).check()
    checks.integer("candidate_min_count", v["candidate_min_count"], minimum=1, maximum=n_contexts // 2,
                   note=" (half the contexts: a candidate needs that many on either side)")
