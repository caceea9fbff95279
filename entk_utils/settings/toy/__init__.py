"""Toy models whose features are known: the toy model of superposition (:mod:`.tms`)."""

from .tms import CONFIGURATIONS, TMS, TMSRecipe, TMSRun, recipe_of, sample_features, train_tms

__all__ = ["CONFIGURATIONS", "TMS", "TMSRecipe", "TMSRun", "recipe_of", "sample_features", "train_tms"]
