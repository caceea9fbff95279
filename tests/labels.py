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


def planted_methods(rng, N, m, strengths_a, strengths_b):
    """Two methods' scores (N, m) and their labels: label l marks part of speech l (of 4, drawn
    uniformly: the strata) for l < 3 and a random 30% of the contexts after; direction l of
    each method carries label l with the given strength (a shift of its mean). Returns
    ``(strata (N,), labels DataFrame (N, L), A, B)``."""
    import pandas as pd

    strata = rng.integers(0, 4, N)
    L = len(strengths_a)
    Y = np.array([(strata == l) if l < 3 else (rng.random(N) < 0.3) for l in range(L)], dtype=int)
    A, B = rng.standard_normal((N, m)), rng.standard_normal((N, m))
    A[:, :L] += np.asarray(strengths_a) * Y.T
    B[:, :L] += np.asarray(strengths_b) * Y.T
    return strata, pd.DataFrame(Y.T, columns=[f"label {l}" for l in range(L)]), A, B
