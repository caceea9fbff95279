"""Benchmark: fast eNTK vs the torch.func reference, on the trained modular-addition models.

For each case, the kernels on all p*p inputs are computed both ways in one process, checked
to agree, and both times and their ratio printed:

* ``mlp``: the trace eNTK of the trained p=29 Gromov MLP; then the whole of Figure 2 (the
  eNTK and a dense eigendecomposition at every checkpoint);
* ``transformer``: the nine layerwise eNTKs (reduce="mean") of the trained 1-layer
  Transformer (seed 2), which sum to the full kernel.

Ratios, not absolute times, are what carry over between machines. Results go to
``benchmarks/results/bench_entk.md`` and into the README.

    python benchmarks/bench_entk.py                 # both cases, CPU
    python benchmarks/bench_entk.py --case mlp --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from entk_utils.dynamics import overlap_over_training
from entk_utils.eigen import top_eigenpairs
from entk_utils.fourier import feature_family
from entk_utils.kernels import entk, layerwise_entk
from entk_utils.modular import OneLayerTransformer, train_gromov_mlp, train_transformer
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


def relative_difference(a, b):
    if isinstance(a, dict):
        return max(relative_difference(a[k], b[k]) for k in a)
    return ((a - b).norm() / b.norm()).item()


def compare(label, fast, reference, repeat=5):
    """Time both, check agreement, print and return a Markdown table row block."""
    t_fast, k_fast = timed(fast, repeat)
    t_ref, k_ref = timed(reference)
    err = relative_difference(k_fast, k_ref)
    print(f"{label}:\n  reference (torch.func vmap(jacrev)): {t_ref:8.3f} s\n  fast (Gram factorisation)         : {t_fast:8.3f} s")
    print(f"  speed-up: {t_ref / t_fast:.1f}x   largest relative difference: {err:.1e}")
    assert err < 1e-5, "fast and reference kernels disagree"
    return k_fast, [
        f"| {label}: reference, torch.func `vmap(jacrev)` | {t_ref:.2f} |",
        f"| {label}: fast, Gram factorisation | {t_fast:.3f} |",
        f"| **speed-up** | **{t_ref / t_fast:.0f}x** (largest relative difference {err:.0e}) |",
    ]


def bench_mlp(args):
    p = 29
    run = train_gromov_mlp(p, 512, 500, cache_dir=args.cache_dir, device=args.device, progress=False)
    x = run.inputs.to(args.device)
    entk(run.model, x[:8])  # warm-up
    K, rows = compare(f"MLP trace eNTK (N={len(x)}, P={sum(p.numel() for p in run.model.parameters())})",
                      lambda: entk(run.model, x, method="fast"),
                      lambda: entk(run.model, x, method="reference", chunk_size=args.chunk_size))
    t_eigh, _ = timed(lambda: top_eigenpairs(K), repeat=3)
    sums = {"sum": feature_family(run.pairs.numpy(), p, "sum")}
    second_cliff = (1 + 2 * (p - 1), 1 + 4 * (p - 1))  # the block Figure 2 follows (1 outlier, then 2(p-1) per cliff)
    t_fig2, curve = timed(lambda: overlap_over_training(run.model, run.result.checkpoints, x, second_cliff, sums, progress=False))
    print(f"dense eigh of the {len(x)}x{len(x)} kernel: {t_eigh:.3f} s")
    print(f"Figure 2 ({len(curve)} checkpoints, eNTK + eigh each): {t_fig2:.1f} s")
    return rows + [f"| dense `eigh` of the {len(x)}x{len(x)} kernel | {t_eigh:.3f} |",
                   f"| all of Figure 2: {len(curve)} checkpoints, eNTK + `eigh` each | {t_fig2:.1f} |"]


def bench_transformer(args):
    run = train_transformer(29, 4000, seed=2, cache_dir=args.cache_dir, device=args.device, progress=False)
    x = run.inputs.to(args.device)
    weights = list(OneLayerTransformer.WEIGHTS)
    _, rows = compare(f"Transformer, all {len(weights)} layerwise eNTKs (N={len(x)})",
                      lambda: layerwise_entk(run.model, x, weights, reduce="mean", method="fast"),
                      lambda: layerwise_entk(run.model, x, weights, reduce="mean", method="reference",
                                             chunk_size=args.chunk_size), repeat=3)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["mlp", "transformer", "all"], default="all")
    parser.add_argument("--chunk-size", type=int, default=64, help="reference path: inputs per Jacobian block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name} nor refresh the README")
    args = parser.parse_args()

    machine = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}, device {args.device}"
    print(machine)
    rows = []
    if args.case in ("mlp", "all"):
        rows += bench_mlp(args)
    if args.case in ("transformer", "all"):
        rows += bench_transformer(args)
    if not args.no_save and args.case == "all":
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(f"Measured by `make benchmark` on {machine}; reference blocks of {args.chunk_size} inputs.\n\n"
                           "| computation | time (s) |\n| --- | ---: |\n" + "\n".join(rows) + "\n")
        update_readme(RESULTS.parents[2])


if __name__ == "__main__":
    main()
