"""The settings the method is applied to: data, models and how they are trained or loaded.

* :mod:`.modular`: modular addition on Z_p, the Gromov MLP and the 1-layer Transformer;
* :mod:`.language`: TinyStories, spaCy grammar labels, Gemma-3-270M (or any causal LM), and
  the context dataset.
"""
