"""The helpers of notebook 06: any model, any text, directions named by features."""

import numpy as np
import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")
from tiny_models import save_tiny_llama, tiny_model, train_tokenizer  # noqa: E402

from entk_utils.experiments import your_model  # noqa: E402
from entk_utils.settings import language  # noqa: E402

TEXT = ("The cat sat on the mat. It was a sunny day, and the children played in the park.\n\n"
        "Tom liked red apples. He ate them every morning before school.\n\n"
        "Lily found a small box under her bed. Inside was a shiny key!")


@pytest.fixture(scope="module")
def nlp():
    return language.load_spacy()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([TEXT] * 3, vocab_size=200)


@pytest.mark.parametrize("arch, expected", [
    ("llama", ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp"]),
    ("gpt2", ["transformer.h.1.attn.c_proj.weight", "transformer.h.1.mlp"]),
    ("opt", ["model.decoder.layers.1.self_attn.out_proj.weight", "model.decoder.layers.1.fc1",
             "model.decoder.layers.1.fc2"]),
    ("gpt_neox", ["gpt_neox.layers.1.attention.dense.weight", "gpt_neox.layers.1.mlp"]),
])
def test_default_weights_are_one_layers_attention_output_and_mlp(arch, expected):
    model = tiny_model(arch)
    assert your_model.default_weights(model) == expected  # the second-to-last of 3 layers
    assert your_model.default_weights(model, layer=0) == [name.replace(".1.", ".0.") for name in expected]
    assert your_model.highest_layer(model, expected) == 1
    assert your_model.highest_layer(model, [*expected, expected[0].replace(".1.", ".2.")]) == 2


def test_default_weights_ask_for_names_where_the_layer_is_unusual():
    model = tiny_model("llama")
    model.model.layers[1].mlp = torch.nn.Identity()
    del model.model.layers[1].mlp
    with pytest.raises(ValueError, match="cannot tell the attention output projection and the MLP of layer 1 .*"
                                         "pass weights="):
        your_model.default_weights(model)
    with pytest.raises(ValueError, match="layer=3: must be in 0..2"):
        your_model.default_weights(tiny_model("llama"), layer=3)


def test_read_documents_takes_stories_or_paragraphs(tmp_path):
    stories = tmp_path / "stories.txt"
    stories.write_text(f"One.\n{language.SEPARATOR}\nTwo.\n{language.SEPARATOR}\n")
    assert your_model.read_documents(stories) == ["One.", "Two."]
    plain = tmp_path / "plain.txt"
    plain.write_text(TEXT)
    assert len(your_model.read_documents(plain)) == 3 and your_model.read_documents(plain)[1].startswith("Tom")
    plain.write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        your_model.read_documents(plain)


def test_text_contexts_end_just_before_a_word(tokenizer, nlp):
    documents = TEXT.split("\n\n")
    predict = lambda ids: [f"p{i}" for i in range(len(ids))]  # noqa: E731
    data = your_model.text_contexts(documents, tokenizer, nlp, predict, n_contexts=12, context_len=5, seed=1, progress=False)
    assert data.input_ids.shape == (12, 5) and data.generated == [f"p{i}" for i in range(12)]
    for ids, d, j, word in zip(data.input_ids, data.story, data.token, data.words):
        encoded = tokenizer(documents[d], add_special_tokens=False)
        assert ids.tolist() == encoded.input_ids[j - 5:j]
        assert tokenizer.decode(encoded.input_ids[j:]).lstrip().startswith(word)
    assert len({(d, j) for d, j in zip(data.story, data.token)}) == 12  # no position twice
    again = your_model.text_contexts(documents, tokenizer, nlp, predict, n_contexts=12, context_len=5, seed=1, progress=False)
    assert torch.equal(again.input_ids, data.input_ids)
    with pytest.raises(ValueError, match="the text holds only .* word positions with 5 tokens before them; n_contexts=500"):
        your_model.text_contexts(documents, tokenizer, nlp, predict, n_contexts=500, context_len=5, progress=False)


def test_feature_labels_keep_features_with_enough_of_either_class():
    upos = ["NOUN"] * 5 + ["VERB"] * 4 + ["DET"] * 1
    morph = ["Number=Sing"] * 6 + ["Number=Plur"] * 4
    labels, kinds = your_model.feature_labels(upos, morph, min_positives=4)
    assert list(labels.columns) == ["NOUN", "VERB", "Number=Plur", "Number=Sing"]
    assert kinds == {"NOUN": "pos", "VERB": "pos", "Number=Plur": "morph", "Number=Sing": "morph"}
    assert labels.NOUN.tolist() == [1] * 5 + [0] * 5


def test_name_directions_names_a_planted_direction_only():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"A": rng.random(80) < 0.3, "B": rng.random(80) < 0.5}).astype(int)
    scores = rng.standard_normal((80, 3))
    scores[:, 1] -= 2.5 * labels.B  # direction 1 holds B at its low end
    table = your_model.name_directions(scores, labels, n_permutations=500, seed=0)
    assert table.loc[1, ["feature", "sign", "named", "name"]].tolist() == ["B", -1, True, "B"]
    assert table.loc[1, "auroc"] > 0.9 and table.loc[1, "p_perm"] == pytest.approx(1 / 501)
    assert not table.loc[[0, 2], "named"].any() and set(table.loc[[0, 2], "name"]) == {"-"}
    assert (table.p_holm >= table.p_perm).all()
    with pytest.raises(ValueError, match="no feature has enough positives"):
        your_model.name_directions(scores, labels.iloc[:, :0])


def test_context_tail_marks_the_last_token(tokenizer):
    ids = tokenizer("It was a sunny day", add_special_tokens=False).input_ids
    tail = your_model.context_tail(tokenizer, ids, n_tokens=3)
    last = tokenizer.decode(ids[-1:]).strip()
    assert tail.startswith("…") and tail.endswith(f"[{last}]")
    assert "It was a sunny day".endswith(tail[1:].replace("[", "").replace("]", ""))
    newline = tokenizer("one\n", add_special_tokens=False).input_ids
    assert your_model.context_tail(tokenizer, newline).endswith("[⏎]")


def test_strongest_contexts_are_the_top_scores_in_the_named_orientation(tokenizer, nlp):
    documents = TEXT.split("\n\n")
    data = your_model.text_contexts(documents, tokenizer, nlp, lambda ids: ["x"] * len(ids), n_contexts=10,
                               context_len=4, progress=False)
    scores = np.random.default_rng(0).standard_normal((10, 2))
    scores[3, 0] = -5  # an unnamed direction is oriented by its largest score
    directions = pd.DataFrame({"direction": [0, 1], "name": ["-", "NOUN"], "sign": [1, -1], "named": [False, True]})
    table = your_model.strongest_contexts(scores, data, tokenizer, directions, top=3)
    assert table.groupby("direction").size().tolist() == [3, 3]
    np.testing.assert_allclose(table[table.direction == 1].score, np.sort(-scores[:, 1])[::-1][:3])
    np.testing.assert_allclose(table[table.direction == 0].score, np.sort(-scores[:, 0])[::-1][:3])
    assert table.loc[table.direction == 0, "context"].iloc[0] == your_model.context_tail(tokenizer, data.input_ids[3].tolist())


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), [TEXT] * 3, layers=2)


def test_a_local_folder_loads_and_outlines_without_weights(tiny_llama_folder, tmp_path):
    lm = your_model.load_model(str(tiny_llama_folder))
    outline = your_model.model_outline(str(tiny_llama_folder), tmp_path)
    assert outline["parameters"] == [name for name, _ in lm.model.named_parameters()]
    assert (outline["layers"], outline["hidden"], outline["context"]) == (2, 32, 256)
    assert lm.tokenizer.is_fast and not lm.model.training


def test_a_hub_id_goes_to_from_pretrained(monkeypatch, tiny_llama_folder):
    """Offline here, so the download is replaced by the local folder; the call is the Hub's."""
    asked = []
    for cls in ("AutoModelForCausalLM", "AutoTokenizer"):
        load = getattr(transformers, cls).from_pretrained  # bound to its class: kept before the patch
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained",
                            lambda source, _load=load, **kwargs: asked.append(source) or _load(tiny_llama_folder, **kwargs))
    lm = your_model.load_model("someone/tiny-llama")
    assert asked == ["someone/tiny-llama", "someone/tiny-llama"]
    assert lm.description == "someone/tiny-llama from the Hugging Face Hub (torch.float32)"
    with pytest.raises(ValueError, match="model_source='not a model': must be one of"):
        your_model.load_model("not a model")
