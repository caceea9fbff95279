"""Top eNTK eigenpairs as a batch job, in one process or under ``torchrun``.

One layer of a causal LM, to a file::

    python -m entk_utils.eigs --model DIR --contexts IDS.pt --layer L [--param NAME] \\
        --n-eigs K --steps S --out F.npz

DIR is a ``save_pretrained`` folder, a ``.gguf`` file, or ``gguf`` / ``auto`` / ``hub`` for
Gemma-3-270M (:func:`entk_utils.settings.language.load_gemma`); IDS.pt a ``torch.save``d (N, T)
LongTensor of token ids. F.npz holds ``eigenvalues`` (K,), ``eigenvectors`` (N*d, K) (context
``n``, hidden unit ``i`` in row ``n*d + i``), ``residuals`` (K,) and what produced them.

Notebook 03's eigenpairs for one of its parameter sets::

    python -m entk_utils.eigs --profile paper [--param-file YAML] [--layers 0 1 ...]

builds (or reads from the cache) notebook 03's dataset and caches the eigenpairs of each
layer under the key notebook 03 looks them up by, so that the notebook run with the same
parameters reads them instead of computing them. ``--profile NAME`` reads
``notebooks/profiles/03_gemma_tinystories.NAME.yaml``; ``--param-file`` another YAML of
notebook 03's parameters (applied after the profile); ``--layers`` replaces the layers. Paths
in parameters resolve as in the notebook, from the ``notebooks`` folder; the cache is the
notebook's (``cache_dir``, else ``$ENTK_CACHE_DIR``, else ``.cache`` beside ``notebooks``)
unless ``--cache-dir`` names another. Layers run one after another; each is cached when done,
so a job that stops resumes at the first layer not cached.

Under ``torchrun --nproc-per-node G -m entk_utils.eigs ...`` the contexts are shared over the
ranks (:mod:`entk_utils.kernels.distributed`), each rank on ``cuda:LOCAL_RANK`` (NCCL) where CUDA is
available, else on the CPU (gloo). Rank 0 reads the inputs, builds the dataset and sends it
to the others, reports progress and alone writes files, atomically and only when a layer is
complete: a rank that fails stops the job with a message naming it, and leaves no entry or
file for unfinished work.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from .experiments.sweep_job import (_describe, build_notebook_inputs, check_notebook_job, default_threads,
                                    fill_cache, layer_eigenpairs, notebook_parameters)
from .io import checks
from .io.cache import write_atomically
from .kernels.distributed import broadcast_object, rank_and_size
from .settings import language

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
METRIC_CHOICES = ("unembedding", "identity")
# The one-layer mode's options that have defaults (in the profile mode, the notebook's own
# settings hold: down_proj, the unembedding metric, float32, the notebook's seed).
FILE_DEFAULTS = {"param": "mlp.down_proj.weight", "metric": "unembedding", "dtype": "float32", "seed": 0}


# --------------------------------------------------------------------------- process group
def rank_device(preference: str = "auto") -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` if ``preference`` is ``auto`` or ``cuda`` and
    CUDA is available, else the CPU. ``ValueError`` for ``cuda`` without CUDA."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
        raise ValueError(f"--device=cuda: local rank {local_rank} has no CUDA device here "
                         f"({torch.cuda.device_count()} found); use --device cpu")
    return torch.device("cuda", local_rank)


def start_process_group(device: torch.device, timeout_minutes: float) -> None:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ...): NCCL for CUDA devices, gloo for the CPU; nothing when not launched so.
    A collective that waits longer than ``timeout_minutes`` fails."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def end_process_group(failed: bool) -> None:
    """Leave the process group; after a failure, abort it where the backend can (NCCL), so
    that no collective is left waiting on this rank."""
    if not dist.is_initialized():
        return
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if failed and abort is not None and dist.get_backend() == "nccl":
        abort()
    else:
        dist.destroy_process_group()


def on_root(fn):
    """``fn()`` on rank 0 and its (picklable) result on every rank. A ``ValueError`` /
    ``FileNotFoundError`` there (bad input) is raised on every rank with the same message."""
    rank, _ = rank_and_size()
    outcome = None
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except (ValueError, FileNotFoundError) as err:
            broadcast_object(("error", type(err).__name__, str(err)))
            raise
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}[outcome[1]](outcome[2])
    return outcome[1]


# --------------------------------------------------------------------------- one layer to a file
def model_source_kind(source: str) -> str:
    """``"gemma"`` for what :func:`language.load_gemma` loads (``gguf`` / ``auto`` / ``hub``, a
    ``.gguf`` file), ``"folder"`` for a ``save_pretrained`` folder; ``FileNotFoundError`` else."""
    if source in language.MODEL_SOURCES or (source.endswith(".gguf") and Path(source).is_file()):
        return "gemma"
    if (Path(source) / "config.json").is_file():
        return "folder"
    raise FileNotFoundError(f"--model={source!r}: must be a save_pretrained folder (with config.json), a .gguf "
                            f"file or one of {', '.join(language.MODEL_SOURCES)}")


def load_model(source: str, device: torch.device, dtype: torch.dtype = torch.float32, cache_dir=None):
    """The causal LM of ``source`` (see :func:`model_source_kind`) on ``device`` in eval mode."""
    if model_source_kind(source) == "gemma":
        return language.load_gemma(source, device=device, dtype=dtype, cache_dir=cache_dir).model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager")
    return model.to(device).eval()


def read_contexts(path: str, world_size: int, *, context: int | None = None) -> torch.Tensor:
    """The (N, T) token ids ``torch.save``d at ``path`` (read with ``weights_only=True``),
    checked: an integer tensor of non-negative ids, N at least ``world_size``, T at most
    ``context`` (the model's longest context) when given."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--contexts={path!r}: no such file")
    try:
        ids = torch.load(file, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"--contexts={path!r}: not a torch.save'd tensor ({type(err).__name__}: {err})") from None
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool \
            or ids.dtype.is_complex or 0 in ids.shape:
        raise ValueError(f"--contexts={path!r}: must hold a non-empty (N, T) integer tensor of token ids, got "
                         f"{type(ids).__name__} {tuple(getattr(ids, 'shape', ()))} {getattr(ids, 'dtype', '')}")
    if int(ids.min()) < 0:
        raise ValueError(f"--contexts={path!r}: token ids must be >= 0, found {int(ids.min())}")
    if len(ids) < world_size:
        raise ValueError(f"--contexts={path!r}: N={len(ids)} contexts for {world_size} ranks; every rank needs at least one")
    if context is not None and ids.shape[1] > context:
        raise ValueError(f"--contexts={path!r}: contexts of T={ids.shape[1]} tokens, longer than the model's {context}")
    return ids.long()


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
    model_source_kind(args.model)
    shape = language.model_shape(args.model, args.cache_dir)
    checks.integer("--layer", args.layer, minimum=0, maximum=shape["layers"] - 1,
                   note=f" (the model has {shape['layers']} decoder layers)")
    ids = read_contexts(args.contexts, world_size, context=shape["context"])
    checks.integer("--n-eigs", args.n_eigs, maximum=len(ids) * shape["hidden"],
                   note=f" (N*d = {len(ids)} x {shape['hidden']})")
    return ids


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` to ``path`` atomically: a temporary file in the same folder, renamed when
    complete (a reader never sees a partial file; a crash leaves none)."""
    write_atomically(path, lambda f: np.savez(f, **arrays))


def run_file_job(args, device: torch.device) -> None:
    """``--out`` mode: one layer's eigenpairs to an ``.npz`` file (rank 0 writes it)."""
    rank, world_size = rank_and_size()
    ids = on_root(lambda: check_file_job(args, world_size))
    model = load_model(args.model, device, DTYPES[args.dtype], args.cache_dir)
    metric = None if args.metric == "identity" else "unembedding"
    log.info("layer %d, %s: N=%d contexts of %d tokens on %d rank(s), %s; %d eigenpairs by %d Lanczos steps",
             args.layer, args.param, *ids.shape, world_size, device, args.n_eigs, args.steps)
    result, stats = layer_eigenpairs(model, ids, args.layer, args.n_eigs, args.steps, seed=args.seed, metric=metric,
                                     param=args.param, chunk_size=args.chunk_size)
    log.info("layer %d: %s", args.layer, _describe(stats, result["seconds"]))
    if rank == 0:
        save_npz(args.out, eigenvalues=result["evals"].numpy(), eigenvectors=result["evecs"].numpy(),
                 residuals=result["residuals"].numpy(), layer=args.layer, param=args.param, model=args.model,
                 n_contexts=len(ids), context_len=ids.shape[1], hidden=model.config.get_text_config().hidden_size,
                 steps=args.steps, seed=args.seed, metric=args.metric, dtype=args.dtype, world_size=world_size,
                 seconds=result["seconds"], matvecs=stats.matvecs, compute_seconds=stats.compute_seconds,
                 comm_seconds=stats.comm_seconds, allreduce_bytes=stats.allreduce_bytes,
                 allgather_bytes=stats.allgather_bytes, torch_version=torch.__version__)
        log.info("wrote %s", args.out)


def run_notebook_job(args, device: torch.device) -> None:
    """Profile mode: notebook 03's eigenpairs for every layer of its parameter set, into its cache."""
    rank, world_size = rank_and_size()
    values = on_root(lambda: _checked_notebook_parameters(args, world_size))
    threads = args.notebook_threads or (default_threads() if rank == 0 else 0)
    lm = language.load_gemma(values["model_source"], device=device, cache_dir=values["cache_dir"])
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


# --------------------------------------------------------------------------- command line
def _option(dest: str) -> str:
    """The command-line spelling of an argparse destination (``n_eigs`` -> ``--n-eigs``)."""
    return f"--{dest.replace('_', '-')}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); argparse's usage error for a mode's missing options."""
    parser = argparse.ArgumentParser(prog="python -m entk_utils.eigs", description=__doc__.split("\n")[0])
    job = parser.add_argument_group("one layer to a file")
    job.add_argument("--model", help="save_pretrained folder, .gguf file, or gguf / auto / hub")
    job.add_argument("--contexts", help="torch.save'd (N, T) LongTensor of token ids")
    job.add_argument("--layer", type=int)
    job.add_argument("--param", help=f"the weight, relative to the layer (default {FILE_DEFAULTS['param']})")
    job.add_argument("--n-eigs", type=int)
    job.add_argument("--steps", type=int)
    job.add_argument("--out", help="the .npz file to write")
    job.add_argument("--metric", choices=METRIC_CHOICES, help=f"default {FILE_DEFAULTS['metric']}")
    job.add_argument("--dtype", choices=sorted(DTYPES), help=f"default {FILE_DEFAULTS['dtype']}")
    job.add_argument("--seed", type=int, help=f"Lanczos start vector (default {FILE_DEFAULTS['seed']})")
    nb = parser.add_argument_group("notebook 03's cache")
    nb.add_argument("--profile", help="a profile of notebook 03: paper, paper16, gpu, ...")
    nb.add_argument("--param-file", help="a YAML of notebook 03's parameters (after --profile)")
    nb.add_argument("--layers", type=int, nargs="+", help="replace the parameter set's layers")
    nb.add_argument("--notebook-threads", type=int,
                    help="CPU threads of the notebook that will read the cache (default: torch's default here)")
    parser.add_argument("--cache-dir", help="cache folder (profile mode: default the notebook's; also where the "
                                            "offline GGUF is assembled)")
    parser.add_argument("--chunk-size", type=int, default=64, help="contexts per VJP / JVP call on a rank")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda:LOCAL_RANK where CUDA is available, else cpu")
    parser.add_argument("--timeout-minutes", type=float, default=60.0,
                        help="a collective waiting longer fails the job (rank 0 builds the dataset meanwhile)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    args = parser.parse_args(argv)
    notebook_mode = args.profile is not None or args.param_file is not None
    required = ("model", "contexts", "layer", "n_eigs", "steps", "out")
    if notebook_mode:
        given = [_option(o) for o in (*required, *FILE_DEFAULTS) if getattr(args, o) is not None]
        if given:
            parser.error(f"{', '.join(given)} belong to the one-layer mode, not with --profile / --param-file")
    else:
        missing = [_option(o) for o in required if getattr(args, o) is None]
        if missing:
            parser.error(f"give --profile / --param-file, or all of --model --contexts --layer --n-eigs --steps --out "
                         f"(missing {' '.join(missing)})")
        given = [_option(o) for o in ("layers", "notebook_threads") if getattr(args, o) is not None]
        if given:
            parser.error(f"{', '.join(given)} belong to the profile mode (--profile / --param-file)")
        for name, default in FILE_DEFAULTS.items():
            setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if args.chunk_size < 1:
        parser.error(f"--chunk-size={args.chunk_size}: must be >= 1")
    return args


def _configure_logging(level: str) -> None:
    """The package's messages to stderr: rank 0's at ``level``, the other ranks' warnings and
    errors only (each line tagged with its rank when there are several)."""
    rank, world_size = rank_and_size()
    logger = logging.getLogger("entk_utils")
    logger.setLevel(level if rank == 0 else "WARNING")
    for handler in [h for h in logger.handlers if getattr(h, "entk_eigs", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.entk_eigs = True
    handler.setFormatter(logging.Formatter(f"%(asctime)s {'' if world_size == 1 else f'[rank {rank}] '}%(message)s",
                                           datefmt="%H:%M:%S"))
    logger.addHandler(handler)


@record
def main(argv: list[str] | None = None) -> int:
    """Run the job; exit status 0 when done, 2 for bad input (one line on stderr), 1 (with the
    error logged by the failing rank) when a rank fails."""
    args = parse_args(argv)
    failed = False
    try:
        device = rank_device(args.device)
        start_process_group(device, args.timeout_minutes)
        _configure_logging(args.log_level)
        if args.out is not None:
            run_file_job(args, device)
        else:
            run_notebook_job(args, device)
        return 0
    except (ValueError, FileNotFoundError) as err:
        failed = True
        if rank_and_size()[0] == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:
        failed = True
        rank, world_size = rank_and_size()
        notes = "; ".join(getattr(err, "__notes__", []))
        log.error("rank %d of %d failed: %s: %s%s. The job stops; nothing unfinished was written.", rank, world_size,
                  type(err).__name__, err, f" ({notes})" if notes else "")
        raise
    finally:
        end_process_group(failed)


if __name__ == "__main__":
    sys.exit(main())
