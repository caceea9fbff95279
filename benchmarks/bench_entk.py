"""Benchmark: fast eNTK vs the torch.func reference, on the trained p=29 Gromov MLP.

Computes the trace eNTK on all p*p inputs both ways in one process, checks that they agree,
and prints both times and their ratio. Then times the whole of Figure 2 (the eNTK and a
dense eigendecomposition at every checkpoint). Ratios, not absolute times, are what carry
over between machines.

    python benchmarks/bench_entk.py            # p=29, width 512, CPU
    python benchmarks/bench_entk.py --device cuda
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
import statistics
import time

import torch

from entk_utils.dynamics import overlap_over_training
from entk_utils.eigen import top_eigenpairs
from entk_utils.fourier import feature_family
from entk_utils.kernels import entk
from entk_utils.modular import train_gromov_mlp
from entk_utils.report import update_readme

RESULTS = Path(__file__).resolve().parent / "results" / "bench_entk.md"


def timed(fn, repeat=1):
    times, result = [], None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=29)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=64, help="reference path: inputs per Jacobian block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name} nor refresh the README")
    args = parser.parse_args()

    machine = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}, device {args.device}"
    print(machine)
    run = train_gromov_mlp(args.p, args.width, args.steps, cache_dir=args.cache_dir, device=args.device, progress=False)
    x = run.inputs.to(args.device)
    entk(run.model, x[:8])  # warm-up

    t_fast, K_fast = timed(lambda: entk(run.model, x, method="fast"), repeat=5)
    t_ref, K_ref = timed(lambda: entk(run.model, x, method="reference", chunk_size=args.chunk_size))
    err = ((K_fast - K_ref).norm() / K_ref.norm()).item()
    print(f"trace eNTK, N={len(x)}, P={sum(p.numel() for p in run.model.parameters())}:")
    print(f"  reference (torch.func vmap(jacrev), chunk {args.chunk_size}): {t_ref:8.3f} s")
    print(f"  fast (Gram factorisation)                        : {t_fast:8.3f} s")
    print(f"  speed-up: {t_ref / t_fast:.1f}x   relative difference: {err:.1e}")
    assert err < 1e-5, "fast and reference kernels disagree"

    t_eigh, _ = timed(lambda: top_eigenpairs(K_fast), repeat=3)
    sums = {"sum": feature_family(run.pairs.numpy(), args.p, "sum")}
    block = (1 + 2 * (args.p - 1), 1 + 4 * (args.p - 1))
    t_fig2, curve = timed(lambda: overlap_over_training(run.model, run.result.checkpoints, x, block, sums, progress=False))
    print(f"dense eigh of the {len(x)}x{len(x)} kernel: {t_eigh:.3f} s")
    print(f"Figure 2 ({len(curve)} checkpoints, eNTK + eigh each): {t_fig2:.1f} s")

    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(
            f"Trace eNTK of the trained Gromov MLP (p={args.p}, width {args.width}) on all N={len(x)} pairs; "
            f"{machine}.\n\n"
            "| computation | time (s) |\n| --- | ---: |\n"
            f"| reference: torch.func `vmap(jacrev)`, blocks of {args.chunk_size} inputs | {t_ref:.2f} |\n"
            f"| fast: Gram factorisation of the linear layers | {t_fast:.3f} |\n"
            f"| **speed-up** | **{t_ref / t_fast:.0f}x** (relative difference {err:.0e}) |\n"
            f"| dense `eigh` of the {len(x)}x{len(x)} kernel | {t_eigh:.3f} |\n"
            f"| all of Figure 2: {len(curve)} checkpoints, eNTK + `eigh` each | {t_fig2:.1f} |\n"
        )
        update_readme(RESULTS.parents[2])


if __name__ == "__main__":
    main()
