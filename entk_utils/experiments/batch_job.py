"""The eigenpairs batch job (:mod:`entk_utils.eigs`, in one process or under ``torchrun``): its
two modes, each a function of the parsed command line and this rank's device.

* :func:`run_file_job`: one layer of any causal LM, on token ids from a file, to an ``.npz``;
* :func:`run_notebook_job`: notebook 03's eigenpairs for one of its parameter sets, into the
  notebook's cache, built from notebook 03's parameters, dataset, key and metric exactly as
  the notebook computes them (:func:`notebook_parameters`, :func:`build_notebook_inputs`).

The eigenpairs over ranks and the cache entries are :mod:`.eigenpairs`'; the process group
is :mod:`entk_utils.io.ranks`'.
"""

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

from ..io import checks, session
from ..io.cache import check_writable, write_atomically
from ..io.notebooks import declared_parameters
from ..io.ranks import on_root, rank_and_size
from ..kernels import operators
from ..settings import language
from . import parameters
from .eigenpairs import eigenpairs_key, fill_cache, layer_eigenpairs

log = logging.getLogger("entk_utils.eigs")

NOTEBOOK = "03_gemma_tinystories"
NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- one layer to a file
def check_file_job(args, world_size: int) -> torch.Tensor:
    """Validate the one-layer job's arguments (without loading the model's weights) and
    return its contexts. One-line ``ValueError`` / ``FileNotFoundError`` naming the value."""
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out={args.out!r}: must end in .npz")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out={args.out!r}: the folder {out.parent} does not exist")
    checks.integer("--n-eigs", args.n_eigs, minimum=1)
    checks.integer("--steps", args.steps, minimum=args.n_eigs, note=" (at least --n-eigs)")
    checks.integer("--seed", args.seed, minimum=0)
    try:
        outline = language.model_outline(args.model, args.cache_dir)
    except ValueError as err:
        raise ValueError(f"--model={args.model!r}: {err}") from None
    checks.integer("--layer", args.layer, minimum=0, maximum=outline["layers"] - 1,
                   note=f" (the model has {outline['layers']} decoder layers)")
    ids = language.load_token_ids(args.contexts, min_contexts=world_size, max_len=outline["context"])
    checks.integer("--n-eigs", args.n_eigs, maximum=len(ids) * outline["hidden"],
                   note=f" (N*d = {len(ids)} x {outline['hidden']})")
    return ids


def run_file_job(args, device: torch.device) -> None:
    """``--out`` mode: one layer's eigenpairs to an ``.npz`` file (rank 0 writes it, atomically)."""
    rank, world_size = rank_and_size()
    ids = on_root(lambda: check_file_job(args, world_size))
    model = language.load_model(args.model, device=device, dtype=DTYPES[args.dtype], tokenizer=False).model
    metric = None if args.metric == "identity" else "unembedding"
    log.info("layer %d, %s: N=%d contexts of %d tokens on %d rank(s), %s; %d eigenpairs by %d Lanczos steps",
             args.layer, args.param, *ids.shape, world_size, device, args.n_eigs, args.steps)
    result, stats = layer_eigenpairs(model, ids, args.layer, args.n_eigs, args.steps, seed=args.seed, metric=metric,
                                     param=args.param, chunk_size=args.chunk_size)
    log.info("layer %d: %s", args.layer, stats.describe(result["seconds"]))
    if rank == 0:
        arrays = dict(eigenvalues=result["evals"].numpy(), eigenvectors=result["evecs"].numpy(),
                      residuals=result["residuals"].numpy(), layer=args.layer, param=args.param, model=args.model,
                      n_contexts=len(ids), context_len=ids.shape[1], hidden=model.config.get_text_config().hidden_size,
                      steps=args.steps, seed=args.seed, metric=args.metric, dtype=args.dtype, world_size=world_size,
                      seconds=result["seconds"], matvecs=stats.matvecs, compute_seconds=stats.compute_seconds,
                      comm_seconds=stats.comm_seconds, allreduce_bytes=stats.allreduce_bytes,
                      allgather_bytes=stats.allgather_bytes, torch_version=torch.__version__)
        write_atomically(args.out, lambda f: np.savez(f, **arrays))
        log.info("wrote %s", args.out)


# --------------------------------------------------------------------------- notebook 03's eigenpairs into its cache
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
    notebook's. ``cache_dir`` and ``text_path`` (``stories_path``, its old name, taken for it)
    come back as absolute paths, resolved as the notebook resolves them. Names the notebook
    does not declare are an error."""
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
    if values.get("text_path") is None:
        values["text_path"] = values.get("stories_path")
    values["stories_path"] = None
    values["text_path"] = _from_notebooks_dir(values["text_path"], language.STORIES_ENV)
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
    needed, once per machine), and a writable cache; ``ValueError`` naming the value."""
    parameters.check_gemma_notebook(values)
    check_writable(values["cache_dir"])
    n = values["n_per_tag"] * len(language.TAGS)
    if n < world_size:
        raise ValueError(f"n_per_tag={values['n_per_tag']}: N={n} contexts for {world_size} ranks")


def build_notebook_inputs(values: dict, lm, threads: int) -> dict:
    """What notebook 03 computes before its eigenpairs (rank 0): its dataset (read from or
    written to the cache), the eigenpairs' key and the metric."""
    documents = language.load_stories("local", language.stories_path(values["text_path"]))
    data = language.cached_contexts(values["cache_dir"], documents, lm, language.load_spacy(),
                                    n_per_tag=values["n_per_tag"], context_len=values["context_len"],
                                    seed=values["seed"])
    return {"input_ids": data.input_ids, "key": eigenpairs_key(data.input_ids, lm),
            "metric": notebook_metric(lm.model, values["device"], threads).cpu()}


def run_notebook_job(args, device: torch.device) -> None:
    """Profile mode: notebook 03's eigenpairs for every layer of its parameter set, into its cache."""
    rank, world_size = rank_and_size()
    values = on_root(lambda: _checked_notebook_parameters(args, world_size))
    threads = args.notebook_threads or (default_threads() if rank == 0 else 0)
    lm = language.load_model(values["model_source"], device=device)
    inputs = on_root(lambda: build_notebook_inputs(values, lm, threads))
    log.info("notebook 03 (%s): N=%d contexts, layers %s, %d eigenpairs by %d steps, on %d rank(s) (%s); cache %s",
             args.profile or args.param_file or "defaults", len(inputs["input_ids"]), values["layers"],
             values["n_eigs"], values["lanczos_steps"], world_size, device, values["cache_dir"])
    started = time.perf_counter()
    fill_cache(values["cache_dir"], lm.model, inputs["input_ids"], values["layers"], values["n_eigs"],
               values["lanczos_steps"], seed=values["seed"], key=inputs["key"], metric=inputs["metric"],
               chunk_size=args.chunk_size)
    log.info("all %d layers cached (%.1f min)", len(values["layers"]), (time.perf_counter() - started) / 60)


def _checked_notebook_parameters(args, world_size: int) -> dict:
    values = notebook_parameters(args.profile, args.param_file, args.layers, args.cache_dir)
    check_notebook_job(values, world_size)
    return values
