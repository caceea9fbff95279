"""Benchmark: the fast eNTK against the strongest alternatives, on the trained modular-addition models.

Every column computes the same kernels from the same weights on the same inputs, in this
one process. Each round runs every column once in turn (the fast path ``--fast-repeats``
times), so a change in machine load hits all columns alike; the medians over ``--rounds``
rounds are reported, with each column's ratio to the fast path and its largest relative
difference from the project's reference path. Every column runs with one intra-op thread
and with the process's default, and keeps the faster: on a shared machine each parallel
operation may wait for a busy core, which costs a code of many small operations more
than one of a few large ones. Columns:

* fast path: ``entk_utils.kernels`` with ``method="fast"``;
* torch.func: what a user would write with ``torch.func`` (``vmap(jacrev)`` per-example
  Jacobians, one einsum per weight), written here without ``entk_utils``: all inputs in one
  block when their Jacobians fit in ``--peer-memory``, and the Jacobian of the mean output
  for ``reduce="mean"`` (the mean over all output pairs is the kernel of the mean output);
* reference: ``entk_utils.kernels`` with ``method="reference"``.

neural-tangents is not a column here: it brings JAX and TensorFlow, which the project does not
depend on, so it runs in an environment of its own (``.venv-peers``): ``bench_peers.py``
(``make benchmark-peers``) times neural-tangents 0.6.5 (jax 0.4.30, numpy 2) against the fast
path on the MLP's trace eNTK and the Transformer's ``reduce="mean"`` eNTKs, in one process.

Workloads: the trace eNTK of the trained p=29 Gromov MLP (width 512) on all 841 inputs, and
the nine layerwise eNTKs of the trained 1-layer Transformer (seed 2) with ``reduce="mean"``
and ``"trace"``. The MLP's time is also set against its FLOP floor: the FLOPs of the least
computation over this CPU's matmul rate, measured in the same rounds. Then two end-to-end
timings: all of Figure 2 (the MLP eNTK and eigenvectors at every checkpoint) and of Figure 3
(the Transformer's ``W_U`` kernel and eigenvectors every 20 epochs).

Ratios, not absolute times, are what carry over between machines. Results go to
``benchmarks/results/bench_entk.md`` and into the README.

    python benchmarks/bench_entk.py                 # everything, CPU
    python benchmarks/bench_entk.py --case mlp --rounds 1 --no-save
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.func import functional_call, jacrev, vmap

from entk_utils.features.dynamics import overlap_over_training
from entk_utils.features.fourier import feature_family, first_key_frequencies, transformer_spectra
from entk_utils.kernels import entk, layerwise_entk
from entk_utils.settings.modular import OneLayerTransformer, train_gromov_mlp, train_transformer
from entk_utils.features.dynamics import model_at
from entk_utils.io.report import update_readme

RESULTS = Path(__file__).resolve().parent / "results" / "bench_entk.md"
PEER, REFERENCE = "torch.func `vmap(jacrev)` + einsum", "project `method=\"reference\"`"


# --------------------------------------------------------------------------- the torch.func peer
def torch_func_kernels(model, inputs, names, reduce, memory):
    """``{weight: K}`` (N, N) from per-example Jacobians, as a ``torch.func`` user writes it.

    ``vmap(jacrev)`` of one example's outputs (of their mean for ``reduce="mean"``) w.r.t.
    the named weights, then one einsum per weight (``"ncp,mcp->nm"``, over outputs ``c`` too
    for the trace). The Jacobians of all inputs are taken in one call when they fit in
    ``memory`` bytes; otherwise a block of rows is kept while blocks of columns are recomputed.
    """
    weights = {n: p.detach() for n, p in model.named_parameters() if n in names}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}

    def outputs(w, x):
        y = functional_call(model, {**fixed, **w}, (x[None],))[0]
        return y.mean(0, keepdim=True) if reduce == "mean" else y

    jac = vmap(jacrev(outputs), in_dims=(None, 0))
    n = len(inputs)
    with torch.no_grad():
        n_out = 1 if reduce == "mean" else model(inputs[:1]).shape[1]
    per_input = n_out * sum(w.numel() * w.element_size() for w in weights.values())
    step = n if n * per_input <= memory else max(1, memory // (2 * per_input))
    starts = range(0, n, step)
    kernels = {k: torch.empty(n, n, dtype=w.dtype) for k, w in weights.items()}
    for i in starts:
        rows = {k: v.flatten(2) for k, v in jac(weights, inputs[i:i + step]).items()}
        for j in starts[starts.index(i):]:
            cols = rows if j == i else {k: v.flatten(2) for k, v in jac(weights, inputs[j:j + step]).items()}
            for k in weights:
                block = torch.einsum("ncp,mcp->nm", rows[k], cols[k]) / n_out
                kernels[k][i:i + step, j:j + step] = block
                kernels[k][j:j + step, i:i + step] = block.T
    return kernels


# --------------------------------------------------------------------------- measuring
def relative_difference(a, b):
    """Largest ``||a - b|| / ||b||`` over the kernels of a dict (or of one tensor)."""
    if isinstance(a, dict):
        return max(relative_difference(a[k], b[k]) for k in b)
    return ((a - b).norm() / b.norm()).item()


def clock(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def with_threads(fn, n):
    """``fn`` run with ``n`` intra-op threads (``torch.set_num_threads``), restored after."""
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def interleaved(columns, rounds, repeats):
    """Run ``{name: fn}`` in turn, ``rounds`` times (``repeats.get(name, 1)`` times each a
    round); returns ``{name: (median seconds, last result)}``."""
    times = {name: [] for name in columns}
    results = {}
    for r in range(rounds):
        for name, fn in columns.items():
            for _ in range(repeats.get(name, 1)):
                seconds, results[name] = clock(fn)
                times[name].append(seconds)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k[0]} ({k[1]} thr) {v[-1]:.3f} s" for k, v in times.items()),
              flush=True)
    return {name: (statistics.median(times[name]), results[name]) for name in columns}


def compare(label, columns, args, side=None):
    """Time the columns (fast path first, reference last) and the ``side`` measurements,
    each with every thread count of ``args.threads``, keeping each one's fastest; check
    every result against the reference, print, and return the Markdown row and
    ``{name: (median seconds, threads)}`` of columns and side measurements."""
    print(label, flush=True)
    named = {**columns, **(side or {})}
    variants = {(name, n): with_threads(fn, n) for name, fn in named.items() for n in args.threads}
    repeats = {(name, n): args.fast_repeats for name in ["fast", *(side or {})] for n in args.threads}
    measured = interleaved(variants, args.rounds, repeats)
    best = {name: min(((measured[name, n][0], n) for n in args.threads)) for name in named}
    reference = measured[REFERENCE, best[REFERENCE][1]][1]
    t_fast = best["fast"][0]
    cells, diffs = [], []
    for name in columns:
        seconds, threads = best[name]
        err = max(relative_difference(measured[name, n][1], reference) for n in args.threads)
        ratio = "" if name == "fast" else f" (**{seconds / t_fast:.1f}x**)"
        cells.append(f"{seconds:.3f} s{ratio}, {threads} thr")
        diffs.append(f"{err:.0e}")
        print(f"  {name}: {seconds:.3f} s with {threads} threads, {seconds / t_fast:.1f}x the fast path, "
              f"largest relative difference {err:.1e}")
        assert err < 1e-5, f"{name} disagrees with the reference"
    return f"| {label} | " + " | ".join(cells) + " | " + " / ".join(diffs[:-1]) + " |", best


# --------------------------------------------------------------------------- workloads
def mlp_floor_flops(n, p, width):
    """FLOPs of the least computation of the Gromov MLP's trace eNTK on ``n`` inputs.

    The forward pass (``2 n (2p width + width p)``) and one N x N Gram per factor of the
    kernel: fc1's inputs (2p features) and its signal folded over outputs (width units),
    fc2's inputs (width units); fc2's signal is the same for every input.
    """
    return 2 * n * (2 * p * width + width * p) + 2 * n * n * (2 * p + width + width)


MATMUL = 2048  # this CPU's matmul rate: (MATMUL x MATMUL) float32 products, 2 MATMUL^3 FLOPs each


def bench_mlp(args):
    p, width = 29, 512
    run = train_gromov_mlp(p, width, 500, cache_dir=args.cache_dir, progress=False)
    model, x = run.model, run.inputs
    n_params = sum(w.numel() for w in model.parameters())
    entk(model, x[:8])  # warm-up
    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    columns = {"fast": lambda: entk(model, x, method="fast"),
               PEER: lambda: sum(torch_func_kernels(model, x, ["fc1.weight", "fc2.weight"], "trace", args.peer_memory).values()),
               REFERENCE: lambda: entk(model, x, method="reference")}
    row, best = compare(f"MLP p={p}, trace eNTK, {len(x)} inputs, {n_params} weights", columns, args,
                        side={"matmul": lambda: a @ b})
    t_fast, rate = best["fast"][0], 2 * MATMUL**3 / best["matmul"][0]
    flops = mlp_floor_flops(len(x), p, width)
    floor = (f"MLP trace eNTK against its FLOP floor: {flops / 1e9:.2f} GFLOP in the least computation (the forward "
             f"pass, and N x N Grams of fc1's inputs, of its signal folded over outputs and of fc2's inputs); this "
             f"CPU's matmul rate in the same rounds {rate / 1e9:.0f} GFLOP/s ({MATMUL} x {MATMUL} float32 products, "
             f"{best['matmul'][1]} threads), so the floor is {1e3 * flops / rate:.1f} ms; the fast path takes "
             f"{1e3 * t_fast:.1f} ms, **{t_fast * rate / flops:.1f}x the floor**.")
    print(floor)

    sums = {"sum": feature_family(run.pairs.numpy(), p, "sum")}
    second_cliff = (1 + 2 * (p - 1), 1 + 4 * (p - 1))  # the block Figure 2 follows (1 outlier, then 2(p-1) per cliff)
    figure = with_threads(lambda: figure_timing("Figure 2", model, run.result.checkpoints, x, second_cliff, sums,
                                                None, "trace"), best["fast"][1])()
    return row, floor, figure


def bench_transformer(args):
    p = 29
    run = train_transformer(p, 4000, seed=2, cache_dir=args.cache_dir, progress=False)
    model, x = run.model, run.inputs
    weights = [f"{w}.weight" for w in OneLayerTransformer.WEIGHTS]
    rows, threads = [], {}
    for reduce in ("mean", "trace"):
        columns = {"fast": lambda: layerwise_entk(model, x, weights, reduce=reduce, method="fast"),
                   PEER: lambda: torch_func_kernels(model, x, weights, reduce, args.peer_memory),
                   REFERENCE: lambda: layerwise_entk(model, x, weights, reduce=reduce, method="reference")}
        row, best = compare(f"Transformer p={p}, all {len(weights)} layerwise eNTKs, `reduce=\"{reduce}\"`, {len(x)} inputs",
                            columns, args)
        rows.append(row)
        threads[reduce] = best["fast"][1]

    _, keys = first_key_frequencies(transformer_spectra(model, x, run.pairs, p))
    sums = {"sum": feature_family(run.pairs.numpy(), p, "sum", keys)}
    figure = with_threads(lambda: figure_timing("Figure 3", model, run.result.checkpoints, x, (0, 2 * len(keys)), sums,
                                                "W_U", "mean"), threads["mean"])()
    return rows, figure


def figure_timing(name, model, checkpoints, x, block, features, params, reduce):
    """Time a figure's eNTK at every checkpoint alone, then the figure end to end
    (eNTK, eigenvectors and overlaps at every checkpoint, :func:`overlap_over_training`)."""
    snapshots = [model_at(model, checkpoints[e]) for e in sorted(checkpoints)]
    t_entk, _ = clock(lambda: [entk(m, x, params, reduce) for m in snapshots])
    t_all, curve = clock(lambda: overlap_over_training(model, checkpoints, x, block, features, params=params,
                                                       reduce=reduce, progress=False))
    what = "the trace eNTK" if params is None else f"the `{params}` eNTK (`reduce=\"{reduce}\"`)"
    line = (f"All of {name}: {len(curve)} checkpoints, {what} on all {len(x)} inputs at each: "
            f"**{t_entk:.1f} s** of eNTK; {t_all:.1f} s with the eigenvectors and overlaps "
            f"({torch.get_num_threads()} threads).")
    print(line)
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["mlp", "transformer", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--fast-repeats", type=int, default=5, help="fast-path runs per round")
    parser.add_argument("--peer-memory", type=float, default=6.0,
                        help="GiB of Jacobians the torch.func peer may hold (all inputs at once if they fit)")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name} nor refresh the README")
    args = parser.parse_args()
    if args.rounds < 1 or args.fast_repeats < 1 or args.peer_memory <= 0:
        raise ValueError(f"--rounds and --fast-repeats must be >= 1 and --peer-memory > 0, got "
                         f"{args.rounds}, {args.fast_repeats}, {args.peer_memory}")
    args.peer_memory = int(args.peer_memory * 2**30)
    args.threads = sorted({1, torch.get_num_threads()})

    machine = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}"
    print(machine)
    rows, notes = [], []
    if args.case in ("mlp", "all"):
        row, floor, figure = bench_mlp(args)
        rows.append(row)
        notes += [floor, figure]
    if args.case in ("transformer", "all"):
        tf_rows, figure = bench_transformer(args)
        rows += tf_rows
        notes.append(figure)
    if not args.no_save and args.case == "all":
        RESULTS.parent.mkdir(exist_ok=True)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        RESULTS.write_text(
            f"Measured by `make benchmark` on {machine} (load average {load} at the end, over 1, 5 and 15 "
            f"minutes; other jobs shared the machine when above 0): one process, {args.rounds} interleaved rounds, "
            f"medians (the fast path {args.fast_repeats} times a round); every column runs with "
            f"{' and '.join(map(str, args.threads))} intra-op threads and keeps its faster (on a shared machine a "
            f"second thread often waits for a busy core); the ratio is each column's time over the fast path's; "
            f"the last column is the largest relative difference of the fast path / the torch.func peer from the "
            f"reference.\n\n"
            f"| workload | fast path | {PEER} | {REFERENCE} | largest relative difference |\n"
            "| --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n\n" + "\n\n".join(notes) + "\n\n"
            "neural-tangents is measured in an environment of its own (it brings JAX and TensorFlow, which the "
            "project does not depend on): `make benchmark-peers` times neural-tangents 0.6.5 (jax 0.4.30, numpy 2) "
            "against the fast path on the MLP's trace eNTK and the Transformer's `reduce=\"mean\"` eNTKs, in one "
            "process; results in `benchmarks/results/bench_peers.md`.\n")
        update_readme(RESULTS.parents[2])


if __name__ == "__main__":
    main()
