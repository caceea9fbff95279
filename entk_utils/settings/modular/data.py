"""Modular addition on Z_p: all pairs, their encodings, and the train/test split policies.

The task is ``(a, b) -> (a + b) mod p`` over all ``p * p`` pairs (row ``a * p + b``). The
MLP reads one-hot pairs (:func:`one_hot_pairs`), the Transformer the tokens ``(a, b, "=")``
(:func:`transformer_tokens`). Two split policies (:func:`split_indices`): the eNTK paper's
one fixed split for every seed, and a split drawn per seed.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from ...io.checks import check_modulus


def modular_addition_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of Z_p and their sums.

    Returns
    -------
    pairs : (p*p, 2) long tensor, row ``a * p + b`` holds ``(a, b)``.
    labels : (p*p,) long tensor, ``(a + b) mod p``.
    """
    p = check_modulus(p)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    return pairs, (pairs[:, 0] + pairs[:, 1]) % p


def one_hot_pairs(pairs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, 2) pairs -> (N, 2p) float inputs ``concat(one_hot(a), one_hot(b))``."""
    return torch.cat([F.one_hot(pairs[:, 0], p), F.one_hot(pairs[:, 1], p)], dim=1).float()


def transformer_tokens(pairs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, 2) pairs -> (N, 3) token ids ``(a, b, p)``, where ``p`` is the "=" token."""
    return torch.cat([pairs, torch.full((len(pairs), 1), p, dtype=pairs.dtype)], dim=1)


SPLITS = ("paper", "seeded")


def _check_split_size(n: int, train_frac: float) -> None:
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must lie strictly between 0 and 1, got {train_frac}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to split, got n={n}")


def train_test_split(n: int, train_frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split of ``range(n)`` into sorted train and test index arrays.

    ``round(train_frac * n)`` indices go to train; the permutation is drawn with
    ``numpy.random.default_rng(seed)``: a different split for every seed.
    """
    _check_split_size(n, train_frac)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = min(max(int(round(train_frac * n)), 1), n - 1)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def paper_split(n: int, train_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The eNTK paper's fixed split of ``range(n)``, the same for every seed.

    The authors' Transformer code lists the ``p * p`` examples in row-major order (index
    ``a * p + b``), shuffles the list with Python's ``random.seed(0); random.shuffle``, and
    trains on the first ``int(train_frac * n)``. A local ``random.Random(0)`` draws the same
    permutation without touching the global generator. Both arrays keep the shuffled order
    (the order the authors' training list has); as sets they are the authors' split.
    """
    _check_split_size(n, train_frac)
    order = list(range(n))
    random.Random(0).shuffle(order)
    n_train = min(max(int(train_frac * n), 1), n - 1)
    return np.asarray(order[:n_train]), np.asarray(order[n_train:])


def split_indices(n: int, train_frac: float, split: str, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of ``range(n)`` under a split policy.

    split : ``"paper"`` (:func:`paper_split`: the authors' one fixed split, ``split_seed``
        is ignored) or ``"seeded"`` (:func:`train_test_split` with ``split_seed``).
    """
    if split == "paper":
        return paper_split(n, train_frac)
    if split == "seeded":
        return train_test_split(n, train_frac, split_seed)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
