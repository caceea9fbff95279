"""Notebook 01's analyses (the MLP on modular addition), one function per table or figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..features import dynamics, fourier, nulls
from ..features.geometry import captured_fraction, overlap_table, projection_heatmap
from ..io.plotting import plot_heatmap
from ..kernels import eigen
from ..kernels.dense import entk
from ..settings.modular import reinitialised


def fourier_block_overlaps(run, names=("sum", "diff")) -> pd.Series:
    """Table 1's headline for a trained MLP: the overlap of the cliff block that holds most of
    ``sum`` with each family of ``names``.

    run : a :class:`~entk_utils.settings.modular.ModularRun` of the Gromov MLP. The trace eNTK over
    all pairs, all eigenpairs, cliffs by :func:`~entk_utils.kernels.eigen.find_cliffs`, overlaps by
    :func:`~entk_utils.features.geometry.overlap_table`. Returns ``{family: overlap}`` plus
    ``"eigvecs"`` (the block) and ``"test_acc"`` (the run's final test accuracy).
    """
    evals, evecs = eigen.top_eigenpairs(entk(run.model, run.inputs, reduce="trace"))
    blocks = dict(enumerate(eigen.cliff_blocks(eigen.find_cliffs(evals))))
    table = overlap_table(evecs, blocks, families(run, dict.fromkeys(("sum", *names))))
    block = table[table.cliff == fourier_block(table)].set_index("family")
    return pd.Series({"eigvecs": block.eigvecs.iloc[0], **{f: block.overlap[f] for f in names},
                      "test_acc": run.result.history.test_acc.iloc[-1]})


TABLE1_FAMILIES = ("a", "b", "sum", "diff")  # the Fourier families Table 1 scores each cliff block against
PAPER = {"cliffs": "1, 57, 113", "sum": 26.47, "diff": 25.21}  # the paper's code, p = 29


def families(run, names=TABLE1_FAMILIES) -> dict[str, np.ndarray]:
    """``{name: (N, p-1) Fourier family over all pairs}`` for the run's modulus."""
    pairs = run.pairs.numpy()
    return {name: fourier.feature_family(pairs, run.p, name) for name in names}


def table1(run, evecs: np.ndarray, blocks, *, null_draws: int, seed: int, init_seeds) -> pd.DataFrame:
    """Table 1: the overlap of every block between cliffs with every family
    (:func:`~entk_utils.features.geometry.overlap_table`, rows per ``(cliff, family)``),
    with the random-subspace null of ``null_draws`` draws and the same eigenvector ranges of
    the eNTK of untrained networks (one per seed of ``init_seeds``)."""
    fams, labels = families(run), dict(enumerate(blocks))
    table = nulls.with_random_null(overlap_table(evecs, labels, fams), len(run.inputs), n_draws=null_draws, seed=seed)
    init_tables = [overlap_table(eigen.top_eigenpairs(entk(reinitialised(run.model, s), run.inputs))[1], labels, fams)
                   for s in init_seeds]
    return nulls.with_reference_overlaps(table, init_tables, on=["cliff", "family"])


def fourier_block(table: pd.DataFrame) -> int:
    """The cliff block that overlaps ``sum`` most (the second cliff when the spectrum looks
    as the paper's)."""
    return int(table.loc[table.family == "sum"].sort_values("overlap").iloc[-1].cliff)


def heatmaps(run, evecs: np.ndarray, blocks):
    """The per-frequency heatmaps of the blocks of more than one eigenvector. Top: the
    fraction of each frequency plane of each family inside the block; bottom: each
    eigenvector's |cos| to every frequency plane, rows sorted. Returns the figure."""
    import matplotlib.pyplot as plt

    fams, pairs, p = families(run), run.pairs.numpy(), run.p
    freqs = fourier.check_frequencies(None, p)
    planes = {name: fourier.frequency_planes(pairs, p, name) for name in fams}
    all_planes = [plane for name in fams for plane in planes[name]]
    cliff_ids = [i for i, (a, b) in enumerate(blocks) if b - a > 1]
    fig, axes = plt.subplots(2, len(cliff_ids), figsize=(6 * len(cliff_ids), 8), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 3]}, layout="constrained")
    for col, i in enumerate(cliff_ids):
        start, stop = blocks[i]
        span = evecs[:, start:stop]
        captured = np.array([captured_fraction(span, planes[name]) for name in fams])
        plot_heatmap(axes[0, col], captured, [str(k) for k in freqs], "family",
                     f"block {i} (eigenvectors {start}-{stop - 1})\nfraction of each frequency plane inside the block")
        axes[0, col].set_yticks(range(len(fams)), list(fams))
        axes[0, col].set_xlabel("frequency k")
        heat = projection_heatmap(span, all_planes)
        heat = heat[np.lexsort((-heat.max(1), heat.argmax(1)))]
        im = plot_heatmap(axes[1, col], heat, [], f"eigenvector of block {i} (sorted)",
                          "its eigenvectors one by one:\n|cos| to each frequency plane")
        axes[1, col].set_xticks([(j + 0.5) * len(freqs) - 0.5 for j in range(len(fams))], list(fams))
        for j in range(1, len(fams)):
            axes[1, col].axvline(j * len(freqs) - 0.5, color="w", lw=1)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="fraction / |cos|", shrink=0.5)
    return fig


def eigenvector_shares(run, evecs: np.ndarray, blocks) -> pd.DataFrame:
    """Per block of more than one eigenvector: the median share of an eigenvector in its
    strongest family (1 would mean pure families) and how many eigenvectors each family is
    the strongest for."""
    fams = families(run)
    share = projection_heatmap(evecs, list(fams.values())) ** 2
    rows = []
    for i, (start, stop) in enumerate(blocks):
        if stop - start > 1:
            block = share[start:stop]
            rows.append({"block": i, "median share in strongest family": np.median(block.max(1)),
                         "strongest family counts": pd.Series(np.array(list(fams))[block.argmax(1)]).value_counts()
                         .to_dict()})
    return pd.DataFrame(rows)


def grokking_curve(run, block: tuple[int, int]) -> pd.DataFrame:
    """Figure 2's curve: at every checkpoint, the overlap of the eigenvectors ``block`` of
    the trace eNTK with ``sum`` and ``diff``, and ``d_sum``, the derivative of the ``sum``
    overlap by central differences."""
    fams = families(run, ("sum", "diff"))
    curve = dynamics.overlap_over_training(run.model, run.result.checkpoints, run.inputs, block, fams)
    curve["d_sum"] = dynamics.derivative(curve.epoch, curve["sum"])
    return curve


def grokking_steps(history: pd.DataFrame, curve: pd.DataFrame) -> dict[str, int]:
    """``peak`` (of ``d_sum``), ``steepest_rise`` (of test accuracy) and ``train_99`` (first
    step with train accuracy >= 99%)."""
    return {"peak": int(curve.epoch[curve.d_sum.idxmax()]),
            "steepest_rise": int(dynamics.steepest_rise(history.epoch, history.test_acc)),
            "train_99": int(history.epoch[history.train_acc >= 0.99].iloc[0])}


def summary(run, cliffs, table: pd.DataFrame, steps: dict[str, int]) -> pd.DataFrame:
    """The summary table: this run's cliffs, second-cliff overlaps (with their nulls) and
    grokking steps beside the paper's code."""
    second = table[table.cliff == fourier_block(table)].set_index("family")
    top = run.p - 1
    return pd.DataFrame([
        ("cliff positions", ", ".join(map(str, np.asarray(cliffs).tolist())), "", PAPER["cliffs"]),
        ("second cliff vs sum", f"{second.overlap['sum']:.2f} / {top}", nulls.describe_nulls(second.loc["sum"], digits=2),
         f"{PAPER['sum']:.2f} / 28"),
        ("second cliff vs diff", f"{second.overlap['diff']:.2f} / {top}",
         nulls.describe_nulls(second.loc["diff"], digits=2), f"{PAPER['diff']:.2f} / 28"),
        ("step of peak d(overlap)/d(step)", str(steps["peak"]), "", "~70-80"),
        ("step of steepest test-accuracy rise", str(steps["steepest_rise"]), "", "~70-80 (sharp rise)"),
        ("step train accuracy reaches 99%", str(steps["train_99"]), "", "~40"),
    ], columns=["quantity", "this run", "nulls: random subspaces, eNTK at init", "paper (code, p=29)"])
