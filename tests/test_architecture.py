"""The package's layers import only downwards (ARCHITECTURE.md), and no module grows past the
size the layout promises."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "entk_utils"
# What each layer may import from the package besides itself.
ALLOWED = {
    "io": set(),
    "settings": {"io"},
    "kernels": {"io"},
    "features": {"io", "kernels"},
    "experiments": {"io", "settings", "kernels", "features"},
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in ALLOWED)


def imported_layers(path: Path, source: str | None = None) -> set[str]:
    """The top-level sub-packages of entk_utils that the module at ``path`` (its text, or
    ``source``) imports, absolutely or relatively."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if node.module else [target + [a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "entk_utils":
                names = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
            else:
                continue
            found.update(n[0] for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("entk_utils."))
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_only_downwards(path):
    layer = path.relative_to(PACKAGE).parts[0]
    upward = imported_layers(path) - ALLOWED[layer] - {layer}
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {layer}) imports {sorted(upward)}"


def test_the_layer_check_sees_relative_and_absolute_upward_imports():
    module = PACKAGE / "features" / "some_feature.py"
    assert imported_layers(module, "from ..settings.modular import train\n") == {"settings"}
    assert imported_layers(module, "from entk_utils.experiments import gemma\n") == {"experiments"}
    assert imported_layers(module, "import entk_utils.settings.language\nfrom .geometry import x\n") == {
        "settings", "features"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_about_400_lines(path):
    assert len(path.read_text().splitlines()) <= 420, f"{path.relative_to(PACKAGE)} should be split"


# --------------------------------------------------------------------------- modules, circles, private names
def module_name(path: Path) -> str:
    """``entk_utils.kernels.anatomy`` for ``entk_utils/kernels/anatomy.py`` (a package by its folder)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGE_MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, source: str | None = None, modules=PACKAGE_MODULES) -> tuple[set[str], list[tuple[str, str]]]:
    """The package modules that module ``name`` imports (anywhere in it: at the top, inside
    functions, under ``TYPE_CHECKING``), and the private names it takes from them
    (``from .x import _y``, or ``x._y`` of an imported module ``x``): ``(modules, [(module, name)])``."""
    path = modules.get(name)
    is_package = path is not None and path.name == "__init__.py"
    tree = ast.parse(path.read_text() if source is None else source)
    here = name.split(".") if is_package else name.split(".")[:-1]
    found, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if not target.startswith("entk_utils"):
                continue
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
                    continue
                found.add(target)
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append((target, alias.name))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("entk_utils."))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            private.append((aliases[node.value.id], node.attr))
    return {m for m in found if m in modules and m != name}, private


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, a package's ``__init__`` excluded as a target
    of its own modules (importing ``.x`` from inside the package runs the package first)."""
    graph = {}
    for name in PACKAGE_MODULES:
        imported, _ = imports_of(name)
        graph[name] = {m for m in imported if not name.startswith(m + ".")}
    return graph


def test_no_module_imports_itself_back_through_others():
    assert import_circles(package_graph()) == []


@pytest.mark.parametrize("name", sorted(PACKAGE_MODULES))
def test_no_module_takes_another_modules_private_names(name):
    _, private = imports_of(name)
    assert not private, f"{name} uses private names of other modules: {private}"


def test_the_circle_and_private_name_checks_see_what_they_look_for():
    modules = {"entk_utils.kernels.a": PACKAGE / "kernels" / "a.py", "entk_utils.kernels.b": PACKAGE / "kernels" / "b.py"}
    found, private = imports_of("entk_utils.kernels.a", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from .b import Thing, _helper\nfrom . import b\nb._other()\n", modules)
    assert found == {"entk_utils.kernels.b"}
    assert private == [("entk_utils.kernels.b", "_helper"), ("entk_utils.kernels.b", "_other")]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []
