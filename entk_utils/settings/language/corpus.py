"""The corpus: TinyStories, from the Hugging Face Hub when online or a local text file of
stories separated by ``<|endoftext|>`` lines (``../shared/data/tinystories/`` beside the
repository, ``$ENTK_TINYSTORIES``, or a path)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


SEPARATOR = "<|endoftext|>"
STORIES_ENV = "ENTK_TINYSTORIES"
# The sample beside the repository: <repository>/../shared/data/tinystories/...
SHARED_STORIES = Path("shared") / "data" / "tinystories" / "validation_first1000.txt"


def _shared_stories(start: Path) -> Path | None:
    """The first ``shared/data/tinystories/validation_first1000.txt`` found in ``start`` or
    one of its parents (from the repository root or its notebooks/ folder, the sample beside
    the repository), or None."""
    for folder in (start, *start.parents):
        if (folder / SHARED_STORIES).is_file():
            return folder / SHARED_STORIES
    return None


def stories_path(path: str | Path | None = None) -> Path:
    """Where the local stories are: ``path``, else ``$ENTK_TINYSTORIES``, else the sample
    ``validation_first1000.txt`` in ``shared/data/tinystories`` beside the repository
    (looked for upwards from the working directory, so it does not depend on where the
    package is installed). Raises ``FileNotFoundError`` naming what was tried."""
    given = path or os.environ.get(STORIES_ENV)
    candidate = Path(given) if given else _shared_stories(Path.cwd().resolve())
    if candidate is None or not candidate.is_file():
        raise FileNotFoundError(
            f"stories file {candidate or SHARED_STORIES} not found (looked in the working directory and its parents); "
            f"pass stories_path=..., set ${STORIES_ENV}, or use source='hub' with network access"
        )
    return candidate


def read_text(path: str | Path, what: str = "text file") -> str:
    """The UTF-8 text of ``path``; ``ValueError`` naming the file (as ``what``) if it is empty or
    not UTF-8 (with the byte offset that cannot be decoded)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text: byte {raw[err.start:err.start + 1]!r} at byte "
                         f"offset {err.start} cannot be decoded") from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty")
    return text


def read_stories(path: str | Path | None = None, *, min_chars: int = 1) -> list[str]:
    """Stories from a local file in which a line ``<|endoftext|>`` separates stories.

    A file that does not end with the separator ends in a story that was cut off (e.g. the
    first 2 MiB of the train split); that last story is dropped. Whitespace is stripped;
    stories shorter than ``min_chars`` are dropped. A file that is not UTF-8 (the error gives
    the byte offset), empty, without a separator or without a complete story raises
    ``ValueError`` naming it.
    """
    path = stories_path(path)
    text = read_text(path, "stories file")
    if SEPARATOR not in text:
        raise ValueError(f"stories file {path} has no {SEPARATOR} separator: stories must be separated by "
                         f"lines {SEPARATOR}")
    parts = text.split(SEPARATOR)
    if not text.rstrip().endswith(SEPARATOR):
        parts = parts[:-1]
    stories = [story.strip() for story in parts if len(story.strip()) >= min_chars]
    if not stories:
        raise ValueError(f"stories file {path} holds no complete story of at least {min_chars} characters")
    return stories


def read_documents(path: str | Path) -> list[str]:
    """The documents of a UTF-8 text file: stories separated by ``<|endoftext|>`` lines where
    the file has them (:func:`read_stories`), else its paragraphs (separated by blank lines)."""
    text = read_text(path)
    if SEPARATOR in text:
        return read_stories(path)
    return [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]


def load_stories(source: str = "local", path: str | Path | None = None, split: str = "validation",
                 limit: int | None = None) -> list[str]:
    """TinyStories from the Hub (``source="hub"``, needs network) or a local file."""
    if source == "hub":
        from datasets import load_dataset

        data = load_dataset("roneneldan/TinyStories", split=split)
        stories = [row["text"].strip() for row in data.select(range(limit or len(data)))]
    elif source == "local":
        stories = read_stories(path)
    else:
        raise ValueError(f"unknown stories source {source!r}; choose 'local' or 'hub'")
    return stories[:limit] if limit else stories


def hash_text(text: str) -> str:
    """A short (12 hex digits) sha256 of ``text``, for cache keys."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def corpus_files(first: str | Path) -> list[Path]:
    """The text file ``first`` and then every other ``.txt`` file in its folder (sorted by
    name): the local corpus an SAE is trained on, with the scored stories' file first so that
    its documents keep their indices."""
    first = Path(first)
    if not first.is_file():
        raise FileNotFoundError(f"text file {first} not found")
    return [first, *sorted(p for p in first.parent.glob("*.txt") if p.resolve() != first.resolve())]


def documents_of(paths) -> list[str]:
    """The documents of each file in ``paths``, in order (:func:`read_documents`)."""
    return [doc for path in paths for doc in read_documents(path)]
