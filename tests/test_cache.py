import importlib
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from entk_utils.settings import modular
from entk_utils.settings.modular import training
from entk_utils.io.cache import CacheEntryError, cache_key, cached, read_entry, write_entry


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


# ---------------------------------------------------------------- keys by content
def test_arrays_and_tensors_are_keyed_by_content_not_by_their_printout():
    a = np.arange(2000)
    b = a.copy()
    b[1000] = -1  # str(a) == str(b): numpy elides the middle of long arrays
    assert str(a) == str(b)
    assert cache_key(x=a) != cache_key(x=b)
    assert cache_key(x=torch.from_numpy(a)) != cache_key(x=torch.from_numpy(b))
    assert cache_key(x=a) == cache_key(x=a.copy())
    assert cache_key(x=np.zeros(3, np.float32)) != cache_key(x=np.zeros(3, np.float64))
    assert cache_key(x=torch.ones(2, dtype=torch.bfloat16)) != cache_key(x=torch.ones(2, dtype=torch.float32))


def test_array_valued_parameters_compute_separately(tmp_path):
    a = np.arange(2000)
    b = a.copy()
    b[1000] = -1
    assert cached(tmp_path, "sum", lambda: int(a.sum()), x=a) == a.sum()
    assert cached(tmp_path, "sum", lambda: int(b.sum()), x=b) == b.sum()


def test_values_without_a_canonical_form_are_refused():
    with pytest.raises(TypeError, match="cannot key x="):
        cache_key(x=object())


def test_a_path_is_keyed_by_its_files_sizes_and_times(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"1234")
    before = cache_key(model=model)
    (model / "weights.bin").write_bytes(b"123456")
    assert cache_key(model=model) != before
    assert cache_key(model=str(model)) == cache_key(model=str(model))  # a plain string is only a string


# ---------------------------------------------------------------- code versions
PRODUCER = '''
import time

SCALE = {scale}


def compute():
    return {{"x": SCALE * {factor}, "t": time.time_ns()}}  # {comment}
'''


def _producer(tmp_path, monkeypatch, **fields):
    path = tmp_path / "producer_module.py"
    path.write_text(PRODUCER.format(**{"scale": 1, "factor": 1, "comment": "", **fields}))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("producer_module")
    return importlib.reload(module)


def test_a_change_to_the_producing_code_computes_afresh(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = cached(cache, "thing", _producer(tmp_path, monkeypatch).compute)
    # a comment changes nothing that runs: read back
    again = cached(cache, "thing", _producer(tmp_path, monkeypatch, comment="a new comment").compute)
    assert again["t"] == first["t"]
    # a module constant and a function body do
    scaled = cached(cache, "thing", _producer(tmp_path, monkeypatch, scale=2).compute)
    assert scaled["x"] == 2 and scaled["t"] != first["t"]
    body = cached(cache, "thing", _producer(tmp_path, monkeypatch, scale=2, factor=10).compute)
    assert body["x"] == 20


def test_a_stale_trained_model_is_not_reused_after_train_or_the_model_changes(tmp_path, monkeypatch):
    kwargs = dict(p=5, width=8, epochs=3, cache_dir=tmp_path, progress=False)
    modular.train_gromov_mlp(**kwargs)
    original_train = training.train
    calls = []

    def changed_train(*args, **kw):  # stands in for an edit of train()
        calls.append(1)
        return original_train(*args, **kw)

    monkeypatch.setattr(training, "train", changed_train)
    modular.train_gromov_mlp(**kwargs)
    assert calls == [1]
    monkeypatch.undo()
    modular.train_gromov_mlp(**kwargs)  # the original code: read back
    monkeypatch.setattr(training, "train", changed_train)
    monkeypatch.setattr(modular.GromovMLP, "forward", lambda self, x: self.fc2(torch.relu(self.fc1(x))))
    modular.train_gromov_mlp(**kwargs)
    assert calls == [1, 1]
    assert len(list(tmp_path.glob("gromov_mlp-*.pt"))) == 3


def test_a_trained_model_survives_unrelated_edits_of_its_module(tmp_path, monkeypatch):
    import functools

    kwargs = dict(p=5, width=8, epochs=3, cache_dir=tmp_path, progress=False)
    modular.train_gromov_mlp(**kwargs)
    calls, original = [], training.train

    @functools.wraps(original)  # the same code (the version unwraps it), but counted
    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(training, "train", counting)
    monkeypatch.setattr(training, "a_new_helper", lambda: 1, raising=False)  # edits elsewhere in the module
    monkeypatch.setattr(modular.OneLayerTransformer, "a_new_method", lambda self: 0, raising=False)
    modular.train_gromov_mlp(**kwargs)
    assert calls == [] and len(list(tmp_path.glob("gromov_mlp-*.pt"))) == 1


# ---------------------------------------------------------------- damaged entries
def _zero_a_megabyte(data):
    return data[:1 << 20] + bytes(1 << 20) + data[2 << 20:]


def _flip_a_byte(data):
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


DAMAGE = {
    "zeroed megabyte": _zero_a_megabyte,
    "flipped byte": _flip_a_byte,
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: np.random.default_rng(0).bytes(4096),
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_entry_is_reported_removed_and_recomputed(tmp_path, damage):
    values = torch.arange(500_000, dtype=torch.float64)  # 4 MB
    calls = []

    def compute():
        calls.append(1)
        return {"x": values.clone()}

    cached(tmp_path, "big", compute, k=1)
    (path,) = tmp_path.glob("big-*.pt")
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.warns(UserWarning, match=f"cache entry {path} is damaged"):
        result = cached(tmp_path, "big", compute, k=1)
    assert len(calls) == 2 and torch.equal(result["x"], values)
    assert torch.equal(read_entry(path)["x"], values)  # replaced by a good entry


def test_read_entry_names_the_path_of_a_damaged_entry(tmp_path):
    path = tmp_path / "entry.pt"
    write_entry(path, {"x": torch.ones(3)})
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CacheEntryError, match=f"{path}.*truncated"):
        read_entry(path)


# ---------------------------------------------------------------- failures around the computation
def test_an_unwritable_cache_dir_fails_before_the_computation(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache_dir = blocker / "cache"  # cannot be created, whoever runs the test
    calls = []
    with pytest.raises(OSError, match=f"cache_dir {cache_dir} is not a writable folder"):
        cached(cache_dir, "thing", lambda: calls.append(1))
    assert calls == []


def test_a_failed_save_warns_and_still_returns_the_result(tmp_path):
    folder = tmp_path / "cache"

    def compute():  # the folder goes away while the result is computed
        shutil.rmtree(folder)
        folder.write_text("now a file")
        return {"x": torch.ones(2)}

    with pytest.warns(UserWarning, match=f"could not save thing to the cache \\({folder}"):
        result = cached(folder, "thing", compute)
    assert torch.equal(result["x"], torch.ones(2))


@dataclass
class NotATensor:
    x: int


def test_a_result_that_cannot_be_read_back_is_returned_uncached(tmp_path):
    with pytest.warns(UserWarning, match="could not save thing"):
        result = cached(tmp_path, "thing", lambda: NotATensor(3))
    assert result == NotATensor(3)
    assert list(tmp_path.iterdir()) == []  # no entry, no temporary file


# ---------------------------------------------------------------- two processes, one cache
WORKER = textwrap.dedent('''
    import sys, time, warnings
    from pathlib import Path
    import torch
    from entk_utils.io.cache import cached, read_entry, write_entry

    warnings.simplefilter("error")  # a damaged entry would warn: fail instead
    folder, ready, n_workers, me = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    (ready / me).touch()
    while len(list(ready.iterdir())) < n_workers:  # start together
        time.sleep(0.001)
    expected = torch.arange(1_000_000, dtype=torch.float64)
    for k in range(8):
        value = cached(folder, "shared", lambda: {"x": expected + k}, k=k)
        assert torch.equal(value["x"], expected + k), k
    for i in range(15):  # one entry rewritten and read by every worker at once
        write_entry(folder / "hammer.pt", {"x": torch.full((300_000,), float(i))})
        x = read_entry(folder / "hammer.pt")["x"]
        assert x.numel() == 300_000 and bool((x == x[0]).all())
    print("ok")
''')


def test_two_processes_share_one_cache(tmp_path):
    script, ready, folder = tmp_path / "worker.py", tmp_path / "ready", tmp_path / "cache"
    script.write_text(WORKER)
    ready.mkdir()
    n = 3
    workers = [subprocess.Popen([sys.executable, str(script), str(folder), str(ready), str(n), str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0 and out.strip() == "ok", err
    entries = sorted(p.name for p in folder.iterdir())
    assert len([e for e in entries if e.startswith("shared-")]) == 8 and "hammer.pt" in entries
    assert not [e for e in entries if e.endswith(".tmp")]  # no temporary file left behind
    for path in folder.glob("shared-*.pt"):
        read_entry(path)  # every entry complete and verified
