"""Notebook 02's analyses (the 1-layer Transformer on modular addition): the layerwise kernels,
Table 2 with its nulls, Figure 3's curve and the summary, one function per result.

``run`` is a :class:`~entk_utils.settings.modular.ModularRun` of the Transformer throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..features import dynamics, fourier, nulls
from ..features.geometry import family_overlap_table, overlaps_at_ranges, parse_range
from ..kernels import eigen
from ..kernels.dense import layerwise_entk
from ..settings.modular import OneLayerTransformer, reinitialised

WEIGHTS = list(OneLayerTransformer.WEIGHTS)
TABLE2_FAMILIES = ("sum", "axis_sum")  # the Fourier families Table 2 scores every weight's kernel against
TABLE2_COLUMNS = ["weight", "family", "eigvecs", "overlap", "dim", "percent", "assigned", "n_vectors", "family_dim"]
# The paper's seed-2 run (its code): key frequencies and the W_U rows of its Table 2.
PAPER = {"keys": "[1, 12] (seed 2)", "sum": ("0-4", 3.965), "axis_sum": ("5-8", 3.940)}


def layer_kernels(model, inputs) -> dict:
    """``{weight: (N, N) kernel}`` for the nine weights (``reduce="mean"``: the mean over all
    logit pairs), plus ``"full"``, their sum (the whole eNTK)."""
    kernels = layerwise_entk(model, inputs, WEIGHTS, reduce="mean")
    kernels["full"] = sum(kernels.values())
    return kernels


def families(run, keys) -> dict[str, np.ndarray]:
    """``{"sum", "axis_sum"}`` Fourier families at the key frequencies ``keys`` (N, 2 * len(keys))."""
    pairs = run.pairs.numpy()
    return {name: fourier.feature_family(pairs, run.p, name, keys) for name in TABLE2_FAMILIES}


def table2(run, eigenpairs: Mapping[str, tuple], keys, *, n_eigs: int, null_draws: int, seed: int,
           init_seeds: Sequence[int]) -> pd.DataFrame:
    """Table 2: for every kernel of ``eigenpairs`` (``{weight: (evals, evecs)}``), the
    eigenvector range of each family and its overlap
    (:func:`~entk_utils.features.geometry.family_overlap_table`), with the random-subspace
    null and the same ranges of the layerwise eNTK of untrained networks."""
    fams = families(run, keys)
    table = pd.concat([family_overlap_table(vecs, fams).assign(weight=name) for name, (_, vecs) in eigenpairs.items()],
                      ignore_index=True)[TABLE2_COLUMNS]
    init_tables = []
    for init_seed in init_seeds:
        for name, K in layer_kernels(reinitialised(run.model, init_seed), run.inputs).items():
            ranges = table[table.weight == name].set_index("family").eigvecs
            init_tables.append(overlaps_at_ranges(eigen.top_eigenpairs(K, n_eigs)[1], ranges, fams).assign(weight=name))
    table = nulls.with_random_null(table, len(run.inputs), n_draws=null_draws, seed=seed)
    return nulls.with_reference_overlaps(table, init_tables, on=["weight", "family"])


def sum_block(table: pd.DataFrame) -> tuple[int, int]:
    """The W_U eigenvectors (start, stop) that Table 2 assigns to ``sum``."""
    return parse_range(table[(table.weight == "W_U") & (table.family == "sum")].eigvecs.iloc[0])


def grokking_curve(run, block: tuple[int, int], keys) -> pd.DataFrame:
    """Figure 3's curve: at every checkpoint the overlap of the W_U kernel's eigenvectors
    ``block`` with ``sum`` at the final ``keys`` (column ``final keys``) and at the keys the
    checkpoint itself shows (``checkpoint keys``, NaN where none stand out), and ``d_final``,
    the derivative of the first."""
    pairs, final = run.pairs.numpy(), families(run, keys)["sum"]

    def features_at(snapshot):
        try:
            _, own = fourier.first_key_frequencies(fourier.transformer_spectra(snapshot, run.inputs, pairs, run.p))
        except ValueError:
            return {"final keys": final, "checkpoint keys": None}
        return {"final keys": final, "checkpoint keys": fourier.feature_family(pairs, run.p, "sum", own)}

    curve = dynamics.overlap_over_training(run.model, run.result.checkpoints, run.inputs, block, features_at,
                                           params="W_U", reduce="mean")
    curve["d_final"] = dynamics.derivative(curve.epoch, curve["final keys"])
    return curve


def grokking_epochs(history: pd.DataFrame, curve: pd.DataFrame, p: int) -> dict[str, float]:
    """``peak`` (of ``d_final``), ``leaves_chance`` (test accuracy above 2/p for good),
    ``half_way`` (above 50% for good), ``steepest_rise`` (of test accuracy on the checkpoint
    grid) and ``differing_checkpoints`` (where the checkpoint's own keys give another overlap)."""
    on_grid = history[history.epoch.isin(curve.epoch)]
    differs = curve["checkpoint keys"].notna() & (curve["checkpoint keys"] - curve["final keys"]).abs().gt(1e-6)
    return {"peak": int(curve.epoch[curve.d_final.idxmax()]),
            "leaves_chance": dynamics.sustained_crossing(history.epoch, history.test_acc, 2 / p),
            "half_way": dynamics.sustained_crossing(history.epoch, history.test_acc, 0.5),
            "steepest_rise": int(dynamics.steepest_rise(on_grid.epoch, on_grid.test_acc)),
            "differing_checkpoints": int(differs.sum())}


def summary(table: pd.DataFrame, keys, key_source: str, epochs: Mapping[str, float], history: pd.DataFrame,
            seed: int) -> pd.DataFrame:
    """The summary table: key frequencies, the W_U overlaps with their nulls and the grokking
    epochs of this run beside the paper's code."""
    w_u = table[table.weight == "W_U"].set_index("family")

    def overlap(family):
        return f"{w_u.loc[family, 'eigvecs']}: {w_u.loc[family, 'overlap']:.3f} / {w_u.loc[family, 'dim']}"

    return pd.DataFrame([
        ("key frequencies (seed-dependent)", f"{np.asarray(keys).tolist()} from {key_source}", "", PAPER["keys"]),
        *[(f"W_U eigvecs vs {family}", overlap(family), nulls.describe_nulls(w_u.loc[family], digits=3),
           f"{PAPER[family][0]}: {PAPER[family][1]:.3f} / 4") for family in TABLE2_FAMILIES],
        ("epoch of peak d(overlap)/d(epoch)", str(epochs["peak"]), "", "~150"),
        ("epoch test accuracy leaves chance", f"{epochs['leaves_chance']:.0f}", "", "~150"),
        ("epoch test accuracy passes 50%", f"{epochs['half_way']:.0f}", "", "between ~150 and ~2000"),
        ("final test accuracy", f"{history.test_acc.iloc[-1]:.3f}", "", "~1.0"),
    ], columns=["quantity", f"this run (seed {seed})", "nulls: random subspaces, eNTK at init", "paper (code)"])
