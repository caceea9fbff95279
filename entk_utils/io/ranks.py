"""Processes on one machine that form a ``torch.distributed`` group, listening on 127.0.0.1 only.

:func:`run_on_local_ranks` runs a function on W processes (gloo over a file store, sockets on
the loopback interface: tests and benchmarks); :func:`main` (``python -m
entk_utils.distributed ARGS``) is ``torchrun --standalone ARGS`` with every socket that
torchrun and its workers listen on bound to 127.0.0.1 (plain ``torchrun --standalone``
listens on all interfaces).
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

