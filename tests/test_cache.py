import torch

from entk_utils.cache import cache_key, cached


def test_key_is_order_independent_and_sensitive():
    assert cache_key(a=1, b=2) == cache_key(b=2, a=1)
    assert cache_key(a=1, b=2) != cache_key(a=1, b=3)


def test_cached_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3), "n": 4}

    first = cached(tmp_path, "thing", compute, k=1)
    second = cached(tmp_path, "thing", compute, k=1)
    assert len(calls) == 1 and torch.equal(first["x"], second["x"]) and second["n"] == 4
    cached(tmp_path, "thing", compute, k=2)
    assert len(calls) == 2
    cached(None, "thing", compute, k=1)
    assert len(calls) == 3
