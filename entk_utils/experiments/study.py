"""One finder study for any setting (notebooks 03 and 06, and any setting after them): the
SAE, every finder of :data:`~entk_utils.features.finders.FINDERS` on the same contexts, the
comparison on both metrics with its resampled intervals and paired tests
(:func:`~entk_utils.experiments.baselines.compare`), each direction's explanation, the
discovery table against random directions and, where the setting is a language model, a card
per direction and the run's static site (:mod:`~entk_utils.experiments.dashboard`).

A setting brings what only it knows: the activations of its N contexts, the eNTK eigenvectors,
the labels (and the strata its halves are drawn by), the candidate explanations, the SAE's
training activations and, for cards, its model and contexts (:class:`CardSource`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..features.explanations import ExplanationFloor, discovery_table, random_explanation_floor
from ..features.finders import Directions
from ..features.sae import TrainedSAE
from ..io.plotting import save_table
from ..io.site import Card
from ..kernels.token_reading import Eigenfunctions
from . import baselines, dashboard
from .baselines import Comparison, SAESource


@dataclass
class CardSource:
    """What a language-model setting's direction cards read: ``lm`` (a loaded model), ``data``
    (the contexts the activations are of), ``layer`` (whose residual stream they are), the eNTK's
    ``eigenfunctions``; ``top`` contexts shown per card; the site goes to ``out_dir/<folder>``
    with ``title``."""

    lm: object
    data: object
    layer: int
    eigenfunctions: Eigenfunctions
    out_dir: str | Path
    title: str
    folder: str = "dashboard"
    top: int = 5


@dataclass
class FinderStudy:
    """What :func:`finder_study` gives: the ``sae`` (None without one) and its ``sae_report``,
    each finder's ``directions``, the ``comparison``, the ``explanations`` per carded finder,
    the random-direction ``floor`` and the ``discovery`` table; the ``cards`` and the
    ``site``'s index where a :class:`CardSource` was given."""

    sae: TrainedSAE | None
    sae_report: pd.Series | None
    directions: dict[str, Directions]
    comparison: Comparison
    explanations: dict[str, pd.DataFrame]
    floor: ExplanationFloor
    discovery: pd.DataFrame
    cards: list[Card] = field(default_factory=list)
    site: Path | None = None

    def save(self, out_dir, *, comparison: str, discovery: str) -> None:
        """The comparison's tables under ``comparison`` (:func:`~entk_utils.experiments.baselines.save_comparison`)
        and the discovery table under ``discovery``, in ``out_dir``."""
        baselines.save_comparison(self.comparison, comparison, out_dir)
        save_table(self.discovery.reset_index(), discovery, out_dir)


def finder_study(activations, eigenvectors, labels: pd.DataFrame, strata, select, evaluate, candidates: pd.DataFrame,
                 *, k: int, seed: int, n_splits: int, min_per_half: int, sae: SAESource | None = None,
                 sae_activations=None, cache_dir=None, device: str = "cpu", paper: dict | None = None,
                 cards: CardSource | None = None, progress: bool = True) -> FinderStudy:
    """The finder study of one setting.

    activations : (N, d) the contexts' hidden states the finders read (and random directions
        are drawn in for the explanation floor).
    eigenvectors : (N*d_out, m >= k) the eNTK's.
    labels, strata, select, evaluate : the labels (N, L), the strata (N,) the resampled
        half-splits are drawn by, and the table's split (index arrays).
    candidates : (N, C) 0/1 candidate explanations of the contexts.
    k : directions per finder (the eNTK's top k eigenvectors, as many components...).
    sae, sae_activations : where the SAE comes from (:class:`~entk_utils.experiments.baselines.SAESource`)
        and the activations it trains on or is measured on ((M, d), the scored contexts left
        out); None: no SAE finders.
    paper : ``{method: {"auroc", "ap"}}`` shown beside the comparison.
    cards : where the cards read the model (None: no cards, no site).
    """
    trained = report = None
    if sae is not None:
        trained = baselines.notebook_sae(sae, sae_activations, cache_dir=cache_dir, device=device)
        report = baselines.sae_report(trained, len(getattr(sae_activations, "activations", sae_activations)))
    inputs = baselines.comparison_inputs(activations, eigenvectors, trained, labels, select)
    directions = baselines.run_finders(inputs, k, seed)
    comparison = baselines.compare(directions, labels, strata, select, evaluate, n_splits=n_splits, seed=seed,
                                   min_per_half=min_per_half, paper=paper, progress=progress)
    explanations = dashboard.explain(directions, candidates, select, evaluate)
    floor = random_explanation_floor(np.asarray(activations), candidates, select, evaluate, k=k, seed=seed)
    discovery = discovery_table(explanations, floor)
    study = FinderStudy(trained, report, directions, comparison, explanations, floor, discovery)
    if cards is not None:
        study.cards = dashboard.direction_cards(cards.lm, cards.data, directions, explanations, labels,
                                                layer=cards.layer, entk=cards.eigenfunctions, floor=floor,
                                                top=cards.top, progress=progress)
        study.site = dashboard.write_dashboard(study.cards, cards.out_dir, discovery=discovery.round(3),
                                               title=cards.title, folder=cards.folder)
    return study
