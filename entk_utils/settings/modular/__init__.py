"""Modular addition: the dataset and its split policies (:mod:`.data`), the two models and
their seeded initialisations (:mod:`.models`), the two training recipes and training with
checkpoints and a cache (:mod:`.training`)."""

from .data import (SPLITS, modular_addition_pairs, one_hot_pairs, paper_split, split_indices, train_test_split,
                   transformer_tokens)
from .models import (TRANSFORMER_INITS, GromovMLP, OneLayerTransformer, hidden_activations, paper_transformer_init,
                     reinitialised)
from .training import (MLPRecipe, ModularRun, Recipe, TrainResult, TransformerRecipe, check_run_arguments, train,
                       train_gromov_mlp, train_transformer, training_code)
from ...io.checks import check_modulus

__all__ = ["SPLITS", "TRANSFORMER_INITS", "GromovMLP", "MLPRecipe", "ModularRun", "OneLayerTransformer", "Recipe",
           "TrainResult", "TransformerRecipe", "check_modulus", "check_run_arguments", "hidden_activations",
           "modular_addition_pairs", "one_hot_pairs", "paper_split", "paper_transformer_init", "reinitialised",
           "split_indices", "train", "train_gromov_mlp", "train_test_split", "train_transformer", "training_code",
           "transformer_tokens"]
