"""entk_utils: feature identification via the empirical neural tangent kernel.

The package reads as the method, bottom-up (see ARCHITECTURE.md):

* :mod:`entk_utils.io` - infrastructure: cache, checks, hooks, notebook parameters, plots, reports, sweeps;
* :mod:`entk_utils.settings` - data and models: modular addition, language models on TinyStories;
* :mod:`entk_utils.kernels` - the eNTK: dense kernels, matrix-free operators, eigensolvers;
* :mod:`entk_utils.features` - what eigenvectors are compared with: geometry, nulls, Fourier
  families, directions, scoring, significance, causal tests, dynamics;
* :mod:`entk_utils.experiments` - one function per table or figure of each notebook.

The README's entry points stay where they were: ``entk_utils.kernels.entk`` /
``layerwise_entk``, ``entk_utils.operators.layer_entk_operator``,
``entk_utils.eigen.top_eigenpairs`` / ``find_cliffs`` and
``entk_utils.alignment.subspace_overlap``.
"""
__version__ = "0.1.0"
