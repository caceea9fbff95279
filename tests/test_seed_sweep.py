import numpy as np
import pandas as pd
import pytest

from entk_utils.experiments import seed_sweep


def history(acc, step=10):
    return pd.DataFrame({"epoch": np.arange(len(acc)) * step, "test_acc": acc})


def test_first_epoch_at_is_the_first_crossing_not_the_sustained_one():
    h = history([0.0, 0.5, 0.96, 0.90, 0.97])
    assert seed_sweep.first_epoch_at(h, 0.95) == 20
    assert np.isnan(seed_sweep.first_epoch_at(h, 0.99))
    with pytest.raises(ValueError, match="level"):
        seed_sweep.first_epoch_at(h, 1.5)


def test_run_outcome_censors_runs_that_never_grok():
    out = seed_sweep.run_outcome(history([0.1, 0.4, 0.6]))
    assert out["grokked"] is False and np.isnan(out["t95"]) and out["epochs"] == 20
    assert out["final_test_acc"] == pytest.approx(0.6)


def test_fraction_grokked_counts_runs_by_epoch_and_never_the_censored():
    frac = seed_sweep.fraction_grokked([10, np.nan, 30], [0, 10, 29, 30, 1000])
    np.testing.assert_allclose(frac, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="at least one run"):
        seed_sweep.fraction_grokked([], [0])


def test_fraction_grokked_curves_one_curve_per_group():
    curves = seed_sweep.fraction_grokked_curves({
        "paper": {0: history([0, 1, 1]), 1: history([0, 0, 1])},
        "seeded": {0: history([0, 0, 0])},
    })
    paper = curves[curves.group == "paper"]
    assert paper.fraction.tolist() == [0, 0.5, 1] and set(paper.runs) == {2}
    assert curves[curves.group == "seeded"].fraction.tolist() == [0, 0, 0]


def test_grid_effect_detects_a_factor_that_decides_and_not_one_that_does_not():
    decided = pd.DataFrame({"split": ["a"] * 6 + ["b"] * 6, "init_seed": [0, 1, 2] * 4,
                            "grokked": [True] * 6 + [False] * 6})
    assert seed_sweep.grid_effect(decided, "split", 2000)["p_value"] < 0.01
    by_init = seed_sweep.grid_effect(decided, "init_seed", 2000)  # each init seed groks on a and fails on b
    assert by_init["statistic"] == 0 and by_init["p_value"] == 1 and by_init["per_group"] == {0: 0.5, 1: 0.5, 2: 0.5}
    mixed = pd.DataFrame({"split": ["a", "b"] * 6, "grokked": [True, True, False, False] * 3})
    result = seed_sweep.grid_effect(mixed, "split", 2000)
    assert result["statistic"] == 0 and result["p_value"] == 1
    assert result["per_group"] == {"a": 0.5, "b": 0.5} and result["runs"] == 12 and result["groups"] == 2
    with pytest.raises(ValueError, match="by must be"):
        seed_sweep.grid_effect(mixed, "seed")


def test_policy_test_is_fishers_exact_test_on_the_grokked_counts():
    from scipy.stats import fisher_exact

    per_run = pd.DataFrame({"policy": ["paper"] * 10 + ["seeded"] * 10,
                            "grokked": [True] * 7 + [False] * 3 + [True] * 3 + [False] * 7})
    result = seed_sweep.policy_test(per_run)
    assert result["counts"] == {"paper": (7, 10), "seeded": (3, 10)}
    assert result["p_value"] == pytest.approx(fisher_exact([[7, 3], [3, 7]]).pvalue)
    assert 0.15 < result["p_value"] < 0.2  # 7/10 vs 3/10 is not significant on its own
    assert seed_sweep.policy_test(per_run[per_run.policy == "paper"]) is None


def test_split_init_grid_trains_each_cell_once_and_caches(tmp_path):
    kwargs = dict(p=7, epochs=4, d_model=16, n_heads=4, d_mlp=32, batch_size=None, lr=1e-3, checkpoint_every=2,
                  train_frac=0.6)
    grid = seed_sweep.split_init_grid(["paper", 3], [0, 1], cache_dir=tmp_path, progress=False, **kwargs)
    assert grid[["split", "init_seed"]].values.tolist() == [["paper", 0], ["paper", 1], ["3", 0], ["3", 1]]
    assert set(grid.columns) >= {"final_test_acc", "t95", "grokked", "epochs"} and set(grid.epochs) == {4}
    assert len(list(tmp_path.glob("transformer-*.pt"))) == 4
    again = seed_sweep.split_init_grid(["paper", 3], [0, 1], cache_dir=tmp_path, progress=False, **kwargs)
    pd.testing.assert_frame_equal(grid, again)
    with pytest.raises(ValueError, match="int or 'paper'"):
        seed_sweep.split_init_grid(["Paper"], [0], **kwargs)


def fake_run(folder, seed, test_acc, peak, p=7):
    """The tables notebook 02 writes, for a run whose W_U overlaps are 3.6/4 (sum) and 2/4."""
    folder.mkdir(parents=True)
    epochs = np.arange(len(test_acc)) * 10
    pd.DataFrame([dict(p=p, epochs=int(epochs[-1]), seed=seed, split="paper")]).to_csv(folder / "run_transformer.csv",
                                                                                       index=False)
    pd.DataFrame({"weight": ["W_U", "W_U", "W_E"], "family": ["sum", "axis_sum", "sum"],
                  "eigvecs": ["0-3", "4-7", "0-3"], "overlap": [3.6, 2.0, 1.0], "dim": [4, 4, 4],
                  "percent": [90.0, 50.0, 25.0]}).to_csv(folder / "table2_transformer_overlaps.csv", index=False)
    pd.DataFrame({"quantity": ["key frequencies (seed-dependent)", "final test accuracy"],
                  f"this run (seed {seed})": ["[1, 2] from W_E", "x"]}).to_csv(folder / "summary_transformer.csv",
                                                                             index=False)
    d = np.zeros(len(test_acc))
    d[list(epochs).index(peak)] = 1.0
    pd.DataFrame({"epoch": epochs, "final keys": d.cumsum(), "d_final": d}).to_csv(folder / "curves_transformer.csv",
                                                                                    index=False)
    pd.DataFrame({"epoch": epochs, "train_acc": 1.0, "test_acc": test_acc}).to_csv(folder / "history_transformer.csv",
                                                                                    index=False)
    return folder


def test_transformer_runs_table_and_reliability_summary_from_run_folders(tmp_path):
    runs = {0: fake_run(tmp_path / "seed0", 0, [0.0, 0.1, 0.5, 0.97, 0.99], peak=10),
            1: fake_run(tmp_path / "seed1", 1, [0.0, 0.1, 0.2, 0.3, 0.4], peak=30)}
    table = seed_sweep.transformer_runs_table(runs)
    assert table.seed.tolist() == [0, 1] and table["key frequencies"].tolist() == ["[1, 2] from W_E"] * 2
    assert table.grokked.tolist() == [True, False] and table.t95.iloc[0] == 30 and np.isnan(table.t95.iloc[1])
    assert table["sum percent"].astype(float).tolist() == [90.0, 90.0]
    # seed 0 leaves chance (2/7, for good) at epoch 20 and peaks at 10; seed 1 at 30 and peaks at 30
    assert table.gap.tolist() == [-10, 0]
    summary = seed_sweep.reliability_summary(table.assign(policy="paper")).set_index("runs")
    assert summary.loc["all runs", "n"] == 2 and summary.loc["all runs", "grokked"] == 1
    assert summary.loc["grokked runs", "n"] == 1 and summary.loc["grokked runs", "mean gap peak - leaves_chance"] == -10
    assert summary.loc["all runs", "W_U vs axis_sum (% of family)"] == 50


def test_transformer_runs_table_refuses_to_mix_moduli(tmp_path):
    runs = {0: fake_run(tmp_path / "a", 0, [0, 1], peak=0, p=7), 1: fake_run(tmp_path / "b", 1, [0, 1], peak=0, p=11)}
    with pytest.raises(ValueError, match="different moduli"):
        seed_sweep.transformer_runs_table(runs)


def test_training_arguments_keep_only_what_training_takes():
    args = seed_sweep.training_arguments({"p": 23, "epochs": 10, "null_draws": 200, "seed": 4, "split": "seeded",
                                        "init": "torch"})
    assert args == {"p": 23, "epochs": 10, "init": "torch"}


def test_grid_figure_shows_the_grid_and_both_tests():
    import matplotlib

    matplotlib.use("Agg")
    grid = pd.DataFrame({"split": ["paper", "paper", "3", "3"], "init_seed": [0, 1, 0, 1],
                         "final_test_acc": [1.0, 0.5, 0.4, 0.9], "grokked": [True, False, False, False]})
    effects = {by: seed_sweep.grid_effect(grid, by, 200) for by in ("split", "init_seed")}
    fig = seed_sweep.grid_figure(grid, effects)
    title = fig.axes[0].get_title()
    assert f"split p = {effects['split']['p_value']:.3f}" in title
    assert f"init seed p = {effects['init_seed']['p_value']:.3f}" in title
    assert fig.axes[0].images[0].get_array().shape == (2, 2)
