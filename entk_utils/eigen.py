"""Public entry point kept where the README shows it: the eigensolvers live in
:mod:`entk_utils.kernels.eigen`."""

from .kernels.eigen import cliff_blocks, find_cliffs, fix_signs, lanczos, top_eigenpairs  # noqa: F401
