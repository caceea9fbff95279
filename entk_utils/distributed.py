"""``python -m entk_utils.distributed [torchrun options] -m MODULE | SCRIPT [args]``:
``torchrun --standalone`` on one machine with every listening socket on 127.0.0.1
(:mod:`entk_utils.io.ranks`). The data-parallel eNTK operator lives in
:mod:`entk_utils.kernels.distributed`; both are re-exported here."""

from .io.ranks import loopback_interface, loopback_only, main, run_on_local_ranks  # noqa: F401
from .kernels.distributed import *  # noqa: F401,F403
from .kernels.distributed import (CommStats, DataParallelOperator, broadcast_object, cached_on_root,  # noqa: F401
                                  data_parallel_operator, rank_and_size, shard_counts)

if __name__ == "__main__":
    main()
