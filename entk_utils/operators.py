"""Public entry point kept where the README shows it: the matrix-free eNTK operators live in
:mod:`entk_utils.kernels.operators`."""

from .kernels.operators import *  # noqa: F401,F403
from .kernels.operators import layer_entk_operator, unembedding_metric  # noqa: F401
