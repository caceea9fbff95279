"""Public entry point kept where the README shows it: subspace geometry lives in
:mod:`entk_utils.features.geometry` (nulls in :mod:`~entk_utils.features.nulls`, scoring
against labels in :mod:`~entk_utils.features.scoring`)."""

from .features.geometry import orthonormal_basis, principal_cosines, subspace_overlap  # noqa: F401
