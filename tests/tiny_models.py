"""Tiny random causal LMs of several Hugging Face architectures, for the operator tests, and a
tiny Llama with a tokenizer trained offline, saved like any pretrained model (notebook 06)."""

from pathlib import Path

import torch
import transformers

VOCAB, HIDDEN, LAYERS = 40, 16, 3
# Three short paragraphs: a text to sample contexts from and to train a tiny tokenizer on.
TEXT = ("The cat sat on the mat. It was a sunny day, and the children played in the park.\n\n"
        "Tom liked red apples. He ate them every morning before school.\n\n"
        "Lily found a small box under her bed. Inside was a shiny key!")
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=24, num_hidden_layers=LAYERS,
               num_attention_heads=2, max_position_embeddings=32)

# architecture: (model class, config); one config per layout the operator must handle
CONFIGS = {
    "gpt2": (transformers.GPT2LMHeadModel,  # Conv1D weights, fused qkv, learned positions, tied embeddings
             lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=32)),
    "opt": (transformers.OPTForCausalLM,  # project_in / project_out around the layers: h has 12 entries
            lambda: transformers.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=24, num_hidden_layers=LAYERS,
                                           num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=12)),
    "gpt_neox": (transformers.GPTNeoXForCausalLM,  # parallel residual, partial rotary, fused qkv
                 lambda: transformers.GPTNeoXConfig(**_COMMON, rotary_pct=0.5)),
    "llama": (transformers.LlamaForCausalLM, lambda: transformers.LlamaConfig(**_COMMON, num_key_value_heads=1)),
    "qwen2": (transformers.Qwen2ForCausalLM, lambda: transformers.Qwen2Config(**_COMMON, num_key_value_heads=1)),
    "mistral": (transformers.MistralForCausalLM, lambda: transformers.MistralConfig(**_COMMON, num_key_value_heads=1)),
    "phi3": (transformers.Phi3ForCausalLM,  # fused qkv_proj and gate_up_proj
             lambda: transformers.Phi3Config(**_COMMON, num_key_value_heads=1, pad_token_id=0)),
    "gemma2": (transformers.Gemma2ForCausalLM,  # final logit softcapping, attention softcapping
               lambda: transformers.Gemma2Config(**_COMMON, num_key_value_heads=1, head_dim=8, sliding_window=3)),
    "gemma3": (transformers.Gemma3ForCausalLM,  # q/k norms, sliding window shorter than the contexts
               lambda: transformers.Gemma3TextConfig(**_COMMON, num_key_value_heads=1, head_dim=8, sliding_window=3,
                                                     layer_types=["sliding_attention", "full_attention",
                                                                  "sliding_attention"])),
}

# Per architecture: the attention output projection and the MLP block of layer 1, and one
# weight of layer 2 that the attention reads (q / fused qkv), named as in named_parameters().
WEIGHTS = {
    "gpt2": ["transformer.h.1.attn.c_proj.weight", "transformer.h.1.mlp", "transformer.h.2.attn.c_attn.weight"],
    "opt": ["model.decoder.layers.1.self_attn.out_proj.weight", "model.decoder.layers.1.fc1",
            "model.decoder.layers.1.fc2", "model.decoder.layers.2.self_attn.q_proj.weight"],
    "gpt_neox": ["gpt_neox.layers.1.attention.dense.weight", "gpt_neox.layers.1.mlp",
                 "gpt_neox.layers.2.attention.query_key_value.weight"],
    "phi3": ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp", "model.layers.2.self_attn.qkv_proj.weight"],
}
for _arch in ("llama", "qwen2", "mistral", "gemma2", "gemma3"):
    WEIGHTS[_arch] = ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp", "model.layers.2.self_attn.q_proj.weight"]


def tiny_model(arch: str, attn_implementation: str = "sdpa", dtype=torch.float64, seed: int = 0):
    """A randomly initialised tiny model of ``arch`` (a key of :data:`CONFIGS`) in eval mode
    (eager attention where the architecture has no SDPA one)."""
    cls, make_config = CONFIGS[arch]
    config = make_config()
    config._attn_implementation = attn_implementation if cls._supports_sdpa else "eager"
    torch.manual_seed(seed)
    return cls(config).to(dtype).eval()


def train_tokenizer(texts, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on ``texts`` with the ``tokenizers`` package (offline),
    wrapped as a ``PreTrainedTokenizerFast`` with offsets, like GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")


def save_tiny_llama(folder: Path, texts, layers: int = 3, seed: int = 0) -> Path:
    """A random tiny Llama (hidden size 32) with a tokenizer trained on ``texts``, written to
    ``folder`` by ``save_pretrained`` (what a researcher's own model folder looks like)."""
    tokenizer = train_tokenizer(texts)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
