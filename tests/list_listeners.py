"""Run by tests/test_distributed.py under the launcher: rank 0 writes, as JSON to argv[1],
every listening TCP socket of the launcher (the workers' parent) and of the workers, with
its address, read from /proc."""

import ipaddress
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist


def listening_sockets() -> dict[int, tuple[str, int]]:
    """{socket inode: (address, port)} for the TCP sockets listening on this host."""
    found = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A":  # LISTEN
                continue
            address, port = local.split(":")
            # /proc prints each 32-bit word of the address in host (little-endian) order
            words = [bytes.fromhex(address[i: i + 8])[::-1] for i in range(0, len(address), 8)]
            found[inode] = (str(ipaddress.ip_address(b"".join(words)[:width])), int(port, 16))
    return found


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


dist.init_process_group("gloo")
pids = [None] * dist.get_world_size()
dist.all_gather_object(pids, os.getpid())
if dist.get_rank() == 0:
    table = listening_sockets()
    rows = [{"who": who, "pid": pid, "address": table[inode][0], "port": table[inode][1]}
            for who, group in (("launcher", [os.getppid()]), ("worker", pids))
            for pid in group for inode in sockets_of(pid) if inode in table]
    Path(sys.argv[1]).write_text(json.dumps(rows))
dist.barrier()
dist.destroy_process_group()
