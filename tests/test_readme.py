"""The README's language-model example runs as printed."""

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[1] / "README.md"


def example(marker: str) -> str:
    """The Python block that follows ``<!-- example: marker -->`` in the README."""
    found = re.search(rf"<!-- example: {re.escape(marker)} -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert found, f"no example {marker!r} in the README"
    return found.group(1)


def test_the_language_model_example_runs():
    namespace = {}
    exec(compile(example("language model"), "README.md", "exec"), namespace)
    op, evals, scores, step = (namespace[k] for k in ("op", "evals", "scores", "step"))
    assert op.shape == (16 * 32, 16 * 32) and op.path == "module"
    assert evals.shape == (5,) and np.all(np.diff(evals) <= 0) and evals[-1] > 0
    assert scores.shape == (16, 5)
    assert set(step) == set(op.weights) and all(step[k].shape == op.weights[k].shape for k in step)
