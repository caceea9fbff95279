"""One finder study for any setting (:mod:`entk_utils.experiments.study`): the same tables as
the pipeline run step by step, every finder of the registry, the SAE as the notebooks name it,
and the tables written where asked."""

import numpy as np
import pandas as pd
import pytest
import torch

from entk_utils.experiments import baselines, dashboard
from entk_utils.experiments.study import finder_study
from entk_utils.features import finders, scoring
from entk_utils.features.explanations import discovery_table, random_explanation_floor

N, D, K = 160, 6, 3
SAE = baselines.SAESource(sae_width=8, sae_k=2, sae_tokens=6000, sae_batch_size=500, sae_held_out=1000)


@pytest.fixture(scope="module")
def setting():
    """Activations with two planted binary features, labels and candidates read from them,
    random 'eigenvectors' (two outputs per context) and an SAE's training activations."""
    rng = np.random.default_rng(0)
    features = rng.random((N, 2)) < 0.4
    X = rng.standard_normal((N, D)) + 3 * features @ np.eye(2, D)
    labels = pd.DataFrame(features.astype(int), columns=["first", "second"])
    candidates = pd.DataFrame({"first": features[:, 0], "second": features[:, 1],
                               "noise": rng.random(N) < 0.5}).astype(int)
    strata = features[:, 0] + 2 * features[:, 1]
    select, evaluate = scoring.stratified_halves(strata, seed=0)
    tokens = torch.tensor(rng.standard_normal((6000, D)), dtype=torch.float32)
    return dict(activations=X, eigenvectors=rng.standard_normal((N * 2, 4)), labels=labels, candidates=candidates,
                strata=strata, select=select, evaluate=evaluate, tokens=tokens)


def study_of(setting, **changes):
    s = setting
    kwargs = dict(k=K, seed=0, n_splits=12, min_per_half=2, sae=SAE, sae_activations=s["tokens"], progress=False)
    return finder_study(s["activations"], s["eigenvectors"], s["labels"], s["strata"], s["select"], s["evaluate"],
                        s["candidates"], **{**kwargs, **changes})


def test_the_study_is_the_pipeline_run_step_by_step(setting):
    s, study = setting, study_of(setting)
    trained = baselines.notebook_sae(SAE, s["tokens"], cache_dir=None)
    inputs = baselines.comparison_inputs(s["activations"], s["eigenvectors"], trained, s["labels"], s["select"])
    found = baselines.run_finders(inputs, K, 0)
    comparison = baselines.compare(found, s["labels"], s["strata"], s["select"], s["evaluate"], n_splits=12, seed=0,
                                   min_per_half=2, progress=False)
    explanations = dashboard.explain(found, s["candidates"], s["select"], s["evaluate"])
    floor = random_explanation_floor(s["activations"], s["candidates"], s["select"], s["evaluate"], k=K, seed=0)
    assert list(study.directions) == list(finders.FINDERS)  # every finder, in the registry's order
    pd.testing.assert_frame_equal(study.comparison.summary, comparison.summary)
    pd.testing.assert_frame_equal(study.comparison.tests, comparison.tests)
    assert list(study.explanations) == list(finders.carded_finders())
    for method, table in explanations.items():
        pd.testing.assert_frame_equal(study.explanations[method], table)
    pd.testing.assert_frame_equal(study.discovery, discovery_table(explanations, floor))
    assert study.sae_report["held-out tokens"] == SAE.sae_held_out and study.cards == [] and study.site is None


def test_without_an_sae_the_study_leaves_its_finders_out_and_writes_its_tables(setting, tmp_path):
    study = study_of(setting, sae=None, sae_activations=None)
    assert study.sae is None and study.sae_report is None
    assert "sae" not in study.directions and "sae-all" not in study.directions
    study.save(tmp_path, comparison="finders", discovery="discovery")
    written = {p.stem for p in tmp_path.iterdir()}
    assert {"finders", "finders_methods", "finders_per_label", "finders_probing", "finders_tests",
            "discovery"} <= written


def test_the_sae_parameters_are_checked_once_as_the_notebooks_name_them(setting):
    with pytest.raises(ValueError, match=r"sae_k=9: must be an integer <= 8 \(sae_width\)"):
        study_of(setting, sae=baselines.SAESource(sae_width=8, sae_k=9))
    with pytest.raises(ValueError, match="sae='nowhere': must be 'train'"):
        study_of(setting, sae=baselines.SAESource(sae="nowhere"))
