"""Benchmark: the fast eNTK against neural-tangents' empirical NTK, in one process.

neural-tangents (JAX) cannot share the project's own environment without adding JAX and
TensorFlow to it, so it runs in an environment of its own: ``make benchmark-peers`` builds
``.venv-peers`` from ``benchmarks/peers/requirements.txt`` (neural-tangents 0.6.5, jax 0.4.30,
TensorFlow 2.21, numpy 2.4.6, torch 2.13.0) plus the project, and runs this script there.

Both libraries are imported in this one process. Each round runs every column once in turn
(the fast path ``--fast-repeats`` times), so a change in machine load hits all columns alike;
the medians over ``--rounds`` rounds are reported, with the ratio to the fast path and the
relative difference ``||K_nt - K_fast|| / ||K_fast||`` of the two kernels. Columns:

* fast path: ``entk_utils.kernels.entk`` (``method="auto"``, i.e. the Gram factorisation),
  run with one and with two torch intra-op threads, keeping the faster (as
  ``bench_entk.py`` does);
* neural-tangents: ``nt.empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0,
  implementation=...)``, jitted, of a JAX forward ``f`` written here for the same model,
  with the torch weights copied into ``jnp`` arrays; ``f``'s outputs are checked against the
  torch model's before anything is timed. Every ``nt.NtkImplementation`` is tried once
  (after compiling) on all inputs; one whose call does not fit in memory is tried in blocks
  of inputs; the fastest one is also tried in blocks; every configuration within 1.5x of
  the fastest single run then goes into the interleaved rounds, and the column is the one
  with the smallest median. JIT compile time is measured apart (``jax.jit(...).lower(...)
  .compile()``) and reported once, never inside the timed rounds.

JAX threads: XLA's CPU client runs its operations on a thread pool with one thread per core
the process may use (``os.sched_getaffinity``) when JAX starts; unlike torch it has no switch
at run time (and ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` did not change it here).
So the process is held to ``--xla-threads`` of its cores (default: torch's intra-op thread
count, 2 on the 2-core machine) while JAX starts, then given all back; the JAX column is not
also run with one thread in the same process (``--xla-threads 1`` runs the whole benchmark
so). Each column's "cores busy" (process CPU time over wall time) shows what it used.

Workloads: the trace eNTK of the trained p=29 Gromov MLP (width 512) on all 841 inputs,
as in ``bench_entk.py``; the ``W_U`` layerwise eNTK (``reduce="mean"``, Figure 3's kernel)
and the full eNTK (``reduce="mean"``, all nine weights) of the trained 1-layer Transformer
(seed 2). ``reduce="mean"`` (the mean over all output pairs) is the kernel of the mean
output, so neural-tangents gets the mean output as ``f`` there. Results go to
``benchmarks/results/bench_peers.md`` and into the README's ``bench-peers`` region.

    make benchmark-peers
    .venv-peers/bin/python benchmarks/bench_peers.py --case mlp --rounds 1 --no-save
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import re
import statistics
import time
import warnings
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["mlp", "transformer", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--fast-repeats", type=int, default=5, help="fast-path runs per round")
    parser.add_argument("--implementations", nargs="+", default=None,
                        help="nt.NtkImplementation names to try (default: every one)")
    parser.add_argument("--xla-threads", type=int, default=None,
                        help="threads of XLA's CPU pool (default: torch's intra-op thread count)")
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--no-save", action="store_true", help="do not write bench_peers.md nor refresh the README")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.fast_repeats < 1 or (args.xla_threads is not None and args.xla_threads < 1):
        raise ValueError(f"--rounds, --fast-repeats and --xla-threads must be >= 1, got {args.rounds}, "
                         f"{args.fast_repeats}, {args.xla_threads}")
    return args


import numpy as np
import torch

ARGS = parse_args() if __name__ == "__main__" else None
# Set before JAX (and, through neural-tangents, TensorFlow) is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# XLA's CPU client sizes its thread pool by the cores the process may use when the client
# starts, and its threads keep the affinity they start with; jaxlib 0.4.30 has no other
# switch for it (``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` left a 2048 x 2048 product
# on two cores here). So the process is held to the first ``XLA_THREADS`` of its cores while
# JAX starts, then given all of them back (torch's threads are not affected).
ALLOWED_CORES = sorted(os.sched_getaffinity(0))
XLA_THREADS = min(len(ALLOWED_CORES), (ARGS.xla_threads if ARGS and ARGS.xla_threads else torch.get_num_threads()))
if XLA_THREADS < len(ALLOWED_CORES):
    os.sched_setaffinity(0, ALLOWED_CORES[:XLA_THREADS])
try:
    import jax
    import jax.numpy as jnp
    import jaxlib
    import neural_tangents as nt

    jax.devices()  # starts the CPU client and its thread pool now
finally:
    os.sched_setaffinity(0, ALLOWED_CORES)

from entk_utils.io.report import update_readme  # noqa: E402
from entk_utils.kernels import entk  # noqa: E402
from entk_utils.settings.modular import train_gromov_mlp, train_transformer  # noqa: E402
from bench_entk import with_threads  # noqa: E402 - the torch columns are run as there

RESULTS = Path(__file__).resolve().parent / "results" / "bench_peers.md"
NT_COLUMN = "neural-tangents `empirical_ntk_fn`, jitted"
SPREAD = 1.5  # configurations within this factor of the fastest single run go into the rounds
FALLBACK_BLOCK = 128  # inputs per call for an implementation whose all-inputs call does not fit
MATMUL = 2048


# --------------------------------------------------------------------------- neural-tangents on jax 0.4.30
def restore_jax_names() -> list[str]:
    """Put back the two names neural-tangents 0.6.5's ``STRUCTURED_DERIVATIVES`` (and so
    ``AUTO``) reads from ``jax.interpreters.ad``: ``source_info_util`` and ``config``, which
    jax has dropped from that module (its ``jax/interpreters/ad.py`` lists both as finished
    deprecations from 0.4.26 on). Without them those implementations stop with
    ``AttributeError``. Returns the names put back."""
    from jax._src import source_info_util
    from jax.interpreters import ad

    restored = []
    for name, value in (("source_info_util", source_info_util), ("config", jax.config)):
        if not hasattr(ad, name):
            setattr(ad, name, value)
            restored.append(name)
    return restored


RESTORED = restore_jax_names()


def implementations(names=None):
    """The ``nt.NtkImplementation`` members to try (all by default; ``AUTO`` last)."""
    members = sorted(nt.NtkImplementation, key=lambda m: (m.name == "AUTO", m.value))
    if names is None:
        return members
    unknown = set(names) - {m.name for m in members}
    if unknown:
        raise ValueError(f"unknown nt.NtkImplementation {sorted(unknown)}; known: {[m.name for m in members]}")
    return [m for m in members if m.name in names]


class NTConfig:
    """One way of computing a kernel with neural-tangents: an implementation, a forward
    (weight layout) and a number of inputs per call (``block``; ``None``: all at once).

    ``compile(x, params)`` compiles every call shape the kernel needs (all inputs; or a
    diagonal block, ``x2=None``, and an off-diagonal block) and returns the seconds it took;
    ``__call__`` then computes the (N, N) kernel as a numpy array from the compiled calls.
    Inputs are padded with zero rows to a multiple of ``block``; the padding is cut off.
    """

    def __init__(self, implementation, forward, layout, block=None):
        self.implementation, self.forward, self.layout, self.block = implementation, forward, layout, block
        self.jitted = jax.jit(nt.empirical_ntk_fn(forward, trace_axes=(-1,), vmap_axes=0,
                                                  implementation=implementation))
        self.diag = self.off = None
        self.auto_picked = []  # for AUTO: the implementation it picked at each compilation

    @property
    def label(self):
        per_call = "all inputs" if self.block is None else f"blocks of {self.block}"
        name = self.implementation.name
        if self.auto_picked:
            name += f" (picked {' / '.join(dict.fromkeys(self.auto_picked))})"
        return f"{name}, {self.layout}, {per_call}"

    def compile(self, x, params):
        """Compile every call shape; for ``AUTO``, note which implementation it picked (it
        prints each one's FLOP estimate, ``impl=I, flops=F``, and takes the smallest)."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            seconds = self._compile(x, params)
        groups = []  # one group of (implementation, flops) per compilation
        for impl, flops in re.findall(r"impl=(\d+), flops=([0-9.eE+-]+)", printed.getvalue()):
            if not groups or int(impl) <= groups[-1][-1][0]:
                groups.append([])
            groups[-1].append((int(impl), float(flops)))
        self.auto_picked += [nt.NtkImplementation(min(g, key=lambda e: e[1])[0]).name for g in groups]
        return seconds

    def _compile(self, x, params):
        n = x.shape[0]
        start = time.perf_counter()
        if self.block is None or self.block >= n:
            self.n, self.blocks = n, None
            self.x = x
            self.diag = self.jitted.lower(x, None, params).compile()
        else:
            b = self.block
            m = -(-n // b) * b
            xp = jnp.concatenate([x, jnp.zeros((m - n, *x.shape[1:]), x.dtype)]) if m > n else x
            self.n, self.blocks = n, [xp[i:i + b] for i in range(0, m, b)]
            self.diag = self.jitted.lower(self.blocks[0], None, params).compile()
            self.off = self.jitted.lower(self.blocks[0], self.blocks[1], params).compile()
        return time.perf_counter() - start

    def __call__(self, params):
        if self.blocks is None:
            return np.asarray(self.diag(self.x, None, params))
        b, k = self.block, len(self.blocks)
        calls = {(i, j): self.diag(self.blocks[i], None, params) if i == j else
                 self.off(self.blocks[i], self.blocks[j], params)
                 for i in range(k) for j in range(i, k)}  # dispatched first, gathered after
        out = np.empty((k * b, k * b), np.float32)
        for (i, j), block in calls.items():
            block = np.asarray(block)
            out[i * b:(i + 1) * b, j * b:(j + 1) * b] = block
            out[j * b:(j + 1) * b, i * b:(i + 1) * b] = block.T
        return out[:self.n, :self.n]


# --------------------------------------------------------------------------- JAX forwards of the models
def to_jnp(weight: torch.Tensor, transpose: bool) -> jnp.ndarray:
    w = weight.detach().cpu().numpy()
    return jnp.asarray(np.ascontiguousarray(w.T if transpose else w))


def mlp_forwards(model):
    """The Gromov MLP ``W2 (W1 x / sqrt(2p))**2 / width`` in JAX, in two weight layouts:
    ``"(in, out)"`` (``x @ W``, neural-tangents' own ``stax.Dense`` layout) and torch's
    ``"(out, in)"`` (``x @ W.T``). Returns ``{layout: (forward, params)}``."""
    scale_in, width = math.sqrt(2 * model.p), model.width

    def forward_in_out(w, x):
        return ((x @ w["fc1"]) / scale_in) ** 2 @ w["fc2"] / width

    def forward_out_in(w, x):
        return ((x @ w["fc1"].T) / scale_in) ** 2 @ w["fc2"].T / width

    weights = {"fc1": model.fc1.weight, "fc2": model.fc2.weight}
    return {"(in, out)": (forward_in_out, {k: to_jnp(w, True) for k, w in weights.items()}),
            "(out, in)": (forward_out_in, {k: to_jnp(w, False) for k, w in weights.items()})}


def transformer_forward(model):
    """:class:`~entk_utils.settings.modular.OneLayerTransformer`'s forward in JAX, weights in
    the ``(in, out)`` layout (embeddings as their tables): ``forward(w, tokens)`` -> logits
    (N, p + 1). Returns ``(forward, w)``."""
    n_heads, d_head = model.n_heads, model.d_head
    embeddings = {"W_E", "W_pos"}
    w = {name: to_jnp(getattr(model, name).weight, name not in embeddings) for name in model.WEIGHTS}

    def heads(y):  # (..., T, heads * d_head) -> (..., heads, T, d_head)
        return jnp.swapaxes(y.reshape(*y.shape[:-1], n_heads, d_head), -2, -3)

    def forward(w, tokens):
        t = tokens.shape[-1]
        x = w["W_E"][tokens] + w["W_pos"][jnp.arange(t)]
        q, k, v = heads(x @ w["W_Q"]), heads(x @ w["W_K"]), heads(x @ w["W_V"])
        scores = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(d_head)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        pattern = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        z = jnp.swapaxes(pattern @ v, -2, -3)
        z = z.reshape(*z.shape[:-2], n_heads * d_head)
        x = x + z @ w["W_O"]
        x = x + jax.nn.relu(x @ w["W_in"]) @ w["W_out"]
        return x[..., -1, :] @ w["W_U"]

    return forward, w


FORWARD_CHECKS: dict[str, float] = {}  # what check_forward measured, for the report


def check_forward(label, forward, params, model, x_torch, x_jax, tolerance=1e-5):
    """Largest ``|f_jax - f_torch|`` over the largest ``|f_torch|``; raises above ``tolerance``."""
    with torch.no_grad():
        expected = model(x_torch).numpy()
    got = np.asarray(jax.jit(forward)(params, x_jax))
    diff = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"  JAX forward of {label} vs torch: largest difference {diff:.1e} of the largest output", flush=True)
    if not diff <= tolerance:
        raise AssertionError(f"the JAX forward of {label} differs from the torch model by {diff:.1e}")
    FORWARD_CHECKS[label] = diff
    return diff


# --------------------------------------------------------------------------- measuring
def relative_difference(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def clock(fn):
    """``(wall seconds, process CPU seconds, result)`` of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interleaved(columns, rounds, repeats):
    """Run ``{name: fn}`` in turn, ``rounds`` times (``repeats.get(name, 1)`` timed runs each
    a round, after one untimed run); returns ``{name: (median wall seconds, median cores
    busy, last result)}``.

    The untimed run lets the other library's idle threads go to sleep first: torch's OpenMP
    threads spin a while after their work, and a neural-tangents kernel of about 10 ms took
    12.5 ms (median) right after a two-thread torch call here, 8.2 ms right after another
    neural-tangents call.
    """
    walls, busy, results = {name: [] for name in columns}, {name: [] for name in columns}, {}
    for r in range(rounds):
        for name, fn in columns.items():
            fn()
            for _ in range(repeats.get(name, 1)):
                wall, cpu, results[name] = clock(fn)
                walls[name].append(wall)
                busy[name].append(cpu / wall)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in walls.items()), flush=True)
    return {name: (statistics.median(walls[name]), statistics.median(busy[name]), results[name]) for name in columns}


def is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


def short_error(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if is_out_of_memory(error) and "allocating" in text:
        size = [w for w in text.split() if w.isdigit()]
        if size:
            return f"out of memory (asked XLA for {int(size[0]) / 1e9:.0f} GB)"
    return f"{type(error).__name__}: {text[:120]}"


def try_config(config, x, params, reference):
    """Compile ``config`` and run it once: a dict with compile seconds, one run's seconds,
    cores busy and the relative difference from ``reference`` (or the error)."""
    print(f"  trying {config.label} ...", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compile_s = config.compile(x, params)
            wall, cpu, kernel = clock(lambda: config(params))
        except Exception as error:  # recorded and reported: a configuration that cannot run is not a column
            print(f"    failed: {short_error(error)}", flush=True)
            return {"config": config, "error": error}
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    for message in messages:
        print(f"    neural-tangents warned: {message}", flush=True)
    diff = relative_difference(kernel, reference)
    print(f"    compile {compile_s:.2f} s, one run {wall:.3f} s, relative difference {diff:.1e}", flush=True)
    return {"config": config, "compile": compile_s, "run": wall, "busy": cpu / wall, "diff": diff,
            "warnings": messages}


def screen(make_config, layouts, x, reference, impls, extra=()):
    """Try every implementation on all inputs (in blocks of ``FALLBACK_BLOCK`` where the
    all-inputs call does not fit in memory), then the fastest in blocks of about a half and
    a quarter of the inputs, then the ``extra`` configurations. ``make_config(impl, layout,
    block)``; ``layouts`` ``{layout: (forward, params)}``, the first one the main one."""
    main = next(iter(layouts))
    tried = []
    for impl in impls:
        trial = try_config(make_config(impl, main, None), x, layouts[main][1], reference)
        tried.append(trial)
        if "error" in trial and is_out_of_memory(trial["error"]):
            tried.append(try_config(make_config(impl, main, FALLBACK_BLOCK), x, layouts[main][1], reference))
    ok = [t for t in tried if "error" not in t]
    if not ok:
        raise RuntimeError("no neural-tangents configuration ran: " + "; ".join(short_error(t["error"]) for t in tried))
    best = min(ok, key=lambda t: t["run"])["config"]
    n = len(x)
    for block in (-(-n // 2), -(-n // 4)):
        if block != best.block:
            tried.append(try_config(make_config(best.implementation, main, block), x, layouts[main][1], reference))
    for impl, layout, block in extra:
        tried.append(try_config(make_config(impl, layout, block), x, layouts[layout][1], reference))
    return tried


def jax_inputs(x: torch.Tensor) -> jnp.ndarray:
    """``x`` as a JAX array (token ids as int32: JAX runs without 64-bit types here)."""
    x = x.detach().cpu().numpy()
    return jnp.asarray(x.astype(np.int32) if np.issubdtype(x.dtype, np.integer) else x)


def compare(label, short, model, x, fast_fn, layouts, args, extra=(), outputs="outputs"):
    """Screen the neural-tangents configurations, then time the fast path (1 and 2 torch
    threads) against the finalists in interleaved rounds. ``model`` is the torch function
    the JAX forwards in ``layouts`` are checked against. Returns a result dict."""
    print(label, flush=True)
    x_jax = jax_inputs(x)
    for layout, (forward, params) in layouts.items():
        check_forward(f"{short} {outputs}, {layout} weights", forward, params, model, x, x_jax)
    reference = fast_fn().numpy()

    def make_config(impl, layout, block):
        return NTConfig(impl, layouts[layout][0], layout, block)

    tried = screen(make_config, layouts, x_jax, reference, implementations(args.implementations), extra)
    ok = [t for t in tried if "error" not in t]
    for t in ok:
        if t["diff"] > 1e-5:
            raise AssertionError(f"{t['config'].label} disagrees with the fast path: {t['diff']:.1e}")
    fastest = min(t["run"] for t in ok)
    finalists = [t for t in ok if t["run"] <= SPREAD * fastest]

    threads = sorted({1, torch.get_num_threads()})
    columns = {f"fast ({n} thr)": with_threads(fast_fn, n) for n in threads}
    columns.update({f"nt {t['config'].label}": (lambda c=t["config"], p=layouts[t["config"].layout][1]: c(p))
                    for t in finalists})
    repeats = {f"fast ({n} thr)": args.fast_repeats for n in threads}
    repeats.update({f"nt {t['config'].label}": max(1, min(args.fast_repeats, int(1 / t["run"]))) for t in finalists})
    measured = interleaved(columns, args.rounds, repeats)

    fast_name = min((k for k in measured if k.startswith("fast")), key=lambda k: measured[k][0])
    nt_name = min((k for k in measured if k.startswith("nt ")), key=lambda k: measured[k][0])
    chosen = next(t for t in finalists if f"nt {t['config'].label}" == nt_name)
    result = {
        "label": label, "short": short, "tried": tried, "chosen": chosen,
        "fast": measured[fast_name][:2], "fast_threads": int(fast_name.split("(")[1].split()[0]),
        "nt": measured[nt_name][:2],
        "diff": relative_difference(measured[nt_name][2], measured[fast_name][2].numpy()),
        "finalists": {k: measured[k][0] for k in measured if k.startswith("nt ")},
    }
    ratio = result["nt"][0] / result["fast"][0]
    print(f"  fast path {result['fast'][0]:.4f} s ({result['fast_threads']} thr); neural-tangents "
          f"{result['nt'][0]:.3f} s ({chosen['config'].label}), {ratio:.1f}x; compile {chosen['compile']:.2f} s; "
          f"relative difference {result['diff']:.1e}", flush=True)
    return result


def matmul_rates(rounds):
    """GFLOP/s of (MATMUL x MATMUL) float32 products in torch (best of 1 and 2 threads) and
    in XLA (jitted ``a @ b``), medians over interleaved rounds, and XLA's cores busy."""
    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    ja, jb = jnp.asarray(a.numpy()), jnp.asarray(b.numpy())
    product = jax.jit(lambda u, v: u @ v)
    product(ja, jb).block_until_ready()
    threads = sorted({1, torch.get_num_threads()})
    columns = {f"torch ({n} thr)": with_threads(lambda: a @ b, n) for n in threads}
    columns["XLA"] = lambda: product(ja, jb).block_until_ready()
    measured = interleaved(columns, rounds, {k: 3 for k in columns})
    flops = 2 * MATMUL**3
    torch_best = min((k for k in measured if k.startswith("torch")), key=lambda k: measured[k][0])
    return (flops / measured[torch_best][0] / 1e9, torch_best.split("(")[1].rstrip(")"),
            flops / measured["XLA"][0] / 1e9, measured["XLA"][1])


# --------------------------------------------------------------------------- workloads
def bench_mlp(args):
    run = train_gromov_mlp(p=29, width=512, seed=0, cache_dir=args.cache_dir, progress=False)
    model, x = run.model, run.inputs
    n_params = sum(w.numel() for w in model.parameters())
    entk(model, x[:8])  # warm-up
    layouts = mlp_forwards(model)
    sd = nt.NtkImplementation.STRUCTURED_DERIVATIVES
    extra = [(sd, "(out, in)", None)] if sd in implementations(args.implementations) else []
    return compare(f"MLP p={model.p}, trace eNTK, {len(x)} inputs, {n_params} weights", "MLP", model, x,
                   lambda: entk(model, x, reduce="trace"), layouts, args, extra)


def bench_transformer(args):
    run = train_transformer(p=29, seed=2, cache_dir=args.cache_dir, progress=False)
    model, x = run.model, run.inputs
    forward, weights = transformer_forward(model)
    print("Transformer", flush=True)
    check_forward("Transformer logits, (in, out) weights", forward, weights, model, x, jax_inputs(x))
    entk(model, x[:8], "W_U", reduce="mean")  # warm-up

    def mean_output_of(names):
        fixed = {k: v for k, v in weights.items() if k not in names}

        def f(w, tokens):
            return forward({**fixed, **w}, tokens).mean(-1, keepdims=True)
        return f, {k: weights[k] for k in names}

    class MeanOutput(torch.nn.Module):  # the torch model's mean output, for the forward check
        def forward(self, tokens):
            return model(tokens).mean(-1, keepdim=True)

    results = []
    for names, what, short, params in (
            (["W_U"], "the `W_U` layerwise eNTK", "Transformer `W_U`", "W_U"),
            (list(model.WEIGHTS), f"the full eNTK ({len(model.WEIGHTS)} weights)", "Transformer full", None)):
        f, w = mean_output_of(names)
        n_params = sum(getattr(model, k).weight.numel() for k in names)
        results.append(compare(
            f"Transformer p={model.p}, {what}, `reduce=\"mean\"`, {len(x)} inputs, {n_params} weights", short,
            MeanOutput(), x, lambda params=params: entk(model, x, params, reduce="mean"),
            {"(in, out)": (f, w)}, args, outputs="mean output"))
    return results


# --------------------------------------------------------------------------- the report
def xla_threads_text():
    return (f"XLA's CPU thread pool of {XLA_THREADS} thread{'s' * (XLA_THREADS > 1)} (XLA sizes it by the cores "
            f"the process may use when JAX starts, so the process was held to {XLA_THREADS} of its "
            f"{len(ALLOWED_CORES)} cores for that moment; jaxlib {jaxlib.__version__} has no switch for it at run "
            f"time, so unlike the fast path this column is not also run with 1 thread in this process: "
            f"`bench_peers.py --xla-threads 1` runs it so)")


def report(results, rates, args, machine, load_start):
    start = ", ".join(f"{v:.1f}" for v in load_start)
    end = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    own = max(XLA_THREADS, torch.get_num_threads())
    lines = [
        f"Measured by `make benchmark-peers` in an environment of its own (`.venv-peers`, pinned in "
        f"`benchmarks/peers/requirements.txt`) on {machine}; load average {start} at the start and {end} at the "
        f"end, over 1, 5 and 15 minutes (the benchmark's own threads account for up to {own} of it; other jobs "
        f"shared the machine where it is above that). One process with both torch and JAX imported, "
        f"{args.rounds} interleaved rounds, medians (the fast path {args.fast_repeats} times a round, "
        f"neural-tangents up to {args.fast_repeats} times where a run takes under a second; each column's turn "
        f"starts with one untimed run). The fast path runs with 1 and 2 torch intra-op threads and keeps its "
        f"faster; neural-tangents runs on {xla_threads_text()}. \"Cores busy\" is the process's CPU time over "
        f"wall time in that column.",
        "",
        f"The neural-tangents column is `nt.empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0, implementation=...)` "
        f"under `jax.jit`, `f` a JAX forward of the same model with the same (copied) weights, its outputs checked "
        f"against the torch model's on all inputs first (largest difference over the largest output: "
        f"{'; '.join(f'{k} {v:.0e}' for k, v in FORWARD_CHECKS.items())}); its time excludes JIT compilation "
        f"(reported below). The last column is `||K_nt - K_fast|| / ||K_fast||`.",
        "",
        f"| workload | fast path (`entk`) | {NT_COLUMN} | neural-tangents configuration | "
        "relative difference |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        ratio = r["nt"][0] / r["fast"][0]
        lines.append(f"| {r['label']} | {r['fast'][0]:.4f} s, {r['fast_threads']} thr, {r['fast'][1]:.1f} cores busy "
                     f"| {r['nt'][0]:.3f} s (**{ratio:.1f}x**), {r['nt'][1]:.1f} cores busy "
                     f"| {r['chosen']['config'].label} | {r['diff']:.0e} |")
    lines += ["", "Every neural-tangents configuration tried, each compiled and then run once on all inputs "
              "(the fastest, and those within "
              f"{SPREAD}x of it, then went into the rounds above; the column is the one with the smallest median):",
              "", "| workload | implementation, weight layout, inputs per call | JIT compile | one run "
              "| relative difference |", "| --- | --- | ---: | ---: | ---: |"]
    for r in results:
        short = r["short"]
        for t in r["tried"]:
            if "error" in t:
                lines.append(f"| {short} | {t['config'].label} | | {short_error(t['error'])} | |")
            else:
                lines.append(f"| {short} | {t['config'].label} | {t['compile']:.2f} s | {t['run']:.3f} s "
                             f"| {t['diff']:.0e} |")
    notes = []
    for r in results:
        c = r["chosen"]
        notes.append(f"{r['short']}: neural-tangents' fastest configuration is {c['config'].label} "
                     f"({r['nt'][0]:.3f} s a kernel, {r['nt'][0] / r['fast'][0]:.1f}x the fast path's "
                     f"{r['fast'][0] * 1e3:.1f} ms); compiling it took {c['compile']:.2f} s once, not counted.")
    mlp = next((r for r in results if r["label"].startswith("MLP")), None)
    if mlp is not None:
        by_layout = {t["config"].layout: t for t in mlp["tried"] if "error" not in t and t["config"].block is None
                     and t["config"].implementation.name == "STRUCTURED_DERIVATIVES"}
        if len(by_layout) == 2:
            notes.append(
                f"Weight layout matters to `STRUCTURED_DERIVATIVES`: with the MLP's weights kept in torch's "
                f"(out, in) layout and `x @ W.T` in the forward, its one run on all inputs took "
                f"{by_layout['(out, in)']['run']:.2f} s against {by_layout['(in, out)']['run']:.3f} s with the "
                f"weights stored (in, out) and `x @ W` (neural-tangents' own `stax.Dense` layout): measured above, "
                f"the transpose in front of the product hides the layer's structure from it.")
    torch_rate, torch_threads, xla_rate, xla_busy = rates
    notes.append(f"The two libraries' matrix products on this CPU, measured in the same process: (2048 x 2048) float32 "
                 f"products at {torch_rate:.0f} GFLOP/s in torch ({torch_threads}) and {xla_rate:.0f} GFLOP/s in XLA "
                 f"(jitted `a @ b`, {xla_busy:.1f} cores busy), medians of {args.rounds} interleaved rounds.")
    if RESTORED:
        notes.append(f"neural-tangents {nt.__version__}'s `STRUCTURED_DERIVATIVES` (and so `AUTO`) reads "
                     f"{' and '.join(f'`jax.interpreters.ad.{n}`' for n in RESTORED)}, which jax {jax.__version__} "
                     f"no longer has (dropped from that module from jax 0.4.26 on); the benchmark puts these names "
                     f"back (pointing to `jax._src.source_info_util` and `jax.config`, what they were) before any "
                     f"kernel is computed. "
                     f"Without that, those two implementations stop with `AttributeError` here; every kernel they "
                     f"give is checked against the fast path above.")
    if any(t["config"].auto_picked for r in results for t in r["tried"] if "error" not in t):
        notes.append("`AUTO` compiles every other implementation to estimate its FLOPs and takes the one with the "
                     "fewest; the one it took is in brackets (its compile time includes the others').")
    warned = {}
    for r in results:
        for t in r["tried"]:
            for message in t.get("warnings", ()):
                warned.setdefault(message, []).append(f"{r['short']} ({t['config'].implementation.name})")
    for message, where in warned.items():
        notes.append(f"neural-tangents warned \"{message}\" in: {', '.join(dict.fromkeys(where))}; "
                     f"the kernels it gave there are checked above like the others.")
    if not any(r["label"].startswith("Transformer") for r in results):
        notes.append("The Transformer workloads were not run in this measurement.")
    if not any(r["label"].startswith("MLP") for r in results):
        notes.append("The MLP workload was not run in this measurement.")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def main():
    args = ARGS or parse_args()
    load_start = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    import tensorflow as tf  # only for its version: neural-tangents imported it already
    machine = (f"torch {torch.__version__}, jax {jax.__version__} / jaxlib {jaxlib.__version__}, neural-tangents "
               f"{nt.__version__}, TensorFlow {tf.__version__}, numpy {np.__version__}, {torch.get_num_threads()} "
               f"torch threads, {cores} CPU cores, {platform.machine()}")
    print(machine, flush=True)
    if RESTORED:
        print(f"restored jax.interpreters.ad.{', '.join(RESTORED)} for neural-tangents' STRUCTURED_DERIVATIVES")
    results = []
    if args.case in ("mlp", "all"):
        results.append(bench_mlp(args))
    if args.case in ("transformer", "all"):
        results += bench_transformer(args)
    print("matmul rates", flush=True)
    rates = matmul_rates(args.rounds)
    text = report(results, rates, args, machine, load_start)
    print(text)
    if not args.no_save and args.case == "all" and args.implementations is None:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text)
        update_readme(RESULTS.parents[2], {"bench-peers": str(RESULTS.relative_to(RESULTS.parents[2]))})


if __name__ == "__main__":
    main()
