"""The language-model setting: the corpus (:mod:`.corpus`), grammar labels from spaCy
(:mod:`.tags`), the model (:mod:`.models`) and the context dataset (:mod:`.contexts`)."""

from .contexts import GENERATED_TOKENS, ContextDataset, build_context_dataset, greedy_generate_fn, word_starts
from .corpus import SEPARATOR, STORIES_ENV, hash_text, load_stories, read_stories, read_text, stories_path
from .models import HUB_ID, MODEL_SOURCES, LoadedModel, gguf_path, last_token_activations, load_gemma, model_shape
from .tags import SPACY_MODELS, TAGS, first_word_after, grammar_labels, load_spacy

__all__ = ["GENERATED_TOKENS", "HUB_ID", "MODEL_SOURCES", "SEPARATOR", "SPACY_MODELS", "STORIES_ENV", "TAGS",
           "ContextDataset", "LoadedModel", "build_context_dataset", "first_word_after", "gguf_path", "grammar_labels",
           "greedy_generate_fn", "hash_text", "last_token_activations", "load_gemma", "load_spacy", "load_stories",
           "model_shape", "read_stories", "read_text", "stories_path", "word_starts"]
