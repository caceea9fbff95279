"""Whole analyses that a notebook reports as one table: each function takes a trained run
and returns the table, so notebooks stay narrative and the analysis is tested once."""

from __future__ import annotations

import pandas as pd

from . import alignment, eigen, fourier, kernels


def mlp_fourier_block_overlaps(run, families=("sum", "diff")) -> pd.Series:
    """Table 1's headline for a trained MLP: the overlap of the cliff block that holds most of
    ``sum`` with each of ``families``.

    run : a :class:`~entk_utils.modular.ModularRun` of the Gromov MLP. The trace eNTK over
    all pairs, all eigenpairs, cliffs by :func:`~entk_utils.eigen.find_cliffs`, overlaps by
    :func:`~entk_utils.alignment.overlap_table`. Returns ``{family: overlap}`` plus
    ``"eigvecs"`` (the block) and ``"test_acc"`` (the run's final test accuracy).
    """
    evals, evecs = eigen.top_eigenpairs(kernels.entk(run.model, run.inputs, reduce="trace"))
    blocks = dict(enumerate(eigen.cliff_blocks(eigen.find_cliffs(evals))))
    pairs = run.pairs.numpy()
    table = alignment.overlap_table(evecs, blocks, {f: fourier.feature_family(pairs, run.p, f)
                                                    for f in dict.fromkeys(("sum", *families))})
    best = table.loc[table.family == "sum"].sort_values("overlap").iloc[-1].cliff
    block = table[table.cliff == best].set_index("family")
    return pd.Series({"eigvecs": block.eigvecs.iloc[0], **{f: block.overlap[f] for f in families},
                      "test_acc": run.result.history.test_acc.iloc[-1]})
