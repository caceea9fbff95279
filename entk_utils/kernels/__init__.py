"""The eNTK itself: dense kernels (:mod:`.dense`, with the fast Gram path :mod:`.gram` and the
torch.func reference :mod:`.reference`), matrix-free operators for language models
(:mod:`.operators`) and eigensolvers (:mod:`.eigen`).

``entk_utils.kernels.entk`` / ``layerwise_entk`` are the public entry points (re-exported
from :mod:`.dense`).
"""

from .dense import KERNEL_METHODS, REDUCTIONS, entk, entk_contributions, layerwise_entk, resolve_params

__all__ = ["KERNEL_METHODS", "REDUCTIONS", "entk", "entk_contributions", "layerwise_entk", "resolve_params"]
