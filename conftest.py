"""The whole suite (tests/ and the notebooks nbval runs): the order in which its files run.

``make test`` runs the suite on two workers (pytest-xdist, ``--dist loadscope``): each test
file, and each notebook with all its cells, goes to one worker as a whole, in the order of
:data:`FIRST`, then the rest in collection order. The longest files come first, so that the
two workers finish together (`make test` lists the slowest tests at its end), and notebook 02
comes before 01 and 05, so that 05 starts after 02 has trained the model it reads (the
notebooks share one cache folder, ``notebooks/conftest.py``)."""

import pytest

FIRST = ("02_transformer_modular_addition", "03_gemma_tinystories", "01_mlp_modular_addition", "05_causal",
         "test_notebooks", "test_eigs", "test_gpu_check", "test_language", "test_browser", "test_distributed",
         "test_parameters")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Sort the items by their file's place in :data:`FIRST` (a stable sort: within a file the
    order stays)."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(FIRST)))
