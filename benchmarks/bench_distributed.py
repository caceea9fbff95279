"""Benchmark: the data-parallel eNTK operator on this machine, and a projection to GPUs.

Measured here, on the offline Gemma-3-270M (Q4_K_M GGUF dequantised to float32) and N
contexts of 64 tokens: the first 64 Gemma tokens (no BOS) of each of the first N stories of
the local TinyStories sample that have at least 64 tokens (token windows, not notebook 03's
model-agreeing contexts: the cost of a product does not depend on which contexts they are).

* one product ``K~ v`` of the layer-16 ``down_proj`` operator with 1 process x 2 threads,
  1 process x 1 thread (a control: on a busy machine a second thread often waits for a
  core), and 2 processes x 1 thread (gloo over loopback, contexts split 32 / 32): wall time
  per product, and per product the time computing, in the all-reduce of the weight-space
  vector and in the all-gather of the output rows (a collective's time includes waiting for
  the other rank); then the two collectives alone, after a barrier (pure transfer here);
* per layer (0-17), at ``--layer-contexts`` contexts, 1 thread: the cost of building the
  operator and of one product, per context; one full-model product at layer 16 (the paper's
  code's path), which calibrates the GPU speed-up below; and the Lanczos iterations' own
  cost at N = 1024 (re-orthogonalisation, replicated on every rank).

From these, a PROJECTION (not a measurement) of the paper profile's eigenpairs (18 layers,
N = 1024, 25 eigenpairs by 50 Lanczos steps) on 1, 8 and 64 GPUs, under the assumptions
printed with it. Results go to ``benchmarks/results/bench_distributed.md`` and the README.

    python benchmarks/bench_distributed.py            # make benchmark-distributed
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg
import torch
import torch.distributed as dist

from entk_utils import distributed
from entk_utils.kernels import operators
from entk_utils.kernels.eigen import lanczos
from entk_utils.settings import language
from entk_utils.io.report import update_readme

RESULTS = Path(__file__).resolve().parent / "results" / "bench_distributed.md"
PAPER = {"layers": 18, "n": 1024, "steps": 50, "eigs": 25}


# --------------------------------------------------------------------------- inputs
def token_windows(tokenizer, n: int, length: int = 64, path=None) -> torch.Tensor:
    """(n, length) ids: the first ``length`` tokens (no BOS) of each of the first ``n``
    stories of the local sample that have that many."""
    rows = []
    for story in language.read_stories(language.stories_path(path)):
        ids = tokenizer(story, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == n:
            return torch.tensor(rows)
    raise ValueError(f"only {len(rows)} stories have {length} tokens; asked for {n}")


def product_times(op, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` products with ``op`` after one warm-up product."""
    rng = np.random.default_rng(0)
    op.matvec(rng.standard_normal(op.shape[0]))
    times = []
    for _ in range(repeats):
        v = rng.standard_normal(op.shape[0])
        start = time.perf_counter()
        op.matvec(v)
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- measurements
def per_layer_costs(model, ids: torch.Tensor, metric: torch.Tensor) -> dict[int, dict[str, float]]:
    """{layer: {"build", "product"}} seconds per context on this process: building the
    default-path operator and one product with it (after the build's own forward passes)."""
    costs = {}
    for layer in range(len(model.model.layers)):
        start = time.perf_counter()
        op = distributed.data_parallel_operator(model, ids, layer, metric=metric)
        build = time.perf_counter() - start
        start = time.perf_counter()
        op.matvec(np.random.default_rng(layer).standard_normal(op.shape[0]))
        costs[layer] = {"build": build / len(ids), "product": (time.perf_counter() - start) / len(ids)}
        print(f"  layer {layer:2d}: build {build:6.2f} s, product {costs[layer]['product'] * len(ids):6.2f} s "
              f"({len(ids)} contexts, {op.local.path} path)", flush=True)
    return costs


def full_model_product(model, ids: torch.Tensor, layer: int, metric: torch.Tensor) -> float:
    """Seconds per context of one product on the full-model path (the paper's code's)."""
    op = operators.layer_entk_operator(model, ids, layer, metric=metric, truncate=False)
    return min(product_times(op, 1)) / len(ids)


def lanczos_overhead(dim: int, steps: int, k: int) -> float:
    """Seconds of ``lanczos`` itself (re-orthogonalisation, Ritz vectors) for a ``dim``-long
    vector: run on a diagonal operator, whose products cost next to nothing."""
    diagonal = np.linspace(1.0, 2.0, dim)
    op = scipy.sparse.linalg.LinearOperator((dim, dim), matvec=lambda v: diagonal * v.ravel(), dtype=np.float64)
    start = time.perf_counter()
    lanczos(op, k, steps, progress=False)
    return time.perf_counter() - start


def collective_times(numel: int, rows: int, hidden: int, repeats: int) -> tuple[float, float]:
    """Median seconds of an all-reduce of ``numel`` float32 numbers and of an all-gather of
    ``rows`` x ``hidden`` float32 rows per rank, each started right after a barrier."""
    flat, block = torch.randn(numel), torch.randn(rows, hidden)
    gathered = [torch.empty_like(block) for _ in range(dist.get_world_size())]
    reduce_times, gather_times = [], []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(flat)
        reduce_times.append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        dist.all_gather(gathered, block)
        gather_times.append(time.perf_counter() - start)
    return statistics.median(reduce_times), statistics.median(gather_times)


def two_rank_products(model_source: str, ids: torch.Tensor, layer: int, repeats: int) -> dict:
    """On each of the ranks (1 thread each): the data-parallel operator's products, their
    parts, and the collectives alone."""
    model = language.load_model(model_source, tokenizer=False).model
    op = distributed.data_parallel_operator(model, ids, layer)
    walls = product_times(op, repeats)
    compute, allreduce, allgather = (list(x) for x in zip(*op.stats.history[1:]))  # without the warm-up
    alone = collective_times(op.stats.allreduce_bytes // 4, max(op.counts), op.hidden, repeats)
    return {"wall": walls, "compute": compute, "allreduce": allreduce, "allgather": allgather,
            "allreduce_alone": alone[0], "allgather_alone": alone[1], "allreduce_bytes": op.stats.allreduce_bytes,
            "allgather_bytes": op.stats.allgather_bytes, "counts": op.counts, "threads": torch.get_num_threads()}


def matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """This process's float32 matmul rate (FLOP/s, best of ``repeats``) at its current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- projection
def ring_seconds(message_bytes: float, gpus: int, bandwidth: float, latency: float, rounds: int) -> float:
    """A ring collective over ``gpus``: ``rounds`` x (G-1) steps of ``message_bytes / G``
    each at ``bandwidth`` bytes/s plus ``latency`` s (all-reduce: 2 rounds; all-gather: 1)."""
    if gpus == 1:
        return 0.0
    steps = rounds * (gpus - 1)
    return steps * (message_bytes / gpus / bandwidth + latency)


def project_sweep(costs: dict, overhead: float, speedup: float, gpus: int, bandwidth: float, latency: float,
                  hidden: int, weight_numel: int) -> dict[str, float]:
    """Projected seconds of the paper profile's eigenpairs on ``gpus`` GPUs: every layer's
    operator build and ``steps`` products with ceil(N/G) contexts per GPU at ``speedup``
    times this CPU's measured per-context cost, plus per product one all-reduce of the
    float32 weight and one all-gather of the N x d float32 rows (ring model), plus the
    Lanczos iterations' measured cost (replicated on every rank, not shortened by GPUs)."""
    per_gpu = -(-PAPER["n"] // gpus)
    compute = sum(PAPER["steps"] * c["product"] * per_gpu / speedup + c["build"] * per_gpu / speedup
                  for c in costs.values())
    reduce = ring_seconds(4 * weight_numel, gpus, bandwidth, latency, rounds=2)
    gather = ring_seconds(4 * hidden * per_gpu * gpus, gpus, bandwidth, latency, rounds=1)
    comm = len(costs) * PAPER["steps"] * (reduce + gather)
    solver = len(costs) * overhead
    return {"compute": compute, "comm": comm, "solver": solver, "total": compute + comm + solver,
            "comm_share": comm * 1.0 / (compute + comm) if compute + comm else 0.0}


# --------------------------------------------------------------------------- report
def hms(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def report(args, env: str, one: dict[int, list[float]], two: list[dict], costs: dict, full_model: float,
           overhead: float, speedup: float, hidden: int, weight_numel: int, cpu_flops: float) -> str:
    """The Markdown results: measured tables, then the labelled projection."""
    rank0 = two[0]
    med = statistics.median
    wall1, wall1_1, wall2 = med(one[2]), med(one[1]), med(rank0["wall"])
    parts = {k: med(rank0[k]) for k in ("compute", "allreduce", "allgather")}
    share = (parts["allreduce"] + parts["allgather"]) / sum(parts.values())
    local_bandwidth = rank0["allreduce_bytes"] / rank0["allreduce_alone"]  # bytes/s of the all-reduce alone
    lines = [
        f"Measured by `make benchmark-distributed` ({env}). Offline Gemma-3-270M (Q4_K_M GGUF dequantised to float32), "
        f"layer-16 `down_proj` eNTK operator with the unembedding metric, N = {args.n_contexts} token windows of 64 tokens "
        f"(the first 64 Gemma tokens of each of the first {args.n_contexts} stories of "
        "`validation_first1000.txt` with that many; not notebook 03's filtered contexts, which cost the same), "
        f"medians of {args.repeats} products after a warm-up.",
        "",
        "| layout | wall time per product | computing | all-reduce | all-gather | share communicating |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| 1 process x 2 threads | {wall1:.3f} s | {wall1:.3f} s | - | - | 0% |",
        f"| 1 process x 1 thread (control) | {wall1_1:.3f} s | {wall1_1:.3f} s | - | - | 0% |",
        f"| 2 processes x 1 thread (gloo, loopback; {rank0['counts'][0]} + {rank0['counts'][1]} contexts), rank 0 | "
        f"{wall2:.3f} s | {parts['compute']:.3f} s | {parts['allreduce']:.3f} s | {parts['allgather']:.3f} s | "
        f"{100 * share:.1f}% |",
        "",
        f"Messages per product: all-reduce of the weight-space vector {distributed.format_bytes(rank0['allreduce_bytes'])} "
        f"(the {weight_numel:,} float32 entries of `down_proj`), all-gather of the output rows "
        f"{distributed.format_bytes(rank0['allgather_bytes'])} received per rank. The collectives alone, right after a "
        f"barrier: all-reduce {1000 * rank0['allreduce_alone']:.1f} ms, all-gather {1000 * rank0['allgather_alone']:.1f} ms; "
        "inside a product they also hold the wait for the slower rank. 2 processes x 1 thread vs 1 x 2: "
        f"**{wall1 / wall2:.2f}x** the speed (vs 1 x 1: {wall1_1 / wall2:.2f}x).",
        "",
        f"Per-context cost per layer (1 process x 1 thread, {args.layer_contexts} contexts, default path): "
        + ", ".join(f"{layer}: {1000 * c['product']:.0f} ms" for layer, c in costs.items())
        + f" per product; building the operators of all 18 layers {sum(c['build'] for c in costs.values()):.2f} s "
          f"per context. Full-model path at layer 16: {1000 * full_model:.0f} ms per context per product. Lanczos's own "
          f"work at N*d = {PAPER['n'] * hidden:,} ({PAPER['steps']} steps, {PAPER['eigs']} pairs): {overhead:.1f} s per layer.",
        "",
        f"Extrapolated from these per-context costs, the paper profile ({PAPER['layers']} layers, N = {PAPER['n']}, "
        f"{PAPER['steps']} Lanczos steps) on this 2-core CPU as 2 processes x 1 thread: "
        f"**{hms(project_sweep(costs, overhead, 1.0, 2, local_bandwidth, 0.0, hidden, weight_numel)['total'])}** "
        "(projected: linear in N, the collectives at the bandwidth measured here; building notebook 03's dataset "
        "comes on top).",
        "",
        "**PROJECTION, not a measurement** (no GPU was available to this work): the same sweep on GPUs, under these "
        "assumptions:",
        "",
        f"- each GPU runs a context's products **{speedup:.0f}x** faster than one thread of this CPU: the ratio of an "
        f"assumed {args.gpu_tflops:g} TFLOP/s float32 matmul rate per GPU (an A100's FP32 peak without TF32) to the "
        f"{cpu_flops / 1e9:.0f} GFLOP/s measured here for a 1024 x 1024 float32 matmul on one thread, as if the products "
        "reached the same fraction of that rate on both; per-context cost assumed flat down to N/G contexts per GPU "
        "(small blocks use a GPU worse, so few-context shards are optimistic);",
        f"- ring collectives on float32: within a node (8 GPUs) {args.intra_gbps:g} GB/s per link and "
        f"{args.latency_us:g} us per step; across nodes (64 GPUs) {args.inter_gbps:g} GB/s and {args.latency_us:g} us;",
        "- Lanczos's own work as measured here, on every rank (replicated, not divided); model loading and the dataset "
        "(rank 0, once) not included.",
        "",
        "| GPUs | contexts per GPU | computing | communicating | Lanczos | total (projected) | share communicating |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gpus, bandwidth in ((1, args.intra_gbps), (8, args.intra_gbps), (64, args.inter_gbps)):
        p = project_sweep(costs, overhead, speedup, gpus, bandwidth * 1e9, args.latency_us * 1e-6, hidden, weight_numel)
        lines.append(f"| {gpus} | {-(-PAPER['n'] // gpus)} | {hms(p['compute'])} | {hms(p['comm'])} | "
                     f"{hms(p['solver'])} | **{hms(p['total'])}** (projected) | {100 * p['comm_share']:.1f}% |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-contexts", type=int, default=64)
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed products per layout")
    parser.add_argument("--layer-contexts", type=int, default=16, help="contexts for the per-layer costs")
    parser.add_argument("--model-source", default="gguf")
    parser.add_argument("--gpu-tflops", type=float, default=19.5,
                        help="assumed float32 matmul rate of one GPU in TFLOP/s (19.5: an A100's FP32 peak without TF32)")
    parser.add_argument("--intra-gbps", type=float, default=100.0, help="assumed GB/s per link within a node")
    parser.add_argument("--inter-gbps", type=float, default=12.5, help="assumed GB/s per GPU across nodes")
    parser.add_argument("--latency-us", type=float, default=20.0, help="assumed latency per ring step")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()

    load_start = os.getloadavg()
    lm = language.load_model(args.model_source)
    model, hidden = lm.model, lm.model.config.hidden_size
    ids = token_windows(lm.tokenizer, args.n_contexts)
    weight_numel = model.model.layers[args.layer].mlp.down_proj.weight.numel()
    print(f"{lm.description}; torch {torch.__version__}; N={args.n_contexts}; load average {load_start}", flush=True)

    metric = operators.unembedding_metric(model)
    op = distributed.data_parallel_operator(model, ids, args.layer, metric=metric)
    one = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        one[threads] = product_times(op, args.repeats)
        print(f"1 process x {threads} thread(s): median {statistics.median(one[threads]):.3f} s per product", flush=True)
    print("per-layer costs (1 thread):", flush=True)
    costs = per_layer_costs(model, ids[: args.layer_contexts], metric)
    full_model = full_model_product(model, ids[: args.layer_contexts], args.layer, metric)
    overhead = lanczos_overhead(PAPER["n"] * hidden, PAPER["steps"], PAPER["eigs"])
    cpu_flops = matmul_flops()
    speedup = args.gpu_tflops * 1e12 / cpu_flops
    del model, lm, metric, op
    gc.collect()

    two = distributed.run_on_local_ranks(two_rank_products, 2, args.model_source, ids, args.layer, args.repeats)
    print(f"2 processes x 1 thread: median {statistics.median(two[0]['wall']):.3f} s per product", flush=True)
    load_end = os.getloadavg()
    env = (f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs; load average "
           f"{', '.join(f'{x:.1f}' for x in load_start)} at the start and {', '.join(f'{x:.1f}' for x in load_end)} at "
           "the end, over 1, 5 and 15 minutes (other jobs shared the machine when above 0)")
    text = report(args, env, one, two, costs, full_model, overhead, speedup, hidden, weight_numel, cpu_flops)
    print(text)
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text)
        update_readme(RESULTS.parents[2])


if __name__ == "__main__":
    main()
