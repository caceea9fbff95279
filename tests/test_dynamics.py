import numpy as np
import pandas as pd
import pytest

from entk_utils.features.dynamics import derivative, grokking_times, overlap_over_training, steepest_rise, sustained_crossing
from entk_utils.features.fourier import feature_family
from entk_utils.settings.modular import train_gromov_mlp


def test_derivative_is_exact_for_quadratics_on_uneven_grids():
    x = np.array([0.0, 1.0, 3.0, 4.0, 7.0])
    np.testing.assert_allclose(derivative(x, x**2)[1:-1], 2 * x[1:-1])
    with pytest.raises(ValueError):
        derivative([1.0], [2.0])


def test_steepest_rise_of_a_sigmoid():
    x = np.arange(0, 200, 10.0)
    assert steepest_rise(x, 1 / (1 + np.exp(-(x - 80) / 8))) == 80


def test_overlap_over_training_on_a_small_run(model_cache):
    run = train_gromov_mlp(p=7, width=64, epochs=40, checkpoint_every=20, cache_dir=model_cache, progress=False)
    fams = {f: feature_family(run.pairs.numpy(), 7, f) for f in ("sum", "a")}
    curve = overlap_over_training(run.model, run.result.checkpoints, run.inputs, (1, 13), fams, progress=False)
    assert curve.epoch.tolist() == [0, 20, 40]
    assert list(curve.columns) == ["epoch", "sum", "a"]
    assert ((curve[["sum", "a"]] >= 0) & (curve[["sum", "a"]] <= 6 + 1e-9)).all().all()
    with pytest.raises(ValueError, match="block"):
        overlap_over_training(run.model, run.result.checkpoints, run.inputs, (5, 2), fams)


def test_sustained_crossing():
    x = np.arange(6)
    assert sustained_crossing(x, [0, 0.5, 0.1, 0.6, 0.7, 0.9], 0.5) == 3
    assert sustained_crossing(x, [0.6] * 6, 0.5) == 0
    assert np.isnan(sustained_crossing(x, [0, 0, 0, 0, 0, 0.4], 0.5))


def test_overlap_over_training_with_per_checkpoint_features(model_cache):
    run = train_gromov_mlp(p=5, width=32, epochs=20, checkpoint_every=10, cache_dir=model_cache, progress=False)
    fixed = feature_family(run.pairs.numpy(), 5, "sum")
    curve = overlap_over_training(run.model, run.result.checkpoints, run.inputs, (0, 4),
                                  lambda model: {"same": fixed, "none": None}, progress=False)
    direct = overlap_over_training(run.model, run.result.checkpoints, run.inputs, (0, 4), {"same": fixed}, progress=False)
    np.testing.assert_allclose(curve["same"], direct["same"])
    assert curve["none"].isna().all()


def test_grokking_times_on_a_synthetic_run():
    epochs = np.arange(0, 101)
    test_acc = 1 / (1 + np.exp(-(epochs - 60) / 3.0))  # steepest at 60
    history = pd.DataFrame({"epoch": epochs, "train_acc": np.minimum(1, epochs / 30), "test_acc": test_acc})
    grid = epochs[::10]
    overlap = 1 / (1 + np.exp(-(grid - 50) / 5.0))
    times = grokking_times(grid, derivative(grid, overlap), history, chance=0.01)
    assert times["peak"] == 50 and times["steepest_rise"] == 60
    assert times["half_way"] == 60 and times["train_99"] == 30
    assert times["leaves_chance"] == epochs[np.argmax(test_acc >= 0.02)]
    never = history.assign(train_acc=0.5)
    assert np.isnan(grokking_times(grid, derivative(grid, overlap), never, 0.01)["train_99"])


def test_sweep_grokking_table_and_agreement(tmp_path):
    from entk_utils.io.sweep import gather
    from entk_utils.experiments.seed_sweep import grokking_table, peak_onset_agreement

    runs = {}
    for seed, shift in ((0, 0), (1, 10), (2, 20)):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        epochs = np.arange(0, 101)
        acc = 1 / (1 + np.exp(-(epochs - 50 - shift) / 3.0))
        pd.DataFrame({"epoch": epochs, "train_acc": np.ones_like(acc), "test_acc": acc}).to_csv(folder / "h.csv", index=False)
        grid = epochs[::5]
        overlap = 1 / (1 + np.exp(-(grid - 45 - shift) / 5.0))
        pd.DataFrame({"epoch": grid, "d": derivative(grid, overlap)}).to_csv(folder / "c.csv", index=False)
        runs[seed] = folder
    table = grokking_table(runs, "c", "h", "d", chance=0.01)
    assert table.seed.tolist() == [0, 1, 2]
    assert table.peak.tolist() == [45, 55, 65] and table.steepest_rise.tolist() == [50, 60, 70]
    agreement = peak_onset_agreement(table, "steepest_rise")
    assert agreement["pearson_r"] == pytest.approx(1.0) and agreement["mean_gap"] == -5 and agreement["seeds"] == 3
    assert gather(runs, "c").seed.unique().tolist() == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="wrote no"):
        gather(runs, "missing")
