"""Top eNTK eigenpairs as a batch job, in one process or under ``torchrun``.

One layer of a causal LM, to a file::

    python -m entk_utils.eigs --model DIR --contexts IDS.pt --layer L [--param NAME] \\
        --n-eigs K --steps S --out F.npz

DIR is a ``save_pretrained`` folder, a ``.gguf`` file, a Hugging Face Hub id, or ``gguf`` /
``auto`` / ``hub`` for Gemma-3-270M (:func:`entk_utils.settings.language.load_model`); IDS.pt a ``torch.save``d (N, T)
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

This module is the command line only: the two modes are
:mod:`entk_utils.experiments.batch_job`'s, the process group :mod:`entk_utils.io.ranks`'.
"""

from __future__ import annotations

import argparse
import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from .experiments.batch_job import DTYPES, run_file_job, run_notebook_job
from .io.ranks import end_process_group, rank_and_size, rank_device, start_process_group

log = logging.getLogger(__name__)

METRIC_CHOICES = ("unembedding", "identity")
# The one-layer mode's options that have defaults (in the profile mode, the notebook's own
# settings hold: down_proj, the unembedding metric, float32, the notebook's seed).
FILE_DEFAULTS = {"param": "mlp.down_proj.weight", "metric": "unembedding", "dtype": "float32", "seed": 0}


# --------------------------------------------------------------------------- command line
def _option(dest: str) -> str:
    """The command-line spelling of an argparse destination (``n_eigs`` -> ``--n-eigs``)."""
    return f"--{dest.replace('_', '-')}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); argparse's usage error for a mode's missing options."""
    parser = argparse.ArgumentParser(prog="python -m entk_utils.eigs", description=__doc__.split("\n")[0])
    job = parser.add_argument_group("one layer to a file")
    job.add_argument("--model", help="save_pretrained folder, .gguf file, Hub id, or gguf / auto / hub")
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
    parser.add_argument("--cache-dir", help="cache folder (profile mode: default the notebook's)")
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
