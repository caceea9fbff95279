"""On-disk cache for expensive results, keyed by the parameters and the code that produced them.

An entry ``cache_dir/<name>-<key>.pt`` is one file: a line ``entk-cache 1``, a one-line JSON
header (payload size and sha256, the name, the parameters, the code version) and the payload
written by ``torch.save``. It is written to a temporary file of its own in the same folder,
flushed to disk and renamed over the entry, so two processes sharing a cache never see each
other's half-written files, and a crash leaves at most a stray ``.<entry>.<random>.tmp``.
On load the size and checksum are verified; a damaged entry is reported (its path in a
warning), removed and recomputed. Payloads are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import numbers
import os
import tempfile
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"entk-cache 1\n"
CONSTANTS = (type(None), bool, numbers.Number, str, bytes, tuple, frozenset, os.PathLike)


class CacheEntryError(Exception):
    """A cache entry that cannot be used: unreadable, truncated, not an entry, or its
    checksum does not match. ``path`` is the entry; the message says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cache entry {path} is damaged: {reason}")
        self.path = path


# --------------------------------------------------------------------------- keys
def path_fingerprint(path: str | os.PathLike) -> str | None:
    """A short hash of the names, sizes and modification times of the file ``path`` or of
    every file under the folder ``path`` (``None`` if it does not exist)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    rows = [(str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _tensor_bytes(t: torch.Tensor) -> tuple[str, list[int], str]:
    t = t.detach().cpu().contiguous()
    try:
        a = t.numpy()
    except TypeError:  # bfloat16 / float8: widen exactly to float32
        a = t.to(torch.float32).numpy()
    return str(t.dtype), list(t.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def canonical(value: Any, name: str = "value") -> Any:
    """``value`` as plain JSON data for hashing: numbers, strings, ``None``, lists (tuples
    become lists), mappings as sorted ``[key, value]`` pairs, sets sorted; numpy arrays and
    torch tensors by dtype, shape and a sha256 of their contents; paths by their string and
    :func:`path_fingerprint`; ``torch.dtype`` / ``torch.device`` by name. Anything else
    raises ``TypeError`` naming ``name`` (no silent ``str()``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor):
        return {"__tensor__": _tensor_bytes(value)}
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        if a.dtype == object:
            raise TypeError(f"cannot key {name}: object arrays have no content hash; pass a list")
        return {"__array__": [a.dtype.str, list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]}
    if isinstance(value, np.generic):
        return canonical(value.item(), name)
    if isinstance(value, os.PathLike):
        return {"__path__": [str(value), path_fingerprint(value)]}
    if isinstance(value, (torch.dtype, torch.device)):
        return {"__torch__": str(value)}
    if isinstance(value, Mapping):
        pairs = [[canonical(k, f"{name} key"), canonical(v, f"{name}[{k!r}]")] for k, v in value.items()]
        return {"__mapping__": sorted(pairs, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted((canonical(v, name) for v in value), key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"cannot key {name}={value!r} of type {type(value).__name__}: use numbers, strings, None, "
                    "lists, dicts, arrays / tensors or paths")


def cache_key(**params: Any) -> str:
    """A short stable hash of keyword parameters (order-independent; arrays and tensors by
    content, see :func:`canonical`)."""
    blob = json.dumps({k: canonical(v, k) for k, v in params.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _data(value: Any) -> Any:
    """Canonical form of data met in code (constants, defaults, module and class attributes):
    paths by their string only, anything without a canonical form by its type's name."""
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, types.CodeType):
        return _code_fingerprint(value)
    if isinstance(value, tuple):
        return [_data(v) for v in value]
    if isinstance(value, frozenset):
        return sorted((_data(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    try:
        return canonical(value)
    except TypeError:
        return repr(value) if isinstance(value, (bytes, complex, type(Ellipsis))) else type(value).__qualname__


def _code_fingerprint(code: types.CodeType) -> list:
    """What a code object runs: its bytecode, names and constants (nested code objects
    recursively), but not its file name or line numbers."""
    return [code.co_code.hex(), list(code.co_names), list(code.co_varnames), [_data(c) for c in code.co_consts]]


def _object_fingerprint(obj: Any) -> Any:
    """Fingerprint of a function (its code and defaults), a class (its methods and data)
    or a module (every function and class defined in it, and its constants: numbers,
    strings, tuples, paths...; mutable module data is state, not code); other objects by
    :func:`_data`."""
    if isinstance(obj, (staticmethod, classmethod)):
        return _object_fingerprint(obj.__func__)
    if isinstance(obj, property):
        return [_object_fingerprint(f) for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
    if callable(obj) and not isinstance(obj, type):
        obj = inspect.unwrap(obj)
    if isinstance(obj, types.FunctionType):
        return [_code_fingerprint(obj.__code__), _data(obj.__defaults__), _data(obj.__kwdefaults__)]
    if isinstance(obj, type):
        methods = (types.FunctionType, staticmethod, classmethod, property)
        members = [[k, _object_fingerprint(v) if isinstance(v, methods) else _data(v)]
                   for k, v in sorted(vars(obj).items()) if isinstance(v, methods) or not k.startswith("__")]
        return [obj.__qualname__, members]
    if isinstance(obj, types.ModuleType):
        members = []
        for k, v in sorted(vars(obj).items()):
            if k.startswith("__") or isinstance(v, types.ModuleType):
                continue
            if callable(v):  # functions and classes defined here; imported ones belong to their modules
                if getattr(v, "__module__", None) == obj.__name__:
                    members.append([k, _object_fingerprint(v)])
            elif isinstance(v, CONSTANTS):  # not lists, dicts, arrays: module state, not code
                members.append([k, _data(v)])
        return [obj.__name__, members]
    return _data(obj)


def code_version(*objects: Any) -> str:
    """A short hash of the code that runs in ``objects`` (modules, classes, functions; plain
    data is hashed as it is).

    It is taken from the live objects (bytecode, constants, defaults), not from their
    files, so it describes the code this process runs even if a source file was edited since
    the import; comments and line numbers do not enter it, docstrings and constants do. A
    module counts with the functions and classes defined in it and its constant data, not
    what it imports (name those in ``depends_on``) nor its mutable data (lists, dicts).
    """
    blob = json.dumps([_object_fingerprint(o) for o in objects], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _producing_code(compute: Callable) -> tuple:
    """The default ``depends_on`` of :func:`cached`: the module that defines ``compute``
    (for a function defined interactively, ``compute`` itself)."""
    module = inspect.getmodule(inspect.unwrap(compute))
    if module is None or module.__name__ == "__main__":
        return (compute,)
    return (module,)


# --------------------------------------------------------------------------- entries
def check_writable(cache_dir: str | os.PathLike) -> Path:
    """Create ``cache_dir`` if needed and check that a file can be written there (by writing
    one: permissions alone do not tell, e.g. for root or on a read-only file system).
    Returns it as a ``Path``; raises ``OSError`` naming it otherwise."""
    folder = Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise OSError(f"cache_dir {folder} is not a writable folder ({err.strerror or err}); "
                      "pass another cache_dir or None") from err
    return folder


def write_entry(path: str | os.PathLike, value: Any, header: Mapping | None = None) -> None:
    """Store ``value`` at ``path`` atomically with a checksum (see the module docstring).

    ``value`` must be readable by ``torch.load(weights_only=True)`` (tensors, numbers,
    strings, lists / dicts / tuples of them): this is checked before anything is written.
    ``header`` adds JSON data to the entry's header (e.g. the parameters, for a reader).
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # fails here, not on the next run
    payload = buffer.getbuffer()
    head = {**(header or {}), "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    def write(f):
        for part in (MAGIC, json.dumps(head, sort_keys=True).encode(), b"\n", payload):
            f.write(part)

    write_atomically(path, write)


def write_atomically(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Create or replace the file ``path`` all at once: ``write(f)`` fills a temporary binary
    file in the same folder, which is synced and renamed to ``path`` when complete, so a
    reader never sees a partial file and a crash (or an error in ``write``) leaves none."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read_entry(path: str | os.PathLike) -> Any:
    """The value stored at ``path`` by :func:`write_entry`, after checking its size and
    checksum. Raises ``FileNotFoundError`` if there is none and :class:`CacheEntryError`
    (naming the path and the reason) if it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise CacheEntryError(path, f"unreadable ({err})") from err
    if not data.startswith(MAGIC):
        raise CacheEntryError(path, f"not a cache entry (it does not start with {MAGIC!r}; {len(data)} bytes)")
    end = data.find(b"\n", len(MAGIC))
    try:
        if end < 0:
            raise ValueError("no end of header")
        head = json.loads(data[len(MAGIC):end])
        size, checksum = int(head["bytes"]), str(head["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise CacheEntryError(path, f"unreadable header ({err})") from err
    payload = memoryview(data)[end + 1:]
    if len(payload) != size:
        raise CacheEntryError(path, f"{len(payload)} payload bytes where the header says {size} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != checksum:
        raise CacheEntryError(path, "the payload's sha256 does not match the header (changed or corrupted bytes)")
    try:
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle makes the entry unusable
        raise CacheEntryError(path, f"cannot be loaded ({type(err).__name__}: {err})") from err


def _entry_name(name: str, code: str, params: Mapping[str, Any]) -> str:
    """The file name of the entry ``name`` for ``params`` and the code version ``code``."""
    return f"{name}-{cache_key(**params, __code__=code)}.pt"


def entry_path(cache_dir: str | os.PathLike, name: str, /, *, produced_by: Iterable, **params: Any) -> Path:
    """Where :func:`cached` keeps ``name`` for ``params`` when called with ``produced_by`` (the
    entry may not exist): e.g. to report it, or to check that it was written."""
    return Path(cache_dir) / _entry_name(name, code_version(*produced_by), params)


def cached(cache_dir: str | os.PathLike | None, name: str, compute: Callable[[], Any], /, *,
           depends_on: Iterable = (), produced_by: Iterable | None = None, **params: Any) -> Any:
    """Return ``compute()``, stored as ``cache_dir/name-<key>.pt`` and read back next time.

    The key hashes ``params`` (:func:`cache_key`: arrays by content, paths by their files'
    sizes and times) and the :func:`code_version` of the module that defines ``compute``
    and of everything in ``depends_on`` (modules, classes, functions it uses from
    elsewhere), so a change to the code computes afresh. ``produced_by`` instead names
    exactly the functions and classes the result depends on (so that unrelated edits to
    their module, or moving them to another module, keep the entries valid).
    ``compute`` must return what ``torch.load(weights_only=True)`` reads (tensors, numbers,
    strings, lists / dicts).

    ``cache_dir`` is created and checked writable before ``compute`` runs (``OSError``
    naming it otherwise). A damaged entry is reported with a warning naming its path,
    removed and recomputed; if the result cannot be saved, a warning says why and the
    result is returned all the same. With ``cache_dir=None`` nothing is cached.
    """
    if cache_dir is None:
        return compute()
    folder = check_writable(cache_dir)
    code = code_version(*(produced_by if produced_by is not None else (*_producing_code(compute), *depends_on)))
    path = folder / _entry_name(name, code, params)
    try:
        return read_entry(path)
    except FileNotFoundError:
        pass
    except CacheEntryError as err:
        warnings.warn(f"{err}; removing it and computing it again", stacklevel=2)
        with contextlib.suppress(OSError):  # if it cannot go, saving fails below and says so
            path.unlink(missing_ok=True)
    result = compute()
    try:
        write_entry(path, result, {"name": name, "code": code, "params": {k: canonical(v, k) for k, v in params.items()}})
    except Exception as err:  # noqa: BLE001 - a failed save must not lose the result
        warnings.warn(f"could not save {name} to the cache ({path}): {type(err).__name__}: {err}; "
                      "the result is returned but not cached", stacklevel=2)
    return result
