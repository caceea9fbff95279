"""The language-model setting: the corpus (:mod:`.corpus`), grammar labels from spaCy
(:mod:`.tags`), the model, loaded from any source (:mod:`.models`), and the contexts sampled
from a text (:mod:`.contexts`) and the activations at every token of a text
(:mod:`.activations`)."""

from .activations import (TokenActivations, cached_token_activations, residual_stream, residual_streams,
                          token_activations)
from .candidates import context_candidates
from .contexts import (GENERATED_TOKENS, ContextDataset, cached_contexts, context_tail, greedy_generate_fn,
                       load_token_ids, sample_contexts, word_starts)
from .corpus import (SEPARATOR, STORIES_ENV, corpus_files, documents_of, hash_text, load_stories, read_documents,
                     read_stories, read_text, stories_path)
from .models import (HUB_ID, MODEL_SOURCES, LoadedModel, ResolvedSource, gguf_path, is_hub_id, smollm2_path,
                     load_gemma, load_model, model_outline, resolve_source)
from .tags import (SECOND_TAGGER, SPACY_MODELS, TAGS, first_word_after, grammar_labels, load_second_tagger, load_spacy,
                   next_word_upos)

__all__ = ["GENERATED_TOKENS", "HUB_ID", "MODEL_SOURCES", "SEPARATOR", "SPACY_MODELS", "STORIES_ENV", "TAGS",
           "ContextDataset", "TokenActivations", "cached_token_activations", "context_candidates", "corpus_files", "documents_of",
           "residual_stream", "residual_streams", "token_activations", "LoadedModel", "ResolvedSource", "cached_contexts", "context_tail", "first_word_after",
           "gguf_path", "grammar_labels", "greedy_generate_fn", "hash_text", "is_hub_id",
           "load_gemma", "load_model", "load_second_tagger", "load_spacy", "next_word_upos", "SECOND_TAGGER", "load_stories", "load_token_ids", "model_outline",
           "read_documents", "read_stories", "read_text", "resolve_source", "sample_contexts", "smollm2_path", "stories_path",
           "word_starts"]
