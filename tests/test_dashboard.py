"""Feature dashboards (:mod:`entk_utils.experiments.dashboard`, :mod:`entk_utils.io.site`) on a
tiny random Llama with its own tokenizer: a card per direction of every method, each token's
reading giving the context's score at its last token, logit effects equal to finite
differences, and the static site opened from disk in Chromium."""

import shutil

import numpy as np
import pytest
import torch
from tiny_models import TEXT, save_tiny_llama

from entk_utils.experiments import dashboard
from entk_utils.features import finders, scoring
from entk_utils.features.explanations import discovery_table, random_explanation_floor
from entk_utils.io import site
from entk_utils.kernels import operators
from entk_utils.kernels.eigen import top_eigenpairs
from entk_utils.kernels.logit_effects import FinalNorm
from entk_utils.kernels.token_reading import Eigenfunctions, eigenvectors_key
from entk_utils.settings import language

LAYER, K = 1, 3
METHODS = ["entk", "pca", "ica", "random"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, nlp):
    """Contexts, directions, explanations and cards of a tiny Llama."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), [TEXT] * 3)
    lm = language.load_model(str(folder), dtype=torch.float64)
    documents = [TEXT.replace("\n\n", " ")] + TEXT.split("\n\n")
    data = language.sample_contexts(documents, lm.tokenizer, nlp, lambda ids: ["x"] * len(ids), n_contexts=24,
                                    context_len=8, progress=False)
    op = operators.entk_operator(lm.model, data.input_ids, ["model.layers.1.mlp"])
    evals, evecs = top_eigenpairs(op, K, seed=0, steps=200, progress=False)
    activations = language.residual_stream(lm.model, data.input_ids, LAYER, positions=-1).double().numpy()
    labels, _ = language.grammar_labels(data.upos, data.morph, tags=None, min_positives=3)
    select, evaluate = scoring.stratified_halves(np.array(data.upos), seed=0)
    found = finders.find_directions(METHODS, finders.FinderInputs(activations=activations, eigenvectors=evecs), K)
    candidates = language.context_candidates(documents, data.story, data.token, lm.tokenizer, nlp, min_count=2)
    explanations = dashboard.explain(found, candidates, select, evaluate)
    floor = random_explanation_floor(activations, candidates, select, evaluate, k=K, n_directions=51)
    entk = Eigenfunctions(op, evecs, evals, eigenvectors_key(data.input_ids, op.weights))
    cards = dashboard.direction_cards(lm, data, found, explanations, labels, layer=LAYER, entk=entk, floor=floor, top=3,
                                      quantiles=(0.5, 0.1), logit_contexts=2, progress=False)
    return dict(lm=lm, data=data, found=found, explanations=explanations, cards=cards, labels=labels,
                entk=entk, op=op, activations=activations, candidates=candidates, select=select, evaluate=evaluate,
                discovery=discovery_table(explanations, floor))


def test_every_direction_of_every_method_has_a_card(run):
    cards = run["cards"]
    assert [c.key for c in cards] == [f"{m}-{j}" for m in METHODS for j in range(K)]
    for card in cards:
        table = run["explanations"][card.method].set_index("direction").loc[int(card.key.split("-")[1])]
        assert card.explanation == table.candidate and card.explained == (table.q < 0.05)
        assert [c.label for c in card.contexts] == ["top 1", "top 2", "top 3", "quantile 0.50", "quantile 0.10"]
        assert len(card.logits_up) == len(card.logits_down) == 8
        assert [u for _, u in card.logits_up] == sorted((u for _, u in card.logits_up), reverse=True)
        assert card.logits_up[0][1] > 0 > card.logits_down[0][1]  # centred: raised and lowered have opposite signs
        assert set(card.aurocs) == set(run["labels"].columns)
        assert all(len(c.tokens) == len(c.values) == 8 for c in card.contexts)


def test_cards_of_the_entk_alone(run):
    cards = dashboard.direction_cards(run["lm"], run["data"], run["found"], {"entk": run["explanations"]["entk"]},
                                      run["labels"], layer=LAYER, entk=run["entk"], progress=False)
    assert [c.key for c in cards] == [f"entk-{j}" for j in range(K)]
    assert [c.contexts[0].values for c in cards] == [c.contexts[0].values for c in run["cards"][:K]]


def test_each_tokens_reading_ends_at_the_contexts_score(run):
    """At a context's last token the reading is the score (oriented); the eNTK's by its
    eigenfunction's extension, to the eigenvectors' accuracy."""
    for card in run["cards"]:
        sign = run["explanations"][card.method].set_index("direction").sign[int(card.key.split("-")[1])]
        column = run["found"][card.method].scores[:, int(card.key.split("-")[1])] * sign
        for context in card.contexts:
            assert context.score == pytest.approx(float(np.max(column[np.isclose(column, context.score)])))
            assert context.values[-1] == pytest.approx(context.score, rel=1e-5, abs=1e-6 * np.abs(column).max())
        assert np.max(np.abs([c.values[:-1] for c in card.contexts])) > 0  # earlier tokens are read too


def test_the_direct_logit_change_is_a_finite_difference(run):
    """Adding eps * v to the final norm's input at the last position (hooked on the last layer's
    output) changes the mean last-position logits by eps * logit_change, to first order, less
    the change's mean over the vocabulary."""
    lm, ids = run["lm"], run["data"].input_ids[:2]
    v = run["found"]["pca"].vectors[0]
    final = FinalNorm(lm.model, ids)
    change = final.logit_change(v, [0, 1])
    last_layer = lm.model.model.layers[-1]

    def logits(shift):
        at_last = (torch.arange(ids.shape[1]) == ids.shape[1] - 1)[:, None]
        handle = last_layer.register_forward_hook(lambda m, a, out: out + shift * torch.as_tensor(v) * at_last)
        try:
            with torch.no_grad():
                return lm.model(input_ids=ids).logits[:, -1].mean(0)
        finally:
            handle.remove()

    eps = 1e-3  # Llama's RMSNorm computes in float32 even in a float64 model: a larger step, a looser check
    expected = ((logits(eps) - logits(-eps)) / (2 * eps)).numpy()
    expected -= expected.mean()
    assert abs(float(change.mean())) < 1e-9 * np.abs(expected).max()
    np.testing.assert_allclose(change.numpy(), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_a_soft_capped_models_entk_is_read_at_the_last_token_only():
    """Gemma2 caps its logits: the logit metric differs per context, so there is no reading
    between contexts; at each context's last token the reading is still its score."""
    from entk_utils.features.directions import entk_scores
    from tiny_models import tiny_model

    model = tiny_model("gemma2", dtype=torch.float32)
    ids = torch.randint(0, 40, (6, 5), generator=torch.Generator().manual_seed(0))
    op = operators.entk_operator(model, ids, ["model.layers.1.mlp"], metric="logits")
    assert op.output_maps is not None
    evals, evecs = top_eigenpairs(op, 2, seed=0, steps=60, progress=False)
    entk = Eigenfunctions(op, evecs, evals, eigenvectors_key(ids, op.weights))
    assert not entk.every_token
    values, last = dashboard.entk_token_values(entk, 1, [0, 3, 4])
    assert np.isnan(values[:, :-1]).all() and last.shape == (3, op.hidden)
    np.testing.assert_allclose(values[:, -1], entk_scores(evecs, 6)[0][[0, 3, 4], 1], rtol=1e-3,
                               atol=1e-3 * np.abs(entk_scores(evecs, 6)[0][:, 1]).max())


def test_eigenfunctions_refuse_eigenvectors_of_other_contexts_or_weights(run, tmp_path):
    """The key cached eigenpairs carry is the operator's; another layer's weights or other
    contexts give another key, and a wrong shape is refused too."""
    from entk_utils.experiments.eigenpairs import cached_eigenpairs

    lm, ids, op = run["lm"], run["data"].input_ids, run["op"]
    eig = cached_eigenpairs(tmp_path, lm.model, ids, ["model.layers.1.mlp"], 2, steps=20, progress=False)
    Eigenfunctions(op, eig["evecs"].numpy(), eig["evals"].numpy(), eig["key"])  # the operator's own: accepted
    evecs, evals = run["entk"].eigenvectors, run["entk"].eigenvalues
    for other in (operators.entk_operator(lm.model, ids, ["model.layers.0.mlp"]),
                  operators.entk_operator(lm.model, ids[:-1], ["model.layers.1.mlp"])):
        with pytest.raises(ValueError, match="computed from other contexts or weights"):
            Eigenfunctions(other, evecs[:other.shape[0]], evals, eig["key"])
    with pytest.raises(ValueError, match="eigenvectors must be"):
        Eigenfunctions(op, evecs[:-1], evals, eig["key"])


def test_the_study_makes_the_cards_and_the_site(run, tmp_path):
    """The finder study of a language-model setting: a card per direction of every carded
    finder, read as direction_cards reads them, and the site."""
    from entk_utils.experiments.study import CardSource, finder_study
    from entk_utils.features.labels import comparable_labels

    labels = comparable_labels(run["labels"], run["select"], run["evaluate"], min_per_half=1).labels
    study = finder_study(run["activations"], run["entk"].eigenvectors, labels, np.array(run["data"].upos),
                         run["select"], run["evaluate"], run["candidates"], k=K, seed=0, n_splits=10, min_per_half=1,
                         cards=CardSource(run["lm"], run["data"], LAYER, run["entk"], tmp_path, title="tiny", top=3),
                         progress=False)
    assert [c.key for c in study.cards] == [f"{m}-{j}" for m in finders.carded_finders() if m in study.directions
                                            for j in range(K)]
    assert study.site == tmp_path / "dashboard" / "index.html" and study.site.is_file()
    before = {c.key: c for c in run["cards"]}
    for card in study.cards:
        if card.key in before:  # the same directions, read the same way (the quantiles shown differ)
            assert card.contexts[0].values == pytest.approx(before[card.key].contexts[0].values, rel=1e-9, abs=1e-12)


def test_cards_refuse_what_they_cannot_read(run):
    with pytest.raises(ValueError, match="need entk=Eigenfunctions"):
        dashboard.direction_cards(run["lm"], run["data"], run["found"], {"entk": run["explanations"]["entk"]},
                                  run["labels"], layer=LAYER)
    with pytest.raises(ValueError, match="differs from the context's score"):  # activations of another layer
        dashboard.direction_cards(run["lm"], run["data"], run["found"], {"pca": run["explanations"]["pca"]},
                                  run["labels"], layer=LAYER + 1, progress=False)


def test_the_site_has_an_index_and_a_page_per_card(run, tmp_path):
    index = dashboard.write_dashboard(run["cards"], tmp_path, title="tiny", discovery=run["discovery"])
    assert index == tmp_path / "dashboard" / "index.html"
    pages = sorted(p.name for p in index.parent.iterdir())
    assert pages == sorted(["index.html"] + [f"{c.key}.html" for c in run["cards"]])
    text = index.read_text()
    assert all(f'href="{c.key}.html"' in text for c in run["cards"]) and "beyond_random" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    with pytest.raises(ValueError, match="file-name-safe"):
        site.write_site(run["cards"][:1] * 2, tmp_path / "again", title="twice")


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (Debian package `chromium`)")
def test_the_site_opens_from_disk_in_chromium(run, tmp_path):
    """Every card renders from file:// with its histogram and shaded tokens; no console
    errors and no request leaves the disk."""
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM_FLAGS

    index = dashboard.write_dashboard(run["cards"], tmp_path, title="tiny", discovery=run["discovery"])
    errors, remote = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: not r.url.startswith("file://") and remote.append(r.url))
            page.goto(index.as_uri())
            links = page.locator("table.index a")
            assert links.count() == len(run["cards"])
            for i in range(links.count()):
                page.goto(index.as_uri())
                page.locator("table.index a").nth(i).click()
                card = page.locator("div.card")
                assert card.count() == 1 and card.locator("svg.histogram rect").count() > 0
                shaded = card.locator("span.tok").evaluate_all(
                    "spans => spans.filter(s => getComputedStyle(s).backgroundColor !== 'rgba(0, 0, 0, 0)').length")
                assert shaded > 0, f"no highlighted token on {page.url}"
                assert card.locator("table.logits tr").count() == 9
        finally:
            browser.close()
    assert not errors, f"console errors: {errors}"
    assert not remote, f"requests off the disk: {remote}"
