"""Benchmark: the truncated layer-eNTK operator vs the full-model one, on Gemma-3-270M.

Same contexts, one process: the time of one matvec ``K~ v`` (one VJP + one JVP) with the
forward pass through the whole model (``truncate="full"``, as the paper's code does),
starting at the analysed layer (``truncate="layer"``), and on the default path
(``truncate="auto"``: from ``down_proj``'s input, the last layer's position-wise modules at
the output position only), at layers 0, 8 and 16; checks that all give the same vector and
prints the ratios, and the machine's load (other jobs slow every column alike, so read the
ratios). With ``--eigs`` it also times the top eigenpairs by Lanczos at one layer, with the
peak memory of the process.

    python benchmarks/bench_operators.py --n-contexts 64
    python benchmarks/bench_operators.py --n-contexts 1024 --eigs 25 --steps 50 --layer 16
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from entk_utils.kernels.eigen import lanczos
from entk_utils.settings.language import load_model
from entk_utils.kernels.operators import layer_entk_operator, unembedding_metric
from entk_utils.io.report import update_readme

RESULTS = Path(__file__).resolve().parent / "results" / "bench_operators.md"
EIGS_RESULTS = RESULTS.with_name("bench_operators_eigs.md")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-contexts", type=int, default=64)
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--layers", type=int, nargs="*", default=[0, 8, 16],
                        help="layers for the matvec table (none: skip it)")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the fastest counts")
    parser.add_argument("--eigs", type=int, default=0, help="also time this many eigenpairs (0: skip)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--layer", type=int, default=16, help="layer for --eigs")
    parser.add_argument("--model-source", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name} / {EIGS_RESULTS.name} nor refresh the README")
    args = parser.parse_args()

    start = time.perf_counter()
    lm = load_model(args.model_source, device=args.device)
    print(f"{lm.description}; loaded in {time.perf_counter() - start:.0f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, device {args.device}")
    # Real token ids drawn uniformly from the vocabulary's first 20k entries: the cost of a
    # matvec does not depend on what the tokens say.
    ids = torch.randint(100, 20_000, (args.n_contexts, args.context_len), generator=torch.Generator().manual_seed(0))
    metric = unembedding_metric(lm.model)
    v = np.random.default_rng(0).standard_normal(args.n_contexts * lm.model.config.hidden_size)
    print(f"N={args.n_contexts} contexts of {args.context_len} tokens, chunks of {args.chunk_size}")
    paths = {"full": "full", "layer": "layer", "default": "auto"}
    header = ("| layer | full-model matvec (s) | layer-truncated (s) | default path (s) | speed-up layer | "
              "speed-up default | largest relative difference |")
    print(header)
    rows = [header, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for layer in args.layers:
        ops = {name: layer_entk_operator(lm.model, ids, layer, metric=metric, truncate=truncate, chunk_size=args.chunk_size)
               for name, truncate in paths.items()}
        times, outs = {name: [] for name in paths}, {}
        for op in ops.values():
            op.matvec(v[::-1].copy())  # warm-up: first calls pay for allocations
        for _ in range(args.rounds):  # interleaved, so that a change of load hits every path alike
            for name, op in ops.items():
                t0 = time.perf_counter()
                outs[name] = op.matvec(v)
                times[name].append(time.perf_counter() - t0)
        times = {name: min(t) for name, t in times.items()}
        diff = max(np.linalg.norm(outs[name] - outs["full"]) / np.linalg.norm(outs["full"]) for name in paths)
        full = times["full"]
        rows.append(f"| {layer} | {full:.2f} | {times['layer']:.2f} | {times['default']:.2f} | "
                    f"{full / times['layer']:.2f}x | {full / times['default']:.2f}x | {diff:.1e} |")
        print(rows[-1], f"(default: {ops['default'].strategy.describe()})")
    load = "load average {:.1f}, {:.1f}, {:.1f} over 1, 5 and 15 minutes".format(*os.getloadavg())
    print(load)
    if args.layers and not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(f"One matvec of the `down_proj` layer eNTK operator, N = {args.n_contexts} contexts of "
                           f"{args.context_len} tokens, {lm.description.split(':')[0]}; torch {torch.__version__}, "
                           f"{torch.get_num_threads()} CPU threads, device {args.device}, fastest of {args.rounds} interleaved rounds "
                           f"(`benchmarks/bench_operators.py`); "
                           f"{load} at the end (other jobs shared the machine when above 0; they slow every "
                           "column, so compare the ratios).\n\n" + "\n".join(rows) + "\n")
        update_readme(RESULTS.parents[2])
    if args.eigs:
        op = layer_entk_operator(lm.model, ids, args.layer, metric=metric, chunk_size=args.chunk_size)
        t0 = time.perf_counter()
        evals, _, residuals = lanczos(op, args.eigs, args.steps)
        elapsed = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"top {args.eigs} eigenpairs at layer {args.layer}, N={args.n_contexts}, {args.steps} Lanczos steps "
              f"({op.path} path): {elapsed / 60:.1f} min; peak memory of the process {peak_gib:.1f} GiB")
        print(f"  leading eigenvalues {np.round(evals[:5], 3).tolist()}; "
              f"largest relative residual among the {args.eigs} {float(np.max(residuals / evals)):.1e}")
        if not args.no_save:
            EIGS_RESULTS.write_text(
                f"Top {args.eigs} eigenpairs of the layer-{args.layer} `down_proj` eNTK operator by Lanczos "
                f"({args.steps} steps, full re-orthogonalisation), N = {args.n_contexts} contexts of "
                f"{args.context_len} tokens ({op.path} path), {lm.description.split(':')[0]}; torch "
                f"{torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}: "
                f"**{elapsed / 60:.1f} min**, peak memory of the process {peak_gib:.1f} GiB "
                f"(`make benchmark-gemma-full`).\n")
            update_readme(RESULTS.parents[2])


if __name__ == "__main__":
    main()
