"""On-disk cache for expensive results, keyed by the parameters that produced them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cache_key(**params: Any) -> str:
    """A short stable hash of JSON-serialisable keyword parameters (order-independent)."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached(cache_dir: str | Path | None, name: str, compute: Callable[[], Any], **params: Any) -> Any:
    """Return ``compute()``, stored as ``cache_dir/name-<key>.pt`` and read back next time.

    The key hashes ``params``; results are read with ``torch.load(weights_only=True)``, so
    ``compute`` must return tensors, numbers, strings and lists / dicts of them. With
    ``cache_dir=None`` nothing is cached.
    """
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}-{cache_key(**params)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.replace(path)
    return result
