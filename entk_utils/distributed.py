"""``python -m entk_utils.distributed [torchrun options] -m MODULE | SCRIPT [args]``:
``torchrun --standalone`` on one machine with every listening socket on 127.0.0.1
(:mod:`entk_utils.io.ranks`, which holds every helper for the process group). The
data-parallel eNTK operator lives in :mod:`entk_utils.kernels.distributed`; both are
re-exported here."""

from .io.ranks import *  # noqa: F401,F403
from .io.ranks import (broadcast_object, cached_on_root, loopback_interface, loopback_only, main,  # noqa: F401
                       rank_and_size, run_on_local_ranks)
from .kernels.distributed import *  # noqa: F401,F403
from .kernels.distributed import CommStats, DataParallelOperator, data_parallel_operator, shard_counts  # noqa: F401

if __name__ == "__main__":
    main()
