"""Reading a notebook's parameters: the cell tagged ``parameters`` (papermill's convention) of
a ``.ipynb`` or a jupytext ``.py`` source, the names it declares and their defaults."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import checks


def parameters_cell(notebook: str | os.PathLike) -> str:
    """The source of ``notebook``'s cell tagged ``parameters`` (``.ipynb`` or jupytext ``.py``)."""
    import jupytext

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {path}")
    cells = [c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"notebook {path} has {len(cells)} cells tagged 'parameters'; papermill needs one")
    return cells[0].source


def declared_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """``{name: default}`` for every name assigned at the top level of the notebook's
    parameters cell, in order; a default that is not a literal is given as its source text.

    (The cell's code is parsed, not run. ``papermill.inspect_notebook`` is not used: it
    skips lines whose comment holds an ``=``.)
    """
    source = parameters_cell(notebook)
    out = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and node.value is not None:
                try:
                    out[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    out[target.id] = ast.get_source_segment(source, node.value)
    return out


def check_declared(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``parameters`` holds a name that ``notebook`` does not declare
    in its parameters cell; the message lists the valid names."""
    notebook = Path(notebook)
    checks.known_names(parameters, declared_parameters(notebook), f"notebook {notebook.name}")
