"""A large file moved in parts (:mod:`entk_utils.io.transfer`): split, what is missing, joined
and checked; a corrupt or absent part is named, nothing half-written is left."""

import json
import os

import pytest

from entk_utils.io import transfer


def test_a_file_split_in_parts_joins_back_to_the_same_bytes(tmp_path):
    data = os.urandom(1_000_000)
    (tmp_path / "model.gguf").write_bytes(data)
    manifest = transfer.split(tmp_path / "model.gguf", tmp_path / "parts", part_mib=0.3)
    parts = json.loads(manifest.read_text())["parts"]
    assert [p["bytes"] for p in parts] == [314572, 314572, 314572, 56284]
    received = tmp_path / "received"
    received.mkdir()
    (received / "manifest.json").write_text(manifest.read_text())
    assert transfer.missing(received) == ["part-000", "part-001", "part-002", "part-003"]
    for p in parts[:2]:  # two calls' worth arrived
        (received / p["name"]).write_bytes((tmp_path / "parts" / p["name"]).read_bytes())
    assert transfer.missing(received) == ["part-002", "part-003"]
    with pytest.raises(FileNotFoundError, match="parts missing or incomplete: part-002, part-003"):
        transfer.join(received, tmp_path / "out")
    for p in parts[2:]:
        (received / p["name"]).write_bytes((tmp_path / "parts" / p["name"]).read_bytes())
    (tmp_path / "out").mkdir()
    assert transfer.join(received, tmp_path / "out").read_bytes() == data
    assert sorted(os.listdir(tmp_path / "out")) == ["model.gguf"]


def test_a_corrupt_part_is_named_and_the_command_line_says_so(tmp_path, capsys):
    (tmp_path / "f.bin").write_bytes(os.urandom(1000))
    transfer.split(tmp_path / "f.bin", tmp_path / "parts", part_mib=0.0005)
    (tmp_path / "parts" / "part-001").write_bytes(b"x" * 524)
    assert transfer.missing(tmp_path / "parts") == ["part-001"]
    assert transfer.main(["join", str(tmp_path / "parts"), str(tmp_path / "g.bin")]) == 2
    assert "part-001" in capsys.readouterr().err and not (tmp_path / "g.bin").exists()
    assert transfer.main(["missing", str(tmp_path / "parts")]) == 0 and capsys.readouterr().out.strip() == "part-001"
