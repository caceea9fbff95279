"""Random binary labels and context halves shared by the scoring and significance tests."""

import numpy as np


def random_labels(rng, B, N, rates=(0.05, 0.2, 0.5, 0.8)):
    """(B, N) binary rows with various base rates, each with both classes."""
    Y = rng.random((B, N)) < np.resize(rates, B)[:, None]
    Y[:, 0], Y[:, 1] = True, False
    return Y.astype(int)


def halves(N, seed=0):
    """A seeded split of range(N) into two sorted halves (select, evaluate)."""
    perm = np.random.default_rng(seed).permutation(N)
    return np.sort(perm[: N // 2]), np.sort(perm[N // 2:])
