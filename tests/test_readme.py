"""The documentation's examples run as printed, and its relative links lead somewhere.

The README and ``docs/*.md`` hold Python examples, each a block right after
``<!-- example: NAME -->``; each name is found in exactly one of those files, wherever it now
lives. Every relative link of README.md, ARCHITECTURE.md and ``docs/*.md`` resolves to an
existing file, and a ``#anchor`` into a Markdown file to one of its headings (GitHub's slugs).
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_DOCUMENTS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- example: (.+?) -->\n```python\n(.*?)```", re.S)

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="the examples need transformers")


def examples(documents=EXAMPLE_DOCUMENTS) -> dict[str, list[tuple[Path, str]]]:
    """Every example name -> [(document, code)] for each place it is found."""
    found = {}
    for doc in documents:
        for m in MARKER.finditer(doc.read_text()):
            found.setdefault(m.group(1), []).append((doc, m.group(2)))
    return found


def example(marker: str, documents=EXAMPLE_DOCUMENTS) -> tuple[str, str]:
    """``(code, document)`` of the Python block that follows ``<!-- example: marker -->`` in the
    one file of ``documents`` (README.md and docs/*.md) that holds it."""
    places = examples(documents).get(marker, [])
    names = [doc.relative_to(ROOT).as_posix() if doc.is_relative_to(ROOT) else str(doc) for doc, _ in places]
    assert places, f"no example {marker!r} in README.md or docs/*.md"
    assert len(places) == 1, f"example {marker!r} is in more than one place: {names}"
    return places[0][1], names[0]


def run_examples(*markers: str) -> dict:
    """Run the examples one after another in one namespace (each continues the one before)."""
    namespace = {}
    for marker in markers:
        code, document = example(marker)
        exec(compile(code, document, "exec"), namespace)
    return namespace


def test_each_example_name_is_in_exactly_one_place():
    found = examples()
    assert {"language model", "another output", "finders", "token reading"} <= set(found)
    twice = {name: [d.relative_to(ROOT).as_posix() for d, _ in places] for name, places in found.items() if len(places) > 1}
    assert not twice, f"examples found in more than one place: {twice}"


def test_example_lookup_fails_on_a_missing_or_a_repeated_name(tmp_path):
    (tmp_path / "a.md").write_text("<!-- example: twice -->\n```python\nx = 1\n```\n")
    (tmp_path / "b.md").write_text("<!-- example: twice -->\n```python\nx = 2\n```\n"
                                   "<!-- example: once -->\n```python\ny = 3\n```\n")
    documents = [tmp_path / "a.md", tmp_path / "b.md"]
    assert example("once", documents) == ("y = 3\n", str(tmp_path / "b.md"))
    with pytest.raises(AssertionError, match="more than one place"):
        example("twice", documents)
    with pytest.raises(AssertionError, match="no example 'missing'"):
        example("missing", documents)


@needs_transformers
def test_the_language_model_example_runs():
    namespace = run_examples("language model")
    op, evals, scores, step = (namespace[k] for k in ("op", "evals", "scores", "step"))
    assert op.shape == (16 * 32, 16 * 32) and op.path == "module"
    assert evals.shape == (5,) and np.all(np.diff(evals) <= 0) and evals[-1] > 0
    assert scores.shape == (16, 5)
    assert set(step) == set(op.weights) and all(step[k].shape == op.weights[k].shape for k in step)


@needs_transformers
def test_the_per_example_loss_example_is_the_gram_of_per_example_loss_gradients():
    """Brute force: each context's next-token loss at its last real token through the model's
    own forward (left padding as in the example), differentiated by ``jacrev``."""
    import torch
    from torch.func import functional_call, jacrev

    from entk_utils.kernels.anatomy import math_attention

    namespace = run_examples("language model", "another output")
    model, ids, mask, targets = (namespace[k] for k in ("model", "input_ids", "attention_mask", "targets"))
    op_loss, K_loss = namespace["op_loss"], namespace["K_loss"]
    assert op_loss.shape == (16, 16) and K_loss.shape == (16, 16)
    params = {name: p.detach() for name, p in op_loss.weights.items()}
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    def loss(ps, n):
        logits = functional_call(model, ps, kwargs={"input_ids": ids[n:n + 1], "attention_mask": mask[n:n + 1],
                                                    "position_ids": position_ids[n:n + 1]}).logits[0, -1]
        return torch.nn.functional.cross_entropy(logits, targets[n])

    with math_attention():
        grads = [jacrev(loss)(params, n) for n in range(len(ids))]
    G = torch.stack([torch.cat([g[k].reshape(-1) for k in params]) for g in grads]).detach().double().numpy()
    expected = G @ G.T
    assert np.abs(K_loss - expected).max() / np.abs(expected).max() < 1e-4


@needs_transformers
def test_the_finders_example_runs():
    namespace = run_examples("language model", "finders")
    found, table, probe = namespace["found"], namespace["table"], namespace["probe"]
    assert set(found) == {"entk", "pca", "ica", "logistic"}
    assert all(d.scores.shape == (16, 5) for m, d in found.items() if m != "logistic")
    assert found["logistic"].scores.shape == (16, 1) and found["logistic"].supervised
    assert list(table.label) == ["feature"] and list(probe.k) == [1, 2]


@needs_transformers
def test_the_token_reading_example_ends_at_the_scores():
    namespace = run_examples("language model", "token reading")
    reading, scores = namespace["reading"].double().numpy(), namespace["scores"]
    assert reading.shape == tuple(namespace["input_ids"].shape)
    np.testing.assert_allclose(reading[:, -1], scores[:, 0], rtol=1e-3, atol=1e-3 * np.abs(scores[:, 0]).max())


# --- links ------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and code spans (a link there is no link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the text as rendered (links by their text, no emphasis or
    code marks), lowercase, every character but letters, digits, '-', '_' and spaces removed,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        s = slug(heading)
        found.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_slugs_follow_githubs_rules():
    assert slug("3 · Gemma-3-270M on TinyStories (paper section 5)") == "3--gemma-3-270m-on-tinystories-paper-section-5"
    assert slug("3b · The eNTK against the field's feature finders (beyond the paper)") == (
        "3b--the-entk-against-the-fields-feature-finders-beyond-the-paper")
    assert slug("Using `entk_utils` on your own model") == "using-entk_utils-on-your-own-model"
    assert slug("Beyond one machine: the 18-layer sweep as a batch job") == (
        "beyond-one-machine-the-18-layer-sweep-as-a-batch-job")
    assert slug("See [the docs](docs/x.md)!") == "see-the-docs"


def test_the_link_check_reads_links_not_code(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# A title\n## A title\n[x](b.md#c) ![i](img.png) [w](https://x.org/y) [h](#a-title-1)\n"
                   "`[not](code.md)`\n```\n[not](block.md)\n# not a heading\n```\n")
    assert relative_links(doc) == ["b.md#c", "img.png", "#a-title-1"]
    assert anchors(doc) == {"a-title", "a-title-1"}


@pytest.mark.parametrize("document", LINKED_DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document):
    assert document.exists(), f"{document.relative_to(ROOT)} is missing"
    broken = []
    for target in relative_links(document):
        file, _, anchor = target.partition("#")
        path = (document.parent / file).resolve() if file else document
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)
