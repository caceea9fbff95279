"""Your own model: what notebook 06 needs to find and name the eNTK directions of any causal LM.

* the model: :func:`load_model` (the offline Gemma-3-270M, a local folder, a GGUF file or a
  Hub id), :func:`model_outline` (layers, context, hidden size and parameter names from the
  config alone, to check parameters before loading), :func:`default_weights` (one layer's
  attention output projection and MLP block);
* the data: :func:`read_documents` (any UTF-8 text), :func:`text_contexts` (windows that
  end just before a word, with the model's next-token prediction), :func:`feature_labels`
  (spaCy features of the next word with enough examples either way);
* the reading: :func:`name_directions` (each direction's best-matching feature, with a
  permutation p-value), :func:`strongest_contexts` (what a direction responds to).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..features import significance
from ..features.scoring import auroc_matrix
from ..io.cache import cache_key, cached
from ..kernels.anatomy import find_anatomy
from ..settings import language
from ..settings.language import models as language_models

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
ATTENTION = ("self_attn", "attn", "attention", "self_attention")       # a decoder layer's attention block
ATTENTION_OUTPUT = ("o_proj", "out_proj", "c_proj", "dense", "wo")       # its output projection
MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")                  # a decoder layer's MLP block
MLP_LINEARS = ("fc1", "fc2")                                              # ...or its linear maps, held by the layer (OPT)


# --------------------------------------------------------------------------- the model
def is_hub_id(source) -> bool:
    """Whether ``source`` reads as a Hugging Face Hub id (``"gpt2"``, ``"org/name"``)."""
    return isinstance(source, str) and bool(HUB_ID.match(source)) and source not in language.MODEL_SOURCES


def load_model(source: str, *, device="cpu", dtype=torch.float32, cache_dir=None) -> language.LoadedModel:
    """A causal LM and its (fast) tokenizer in eval mode: ``"auto"`` / ``"hub"`` / ``"gguf"`` or a
    local folder / ``.gguf`` file as :func:`entk_utils.settings.language.load_gemma`, else a Hub id
    (downloaded by ``from_pretrained``)."""
    if source in language.MODEL_SOURCES or Path(source).exists():
        loaded = language.load_gemma(source, device=device, dtype=dtype, cache_dir=cache_dir)
    elif is_hub_id(source):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager")
        loaded = language.LoadedModel(model.to(device).eval(), AutoTokenizer.from_pretrained(source),
                                      f"{source} from the Hugging Face Hub ({dtype})",
                                      f"{source}@{getattr(model.config, '_commit_hash', None)}")
    else:
        raise ValueError(f"model_source={source!r}: must be one of {language.MODEL_SOURCES}, an existing folder or "
                         ".gguf file, or a Hugging Face Hub id")
    if not getattr(loaded.tokenizer, "is_fast", False):
        raise ValueError(f"the tokenizer of {source!r} is not a fast tokenizer: character offsets are needed")
    return loaded


def _config(source, cache_dir):
    """The model's config, without its weights (the Hub cache, the Hub, a folder or a GGUF file)."""
    from transformers import AutoConfig

    if source in ("auto", "hub"):
        try:
            return AutoConfig.from_pretrained(language.HUB_ID, local_files_only=source == "auto")
        except (OSError, ValueError):
            if source == "hub":
                raise
    path = language.gguf_path(cache_dir) if source in ("auto", "gguf") else Path(source)
    if path.suffix == ".gguf":
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    return AutoConfig.from_pretrained(source)


def model_outline(source, cache_dir=None) -> dict:
    """``{"layers", "context", "hidden", "parameters"}`` of the model :func:`load_model` would
    load: decoder layers, longest context, hidden size and parameter names, from its config
    (the model is built on the meta device: no weights are read). Cached in ``cache_dir``
    by the source (a GGUF's config takes seconds to read)."""
    def compute():
        from transformers import AutoModelForCausalLM

        config = _config(source, cache_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return {**language_models._config_shape(config), "parameters": [name for name, _ in model.named_parameters()]}

    local = source not in language.MODEL_SOURCES and Path(source).exists()
    return cached(cache_dir, "model-outline", compute, source=Path(source) if local else str(source))


def default_weights(model: torch.nn.Module, layer: int | None = None) -> list[str]:
    """The attention output projection's weight and the MLP block of decoder layer ``layer``
    (default: the second-to-last), found by the usual names (:data:`ATTENTION`,
    :data:`ATTENTION_OUTPUT`, :data:`MLP`); ``ValueError`` asking for explicit weights otherwise."""
    anatomy = find_anatomy(model)
    n_layers = len(anatomy.layers)
    layer = max(n_layers - 2, 0) if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer!r}: must be in 0..{n_layers - 1}")
    children = dict(anatomy.layers[layer].named_children())
    prefix = anatomy.layer_names[layer]
    attention = next((a for a in ATTENTION if a in children), None)
    output = next((o for o in ATTENTION_OUTPUT if attention and isinstance(getattr(children[attention], o, None),
                                                                           torch.nn.Module)), None)
    mlp = [m for m in MLP if m in children][:1] or [m for m in MLP_LINEARS if m in children]
    if output is None or not mlp:
        raise ValueError(f"cannot tell the attention output projection and the MLP of layer {layer} of "
                         f"{type(model).__name__} (its blocks: {', '.join(children)}); pass weights=[...] by name")
    return [f"{prefix}.{attention}.{output}.weight", *(f"{prefix}.{m}" for m in mlp)]


def highest_layer(model: torch.nn.Module, weights: Sequence[str]) -> int:
    """The highest decoder layer holding one of ``weights`` (the last layer if none does)."""
    anatomy = find_anatomy(model)
    inside = [i for i in map(anatomy.layer_of, weights) if i is not None]
    return max(inside) if inside else len(anatomy.layers) - 1


# --------------------------------------------------------------------------- the data
def read_documents(path) -> list[str]:
    """The documents of a UTF-8 text file: stories separated by ``<|endoftext|>`` lines where
    the file has them (:func:`~entk_utils.settings.language.read_stories`), else its paragraphs
    (separated by blank lines)."""
    text = language.read_text(path)
    if language.SEPARATOR in text:
        return language.read_stories(path)
    return [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]


def text_contexts(documents: Sequence[str], tokenizer, nlp, predict: Callable[[torch.Tensor], list[str]], *,
                  n_contexts: int, context_len: int, seed: int = 0, progress: bool = True) -> language.ContextDataset:
    """``n_contexts`` windows of ``context_len`` tokens that end just before a word.

    Documents are visited in a seeded random order, each tokenised and tagged by spaCy when
    first visited; each round draws one unused word position per document (one whose word
    starts at a token boundary with at least ``context_len`` tokens before it), until the
    count is reached. ``predict`` gives the model's continuation of each window
    (``generated``); ``upos`` / ``morph`` / ``words`` describe the word that really follows.
    ``ValueError`` if the text has too few such positions.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(documents))
    found, chosen, rounds = {}, [], 0
    with tqdm(total=n_contexts, desc="contexts", disable=not progress) as bar:
        while len(chosen) < n_contexts:
            rounds += 1
            before = len(chosen)
            for d in order:
                if d not in found:
                    enc = tokenizer(documents[d], add_special_tokens=False, return_offsets_mapping=True)
                    starts = language.word_starts(nlp(documents[d]), enc.offset_mapping, documents[d], context_len)
                    found[d] = (enc.input_ids, [starts[i] for i in rng.permutation(len(starts))])
                ids, starts = found[d]
                if starts:
                    j, word = starts.pop()
                    chosen.append((int(d), j, word, ids[j - context_len:j]))
                    bar.update(1)
                if len(chosen) == n_contexts:
                    break
            if len(chosen) == before:
                raise ValueError(f"the text holds only {len(chosen)} word positions with {context_len} tokens before "
                                 f"them; n_contexts={n_contexts} needs more text or a smaller context_len")
    input_ids = torch.tensor([ids for *_, ids in chosen])
    return language.ContextDataset(
        input_ids=input_ids, upos=[w.pos_ for _, _, w, _ in chosen], morph=[str(w.morph) for _, _, w, _ in chosen],
        words=[w.text for _, _, w, _ in chosen], generated=predict(input_ids), story=[d for d, *_ in chosen],
        token=[j for _, j, *_ in chosen], report={"rounds": rounds, "documents": len(documents), "tagged": len(found)})


def cached_text_contexts(cache_dir, documents: Sequence[str], lm: language.LoadedModel, nlp, *, n_contexts: int,
                         context_len: int, seed: int = 0, progress: bool = True) -> language.ContextDataset:
    """:func:`text_contexts` with the model's greedy next token as its prediction, cached by
    the text, the model and the parameters."""
    def compute():
        predict = language.greedy_generate_fn(lm.model, lm.tokenizer, max_new_tokens=1)
        return text_contexts(documents, lm.tokenizer, nlp, predict, n_contexts=n_contexts, context_len=context_len,
                             seed=seed, progress=progress).to_dict()

    text = cache_key(n=len(documents), text=[language.hash_text(d) for d in documents])
    return language.ContextDataset(**cached(cache_dir, "text-contexts", compute, n_contexts=n_contexts,
                                            context_len=context_len, seed=seed, text=text, model=lm.description,
                                            weights=lm.fingerprint, nlp=f"{nlp.meta['name']}-{nlp.meta['version']}"))


def feature_labels(upos: Sequence[str], morph: Sequence[str], min_positives: int) -> tuple[pd.DataFrame, dict]:
    """Binary features of the next word (N, L): each part of speech and each morphological
    ``Feature=Value`` with at least ``min_positives`` positives and as many negatives
    (:func:`~entk_utils.settings.language.grammar_labels`), and ``{feature: "pos" or "morph"}``."""
    counts = Counter(upos)
    tags = [tag for tag in sorted(counts) if min_positives <= counts[tag] <= len(upos) - min_positives]
    return language.grammar_labels(upos, morph, tags=tags, min_positives=min_positives)


# --------------------------------------------------------------------------- the reading
def name_directions(scores, labels: pd.DataFrame, *, n_permutations: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> pd.DataFrame:
    """Each direction's best-matching feature.

    scores : (N, m) a score per context for each direction; labels : (N, L) binary features.
    For each direction, the feature it separates best by AUROC (either sign), the permutation
    p-value of that best match (:func:`~entk_utils.features.significance.best_label_test`), and the
    Holm-corrected p-value over the m directions. A direction is ``named`` after its feature
    where ``p_holm < alpha``. One row per direction: ``direction, feature, auroc, sign,
    p_perm, p_holm, named, name`` (``sign`` -1: the feature sits at the low end).
    """
    if labels.shape[1] == 0:
        raise ValueError("no feature has enough positives and negatives to name directions; use more contexts or "
                         "a smaller min_positives")
    best = significance.best_label_test(scores, labels.T.to_numpy(), n_permutations=n_permutations, seed=seed)
    table = pd.DataFrame({"direction": np.arange(len(best.label)), "feature": labels.columns[best.label],
                          "auroc": best.auroc, "sign": best.sign, "p_perm": best.p_value,
                          "p_holm": significance.holm(best.p_value)})
    table["named"] = table.p_holm < alpha
    table["name"] = table.feature.where(table.named, "-")
    return table


def oriented_auroc(scores, labels: pd.DataFrame) -> pd.DataFrame:
    """(L, m) AUROC of each direction (column of ``scores`` (N, m)) for each feature (column
    of ``labels`` (N, L)), oriented (``max(a, 1 - a)``: 0.5 is chance, 1 a perfect split)."""
    auroc = auroc_matrix(scores, labels.T.to_numpy())
    return pd.DataFrame(np.maximum(auroc, 1 - auroc), index=labels.columns)


def context_tail(tokenizer, ids: Sequence[int], n_tokens: int = 12) -> str:
    """The last ``n_tokens`` tokens of a context as text, the last one in brackets
    (``"…the big red [ball]"``), line breaks shown as ``⏎``."""
    def text(part):
        return tokenizer.decode(part).replace("\r", "").replace("\n", "⏎")

    ids = list(ids)
    last = text(ids[-1:])
    word = last.lstrip() or last
    return f"…{text(ids[-n_tokens:-1])}{last[:len(last) - len(word)]}[{word}]"


def strongest_contexts(scores, data: language.ContextDataset, tokenizer, directions: pd.DataFrame, *,
                       top: int = 5, n_tokens: int = 12) -> pd.DataFrame:
    """For each direction of ``directions`` (a :func:`name_directions` table), its ``top``
    contexts by score, oriented so that a named direction's feature sits at the high end
    (an unnamed one's largest score): ``direction, name, rank, score, context``
    (:func:`context_tail`), ``next word`` (the text's), ``its tag``, ``model predicts``."""
    S = np.asarray(scores, dtype=np.float64)
    rows = []
    for d in directions.itertuples():
        column = S[:, d.direction]
        oriented = column * (d.sign if d.named else np.sign(column[np.argmax(np.abs(column))]) or 1)
        for rank, n in enumerate(np.argsort(-oriented, kind="stable")[:top]):
            rows.append({"direction": d.direction, "name": d.name, "rank": rank + 1, "score": oriented[n],
                         "context": context_tail(tokenizer, data.input_ids[n].tolist(), n_tokens),
                         "next word": data.words[n], "its tag": data.upos[n], "model predicts": data.generated[n]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- notebook 06's tables and figures
def spectrum_figure(evals):
    """The top eigenvalues (descending) on a log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    ax.semilogy(np.arange(len(evals)), evals, "o-", ms=4)
    ax.set(xlabel="eigenvalue index", ylabel="eigenvalue", title="Top eNTK eigenvalues of the chosen weights")
    return fig


def directions_table(named: dict[str, pd.DataFrame], evals, pca_scores, shares) -> pd.DataFrame:
    """One row per direction of each method (``named``: :func:`name_directions` per method,
    ``"entk"`` then ``"pca"``), with its eigenvalue (eNTK) or variance (PCA) and, for the eNTK,
    the share of the eigenvector that its top singular component explains."""
    table = pd.concat([t.assign(method=method) for method, t in named.items()], ignore_index=True)
    table["eigenvalue or variance"] = np.concatenate([np.asarray(evals), np.asarray(pca_scores).var(axis=0)])
    table["top singular share"] = np.concatenate([np.asarray(shares), np.full(np.shape(pca_scores)[1], np.nan)])
    return table


def features_figure(aurocs: dict[str, pd.DataFrame], named: dict[str, pd.DataFrame]):
    """Per method, the oriented AUROC of every direction (columns) for every feature (rows);
    a red box marks a direction's name where the permutation test allows one."""
    import matplotlib.pyplot as plt

    features = next(iter(aurocs.values())).index
    fig, axes = plt.subplots(1, len(aurocs), figsize=(6 * len(aurocs), 0.35 * len(features) + 1.6),
                             layout="constrained", sharey=True, squeeze=False)
    for ax, (method, auroc) in zip(axes[0], aurocs.items()):
        image = ax.imshow(auroc, vmin=0.5, vmax=1, cmap="viridis", aspect="auto")
        for d in named[method][named[method].named].itertuples():
            ax.add_patch(plt.Rectangle((d.direction - 0.5, features.get_loc(d.feature) - 0.5), 1, 1, fill=False,
                                       ec="red", lw=1.5))
        ax.set(title=f"{method}: AUROC per feature", xlabel="direction", xticks=range(auroc.shape[1]))
        ax.grid(False)
    axes[0, 0].set_yticks(range(len(features)), features, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="AUROC (oriented)")
    return fig


def summary_table(named: dict[str, pd.DataFrame], aurocs: dict[str, pd.DataFrame], **columns) -> pd.DataFrame:
    """Per method: directions named, distinct features named, and the mean over features of
    the best AUROC over the method's directions; ``columns`` are added as they are."""
    best = {method: auroc.max(axis=1).mean() for method, auroc in aurocs.items()}
    summary = pd.DataFrame({method: {"directions named": int(t.named.sum()),
                                     "distinct features named": t[t.named].feature.nunique(),
                                     "mean best AUROC over features": best[method]}
                            for method, t in named.items()}).T
    return summary.assign(**columns)
