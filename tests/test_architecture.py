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
