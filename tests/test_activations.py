"""Token activations over whole documents: the residual stream of each position, as one
unpadded forward gives it; cached; and the scored contexts' positions left out."""

import numpy as np
import pytest
import torch
from tiny_models import TEXT

from entk_utils.settings import language
from entk_utils.settings.language.activations import cached_token_activations, residual_stream, token_activations


@pytest.fixture(scope="module")
def llama(tokenizer):
    import transformers

    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=128)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


DOCUMENTS = [part for part in TEXT.split("\n\n")] + ["Tom sat.", TEXT.replace("\n\n", " ")]


def test_every_position_equals_an_unpadded_forward_of_its_document(llama, tokenizer):
    acts = token_activations(llama, tokenizer, DOCUMENTS, 0, max_len=40, batch_tokens=64, progress=False)
    expected_rows = 0
    for d, text in enumerate(DOCUMENTS):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids), 40):  # long documents: pieces of max_len tokens
            piece = torch.tensor([ids[start:start + 40]])
            with torch.no_grad():
                alone = residual_stream(llama, piece, 0)[0]
            rows = (acts.document == d) & (acts.position >= start) & (acts.position < start + 40)
            assert acts.position[rows].tolist() == list(range(start, start + piece.shape[1]))
            torch.testing.assert_close(acts.activations[rows], alone, rtol=1e-4, atol=1e-5)
            expected_rows += piece.shape[1]
    assert len(acts) == expected_rows and acts.activations.dtype == torch.float32
    assert np.all(np.diff(acts.document.numpy() * 10_000 + acts.position.numpy()) > 0)  # sorted by document, position


def test_skip_first_drops_the_first_positions_of_each_document(llama, tokenizer):
    acts = token_activations(llama, tokenizer, DOCUMENTS[:3], 1, skip_first=2, progress=False)
    for d in range(3):
        assert acts.position[acts.document == d].min() == 2
    with pytest.raises(ValueError, match="skip_first"):
        token_activations(llama, tokenizer, DOCUMENTS, 1, skip_first=5, max_len=5, progress=False)


def test_excluding_removes_exactly_the_scored_windows(llama, tokenizer):
    acts = token_activations(llama, tokenizer, DOCUMENTS, 1, progress=False)
    kept = acts.excluding(document_index=[0, 0, 4], ends=[6, 12, 20], context_len=4)
    dropped = {(0, p) for p in [2, 3, 4, 5, 8, 9, 10, 11]} | {(4, p) for p in range(16, 20)}
    before = set(zip(acts.document.tolist(), acts.position.tolist()))
    after = set(zip(kept.document.tolist(), kept.position.tolist()))
    assert before - after == dropped and len(kept) == len(acts) - len(dropped)
    rows = (acts.document == 1)
    torch.testing.assert_close(kept.activations[kept.document == 1], acts.activations[rows])
    with pytest.raises(ValueError, match="one entry per context"):
        acts.excluding(document_index=[0], ends=[1, 2], context_len=4)


def test_cached_activations_are_read_back(tmp_path, llama, tokenizer):
    lm = language.LoadedModel(model=llama, tokenizer=tokenizer, description="tiny llama", fingerprint="tiny")
    first = cached_token_activations(tmp_path, lm, DOCUMENTS, 1, progress=False)
    assert len(list(tmp_path.glob("token-activations-*.pt"))) == 1
    again = cached_token_activations(tmp_path, lm, DOCUMENTS, 1, progress=False)
    assert torch.equal(first.activations, again.activations) and torch.equal(first.position, again.position)


def test_corpus_files_put_the_scored_file_first(tmp_path):
    for name in ("b.txt", "a.txt", "notes.md"):
        (tmp_path / name).write_text("One story.\n<|endoftext|>\nTwo.\n<|endoftext|>\n")
    files = language.corpus_files(tmp_path / "b.txt")
    assert [f.name for f in files] == ["b.txt", "a.txt"]
    assert language.documents_of(files) == ["One story.", "Two.", "One story.", "Two."]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        language.corpus_files(tmp_path / "missing.txt")
