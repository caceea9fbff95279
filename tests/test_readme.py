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


def test_the_per_example_loss_example_is_the_gram_of_per_example_loss_gradients():
    """Brute force: each context's next-token loss at its last real token through the model's
    own forward (left padding as in the example), differentiated by ``jacrev``."""
    import torch
    from torch.func import functional_call, jacrev

    from entk_utils.kernels.anatomy import math_attention

    namespace = {}
    exec(compile(example("language model") + example("another output"), "README.md", "exec"), namespace)
    model, ids, mask, targets = (namespace[k] for k in ("model", "input_ids", "attention_mask", "targets"))
    op_loss, K_loss = namespace["op_loss"], namespace["K_loss"]
    assert op_loss.shape == (16, 16) and K_loss.shape == (16, 16)
    params = {name: p.detach() for name, p in op_loss.weights.items()}
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    def loss(ps, n):
        logits = functional_call(model, ps, kwargs={"input_ids": ids[n:n + 1], "attention_mask": mask[n:n + 1],
                                                    "position_ids": position_ids[n:n + 1]}).logits[0, -1]
        return torch.nn.functional.cross_entropy(logits, targets[n])

    with math_attention():
        grads = [jacrev(loss)(params, n) for n in range(len(ids))]
    G = torch.stack([torch.cat([g[k].reshape(-1) for k in params]) for g in grads]).detach().double().numpy()
    expected = G @ G.T
    assert np.abs(K_loss - expected).max() / np.abs(expected).max() < 1e-4


def test_the_finders_example_runs():
    namespace = {}
    exec(compile(example("language model") + example("finders"), "README.md", "exec"), namespace)
    found, table, probe = namespace["found"], namespace["table"], namespace["probe"]
    assert set(found) == {"entk", "pca", "ica", "logistic"}
    assert all(d.scores.shape == (16, 5) for m, d in found.items() if m != "logistic")
    assert found["logistic"].scores.shape == (16, 1) and found["logistic"].supervised
    assert list(table.label) == ["feature"] and list(probe.k) == [1, 2]


def test_the_token_reading_example_ends_at_the_scores():
    namespace = {}
    exec(compile(example("language model") + example("token reading"), "README.md", "exec"), namespace)
    reading, scores = namespace["reading"].double().numpy(), namespace["scores"]
    assert reading.shape == tuple(namespace["input_ids"].shape)
    np.testing.assert_allclose(reading[:, -1], scores[:, 0], rtol=1e-3, atol=1e-3 * np.abs(scores[:, 0]).max())
