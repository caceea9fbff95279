"""Keep the result tables of the README and of ``docs/`` in step with what the notebooks and
benchmarks wrote.

The README and every ``docs/*.md`` hold marked regions ``<!-- BEGIN name -->`` ...
``<!-- END name -->``; each is replaced by the contents of a Markdown file (e.g.
``paper_figures/summary_mlp.md``), or by some of its columns, so no number in them is typed by
hand. A region lives in whichever of those documents holds it (the full tables mostly in
``docs/results.md`` and ``docs/speed.md``); one that appears in several (a README teaser) is
filled in each. Run ``python -m entk_utils.io.report`` (``make figures`` and ``make benchmark``
do). ``python -m entk_utils.io.report --strip-widgets NB.ipynb ...`` removes the progress-bar
widgets from executed notebooks (``make figures`` does), whose saved text would be stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# A region's source: a generated Markdown file (relative to the repository root), or such a
# file's table and the columns of it to keep, in that order.
Source = str | tuple[str, tuple[str, ...]]

# The columns of notebook 07's summary shown in docs/results.md.
TOY_COLUMNS = ("configuration", "method", "k", "seeds", "mmcs", "mmcs ±", "recovered", "recovered ±", "column mmcs", "matrix mmcs", "auroc", "auroc ±")

REPLICATION_COLUMNS = ("method", "labels", "layers used", "layers", "n labels", "auroc", "ap", "paper auroc", "paper ap")

# region -> its source
SECTIONS: dict[str, Source] = {
    "mlp-summary": "paper_figures/summary_mlp.md",
    "mlp-table1": "paper_figures/table1_mlp_overlaps.md",
    "transformer-summary": "paper_figures/summary_transformer.md",
    "transformer-table2": "paper_figures/table2_transformer_overlaps.md",
    "gemma-summary": "paper_figures/summary_gemma.md",
    "gemma-n1024-summary": "paper_figures/gemma_n1024_layer16/summary_gemma.md",
    "gemma-n1024-teaser": ("paper_figures/gemma_n1024_layer16/summary_gemma.md",
                           ("method", "auroc", "auroc low", "auroc high", "ap", "ap low", "ap high",
                            "labels eNTK better (Holm 5%)", "labels eNTK worse (Holm 5%)")),
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
    "replication-gemma": ("paper_figures/replication/table8_layers_gguf.md", REPLICATION_COLUMNS),
    "replication-smollm2": ("paper_figures/replication/table8_layers_smollm2.md", REPLICATION_COLUMNS),
    "replication-tagger": "paper_figures/replication/table8_tagger.md",
    "replication-quantisation": "paper_figures/replication/table8_quantisation_extrapolated.md",
    "replication-models": "paper_figures/replication/table8_models.md",
    "replication-models-teaser": ("paper_figures/replication/table8_models.md",
                                  ("method", "model", "auroc", "auroc low", "auroc high", "entk minus method",
                                   "labels eNTK better (Holm 5%)", "labels eNTK worse (Holm 5%)")),
    "smollm2-n1024-summary": "paper_figures/smollm2_n1024_layer27/summary_gemma.md",
    "smollm2-n1024-finders": "paper_figures/smollm2_n1024_layer27/table5_finders_gemma.md",
    "smollm2-n1024-discovery": "paper_figures/smollm2_n1024_layer27/table6_discovery_gemma.md",
    "toy-default": ("paper_figures/table7_toy_summary.md", TOY_COLUMNS),
    "toy-spd": ("paper_figures/toy_spd/table7_toy_summary.md", TOY_COLUMNS),
    "toy-transformer": ("paper_figures/table7_transformer_finders.md",
                        ("method", "family", "eigvecs", "overlap", "dim", "null_mean", "null_p", "keys")),
    "toy-modular": ("paper_figures/table7_modular_finders.md",
                    ("method", "block", "directions", "family", "overlap", "dim", "null_mean", "null_p")),
}

# The documents that hold regions, relative to the repository root (glob patterns).
DOCUMENTS = ("README.md", "docs/*.md")


def documents(root: str | Path = ".") -> list[Path]:
    """The documents under ``root`` that may hold regions: README.md, then docs/*.md by name."""
    root = Path(root)
    return [path for pattern in DOCUMENTS for path in sorted(root.glob(pattern)) if path.is_file()]


def region_names(text: str) -> list[str]:
    """The names of the regions ``text`` holds (a ``<!-- BEGIN name -->`` line), in order, each once."""
    return list(dict.fromkeys(re.findall(r"^<!-- BEGIN (\S+) -->$", text, re.M)))


def fill_region(text: str, name: str, content: str) -> str:
    """Replace the body of region ``name`` in ``text``; ``ValueError`` if it has none."""
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no region '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' found")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table_columns(table: str, columns: tuple[str, ...] | list[str]) -> str:
    """The columns named ``columns`` (in that order) of the Markdown table ``table`` (a header,
    an alignment row, then rows; cells without ``|``); ``ValueError`` naming any it lacks."""
    lines = [line for line in table.strip().splitlines() if line.strip()]
    header = _cells(lines[0])
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"table has no column {missing}; its columns: {header}")
    keep = [header.index(c) for c in columns]
    align = [(":" if a.startswith(":") else "") + "---" + (":" if a.endswith(":") else "") for a in _cells(lines[1])]
    rows = [header, align] + [_cells(line) for line in lines[2:]]
    return "\n".join("| " + " | ".join(cells[i] for i in keep) + " |" for cells in rows) + "\n"


def source_text(root: str | Path, source: Source) -> str | None:
    """The Markdown a region gets from ``source`` (see :data:`Source`), or None where the file
    does not exist (yet)."""
    path, columns = (source, None) if isinstance(source, str) else source
    path = Path(root) / path
    if not path.exists():
        return None
    return path.read_text() if columns is None else table_columns(path.read_text(), columns)


def update_documents(root: str | Path = ".", sections: dict[str, Source] = SECTIONS) -> dict[str, list[str]]:
    """Fill every region of ``sections`` whose source exists, in each document that holds it
    (:func:`documents`); return ``{document relative to root: [regions filled]}`` for the
    documents that hold any of them. ``ValueError`` (before any file is written) if such a
    region is in no document."""
    root = Path(root)
    texts = {path: path.read_text() for path in documents(root)}
    filled: dict[Path, list[str]] = {path: [] for path in texts}
    for name, source in sections.items():
        content = source_text(root, source)
        if content is None:
            continue
        homes = [path for path, text in texts.items() if name in region_names(text)]
        if not homes:
            raise ValueError(f"no region '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' found in "
                             f"{', '.join(DOCUMENTS)} under {root}")
        for path in homes:
            texts[path] = fill_region(texts[path], name, content)
            filled[path].append(name)
    for path, text in texts.items():
        if filled[path] and text != path.read_text():
            path.write_text(text)
    return {path.relative_to(root).as_posix(): names for path, names in filled.items() if names}


def update_readme(root: str | Path = ".", sections: dict[str, Source] = SECTIONS) -> list[str]:
    """Fill every region whose source exists, in README.md and docs/*.md
    (:func:`update_documents`); return the names of the regions filled, each once, in the
    order of ``sections``."""
    done = {name for names in update_documents(root, sections).values() for name in names}
    return [name for name in sections if name in done]


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
        done = update_documents(sys.argv[1] if len(sys.argv) > 1 else ".")
        for document, names in done.items():
            print(f"{document}: refreshed {', '.join(names)}")
        if not done:
            print("nothing refreshed")
