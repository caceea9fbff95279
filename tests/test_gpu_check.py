"""``make gpu-check`` (benchmarks/gpu_check.py): it skips cleanly without a GPU, and every
check runs end to end in its dry run (the CPU against itself, gloo for NCCL, a tiny model for
Gemma), so the script is ready when a GPU machine is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args, **env):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, **env})


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    results = ROOT / "benchmarks" / "results" / "gpu_check.md"
    before = results.stat().st_mtime_ns if results.exists() else None
    done = run("--out", str(tmp_path), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device here: gpu-check skipped" in done.stdout
    assert list(tmp_path.iterdir()) == []
    assert (results.stat().st_mtime_ns if results.exists() else None) == before


@pytest.mark.slow
def test_the_dry_run_takes_every_check_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    from tiny_models import save_tiny_llama

    from entk_utils.settings import language

    folder = save_tiny_llama(tmp_path / "model", language.read_stories()[:200])
    done = run("--dry-run", "--model-source", str(folder), "--out", str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [row["check"] for row in report["checks"]] == ["dense", "operator-tiny", "operator-gemma", "eigs-nccl",
                                                          "paper-scale"]
    assert all(row["ok"] for row in report["checks"]), report
    eigs = report["checks"][3]
    assert (eigs["ranks"], eigs["backend"]) == (2, "gloo") and eigs["collectives logged"]
    assert "DRY RUN" in (tmp_path / "out" / "gpu_check.md").read_text()
