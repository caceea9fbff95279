"""Do the comparisons' tests hold their level, find real gaps, and do their intervals cover?

Planted data (``tests/labels.py``'s ``planted_methods``: N contexts in 4 parts of speech, two
methods A and B of m directions, direction l of each carrying label l with a given strength),
many independent data sets per scenario, and on each the test of "A and B are equally good on
the label" at 5% by three procedures:

* **label shuffle** (the project's test until issue 25): the label shuffled over all contexts,
  both methods choosing their direction on the select half and scored on the evaluate half on
  every shuffle; its null is "the label is unrelated to both methods", not the claim's;
* **bootstrap, evaluate half**: a fresh split per draw, the choice on its select half, the
  evaluate half resampled with replacement; a Wald test of the table split's difference with
  the draws' standard deviation;
* **repeated splits** (:func:`entk_utils.features.resampling.resample_halves`, what the
  notebooks use): the mean over fresh splits, Nadeau and Bengio's corrected variance, a t-test.

Then the coverage of the 95% interval of a method's expected held-out macro AUROC (over data
sets and splits, measured on fresh data sets): the evaluate-half bootstrap with the directions
held fixed (the project's interval until issue 25) against the repeated splits. And the share of
directions whose explanation is validated (false discovery rate 5% over direction x candidate
pairs) as the number of contexts grows: one-sided permutation p-values from 1,000 shuffles (until
issue 25) against the rank test (Mann-Whitney), planted weak candidates among many of noise.

Writes ``benchmarks/results/size_of_tests.md`` and the README's region. About 15 minutes on
two cores.

    python benchmarks/size_of_tests.py        # make size-of-tests
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from labels import planted_methods  # noqa: E402

from entk_utils.features import explanations  # noqa: E402
from entk_utils.features.resampling import resample_halves  # noqa: E402
from entk_utils.features.scoring import auroc_matrix, choose_and_score, row_metrics, stratified_halves  # noqa: E402
from entk_utils.features.significance import benjamini_hochberg  # noqa: E402
from entk_utils.io.report import update_readme  # noqa: E402

LEVEL = 0.05
SCENARIOS = [  # name, N, m, strengths of A, strengths of B (one label each)
    ("equal, weak (AUROC ~.56)", 128, 5, [0.45], [0.45]),
    ("equal, weak (AUROC ~.62)", 128, 5, [0.7], [0.7]),
    ("equal, moderate (AUROC ~.73)", 128, 5, [1.0], [1.0]),
    ("equal, 25 directions, N = 256", 256, 25, [0.6], [0.6]),
    ("A better (strength 1.2 vs 0.6)", 128, 5, [1.2], [0.6]),
]


def label_shuffle_p(A, B, y, select, evaluate, rng, shuffles) -> float:
    """The replaced test: two-sided p of AUROC_A - AUROC_B against shuffles of y over all contexts."""
    def difference(Y):
        return choose_and_score(A, Y, select, evaluate)[2]["auroc"] - choose_and_score(B, Y, select, evaluate)[2]["auroc"]

    observed = difference(y[None])[0]
    Y = rng.permuted(np.repeat(y[None], shuffles, axis=0), axis=1)
    keep = [(0 < Yr[select].sum() < len(select)) and (0 < Yr[evaluate].sum() < len(evaluate)) for Yr in Y]
    null = difference(Y[keep])
    return (1 + np.count_nonzero(np.abs(null) >= abs(observed) - 1e-12)) / (1 + len(null))


def evaluate_bootstrap_p(A, B, y, strata, select, evaluate, rng, draws) -> float:
    """Fresh split per draw, evaluate half resampled within strata; Wald test of the table split's difference."""
    Y = y[None]
    observed = choose_and_score(A, Y, select, evaluate)[2]["auroc"][0] - choose_and_score(B, Y, select, evaluate)[2]["auroc"][0]
    diffs = []
    while len(diffs) < draws:
        sel, ev = stratified_halves(strata, seed=int(rng.integers(2**31)))
        ev = np.concatenate([rng.choice(ev[strata[ev] == s], (strata[ev] == s).sum()) for s in np.unique(strata[ev])])
        if not (0 < y[sel].sum() < len(sel) and 0 < y[ev].sum() < len(ev)):
            continue
        diffs.append(choose_and_score(A, Y, sel, ev)[2]["auroc"][0] - choose_and_score(B, Y, sel, ev)[2]["auroc"][0])
    return float(2 * norm.sf(abs(observed) / np.std(diffs, ddof=1)))


def sizes(datasets: int, draws: int) -> pd.DataFrame:
    rows = []
    for name, N, m, sa, sb in SCENARIOS:
        rejected = {"label shuffle": 0, "bootstrap, evaluate half": 0, "repeated splits": 0}
        for seed in range(datasets):
            rng = np.random.default_rng(seed)
            strata, labels, A, B = planted_methods(rng, N, m, sa, sb)
            y = labels.iloc[:, 0].to_numpy().astype(float)
            select, evaluate = stratified_halves(strata, seed=seed)
            rejected["label shuffle"] += label_shuffle_p(A, B, y, select, evaluate, rng, draws) < LEVEL
            rejected["bootstrap, evaluate half"] += evaluate_bootstrap_p(A, B, y, strata, select, evaluate, rng,
                                                                         draws) < LEVEL
            p = resample_halves({"A": A, "B": B}, labels, strata, repeats=draws, seed=seed).differences("A").p.iloc[0]
            rejected["repeated splits"] += p < LEVEL
        rows.append({"scenario": name, "N": N, "directions": m,
                     **{k: v / datasets for k, v in rejected.items()}})
    return pd.DataFrame(rows)


def coverage(datasets: int, draws: int, truth_sets: int) -> pd.DataFrame:
    rows = []
    for strengths in ([1.0, 0.6, 0.4], [0.45, 0.45, 0.45]):
        truth = []
        for seed in range(truth_sets):
            strata, labels, A, _ = planted_methods(np.random.default_rng(10**6 + seed), 128, 5, strengths, strengths)
            select, evaluate = stratified_halves(strata, seed=seed)
            truth.append(choose_and_score(A, labels.T.to_numpy().astype(float), select, evaluate)[2]["auroc"].mean())
        theta = float(np.mean(truth))
        fixed, splits = [], []
        for seed in range(datasets):
            rng = np.random.default_rng(seed)
            strata, labels, A, _ = planted_methods(rng, 128, 5, strengths, strengths)
            Y = labels.T.to_numpy().astype(float)
            select, evaluate = stratified_halves(strata, seed=seed)
            direction, sign, _ = choose_and_score(A, Y, select, evaluate)
            chosen = sign[:, None] * A[evaluate][:, direction].T
            boot = []
            for _ in range(draws):
                idx = rng.integers(0, len(evaluate), len(evaluate))
                if np.all((Y[:, evaluate][:, idx].sum(1) > 0) & (Y[:, evaluate][:, idx].sum(1) < len(idx))):
                    Yb = Y[:, evaluate][:, idx]
                    boot.append(row_metrics(chosen[:, idx], Yb, Yb.sum(1))["auroc"].mean())
            low, high = np.quantile(boot, [0.025, 0.975])
            fixed.append(low <= theta <= high)
            macro = resample_halves({"A": A}, labels, strata, repeats=draws, seed=seed).macro("auroc").loc["A"]
            splits.append(macro.low <= theta <= macro.high)
        rows.append({"label strengths": ", ".join(map(str, strengths)), "expected held-out macro AUROC": theta,
                     "bootstrap, directions fixed": np.mean(fixed), "repeated splits": np.mean(splits)})
    return pd.DataFrame(rows)


PLANTED, CANDIDATES = 8, 80


def explained_share(n_values, candidates: int, shuffles: int, repeats: int) -> pd.DataFrame:
    """25 directions of random activations, the first :data:`PLANTED` each carrying one weak
    planted candidate, among ``candidates`` (the rest noise)."""
    rows = []
    for N in n_values:
        old, new = [], []
        for seed in range(repeats):
            rng = np.random.default_rng(seed)
            X = rng.standard_normal((N, 25))
            cands = pd.DataFrame((rng.random((N, candidates)) < 0.3).astype(int))
            for c in range(PLANTED):
                X[:, c] += 0.6 * cands[c]
            select, evaluate = stratified_halves(cands[0], seed=seed)
            table = explanations.explain_directions(X, cands, select, evaluate)[0]
            new.append(np.mean(table.q < LEVEL))
            # the replaced validation: one-sided permutation p-values, shuffles over the evaluate half
            Yc = cands.T.to_numpy()[:, evaluate].astype(float)
            sign = np.where(auroc_matrix(X[select], cands.T.to_numpy()[:, select]) >= 0.5, 1, -1)
            oriented = lambda Y: np.where(sign > 0, auroc_matrix(X[evaluate], Y), 1 - auroc_matrix(X[evaluate], Y))
            observed = oriented(Yc)
            exceed = sum(oriented(Yc[:, rng.permutation(len(evaluate))]) >= observed - 1e-12 for _ in range(shuffles))
            q = benjamini_hochberg((1 + exceed) / (1 + shuffles))
            old.append(np.mean((q < LEVEL).any(axis=0)))  # a direction is explained where any candidate is validated
        rows.append({"contexts": N, f"permutation p ({shuffles} shuffles) + BH": np.mean(old),
                     "rank test + BH": np.mean(new)})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a few data sets (a smoke run; numbers are noisy)")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.draws = 6, 12
    start = time.time()
    size = sizes(args.datasets, args.draws)
    print(size.to_string(index=False), flush=True)
    cover = coverage(args.datasets // 2, args.draws, 10 * args.datasets)
    print(cover.to_string(index=False), flush=True)
    share = explained_share((64, 128, 192, 256, 384, 512, 768), candidates=CANDIDATES,
                            shuffles=1000 if not args.quick else 50,
                            repeats=max(args.datasets // 20, 2))
    print(share.to_string(index=False), flush=True)
    equal = sum(a == b for _, _, _, a, b in SCENARIOS)
    text = (f"Rejection rate of \"A and B are equally good\" at 5% over {args.datasets} planted data sets per row "
            f"({args.draws} shuffles, draws or splits each; the first {equal} rows: A and B equally good, so the rate "
            "should be at most 0.05; the others: a real gap, the higher the better):\n\n"
            + size.to_markdown(index=False, floatfmt=".3f")
            + f"\n\nCoverage of the 95% interval of a method's expected held-out macro AUROC over 3 labels "
              f"({args.datasets // 2} data sets; the expectation from {10 * args.datasets} fresh ones):\n\n"
            + cover.to_markdown(index=False, floatfmt=".3f")
            + f"\n\nShare of 25 directions with a validated explanation ({PLANTED} weak planted candidates among "
              f"{CANDIDATES}; mean over {max(args.datasets // 20, 2)} data sets):\n\n"
            + share.to_markdown(index=False, floatfmt=(".0f", ".3f", ".3f"))
            + f"\n\n({time.time() - start:.0f} s on this machine{', --quick: noisy' if args.quick else ''}.)\n")
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "size_of_tests.md"
        out.write_text(text)
        update_readme(ROOT)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
