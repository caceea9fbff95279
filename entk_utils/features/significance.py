"""Tests and corrections, and the levels they share.

- **Levels**: :data:`LEVEL` (the family-wise error rate and the false discovery rate every
  claim is corrected to), :data:`CONFIDENCE` (the coverage of every interval),
  :data:`FLOOR_QUANTILE` (how much of the random directions a "beyond random" explanation
  beats). Code that prints a verdict prints these with it.
- **Corrections** over a family of tests: :func:`bonferroni`, :func:`holm` (family-wise),
  :func:`benjamini_hochberg` (false discovery rate).
- **p-values that can reach their correction**: a Monte Carlo p-value is at least
  ``1 / (draws + 1)``; :func:`monte_carlo_draws` sets the draws from the family
  (:data:`DRAWS_PER_TEST` times ``family / level``) and :func:`check_reachable` refuses a
  number that could never pass the correction, whatever the data.
- **The one rank test** where the statistic is an AUROC with its orientation fixed in
  advance: :func:`rank_test`, one-sided Mann-Whitney on randomly tie-broken ranks (exact for a
  small class, else a conservative normal approximation; scipy), so p-values are as fine as the
  data allow and valid whatever the ties.
- :func:`best_label_test`: which label a direction picks out, and is it more than the best
  of many labels by chance (a max-statistic permutation test).

Comparing two methods' held-out scores is a resampling question: :mod:`.resampling`.
Shapes as in :mod:`.scoring`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln
from scipy.stats import false_discovery_control, mannwhitneyu, rankdata

from .scoring import as_labels, as_scores, auroc_from_rank_sums, auroc_matrix, oriented, positive_counts

LEVEL = 0.05           # family-wise error rate (Holm, Bonferroni) and false discovery rate (Benjamini-Hochberg)
CONFIDENCE = 0.95      # coverage of every interval
FLOOR_QUANTILE = 0.95  # a direction explained "beyond random" beats this share of random directions
DRAWS_PER_TEST = 20    # Monte Carlo draws: this many times family / level (so the smallest p is 1/20 of the bar)

# |null| counts as "at least as extreme" as |observed| within this absolute tolerance, so
# that a shuffle reproducing the observed value up to rounding is counted.
_P_VALUE_ATOL = 1e-12


# ----------------------------------------------------------------------------- corrections


def _as_pvalues(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        raise ValueError("p must hold at least one p-value")
    bad = ~((p >= 0) & (p <= 1))  # NaN included
    if np.any(bad):
        raise ValueError(f"p-values must lie in [0, 1], got {p[bad][:5].tolist()}")
    return p


def bonferroni(p) -> np.ndarray:
    """Bonferroni-adjusted p-values ``min(1, n p)``, same shape as ``p`` (all entries form one family)."""
    p = _as_pvalues(p)
    return np.minimum(p * p.size, 1.0)


def holm(p) -> np.ndarray:
    """Holm step-down adjusted p-values, same shape as ``p`` (all entries form one family).

    With ``p_(1) <= ... <= p_(n)`` sorted, ``adj_(i) = min(1, max_{j <= i} (n - j + 1) p_(j))``;
    the running max makes the adjusted values keep the order of the raw ones. Rejecting
    where ``adj <= alpha`` controls the family-wise error rate at ``alpha``.
    """
    p = _as_pvalues(p)
    flat = p.ravel()
    n = flat.size
    order = np.argsort(flat, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((n - np.arange(n)) * flat[order]), 1.0)
    out = np.empty(n)
    out[order] = adjusted
    return out.reshape(p.shape)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg q-values (scipy's ``false_discovery_control``), same shape as ``p``
    (all entries form one family). Rejecting where ``q < level`` controls the false discovery
    rate at ``level`` for independent or positively dependent tests."""
    p = _as_pvalues(p)
    return false_discovery_control(p.ravel(), method="bh").reshape(p.shape)


# ----------------------------------------------------------------------------- Monte Carlo draws


def monte_carlo_draws(family: int, level: float = LEVEL) -> int:
    """The number of Monte Carlo draws (shuffles) for a test corrected over ``family`` tests
    at ``level``: ``DRAWS_PER_TEST * family / level``, so that the smallest p-value,
    ``1 / (draws + 1)``, sits well below the strictest bar of the correction (``level /
    family``) and a p-value near that bar is resolved."""
    if int(family) < 1 or not 0 < level < 1:
        raise ValueError(f"need family >= 1 and 0 < level < 1, got {family} and {level}")
    return math.ceil(DRAWS_PER_TEST * int(family) / level)


def check_reachable(draws: int, family: int, level: float = LEVEL, what: str = "n_permutations") -> int:
    """``draws`` if a Monte Carlo p-value from that many draws can pass a correction over
    ``family`` tests at ``level`` (its smallest value ``1 / (draws + 1)`` at most ``level /
    family``); otherwise ``ValueError`` naming ``what``, the value and the least that can."""
    least = math.ceil(int(family) / level) - 1
    if int(draws) < max(least, 1):
        raise ValueError(f"{what}={draws} can never reach significance: its smallest p-value 1/{int(draws) + 1} "
                         f"is above {level:g}/{family}, the bar of the correction over {family} tests; give at least "
                         f"{max(least, 1)} (None sets {monte_carlo_draws(family, level)})")
    return int(draws)


# ----------------------------------------------------------------------------- the rank test


EXACT_MAX = 20  # the rank test's null is computed exactly where at most this many contexts can vary it


def _subset_sums(values: np.ndarray, most: int) -> tuple[np.ndarray, int]:
    """The number of subsets of ``values`` (integers) of each size c <= ``most`` with each sum:
    ``(counts (most + 1, sums), the smallest sum)`` (the shift algorithm of exact rank tests)."""
    low = int(np.sort(values)[:most].clip(max=0).sum())
    high = int(np.sort(values)[::-1][:most].clip(min=0).sum())
    counts = np.zeros((most + 1, high - low + 1))
    counts[0, -low] = 1.0
    distinct, multiplicity = np.unique(values, return_counts=True)
    for v, m in zip(distinct.tolist(), multiplicity.tolist()):
        grown = counts.copy()
        for j in range(1, min(m, most) + 1):
            shift = j * v
            src, dst = (slice(0, counts.shape[1] - shift), slice(shift, None)) if shift >= 0 else \
                (slice(-shift, None), slice(0, counts.shape[1] + shift))
            grown[j:, dst] += math.comb(m, j) * counts[:most + 1 - j, src]
        counts = grown
    return counts, low


def _tied_null(doubled_ranks: np.ndarray, most: int) -> tuple:
    """What the exact null of a tied column needs: its largest tie group's doubled rank ``g`` and
    size, and :func:`_subset_sums` of the other contexts' doubled ranks minus ``g``, for subsets
    of at most ``most`` of them."""
    values, sizes = np.unique(doubled_ranks, return_counts=True)
    g = int(values[sizes.argmax()])
    outside = doubled_ranks[doubled_ranks != g] - g
    return g, int(sizes.max()), *_subset_sums(outside, min(most, len(outside)))


def _exact_tail(null: tuple, doubled_ranks: np.ndarray, y: np.ndarray, upper: bool) -> float:
    """P(the doubled rank sum of the positives ``y`` is at least (``upper``) or at most its observed
    value) when the positives are a uniformly random subset of that size, ties kept as mid-ranks:
    the largest tie group enters through binomial weights, the other contexts through the counts
    of ``null`` (:func:`_tied_null`); the smaller class stands in for the positives."""
    n, k = len(y), int(y.sum())
    if 2 * k > n:  # the negatives' sum is the total minus the positives'
        y, k, upper = ~y, n - k, not upper
    g, in_group, counts, low = null
    most = min(k, n - in_group)
    c = np.arange(most + 1)
    inside = k - c  # contexts of the largest tie group among the k
    log_weights = np.where((inside >= 0) & (inside <= in_group),
                           gammaln(in_group + 1) - gammaln(inside + 1) - gammaln(in_group - inside + 1), -np.inf)
    weights = np.exp(log_weights - (gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)))
    cut = int(doubled_ranks[y].sum()) - k * g - low
    tail = counts[:most + 1, max(cut, 0):].sum(axis=1) if upper else counts[:most + 1, :max(cut + 1, 0)].sum(axis=1)
    return float(min(1.0, weights @ tail))


def rank_test(scores, Y, sign=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Is each score column higher on a label's positives than on its negatives, in the
    orientation fixed in advance?

    scores : (n, k); Y : (C, n) binary rows, each with both classes; sign : (C, k) of +1 / -1
    (None: all +1), the end of each column where row c's positives were expected (chosen on
    other contexts). The one-sided Mann-Whitney test of every (row, column) pair, its null
    distribution that of the positives' rank sum when they are a uniformly random subset of
    the contexts:

    - exact, with tied scores at their mid-ranks, wherever at most :data:`EXACT_MAX` contexts
      can move it (the smaller class, or the contexts outside a column's largest tie group:
      a sparse SAE latent, zero on most contexts);
    - otherwise scipy's normal approximation (continuity-corrected) on ranks whose ties, if any,
      are broken at random (``seed``, independent of every label), which keeps the test exactly
      valid; for untied ranks it overstates the upper tail (a conservative p).

    The tie-corrected normal approximation on mid-ranks would not do: for a sparse column it
    understates p-values by orders of magnitude (``tests/test_significance.py`` shows one).
    The effect size is the oriented AUROC, ties counted one half
    (:func:`~entk_utils.features.scoring.oriented`).

    Returns ``(auroc (C, k), p (C, k))``.
    """
    S = as_scores(scores)
    n, k = S.shape
    Yb = as_labels(Y, n)
    positive_counts(Yb)
    sign = np.ones((len(Yb), k)) if sign is None else np.asarray(sign, dtype=np.float64)
    if sign.shape != (len(Yb), k) or not np.all(np.abs(sign) == 1):
        raise ValueError(f"sign must be a ({len(Yb)}, {k}) array of +1 / -1, got shape {sign.shape}")
    auroc = oriented(auroc_matrix(S, Yb), sign)
    positives = Yb.astype(bool)
    smaller = np.minimum(positives.sum(axis=1), n - positives.sum(axis=1))  # (C,)
    doubled = np.rint(2 * rankdata(S, axis=0)).astype(np.int64)  # (n, k) mid-ranks, doubled to integers
    largest = np.array([np.bincount(column).max() for column in doubled.T])  # each column's largest tie group
    p = np.empty(sign.shape)
    untied = np.flatnonzero(largest == 1)
    for c, y in enumerate(positives):  # untied columns: the classic null, scipy's, all columns at once
        if len(untied):
            pointed = doubled[:, untied] * sign[c, untied]
            method = "exact" if smaller[c] <= EXACT_MAX else "asymptotic"
            p[c, untied] = mannwhitneyu(pointed[y], pointed[~y], alternative="greater", axis=0, method=method).pvalue
    keys = np.random.default_rng(seed).random(n)
    for j in np.flatnonzero(largest > 1):
        exact = np.minimum(smaller, n - largest[j]) <= EXACT_MAX
        null = _tied_null(doubled[:, j], int(smaller[exact].max())) if exact.any() else None
        for c, y in enumerate(positives):
            if exact[c]:
                p[c, j] = _exact_tail(null, doubled[:, j], y, upper=sign[c, j] > 0)
            else:  # ties broken in the random order of the keys: the ranks are then a random order under the null
                ranks = np.lexsort((keys, S[:, j] * sign[c, j])).argsort() + 1.0
                p[c, j] = mannwhitneyu(ranks[y], ranks[~y], alternative="greater", method="asymptotic").pvalue
    return auroc, p


# ----------------------------------------------------------------------------- best label per direction


@dataclass(frozen=True)
class BestLabels:
    """Per score column: the ``label`` (row index of Y) it separates best, that ``auroc``
    oriented so that it is >= 1/2 (``sign`` -1 where the column's low end holds the label),
    and the permutation ``p_value`` of that best separation, from ``n_permutations`` shuffles."""

    label: np.ndarray
    auroc: np.ndarray
    sign: np.ndarray
    p_value: np.ndarray
    n_permutations: int


def best_label_test(scores, Y, n_permutations: int | None = None, seed: int = 0, batch_size: int = 100,
                    family: int | None = None, level: float = LEVEL) -> BestLabels:
    """Which label does each direction pick out, and is it more than chance?

    For each score column the statistic is ``max_l |AUROC(column, Y_l) - 1/2|`` over the
    label rows; its null distribution comes from shuffling the contexts (one permutation
    of the column's scores against all labels at once, which keeps the labels' correlations),
    so the p-value accounts for having chosen the best of all labels (a max-statistic test;
    correct across columns separately, e.g. with :func:`holm`).

    Parameters
    ----------
    scores : (N, m) array; Y : (B, N) binary label rows (each with both classes).
    n_permutations : shuffles (the same for every column); None: :func:`monte_carlo_draws`
        for the ``family`` the p-values will be corrected over (default: the m columns) at
        ``level``; a number that cannot reach that correction is refused (:func:`check_reachable`).
    seed : seeds ``np.random.default_rng``.

    Returns
    -------
    :class:`BestLabels` with arrays of shape (m,); ``p = (1 + #{null >= observed}) /
    (1 + n_permutations)`` (with a 1e-12 tolerance for rounding).
    """
    S = as_scores(scores)
    n = S.shape[0]
    Yb = as_labels(Y, n)
    n_pos = positive_counts(Yb)
    family = S.shape[1] if family is None else int(family)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_permutations = (monte_carlo_draws(family, level) if n_permutations is None
                      else check_reachable(n_permutations, family, level))
    ranks = rankdata(S, axis=0)  # (N, m); a permutation of the contexts permutes these rows

    def aurocs(R):  # R (k, N, m) ranks -> (L, k, m) AUROCs
        sums = np.einsum("ln,knm->lkm", Yb, R)
        return auroc_from_rank_sums(sums.reshape(len(Yb), -1), n_pos, n).reshape(sums.shape)

    observed = aurocs(ranks[None])[:, 0]  # (L, m)
    best = np.abs(observed - 0.5).argmax(axis=0)
    auroc = observed[best, np.arange(S.shape[1])]
    statistic = np.abs(auroc - 0.5)
    rng = np.random.default_rng(seed)
    extreme = np.zeros(S.shape[1], dtype=np.int64)
    for start in range(0, int(n_permutations), int(batch_size)):
        k = min(int(batch_size), int(n_permutations) - start)
        shuffled = ranks[np.argsort(rng.random((k, n)), axis=1)]  # (k, N, m): contexts permuted
        extreme += np.count_nonzero(np.abs(aurocs(shuffled) - 0.5).max(axis=0) >= statistic - _P_VALUE_ATOL, axis=0)
    return BestLabels(label=best, auroc=oriented(auroc), sign=np.where(auroc >= 0.5, 1, -1),
                      p_value=(1 + extreme) / (1 + int(n_permutations)), n_permutations=int(n_permutations))
