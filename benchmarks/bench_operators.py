"""Benchmark: the truncated layer-eNTK operator vs the full-model one, on Gemma-3-270M.

Same contexts, one process: the time of one matvec ``K~ v`` (one VJP + one JVP) with the
forward pass starting at the analysed layer (truncated) and through the whole model (as the
paper's code does), at layers 0, 8 and 16; checks that both give the same vector and prints
the ratio. With ``--eigs`` it also times the top eigenpairs by Lanczos at one layer.

    python benchmarks/bench_operators.py --n-contexts 64
    python benchmarks/bench_operators.py --n-contexts 1024 --eigs 25 --steps 50 --layer 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from entk_utils.eigen import lanczos
from entk_utils.language import load_gemma
from entk_utils.operators import layer_entk_operator, unembedding_metric
from entk_utils.report import update_readme

RESULTS = Path(__file__).resolve().parent / "results" / "bench_operators.md"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-contexts", type=int, default=64)
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 8, 16])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--eigs", type=int, default=0, help="also time this many eigenpairs (0: skip)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--layer", type=int, default=16, help="layer for --eigs")
    parser.add_argument("--model-source", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name} nor refresh the README")
    args = parser.parse_args()

    start = time.perf_counter()
    lm = load_gemma(args.model_source, device=args.device, cache_dir=args.cache_dir)
    print(f"{lm.description}; loaded in {time.perf_counter() - start:.0f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, device {args.device}")
    # Real token ids drawn uniformly from the vocabulary's first 20k entries: the cost of a
    # matvec does not depend on what the tokens say.
    ids = torch.randint(100, 20_000, (args.n_contexts, args.context_len), generator=torch.Generator().manual_seed(0))
    metric = unembedding_metric(lm.model)
    v = np.random.default_rng(0).standard_normal(args.n_contexts * lm.model.config.hidden_size)
    print(f"N={args.n_contexts} contexts of {args.context_len} tokens, chunks of {args.chunk_size}")
    header = "| layer | full-model matvec (s) | truncated matvec (s) | speed-up | relative difference |"
    print(header)
    rows = [header, "| ---: | ---: | ---: | ---: | ---: |"]
    for layer in args.layers:
        times, outs = {}, {}
        for truncate in (False, True):
            op = layer_entk_operator(lm.model, ids, layer, metric=metric, truncate=truncate, chunk_size=args.chunk_size)
            t0 = time.perf_counter()
            outs[truncate] = op.matvec(v)
            times[truncate] = time.perf_counter() - t0
        diff = np.linalg.norm(outs[True] - outs[False]) / np.linalg.norm(outs[False])
        rows.append(f"| {layer} | {times[False]:.2f} | {times[True]:.2f} | {times[False] / times[True]:.2f}x | {diff:.1e} |")
        print(rows[-1])
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(f"One matvec of the `down_proj` layer eNTK operator, N = {args.n_contexts} contexts of "
                           f"{args.context_len} tokens, {lm.description.split(':')[0]}; torch {torch.__version__}, "
                           f"{torch.get_num_threads()} CPU threads, device {args.device} (`benchmarks/bench_operators.py`).\n\n"
                           + "\n".join(rows) + "\n")
        update_readme(RESULTS.parents[2])
    if args.eigs:
        op = layer_entk_operator(lm.model, ids, args.layer, metric=metric, chunk_size=args.chunk_size)
        t0 = time.perf_counter()
        evals, _, residuals = lanczos(op, args.eigs, args.steps)
        elapsed = time.perf_counter() - t0
        print(f"top {args.eigs} eigenpairs at layer {args.layer}, {args.steps} Lanczos steps: {elapsed / 60:.1f} min")
        print(f"  leading eigenvalues {np.round(evals[:5], 3).tolist()}; "
              f"largest relative residual among them {float(np.max(residuals[:5] / evals[:5])):.1e}")


if __name__ == "__main__":
    main()
