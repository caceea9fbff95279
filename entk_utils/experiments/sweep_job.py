"""Notebook 03's eigenpairs as a batch job (:mod:`entk_utils.eigs`): the layer eigenpairs with
the contexts shared over ``torch.distributed`` ranks, notebook 03's parameters, dataset, key
and metric as the notebook computes them, and its cache filled layer by layer under the
entries :func:`~entk_utils.experiments.eigenpairs.cached_layer_eigenpairs` looks up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..io import session
from ..io.cache import check_writable, entry_path
from ..io.notebooks import declared_parameters
from ..kernels import operators
from ..kernels.distributed import cached_on_root, data_parallel_operator, format_bytes, rank_and_size
from ..kernels.eigen import lanczos
from ..settings import language
from . import parameters
from .eigenpairs import OPERATOR_CODE, layer_entry
from .gemma import cached_context_dataset, eigenpairs_key

log = logging.getLogger("entk_utils.eigs")

NOTEBOOK = "03_gemma_tinystories"
NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"


# --------------------------------------------------------------------------- eigenpairs
def layer_eigenpairs(model, input_ids: torch.Tensor, layer: int, n_eigs: int, steps: int, *, seed: int = 0,
                     metric="unembedding", progress: bool = True, **operator_kwargs):
    """Top ``n_eigs`` eigenpairs of the layer eNTK operator by ``steps`` Lanczos steps, with
    the contexts shared over the ranks (:func:`~entk_utils.kernels.distributed.data_parallel_operator`;
    one rank without a process group). Call it on every rank with the same arguments.

    Returns ``(result, stats)``: ``result`` as :func:`~entk_utils.experiments.eigenpairs.cached_layer_eigenpairs`
    stores it, ``{"evals": (k,), "evecs": (N*d, k), "residuals": (k,), "seconds": float}``
    (tensors, the same on every rank), and the operator's
    :class:`~entk_utils.kernels.distributed.CommStats`.
    """
    start = time.perf_counter()
    rank, world_size = rank_and_size()
    op = data_parallel_operator(model, input_ids, layer, metric=metric, **operator_kwargs)
    evals, evecs, residuals = lanczos(op, n_eigs, steps, seed=seed, progress=progress and rank == 0)
    if world_size > 1:
        spread = max(float(np.max(np.abs(e - evals))) for e in _all_gather_objects(evals))
        if spread > 0:
            log.warning("layer %d: the ranks' eigenvalues differ by up to %.1e (their Lanczos runs diverged, e.g. "
                        "different BLAS); rank 0's are the result", layer, spread)
    result = {"evals": torch.from_numpy(evals), "evecs": torch.from_numpy(evecs),
              "residuals": torch.from_numpy(residuals), "seconds": time.perf_counter() - start}
    return result, op.stats


def _all_gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order."""
    gathered = [None] * rank_and_size()[1]
    dist.all_gather_object(gathered, obj)
    return gathered


def _describe(stats, seconds: float) -> str:
    """One line on what a layer's products cost (rank 0's view)."""
    if stats.world_size == 1:
        return f"{stats.matvecs} products in {seconds:.1f} s"
    return (f"{stats.matvecs} products in {seconds:.1f} s on {stats.world_size} ranks; per product "
            f"{stats.compute_seconds / stats.matvecs:.3f} s computing, all-reduce {format_bytes(stats.allreduce_bytes)} "
            f"in {stats.allreduce_seconds / stats.matvecs:.3f} s, all-gather {format_bytes(stats.allgather_bytes)} in "
            f"{stats.allgather_seconds / stats.matvecs:.3f} s ({100 * stats.comm_share:.1f}% communicating)")


# --------------------------------------------------------------------------- notebook 03's cache
def notebook_file() -> Path:
    """Notebook 03's source, whose parameters cell gives the defaults."""
    path = NOTEBOOKS_DIR / f"{NOTEBOOK}.py"
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} not found: the profile mode runs from the repository checkout")
    return path


def profile_file(name: str) -> Path:
    """``notebooks/profiles/03_gemma_tinystories.<name>.yaml``; ``FileNotFoundError`` listing the profiles."""
    path = NOTEBOOKS_DIR / "profiles" / f"{NOTEBOOK}.{name}.yaml"
    if not path.is_file():
        names = sorted(p.name.split(".")[1] for p in (NOTEBOOKS_DIR / "profiles").glob(f"{NOTEBOOK}.*.yaml"))
        raise FileNotFoundError(f"--profile={name!r}: no {path.name}; notebook 03's profiles: {', '.join(names)}")
    return path


def _from_notebooks_dir(value, env: str | None = None, default: str | None = None) -> str | None:
    """A path parameter as notebook 03 sees it (it runs in ``notebooks/``): ``value``, else
    ``$env``, else ``default``; a relative one taken from the notebooks folder."""
    value = value or (os.environ.get(env) if env else None) or default
    if value is None:
        return None
    return str(NOTEBOOKS_DIR / value) if not Path(value).is_absolute() else str(value)


def notebook_parameters(profile: str | None = None, param_file: str | None = None, layers=None,
                        cache_dir: str | None = None) -> dict:
    """Notebook 03's parameters: the defaults of its parameters cell, then ``profile``'s YAML,
    then ``param_file``, then ``layers``; ``cache_dir`` (relative to here) replaces the
    notebook's. ``cache_dir`` and ``stories_path`` come back as absolute paths, resolved as
    the notebook resolves them. Names the notebook does not declare are an error."""
    notebook = notebook_file()
    values = declared_parameters(notebook)
    for path in (profile_file(profile) if profile else None, param_file):
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--param-file={str(path)!r}: no such file")
            values.update(parameters.check_profile(notebook, path))
    if layers is not None:
        values["layers"] = list(layers)
    values["cache_dir"] = (str(Path(cache_dir).resolve()) if cache_dir else
                           _from_notebooks_dir(values["cache_dir"], session.CACHE_ENV, session.DEFAULT_CACHE_DIR))
    values["stories_path"] = _from_notebooks_dir(values["stories_path"], language.STORIES_ENV)
    if values["model_source"] not in language.MODEL_SOURCES:
        values["model_source"] = _from_notebooks_dir(values["model_source"])
    return values


def default_threads() -> int:
    """torch's intra-op threads in a new Python process without ``OMP_NUM_THREADS`` /
    ``MKL_NUM_THREADS`` (what a notebook kernel started here gets)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def notebook_metric(model, device, threads: int) -> torch.Tensor:
    """``A = (U^T U)^{1/2}`` exactly as notebook 03 computes it: on its ``device`` with
    ``threads`` CPU threads (the eigenpairs' cache key holds A's bits, and a float64 product
    summed by another number of threads, or on another device, differs in the last bits)."""
    head = model.get_output_embeddings()
    where = torch.device(device)
    if head.weight.device != where:
        head = types.SimpleNamespace(weight=head.weight.detach().to(where))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return operators.unembedding_metric(types.SimpleNamespace(get_output_embeddings=lambda: head))
    finally:
        torch.set_num_threads(previous)


def check_notebook_job(values: dict, world_size: int) -> None:
    """Notebook 03's own validation of ``values`` (it also assembles the offline GGUF where
    needed), and a writable cache; ``ValueError`` naming the value."""
    parameters.check_gemma_notebook(values)
    check_writable(values["cache_dir"])
    n = values["n_per_tag"] * len(language.TAGS)
    if n < world_size:
        raise ValueError(f"n_per_tag={values['n_per_tag']}: N={n} contexts for {world_size} ranks")


def build_notebook_inputs(values: dict, lm, threads: int) -> dict:
    """What notebook 03 computes before its eigenpairs (rank 0): its dataset (read from or
    written to the cache), the eigenpairs' key and the metric."""
    stories = language.load_stories("local", language.stories_path(values["stories_path"]))
    data = cached_context_dataset(values["cache_dir"], stories, lm, language.load_spacy(),
                                           n_per_tag=values["n_per_tag"], context_len=values["context_len"],
                                           seed=values["seed"])
    return {"input_ids": data.input_ids, "key": eigenpairs_key(data, lm),
            "metric": notebook_metric(lm.model, values["device"], threads).cpu()}


def fill_cache(cache_dir, model, input_ids: torch.Tensor, layers, n_eigs: int, steps: int, *, seed: int, key: str,
               metric: torch.Tensor | None, chunk_size: int = 64) -> list[tuple[Path | None, bool]]:
    """The eigenpairs of each of ``layers``, one after another, in ``cache_dir`` under the
    names and keys of :func:`~entk_utils.experiments.eigenpairs.cached_layer_eigenpairs` (``key``, ``seed``, ``metric``
    as the caller passes them there): a layer already there is skipped, the others are
    computed on all ranks (:func:`layer_eigenpairs`) and written by rank 0 when complete.

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
            done = _describe(stats[0], result["seconds"]) if computed else "already cached"
            log.info("layer %d (%d/%d): %s; top eigenvalues %s -> %s", layer, i + 1, len(layers), done,
                     np.round(result["evals"][:3].numpy(), 3).tolist(), path.name)
    return entries
