"""The check for a lent GPU machine: the CUDA and NCCL paths, and the paper-scale timing, in one run.

Run it as ``make gpu-check`` (or ``python benchmarks/gpu_check.py``) on a machine with CUDA;
without one it says so and exits 0, writing nothing. Each check is timed and recorded even
when it fails, and the run stops starting new checks once ``--budget-minutes`` are spent, so
the few minutes a lent machine gives are not lost to one slow step:

1. ``dense``: the fast dense eNTK (``entk_utils.kernels.entk``) on CUDA equals the CPU's, on
   the Gromov MLP (trace) and the 1-layer Transformer (layerwise, ``reduce="mean"``), random
   weights, all 841 inputs;
2. ``operator-tiny``: the matrix-free operator on CUDA equals the CPU's on the tiny random
   models of every architecture the tests use (one product, float32; three of them in a
   dry run);
3. ``operator-gemma``: the same on Gemma-3-270M (the offline GGUF unless another
   ``--model-source``) at layer 16, N = 64 token windows of the local TinyStories sample, with
   one product's time on each device;
4. ``eigs-nccl``: ``python -m entk_utils.eigs`` under ``python -m entk_utils.distributed`` on
   every GPU present (NCCL; one rank per GPU), against the same job in one process;
5. ``paper-scale``: the top 25 eigenpairs of the layer-16 ``down_proj`` operator by 50
   Lanczos steps at N = 1024 contexts of 64 tokens (the paper's scale; its code takes about 8
   minutes on an A100), and the process's peak GPU memory.

Results go to ``benchmarks/results/gpu_check.md`` (and ``.json``) and the README region
``gpu-check``. ``--dry-run`` runs every check on the CPU against itself at small sizes (gloo
instead of NCCL): a test of this script on machines without a GPU, not a measurement; it
writes to ``--out`` only.

    python benchmarks/gpu_check.py                     # make gpu-check
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]  # the tiny models the operator tests use

RESULTS = HERE / "results" / "gpu_check.md"
TOLERANCE = 1e-4  # largest relative difference accepted between the GPU and the CPU (float32)


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --------------------------------------------------------------------------- the checks
def check_dense(device: str, small: bool) -> dict:
    from entk_utils.kernels import entk, layerwise_entk
    from entk_utils.settings.modular import (GromovMLP, OneLayerTransformer, modular_addition_pairs, one_hot_pairs,
                                             transformer_tokens)
    from entk_utils.settings.modular.models import build_seeded

    p = 7 if small else 29
    pairs, _ = modular_addition_pairs(p)
    mlp = build_seeded(lambda: GromovMLP(p, 64 if small else 512), 0).eval()
    x = one_hot_pairs(pairs, p)
    transformer = build_seeded(lambda: OneLayerTransformer(p, 16 if small else 64, 4, 32 if small else 256), 0).eval()
    tokens = transformer_tokens(pairs, p)
    out, differences = {}, {}
    for name, compute in {"MLP trace": lambda d: entk(mlp, x, reduce="trace", device=d),
                          "Transformer layerwise mean": lambda d: layerwise_entk(transformer, tokens,
                                                                                 OneLayerTransformer.WEIGHTS,
                                                                                 reduce="mean", device=d)}.items():
        cpu = compute("cpu")
        start = time.perf_counter()
        on_device = compute(device)
        _synchronize(device)
        seconds = time.perf_counter() - start
        if isinstance(cpu, dict):
            differences[name] = max(relative_difference(on_device[k].cpu(), cpu[k]) for k in cpu)
        else:
            differences[name] = relative_difference(on_device.cpu(), cpu)
        out[f"{name} on {device} (s, first call)"] = round(seconds, 3)
    worst = max(differences.values())
    return {"ok": worst < TOLERANCE, "largest relative difference": worst, **differences, **out}


def check_operator_tiny(device: str, small: bool) -> dict:
    from tiny_models import CONFIGS, WEIGHTS, tiny_model

    from entk_utils.kernels.operators import entk_operator

    ids = torch.randint(1, 40, (6, 7), generator=torch.Generator().manual_seed(0))
    differences = {}
    for arch in ("gpt2", "llama", "gemma2") if small else CONFIGS:
        metric = "logits" if arch == "gemma2" else "unembedding"
        cpu = entk_operator(tiny_model(arch, dtype=torch.float32), ids, WEIGHTS[arch], metric=metric)
        gpu = entk_operator(tiny_model(arch, dtype=torch.float32).to(device), ids, WEIGHTS[arch], metric=metric)
        v = np.random.default_rng(0).standard_normal(cpu.shape[0])
        differences[arch] = relative_difference(gpu.matvec(v), cpu.matvec(v))
    worst = max(differences.values())
    return {"ok": worst < TOLERANCE, "largest relative difference": worst, **differences}


def gemma_windows(args, n: int):
    """(model on the CPU, tokenizer, (n, 64) token windows of the local stories)."""
    from bench_distributed import token_windows

    from entk_utils.settings import language

    lm = language.load_model(args.model_source)
    return lm, token_windows(lm.tokenizer, n)


def check_operator_gemma(device: str, small: bool, args) -> dict:
    from entk_utils.kernels.operators import layer_entk_operator

    lm, ids = gemma_windows(args, 8 if small else 64)
    layer = len(lm.model.get_decoder().layers) - 2
    ops = {"cpu": layer_entk_operator(lm.model, ids, layer)}
    lm.model.to(device)
    ops[device] = layer_entk_operator(lm.model, ids, layer)
    v = np.random.default_rng(0).standard_normal(ops["cpu"].shape[0])
    products, seconds = {}, {}
    for name, op in ops.items():
        op.matvec(v[::-1].copy())  # warm-up
        _synchronize(name)
        start = time.perf_counter()
        products[name] = op.matvec(v)
        seconds[name] = time.perf_counter() - start
    difference = relative_difference(products[device], products["cpu"])
    lm.model.to("cpu")
    return {"ok": difference < TOLERANCE, "largest relative difference": difference, "N": len(ids), "layer": layer,
            "model": lm.description.split(":")[0], "path": ops[device].strategy.describe(),
            "product on the CPU (s)": round(seconds["cpu"], 3), f"product on {device} (s)": round(seconds[device], 3)}


def check_eigs_nccl(device: str, small: bool, args) -> dict:
    lm, ids = gemma_windows(args, 8 if small else 64)
    layer = len(lm.model.get_decoder().layers) - 2
    ranks = torch.cuda.device_count() if device == "cuda" else 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        torch.save(ids, Path(folder) / "ids.pt")
        job = ["-m", "entk_utils.eigs", "--model", args.model_source, "--contexts", str(Path(folder) / "ids.pt"),
               "--layer", str(layer), "--n-eigs", "4", "--steps", "12", "--device", "cuda" if device == "cuda" else "cpu"]
        runs = {}
        for name, launcher in {"one process": [sys.executable],
                               f"{ranks} ranks": [sys.executable, "-m", "entk_utils.distributed",
                                                  "--nproc-per-node", str(ranks)]}.items():
            start = time.perf_counter()
            out = Path(folder) / f"{name.replace(' ', '-')}.npz"
            run = subprocess.run([*launcher, *job, "--out", str(out)], capture_output=True, text=True, timeout=600)
            if run.returncode != 0:
                return {"ok": False, "failed": name, "stderr": run.stderr[-2000:]}
            result = np.load(out)
            runs[name] = {"seconds": time.perf_counter() - start, "eigenvalues": result["eigenvalues"],
                          "world_size": int(result["world_size"]), "log": run.stderr}
    one, many = runs["one process"], runs[f"{ranks} ranks"]
    difference = relative_difference(many["eigenvalues"], one["eigenvalues"])
    backend = "nccl" if device == "cuda" else "gloo"
    return {"ok": difference < TOLERANCE and many["world_size"] == ranks, "ranks": ranks, "backend": backend,
            "largest relative difference of the eigenvalues": difference,
            "collectives logged": "all-reduce" in many["log"] or ranks == 1,
            "one process (s, with loading)": round(one["seconds"], 1),
            f"{ranks} ranks (s, with loading)": round(many["seconds"], 1)}


def check_paper_scale(device: str, small: bool, args) -> dict:
    from entk_utils.kernels.eigen import lanczos
    from entk_utils.kernels.operators import layer_entk_operator

    n, n_eigs, steps = (16, 4, 8) if small else (1024, 25, 50)
    lm, ids = gemma_windows(args, n)
    layer = len(lm.model.get_decoder().layers) - 2
    lm.model.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    op = layer_entk_operator(lm.model, ids, layer)
    built = time.perf_counter() - start
    evals, _, residuals = lanczos(op, n_eigs, steps, progress=False)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"ok": bool(np.all(np.isfinite(evals)) and np.all(evals > 0)), "N": n, "layer": layer,
            "eigenpairs": n_eigs, "Lanczos steps": steps, "path": op.strategy.describe(),
            "building the operator (s)": round(built, 1), "total (min)": round(elapsed / 60, 2),
            "largest relative residual": float(np.max(residuals / evals)),
            "peak GPU memory (GiB)": round(peak, 2), "leading eigenvalues": np.round(evals[:3], 3).tolist()}


CHECKS = {"dense": check_dense, "operator-tiny": check_operator_tiny, "operator-gemma": check_operator_gemma,
          "eigs-nccl": check_eigs_nccl, "paper-scale": check_paper_scale}


def _synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- running and reporting
def machine(device: str) -> dict:
    facts = {"torch": torch.__version__, "python": platform.python_version(), "CPU threads": torch.get_num_threads()}
    if device == "cuda":
        facts.update({"CUDA": torch.version.cuda, "GPUs": [torch.cuda.get_device_name(i)
                                                            for i in range(torch.cuda.device_count())],
                      "NCCL": ".".join(map(str, torch.cuda.nccl.version()))})
    return facts


def run_checks(names, device: str, small: bool, args, budget_seconds: float) -> list[dict]:
    rows, start = [], time.perf_counter()
    for name in names:
        if time.perf_counter() - start > budget_seconds:
            rows.append({"check": name, "ok": False, "skipped": "the time budget was spent"})
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            fn = CHECKS[name]
            row = fn(device, small) if name in ("dense", "operator-tiny") else fn(device, small, args)
        except Exception as err:  # noqa: BLE001 - a failing check is recorded, the others still run
            row = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        row = {"check": name, **row, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}, default=str), flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict], facts: dict, dry_run: bool) -> str:
    kind = ("DRY RUN on the CPU against itself (gloo instead of NCCL, small sizes): a test of the script, "
            "not a measurement" if dry_run else "measured on the GPU machine")
    lines = [f"`make gpu-check`, {kind}; " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".", "",
             "| check | passed | seconds | what was measured |", "| --- | --- | ---: | --- |"]
    for row in rows:
        detail = "; ".join(f"{k} {v:.1e}" if isinstance(v, float) and abs(v) < 1e-2 else f"{k} {v}"
                           for k, v in row.items() if k not in ("check", "ok", "seconds", "traceback", "stderr"))
        lines.append(f"| {row['check']} | {'yes' if row['ok'] else '**no**'} | {row.get('seconds', '')} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    parser.add_argument("--budget-minutes", type=float, default=9.0, help="start no check after this")
    parser.add_argument("--model-source", default="gguf", help="the Gemma source (default: the offline GGUF)")
    parser.add_argument("--dry-run", action="store_true", help="CPU against CPU at small sizes (tests this script)")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for the report (default {RESULTS.parent})")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: gpu-check skipped (nothing measured, nothing written)")
        return 0
    device = "cpu" if args.dry_run else "cuda"
    facts = machine(device)
    print(json.dumps(facts), flush=True)
    rows = run_checks(args.checks, device, args.dry_run, args, args.budget_minutes * 60)
    folder = args.out or (None if args.dry_run else RESULTS.parent)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESULTS.name).write_text(report(rows, facts, args.dry_run))
        (folder / RESULTS.with_suffix(".json").name).write_text(json.dumps({"machine": facts, "checks": rows},
                                                                           indent=1, default=str))
        print(f"wrote {folder / RESULTS.name}")
        if not args.dry_run and folder == RESULTS.parent:
            from entk_utils.io.report import update_readme

            update_readme(HERE.parent)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
