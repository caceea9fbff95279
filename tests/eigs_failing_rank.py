"""A rank that fails mid-run, for tests/test_eigs.py.

As a script, run under the launcher: ``python -m entk_utils.eigs`` with rank $FAIL_RANK
raising in its $FAIL_AT-th matrix-vector product (counted over all layers).
"""

import os
import sys

from entk_utils import distributed, eigs


def inject_failure(rank: int, at: int) -> None:
    """From now on in this process, rank ``rank`` raises ``RuntimeError`` in its ``at``-th
    product of any data-parallel operator."""
    original = distributed.DataParallelOperator._matvec
    products = 0

    def failing_matvec(self, v):
        nonlocal products
        products += 1
        if self.rank == rank and products == at:
            raise RuntimeError(f"injected failure in product {products}")
        return original(self, v)

    distributed.DataParallelOperator._matvec = failing_matvec


if __name__ == "__main__":
    inject_failure(int(os.environ["FAIL_RANK"]), int(os.environ["FAIL_AT"]))
    sys.exit(eigs.main())
