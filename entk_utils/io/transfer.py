"""A large file moved in parts, for a machine that takes a few tens of MiB per call (a lent GPU
machine that reaches no registry: the model's weights travel over consecutive calls).

:func:`split` writes the parts and a manifest (each part's size and sha256, the whole file's);
:func:`missing` says which parts a folder still lacks; :func:`join` checks every part and the
whole against the manifest and writes the file under a temporary name, renamed when complete.

    python -m entk_utils.io.transfer split FILE FOLDER [--part-mib 48]
    python -m entk_utils.io.transfer missing FOLDER
    python -m entk_utils.io.transfer join FOLDER TARGET
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

PART_MIB = 48  # with the project's working tree (about 10 MiB), under a call's 64 MiB
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def split(path: str | os.PathLike, folder: str | os.PathLike, part_mib: float = PART_MIB) -> Path:
    """``path`` cut into parts of at most ``part_mib`` MiB, ``folder/part-000`` ..., beside
    ``folder/manifest.json``; returns the manifest's path."""
    path, folder = Path(path), Path(folder)
    size = int(part_mib * 2**20)
    if size < 1:
        raise ValueError(f"part_mib must be positive, got {part_mib}")
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(path, "rb") as f:
        while block := f.read(size):
            name = f"part-{len(parts):03d}"
            (folder / name).write_bytes(block)
            parts.append({"name": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    manifest = {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path), "parts": parts}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder / MANIFEST


def missing(folder: str | os.PathLike) -> list[str]:
    """The parts of the manifest in ``folder`` that are absent or not yet whole there (by size
    and sha256)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    return [p["name"] for p in manifest["parts"]
            if not (folder / p["name"]).is_file() or (folder / p["name"]).stat().st_size != p["bytes"]
            or _sha256(folder / p["name"]) != p["sha256"]]


def join(folder: str | os.PathLike, target: str | os.PathLike) -> Path:
    """The file of the manifest in ``folder``, put together at ``target`` (a folder: the
    file's own name inside it) once every part and the whole match their sha256;
    ``FileNotFoundError`` naming the parts still missing, ``ValueError`` on a wrong whole."""
    folder, target = Path(folder), Path(target)
    manifest = json.loads((folder / MANIFEST).read_text())
    if target.is_dir():
        target = target / manifest["file"]
    if lacking := missing(folder):
        raise FileNotFoundError(f"{folder}: parts missing or incomplete: {', '.join(lacking)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for p in manifest["parts"]:
                out.write((folder / p["name"]).read_bytes())
        if _sha256(Path(tmp)) != manifest["sha256"]:
            raise ValueError(f"{target}: the joined file's sha256 differs from the manifest's")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entk_utils.io.transfer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("split", help="cut FILE into parts in FOLDER, with a manifest")
    cut.add_argument("file")
    cut.add_argument("folder")
    cut.add_argument("--part-mib", type=float, default=PART_MIB)
    commands.add_parser("missing", help="list the parts FOLDER still lacks").add_argument("folder")
    put = commands.add_parser("join", help="check the parts in FOLDER and write the file to TARGET")
    put.add_argument("folder")
    put.add_argument("target")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            manifest = split(args.file, args.folder, args.part_mib)
            print(f"{len(json.loads(manifest.read_text())['parts'])} parts and {manifest}")
        elif args.command == "missing":
            lacking = missing(args.folder)
            print(" ".join(lacking) if lacking else "complete")
        else:
            print(join(args.folder, args.target))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
