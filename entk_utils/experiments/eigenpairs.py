"""Eigenpairs of the language-model eNTK operator, computed by Lanczos and cached on disk:
for any set of weights (:func:`cached_eigenpairs`, notebook 06) and for one decoder layer's
``down_proj`` (:func:`cached_layer_eigenpairs`, notebook 03 and the batch job
:mod:`entk_utils.eigs`)."""

from __future__ import annotations

import time

import torch

from ..io.cache import cached
from ..kernels import anatomy, forward_paths, operators, path_choice
from ..kernels.eigen import lanczos
from ..kernels.operators import entk_operator

# The code whose changes change the eigenpairs: the operator, its forward paths, the solver.
OPERATOR_CODE = (operators, anatomy, forward_paths, path_choice, lanczos)


def entry_params(input_ids: torch.Tensor, weights, n_eigs: int, *, steps: int, seed: int, metric, key: str,
                 **operator_kwargs) -> dict:
    """The key parameters an eigenpairs entry is filed under (with ``produced_by=OPERATOR_CODE``),
    by :func:`cached_eigenpairs` and by the batch job (:mod:`entk_utils.eigs`)."""
    return {"n_eigs": n_eigs, "steps": steps, "seed": seed, "key": key, "n": len(input_ids), "metric": metric,
            "weights": weights, **operator_kwargs}


def cached_eigenpairs(cache_dir, model, input_ids: torch.Tensor, weights, n_eigs: int, *, name: str = "entk-eigs",
                      steps: int = 50, seed: int = 0, metric="unembedding", chunk_size: int = 64, key: str = "",
                      progress: bool = True, **operator_kwargs) -> dict:
    """Top ``n_eigs`` eigenpairs of :func:`~entk_utils.kernels.operators.entk_operator` for
    ``weights`` by Lanczos, cached in ``cache_dir`` as ``name-<key>.pt``.

    ``key`` should identify the model and inputs (e.g. the dataset's cache key); the weights,
    metric and other operator arguments (tensors by content) are part of the cache key.
    Returns ``{"evals": (n_eigs,), "evecs": (N*d, n_eigs), "residuals": (n_eigs,), "seconds":
    float, "path": str}``.
    """
    def compute():
        start = time.perf_counter()
        op = entk_operator(model, input_ids, weights, metric=metric, chunk_size=chunk_size, **operator_kwargs)
        evals, evecs, residuals = lanczos(op, n_eigs, steps, seed=seed, progress=progress)
        return {"evals": torch.from_numpy(evals), "evecs": torch.from_numpy(evecs), "path": op.strategy.describe(),
                "residuals": torch.from_numpy(residuals), "seconds": time.perf_counter() - start}

    return cached(cache_dir, name, compute, produced_by=OPERATOR_CODE,
                  **entry_params(input_ids, weights, n_eigs, steps=steps, seed=seed, metric=metric, key=key,
                                 **operator_kwargs))


def layer_weight(model, layer: int, param: str = "mlp.down_proj.weight") -> str:
    """The full parameter name of ``param`` in decoder layer ``layer`` of ``model``."""
    return f"{anatomy.find_anatomy(model).layer_names[layer]}.{param}"


def layer_entry(model, input_ids: torch.Tensor, layer: int, n_eigs: int, *, steps: int, seed: int, metric,
                key: str, param: str = "mlp.down_proj.weight") -> tuple[str, dict]:
    """The cache entry (name, key parameters) of one layer's eigenpairs, as
    :func:`cached_layer_eigenpairs` and the batch job (:mod:`entk_utils.eigs`) both file them."""
    return f"entk-eigs-layer{layer}", entry_params(input_ids, layer_weight(model, layer, param), n_eigs, steps=steps,
                                                   seed=seed, metric=metric, key=key)


def cached_layer_eigenpairs(cache_dir, model, input_ids: torch.Tensor, layer: int, n_eigs: int, *, steps: int = 50,
                            seed: int = 0, metric=None, chunk_size: int = 64, key: str = "",
                            progress: bool = True) -> dict:
    """Top ``n_eigs`` eigenpairs of the ``down_proj`` operator of decoder layer ``layer``
    (``metric``: a (d, d) tensor, a name, or None for the identity), cached per layer under
    :func:`layer_entry` (so a sweep over layers that stops halfway resumes where it stopped;
    the batch job :mod:`entk_utils.eigs` fills the same entries). Returns as
    :func:`cached_eigenpairs`."""
    name, params = layer_entry(model, input_ids, layer, n_eigs, steps=steps, seed=seed, metric=metric, key=key)
    return cached_eigenpairs(cache_dir, model, input_ids, params["weights"], n_eigs, name=name, steps=steps, seed=seed,
                             metric=metric, chunk_size=chunk_size, key=key, progress=progress)
