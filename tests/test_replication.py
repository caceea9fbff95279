"""Notebook 08's pieces (:mod:`entk_utils.experiments.replication`): the layer rule, the table
extremised over layers on a planted case, the requantisation and its probe on a tiny model,
the extrapolation on an exact line, and the second tagger on the same words as spaCy's."""

import numpy as np
import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")
import tiny_models  # noqa: E402

from entk_utils.experiments import replication  # noqa: E402
from entk_utils.features.scoring import stratified_halves  # noqa: E402
from entk_utils.settings.language import quantisation, tags  # noqa: E402


def test_the_layer_at_the_papers_depth():
    assert replication.same_depth_layer(18) == 16 and replication.same_depth_layer(30) == 27
    assert replication.same_depth_layer(1) == 0 and replication.same_depth_layer(18, layer=17) == 17
    with pytest.raises(ValueError, match="n_layers must be at least 1, got 0"):
        replication.same_depth_layer(0)


def test_the_extreme_over_layers_takes_each_labels_best_layer_for_auroc_and_ap_apart():
    per_layer = pd.DataFrame({"method": "pca", "label": ["A"] * 3 + ["B"] * 3, "kind": ["pos"] * 3 + ["morph"] * 3,
                              "layer": [0, 1, 2] * 2, "auroc": [0.6, 0.9, 0.7, 0.5, 0.55, 0.8],
                              "ap": [0.5, 0.2, 0.3, 0.1, 0.4, 0.3]})
    table = replication.layer_extreme(per_layer).set_index("label")
    assert table.loc["A", ["auroc", "auroc layer", "ap", "ap layer"]].tolist() == [0.9, 1, 0.5, 0]
    assert table.loc["B", ["auroc", "auroc layer", "ap", "ap layer"]].tolist() == [0.8, 2, 0.4, 1]
    assert (table.layers == "0-2").all()
    assert replication.layer_extreme(per_layer[per_layer.layer != 1]).layers.iloc[0] == "0, 2"


def planted(n=400, seed=0):
    """Three layers of 6 random directions; at layer 1 direction 0 reads label NOUN, at layer 2
    it reads it more weakly: the extreme and the select-half rule must both find layer 1."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"NOUN": rng.random(n) < 0.3, "VERB": rng.random(n) < 0.3, "Number=Sing": rng.random(n) < 0.5}).astype(int)
    kinds = {"NOUN": "pos", "VERB": "pos", "Number=Sing": "morph"}
    found = replication.LayerScores(table=pd.DataFrame())
    select, evaluate = stratified_halves(labels.NOUN.to_numpy(), seed=seed)
    rows = []
    for method in ("entk", "pca"):
        for layer, strength in ((0, 0.0), (1, 2.0), (2, 0.7)):
            scores = rng.standard_normal((n, 6))
            scores[:, 0] += strength * labels.NOUN.to_numpy() * (method == "entk")
            found.scores[method, layer] = scores
            table = replication.score_directions(scores, labels, select, evaluate)
            rows.append(table.assign(layer=layer, method=method, kind=table.label.map(kinds)))
    found.table = pd.concat(rows, ignore_index=True)
    return found, labels, select


def test_table_3_over_layers_on_a_planted_case():
    found, labels, select = planted()
    table = replication.table3_over_layers(found, labels, select, single_layer=0)
    rows = table.set_index(["method", "labels", "layers used"])
    assert rows.loc[("entk", "parts of speech", "layer chosen on select"), "layers"] == "1"
    assert rows.loc[("entk", "parts of speech", "extreme over layers"), "layers"] == "0-2"
    single = rows.loc[("entk", "parts of speech", "layer 0"), "auroc"]
    assert rows.loc[("entk", "parts of speech", "extreme over layers"), "auroc"] > single + 0.1
    # the extreme is never below the chosen layer's number: it may read the evaluate half
    for method in ("entk", "pca"):
        for name in ("parts of speech", "morphology", "all labels"):
            assert (rows.loc[(method, name, "extreme over layers"), "auroc"]
                    >= rows.loc[(method, name, "layer chosen on select"), "auroc"] - 1e-12)
    assert rows.loc[("entk", "parts of speech", "layer 0"), "paper auroc"] == pytest.approx(0.827)
    assert np.isnan(rows.loc[("entk", "parts of speech", "layer chosen on select"), "paper auroc"])
    assert rows.loc[("pca", "morphology", "layer 0"), "n labels"] == 1
    other_model = replication.table3_over_layers(found, labels, select, single_layer=0, paper=False)
    assert other_model["paper auroc"].isna().all()


def test_round_to_nearest_keeps_each_blocks_range_on_2_to_the_bits_levels():
    w = torch.randn(6, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q2 = quantisation.round_to_nearest(w, 2)
    blocks, qblocks = w.reshape(-1, 32), q2.reshape(-1, 32)
    assert all(len(torch.unique(b)) <= 4 for b in qblocks)
    torch.testing.assert_close(qblocks.min(1).values, blocks.min(1).values)
    torch.testing.assert_close(qblocks.max(1).values, blocks.max(1).values)
    errors = {b: float(((quantisation.round_to_nearest(w, b) - w) ** 2).sum()) for b in (2, 3, 4, 5)}
    for b in (2, 3, 4):  # the error variance follows the squared step, as the extrapolation assumes
        assert errors[b] / errors[b + 1] == pytest.approx(replication.step_ratio(b + 1, b), rel=0.2)
    assert torch.equal(quantisation.round_to_nearest(torch.ones(1, 32), 3), torch.ones(1, 32))
    with pytest.raises(ValueError, match="not a multiple of block=32"):
        quantisation.round_to_nearest(torch.ones(2, 20), 3)
    with pytest.raises(ValueError, match="bits must lie in 1..16, got 0"):
        quantisation.round_to_nearest(w, 0)


def test_requantised_copies_the_model_and_reports_the_added_error():
    model = tiny_models.tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    copy, added = quantisation.requantised(model, 3, block=8)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the original is untouched
    changed = [n for n, p in copy.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(before[n].dim() >= 2 for n in changed)  # matrices only: norms stay
    num = sum(float(((p.detach() - before[n]) ** 2).sum()) for n, p in copy.named_parameters())
    den = sum(float((before[n] ** 2).sum()) for n in changed)
    assert added == pytest.approx(num / den) and 0 < added < 0.1


def test_the_quantisation_probe_on_a_tiny_model(tmp_path):
    from entk_utils.kernels.operators import unembedding_metric
    from entk_utils.settings.language import LoadedModel

    model = tiny_models.tiny_model("llama", dtype=torch.float32)
    lm = LoadedModel(model, None, "tiny llama")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tiny_models.VOCAB, (24, 6), generator=g)
    labels = pd.DataFrame({"NOUN": [0, 1] * 12, "Number=Sing": [0, 0, 1, 1] * 6})
    kinds = {"NOUN": "pos", "Number=Sing": "morph"}
    select, evaluate = stratified_halves(labels.NOUN.to_numpy(), seed=0)
    kwargs = dict(bits=(3, 2), block=8, k=3, lanczos_steps=8, seed=0, select=select, evaluate=evaluate,
                  metric=unembedding_metric(model), cache_dir=tmp_path, key="tiny")
    probe = replication.quantisation_probe(lm, ids, labels, kinds, 1, **kwargs)
    assert sorted(probe.weights.unique()) == ["+ 2-bit round to nearest", "+ 3-bit round to nearest", "as loaded"]
    assert set(probe.method) == {"entk", "pca"} and probe.auroc.between(0, 1).all()
    errors = probe.groupby("weights")["added error"].first()
    assert errors["as loaded"] == 0 < errors["+ 3-bit round to nearest"] < errors["+ 2-bit round to nearest"]
    cached = sorted(p.name for p in tmp_path.iterdir())
    pd.testing.assert_frame_equal(probe, replication.quantisation_probe(lm, ids, labels, kinds, 1, **kwargs))
    assert sorted(p.name for p in tmp_path.iterdir()) == cached and len(cached) == 3  # one entry per width


def test_the_extrapolation_follows_the_secant_back_and_says_how_far_the_curve_bends():
    e3, e2 = 0.02, 0.08
    e4 = e3 / replication.step_ratio(4, 3)

    def rows(curve):
        return pd.DataFrame([{"bits": b, "added error": e, "method": "entk", "labels": "all labels",
                              "auroc": curve(e + e4), "ap": 0.5 - (e + e4)} for b, e in ((np.nan, 0.0), (3, e3), (2, e2))])

    out = replication.extrapolated(rows(lambda t: 0.8 - 2.0 * t)).set_index("metric")
    assert out.loc["auroc", "at float"] == pytest.approx(0.8) and out.loc["ap", "at float"] == pytest.approx(0.5)
    assert out.loc["auroc", "shift"] == pytest.approx(-2.0 * e4) and out.loc["auroc", "e4"] == pytest.approx(e4)
    assert out.loc["auroc", "off the line"] == pytest.approx(0.0, abs=1e-12)
    bent = replication.extrapolated(rows(lambda t: 0.8 - 2.0 * t + 10 * t**2)).set_index("metric")
    assert bent.loc["auroc", "off the line"] > 0.01  # a curve that flattens sits above the secant further out


class FakeTokenizer:
    """Whitespace tokens with character offsets, as a fast tokenizer gives them."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=True):
        import re

        class Encoded:
            offset_mapping = [m.span() for m in re.finditer(r"\S+", text)]

        return Encoded()


def test_the_second_tagger_tags_the_same_words_within_their_sentence():
    nlp = tags.load_spacy() if _has_spacy() else pytest.skip("needs the spaCy English model")
    documents = ["The dog ran home . A cat slept ."]
    tagger = tags.load_second_tagger()
    got = tags.next_word_upos(documents, [0, 0, 0], [1, 2, 7], FakeTokenizer(), nlp, tagger)
    assert got == ["NOUN", "VERB", "VERB"]

    class Recording:
        calls = []

        def tag(self, words):
            self.calls.append(words)
            return [(w, "X") for w in words]

    recording = Recording()
    tags.next_word_upos(documents, [0, 0], [1, 6], FakeTokenizer(), nlp, recording)
    assert recording.calls == [["The", "dog", "ran", "home", "."], ["A", "cat", "slept", "."]]  # one call per sentence


def _has_spacy() -> bool:
    try:
        tags.load_spacy()
        return True
    except (FileNotFoundError, ImportError):
        return False


def test_the_tagger_effect_scores_both_labellings_and_leaves_out_a_tag_one_tagger_never_gives():
    found, labels, select = planted()
    n = len(labels)
    evaluate = np.setdiff1d(np.arange(n), select)
    upos = np.where(labels.NOUN == 1, "NOUN", "VERB").tolist()
    other = ["NOUN" if u == "NOUN" and i % 10 else "VERB" for i, u in enumerate(upos)]  # disagrees on a tenth of NOUN
    table = replication.tagger_effect(found, 1, upos, other, ["NOUN", "VERB", "ADV"], select, evaluate)
    assert set(table.label) == {"NOUN", "VERB"}  # no tagger gives ADV
    row = table[(table.label == "NOUN") & (table.method == "entk")].iloc[0]
    assert row["spaCy"] > 0.8 and row["difference"] == pytest.approx(row["second tagger"] - row["spaCy"])
    assert row["taggers agree"] == pytest.approx(np.mean([a == b for a, b in zip(upos, other) if "NOUN" in (a, b)]))


def notebook_03_run(folder, entk, others, tests):
    """A notebook 03 output folder with a finder table (``{method: auroc}``) and its tests
    (``[(method, label, entk minus method, p_holm)]``)."""
    folder.mkdir()
    rows = [{"method": m, "auroc": a, "auroc low": a - .02, "auroc high": a + .02, "ap": a / 2}
            for m, a in {"entk": entk, **others}.items()]
    pd.DataFrame(rows).to_csv(folder / replication.FINDERS_TABLE, index=False)
    pd.DataFrame(tests, columns=["method", "label", "entk minus method auroc", "p_holm"]).to_csv(
        folder / replication.TESTS_TABLE, index=False)
    return folder


def test_side_by_side_puts_each_methods_runs_together_with_the_entks_lead_and_significant_labels(tmp_path):
    a = notebook_03_run(tmp_path / "a", .80, {"pca": .70, "logistic": .95},
                        [("pca", "NOUN", .10, .001), ("pca", "VERB", -.05, .01), ("pca", "DET", .20, .2)])
    b = notebook_03_run(tmp_path / "b", .75, {"pca": .74, "logistic": .90},
                        [("pca", "NOUN", .01, .5), ("pca", "VERB", .02, .6)])
    table = replication.side_by_side({"A": a, "B": b})
    assert list(zip(table.method, table.model)) == [("entk", "A"), ("entk", "B"), ("pca", "A"), ("pca", "B"),
                                                    ("logistic", "A"), ("logistic", "B")]
    pca = table[table.method == "pca"].set_index("model")
    assert pca["entk minus method"].round(3).tolist() == [.10, .01]
    assert pca["labels"].tolist() == [3, 2]
    assert pca["labels eNTK better (Holm 5%)"].tolist() == [1, 0]
    assert pca["labels eNTK worse (Holm 5%)"].tolist() == [1, 0]
    assert table[table.method == "logistic"]["labels eNTK better (Holm 5%)"].isna().all()


def test_side_by_side_names_the_missing_table_and_the_command_leaves_out_a_run_not_yet_made(tmp_path, capsys):
    a = notebook_03_run(tmp_path / "a", .80, {"pca": .70}, [("pca", "NOUN", .10, .001)])
    with pytest.raises(FileNotFoundError, match=r"table5_finders_gemma.csv is missing: run notebook 03 with B's"):
        replication.side_by_side({"A": a, "B": tmp_path / "none"})
    out = tmp_path / "out" / "models"
    assert replication.main(["side-by-side", str(out), f"A={a}", f"B={tmp_path / 'none'}"]) == 0
    assert "B: no table5_finders_gemma.csv" in capsys.readouterr().err
    written = pd.read_csv(out.with_suffix(".csv"))
    assert set(written.model) == {"A"} and "| pca " in out.with_suffix(".md").read_text()
    assert replication.main(["side-by-side", str(out), f"B={tmp_path / 'none'}"]) == 1
    with pytest.raises(SystemExit):
        replication.main(["side-by-side", str(out), "no-equals-sign"])
