"""Processes in a ``torch.distributed`` group: every helper for the group in one place.

* This process in the group: :func:`rank_and_size`, :func:`rank_device` (``cuda:LOCAL_RANK``
  or the CPU), :func:`start_process_group` / :func:`end_process_group` (what ``torchrun``
  describes in the environment: NCCL on GPUs, gloo on the CPU), :func:`broadcast_object`,
  :func:`all_gather_objects`, :func:`on_root` (work done on rank 0, its result or its input
  error on every rank) and :func:`cached_on_root` (a cache entry looked up and written by
  rank 0 only).
* Processes of one machine, listening on 127.0.0.1 only: :func:`run_on_local_ranks` runs a
  function on W processes (gloo over a file store, sockets on the loopback interface: tests
  and benchmarks); :func:`main` (``python -m entk_utils.distributed ARGS``) is ``torchrun
  --standalone ARGS`` with every socket that torchrun and its workers listen on bound to
  127.0.0.1 (plain ``torchrun --standalone`` listens on all interfaces).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist

from .cache import cached, entry_path


# --------------------------------------------------------------------------- this process in the group
def rank_and_size(group=None) -> tuple[int, int]:
    """``(rank, world size)`` in ``group`` (the default group), ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


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


def broadcast_object(obj, src: int = 0, group=None):
    """``obj`` of rank ``src`` on every rank (pickled; for small things: ids, flags, a metric).
    Without a process group, ``obj`` itself."""
    if rank_and_size(group)[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather_objects(obj, group=None) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    world_size = rank_and_size(group)[1]
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


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


def cached_on_root(cache_dir, name: str, compute, /, *, produced_by, **params):
    """:func:`entk_utils.io.cache.cached` with a process group: rank 0 looks the entry up and
    tells the others whether to join ``compute()`` (which then runs on every rank, e.g. a
    data-parallel eigensolver); only rank 0 writes the entry, atomically, after ``compute``
    returns on it, so a failure on any rank leaves no entry.

    Returns ``(result, computed)``: rank 0's result is the stored one; the other ranks get
    their own ``compute()`` result, or None where rank 0 found the entry. ``RuntimeError``
    if the entry could not be written or rank 0 could not use the cache (on every rank).
    """
    rank, _ = rank_and_size()
    if rank != 0:
        message = broadcast_object(None)
        if message == "compute":
            return compute(), True
        if message == "cached":
            return None, False
        raise RuntimeError(f"rank 0 could not use the cache: {message}")
    computed = False

    def on_miss():
        nonlocal computed
        computed = True
        broadcast_object("compute")
        return compute()

    try:
        result = cached(cache_dir, name, on_miss, produced_by=produced_by, **params)
        path = entry_path(cache_dir, name, produced_by=produced_by, **params)
        if computed and not path.is_file():
            raise RuntimeError(f"{name} was computed but could not be written to {path} (see the warning above)")
    except Exception as err:
        if not computed:
            broadcast_object(f"{type(err).__name__}: {err}")
        raise
    if not computed:
        broadcast_object("cached")
    return result, computed


# --------------------------------------------------------------------------- processes of one machine


def loopback_interface() -> str:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if not names:
        raise OSError("no loopback network interface (lo*) found")
    return min(names, key=len)


def _run_rank(rank: int, fn, world_size: int, store_path: str, threads: int | None, results, args) -> None:
    """One process of :func:`run_on_local_ranks`: join the group, run ``fn``, report its result."""
    if threads is not None:
        torch.set_num_threads(threads)
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()  # gloo's sockets on 127.0.0.1
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=10))
    try:
        results.put((rank, fn(*args)))
    finally:
        dist.destroy_process_group()


def run_on_local_ranks(fn, world_size: int, *args, threads: int | None = 1) -> list:
    """``fn(*args)`` on ``world_size`` new processes of this machine that form a gloo process
    group (rendezvous through a temporary file, sockets on the loopback interface only);
    returns their results in rank order. ``fn`` and its results must pickle; ``threads``
    sets each process's intra-op threads (None: torch's default). A rank that raises makes
    this raise (``torch.multiprocessing.ProcessRaisedException``)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="entk-ranks-") as folder:
        mp.start_processes(_run_rank, args=(fn, world_size, os.path.join(folder, "store"), threads, results, args),
                           nprocs=world_size, join=True, start_method="spawn")
        out = dict(results.get() for _ in range(world_size))
    return [out[r] for r in range(world_size)]


_LOOPBACK_SOCKETS: list[socket.socket] = []  # kept open for the stores that listen on them


def _loopback_store_class():
    """A ``TCPStore`` whose server listens on 127.0.0.1 only (a pre-bound socket is handed
    to it; torch's own server binds every interface)."""

    class LoopbackTCPStore(dist.TCPStore):
        def __init__(self, host_name, port, world_size=None, is_master=False,
                     timeout=datetime.timedelta(seconds=300), wait_for_workers=True, multi_tenant=False,
                     master_listen_fd=None, use_libuv=True):
            if is_master and master_listen_fd is None:
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind(("127.0.0.1", int(port)))
                server.listen(512)
                _LOOPBACK_SOCKETS.append(server)
                port, master_listen_fd = server.getsockname()[1], server.fileno()
            super().__init__(host_name, port, world_size, is_master, timeout, wait_for_workers, multi_tenant,
                             master_listen_fd, use_libuv)

    return LoopbackTCPStore


@contextlib.contextmanager
def loopback_only():
    """Within this context, torchrun's stores (rendezvous and the store its workers share)
    listen on 127.0.0.1 only, and gloo in the processes it starts uses the loopback interface."""
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, static_tcp_rendezvous

    store = _loopback_store_class()
    modules = (dist, c10d_rendezvous_backend, static_tcp_rendezvous)
    saved = [m.TCPStore for m in modules]
    saved_env = {k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME",)}
    for m in modules:
        m.TCPStore = store
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.TCPStore = original
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> None:
    """``python -m entk_utils.distributed [torchrun options] -m MODULE | SCRIPT [args]``:
    ``torchrun --standalone`` (one machine) with every listening socket on 127.0.0.1."""
    from torch.distributed import run as torchrun

    argv = list(sys.argv[1:] if argv is None else argv)
    for option in ("--nnodes", "--rdzv-endpoint", "--rdzv_endpoint", "--master-addr", "--master_addr"):
        if any(a == option or a.startswith(option + "=") for a in argv):
            raise SystemExit(f"error: {option} is not for this launcher (one machine, loopback only); use torchrun")
    if "--standalone" not in argv:
        argv.insert(0, "--standalone")
    if not any(a == "--local-addr" or a.startswith("--local-addr=") for a in argv):
        argv[:0] = ["--local-addr", "127.0.0.1"]
    with loopback_only():
        torchrun.main(argv)

