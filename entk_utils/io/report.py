"""Keep the README's result tables in step with what the notebooks and benchmarks wrote.

The README holds marked regions ``<!-- BEGIN name -->`` ... ``<!-- END name -->``; each is
replaced by the contents of a Markdown file (e.g. ``paper_figures/summary_mlp.md``), so no
number in the README is typed by hand. Run ``python -m entk_utils.io.report`` (``make figures``
and ``make benchmark`` do). ``python -m entk_utils.io.report --strip-widgets NB.ipynb ...`` removes
the progress-bar widgets from executed notebooks (``make figures`` does), whose saved text would
be stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# README region -> generated Markdown file (relative to the repository root)
SECTIONS = {
    "mlp-summary": "paper_figures/summary_mlp.md",
    "mlp-table1": "paper_figures/table1_mlp_overlaps.md",
    "transformer-summary": "paper_figures/summary_transformer.md",
    "transformer-table2": "paper_figures/table2_transformer_overlaps.md",
    "gemma-summary": "paper_figures/summary_gemma.md",
    "gemma-n1024-summary": "paper_figures/gemma_n1024_layer16/summary_gemma.md",
    "gemma-n1024-causal": "paper_figures/gemma_n1024_layer16/table4_causal_gemma.md",
    "gemma-finders": "paper_figures/table5_finders_gemma.md",
    "gemma-n1024-finders": "paper_figures/gemma_n1024_layer16/table5_finders_gemma.md",
    "gemma-discovery": "paper_figures/table6_discovery_gemma.md",
    "gemma-n1024-discovery": "paper_figures/gemma_n1024_layer16/table6_discovery_gemma.md",
    "seeds-summary": "paper_figures/summary_seeds.md",
    "seeds-paper-summary": "paper_figures/seeds_paper/summary_seeds.md",
    "seeds-paper-reliability": "paper_figures/seeds_paper/table_seeds_transformer_overlaps.md",
    "causal-summary": "paper_figures/summary_causal.md",
    "your-model-summary": "paper_figures/summary_your_model.md",
    "your-model-discovery": "paper_figures/table_your_model_discovery.md",
    "bench-entk": "benchmarks/results/bench_entk.md",
    "bench-operators": "benchmarks/results/bench_operators.md",
    "bench-operators-eigs": "benchmarks/results/bench_operators_eigs.md",
    "bench-distributed": "benchmarks/results/bench_distributed.md",
    "bench-peers": "benchmarks/results/bench_peers.md",
    "gpu-check": "benchmarks/results/gpu_check.md",
    "size-of-tests": "benchmarks/results/size_of_tests.md",
}


def fill_region(text: str, name: str, content: str) -> str:
    """Replace the body of region ``name`` in ``text``; ``ValueError`` if it has none."""
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no region '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' found")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text)


def update_readme(root: str | Path = ".", sections: dict[str, str] = SECTIONS) -> list[str]:
    """Fill every region whose source file exists; return the names of the regions filled."""
    root = Path(root)
    readme = root / "README.md"
    text = readme.read_text()
    filled = []
    for name, source in sections.items():
        path = root / source
        if path.exists():
            text = fill_region(text, name, path.read_text())
            filled.append(name)
    readme.write_text(text)
    return filled


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widget_outputs(notebook: str | Path) -> int:
    """Remove the widget outputs (tqdm's progress bars) from an executed notebook, in place.

    A widget's state is not saved with the notebook, so a reader would see only its text
    fallback frozen at creation ("0%|          | 0/51"), a stale line. Returns how many
    outputs were removed; the file is rewritten only if any were.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
        removed += len(cell.outputs) - len(kept)
        cell.outputs = kept
    if removed:
        nbformat.write(nb, str(notebook))
    return removed


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--strip-widgets":
        for path in sys.argv[2:]:
            print(f"{path}: removed {strip_widget_outputs(path)} widget outputs")
    else:
        done = update_readme(sys.argv[1] if len(sys.argv) > 1 else ".")
        print(f"README.md: refreshed {', '.join(done) or 'nothing'}")
