"""Eigenpairs of the language-model eNTK operator, computed by Lanczos and cached on disk:
for any set of weights (:func:`cached_eigenpairs`, notebook 06), for one decoder layer's
``down_proj`` (:func:`cached_layer_eigenpairs`, notebook 03), and with the contexts shared
over ``torch.distributed`` ranks (:func:`layer_eigenpairs`, :func:`fill_cache`: the batch job
:mod:`entk_utils.eigs` fills the entries notebook 03 reads). Every entry is filed under one
key of the contexts and the model, :func:`eigenpairs_key`."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..io.cache import cached, entry_path
from ..io.ranks import all_gather_objects, cached_on_root, rank_and_size
from ..kernels import anatomy, conventions, forward_paths, module_tools, operators, path_choice
from ..kernels.distributed import data_parallel_operator
from ..kernels.eigen import lanczos
from ..kernels.operators import entk_operator
from ..kernels.token_reading import eigenvectors_key
from ..settings.language import LoadedModel, hash_text

log = logging.getLogger("entk_utils.eigs")

# The code whose changes change the eigenpairs: the operator, its forward paths, the solver.
OPERATOR_CODE = (operators, anatomy, conventions, forward_paths, module_tools, path_choice, lanczos)


def eigenpairs_key(input_ids: torch.Tensor, lm: LoadedModel) -> str:
    """The key eigenpairs of ``lm`` on the contexts ``input_ids`` are filed under: the token
    ids and the model's description and weights (the weights, metric and solver settings are
    added by :func:`entry_params`)."""
    return hash_text(repr((input_ids.tolist(), lm.description, lm.fingerprint)))


def entry_params(input_ids: torch.Tensor, weights, n_eigs: int, *, steps: int, seed: int, metric, key: str,
                 **operator_kwargs) -> dict:
    """The key parameters an eigenpairs entry is filed under (with ``produced_by=OPERATOR_CODE``),
    by :func:`cached_eigenpairs` and by the batch job (:func:`fill_cache`)."""
    return {"n_eigs": n_eigs, "steps": steps, "seed": seed, "key": key, "n": len(input_ids), "metric": metric,
            "weights": weights, **operator_kwargs}


def cached_eigenpairs(cache_dir, model, input_ids: torch.Tensor, weights, n_eigs: int, *, name: str = "entk-eigs",
                      steps: int = 50, seed: int = 0, metric="unembedding", chunk_size: int = 64, key: str = "",
                      progress: bool = True, **operator_kwargs) -> dict:
    """Top ``n_eigs`` eigenpairs of :func:`~entk_utils.kernels.operators.entk_operator` for
    ``weights`` by Lanczos, cached in ``cache_dir`` as ``name-<key>.pt``.

    ``key`` should identify the model and inputs (:func:`eigenpairs_key`); the weights,
    metric and other operator arguments (tensors by content) are part of the cache key.
    Returns ``{"evals": (n_eigs,), "evecs": (N*d, n_eigs), "residuals": (n_eigs,), "seconds":
    float, "path": str, "key": str}``; ``key`` is
    :func:`~entk_utils.kernels.token_reading.eigenvectors_key` of the contexts and weights (what
    :class:`~entk_utils.kernels.token_reading.Eigenfunctions` checks an operator against).
    """
    def compute():
        start = time.perf_counter()
        op = entk_operator(model, input_ids, weights, metric=metric, chunk_size=chunk_size, **operator_kwargs)
        evals, evecs, residuals = lanczos(op, n_eigs, steps, seed=seed, progress=progress)
        return {"evals": torch.from_numpy(evals), "evecs": torch.from_numpy(evecs), "path": op.strategy.describe(),
                "residuals": torch.from_numpy(residuals), "seconds": time.perf_counter() - start}

    result = cached(cache_dir, name, compute, produced_by=OPERATOR_CODE,
                    **entry_params(input_ids, weights, n_eigs, steps=steps, seed=seed, metric=metric, key=key,
                                   **operator_kwargs))
    return {**result, "key": eigenvectors_key(input_ids, operators.resolve_weights(model, weights))}


def layer_entry(model, input_ids: torch.Tensor, layer: int, n_eigs: int, *, steps: int, seed: int, metric,
                key: str, param: str = "mlp.down_proj.weight") -> tuple[str, dict]:
    """The cache entry (name, key parameters) of one layer's eigenpairs, as
    :func:`cached_layer_eigenpairs` and the batch job (:func:`fill_cache`) both file them."""
    weight = conventions.layer_weight(model, layer, param)
    return f"entk-eigs-layer{layer}", entry_params(input_ids, weight, n_eigs, steps=steps, seed=seed, metric=metric,
                                                   key=key)


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


# --------------------------------------------------------------------------- over ranks
def layer_eigenpairs(model, input_ids: torch.Tensor, layer: int, n_eigs: int, steps: int, *, seed: int = 0,
                     metric="unembedding", progress: bool = True, **operator_kwargs):
    """Top ``n_eigs`` eigenpairs of the layer eNTK operator by ``steps`` Lanczos steps, with
    the contexts shared over the ranks (:func:`~entk_utils.kernels.distributed.data_parallel_operator`;
    one rank without a process group). Call it on every rank with the same arguments.

    Returns ``(result, stats)``: ``result`` as :func:`cached_layer_eigenpairs` stores it,
    ``{"evals": (k,), "evecs": (N*d, k), "residuals": (k,), "seconds": float}`` (tensors, the
    same on every rank), and the operator's :class:`~entk_utils.kernels.distributed.CommStats`.
    """
    start = time.perf_counter()
    rank, world_size = rank_and_size()
    op = data_parallel_operator(model, input_ids, layer, metric=metric, **operator_kwargs)
    evals, evecs, residuals = lanczos(op, n_eigs, steps, seed=seed, progress=progress and rank == 0)
    if world_size > 1:
        spread = max(float(np.max(np.abs(e - evals))) for e in all_gather_objects(evals))
        if spread > 0:
            log.warning("layer %d: the ranks' eigenvalues differ by up to %.1e (their Lanczos runs diverged, e.g. "
                        "different BLAS); rank 0's are the result", layer, spread)
    result = {"evals": torch.from_numpy(evals), "evecs": torch.from_numpy(evecs),
              "residuals": torch.from_numpy(residuals), "seconds": time.perf_counter() - start}
    return result, op.stats


def fill_cache(cache_dir, model, input_ids: torch.Tensor, layers, n_eigs: int, steps: int, *, seed: int, key: str,
               metric: torch.Tensor | None, chunk_size: int = 64) -> list[tuple[object, bool]]:
    """The eigenpairs of each of ``layers``, one after another, in ``cache_dir`` under the
    entries of :func:`cached_layer_eigenpairs` (``key``, ``seed``, ``metric`` as the caller
    passes them there): a layer already there is skipped, the others are computed on all
    ranks (:func:`layer_eigenpairs`) and written by rank 0 when complete.

    Call it on every rank with the same arguments (``key`` and ``metric`` matter on rank 0).
    Returns ``[(entry path, computed), ...]`` per layer (the path on rank 0, None elsewhere).
    """
    rank, _ = rank_and_size()
    entries = []
    for i, layer in enumerate(layers):
        name, key_params = layer_entry(model, input_ids, layer, n_eigs, steps=steps, seed=seed, metric=metric, key=key)
        stats = []

        def compute(layer=layer, stats=stats):
            result, layer_stats = layer_eigenpairs(model, input_ids, layer, n_eigs, steps, seed=seed, metric=metric,
                                                   chunk_size=chunk_size)
            stats.append(layer_stats)
            return result

        try:
            result, computed = cached_on_root(cache_dir, name, compute, produced_by=OPERATOR_CODE, **key_params)
        except BaseException as err:
            err.add_note(f"while computing the eigenpairs of layer {layer} on rank {rank}; "
                         "the layers finished before it are cached, this one is not")
            raise
        path = entry_path(cache_dir, name, produced_by=OPERATOR_CODE, **key_params) if rank == 0 else None
        entries.append((path, computed))
        if rank == 0:
            done = stats[0].describe(result["seconds"]) if computed else "already cached"
            log.info("layer %d (%d/%d): %s; top eigenvalues %s -> %s", layer, i + 1, len(layers), done,
                     np.round(result["evals"][:3].numpy(), 3).tolist(), path.name)
    return entries
