from pathlib import Path

import pytest

from entk_utils.io.report import (SECTIONS, documents, fill_region, region_names, table_columns, update_documents,
                                  update_readme)

ROOT = Path(__file__).resolve().parents[1]


def test_fill_region_replaces_only_the_body():
    text = "intro\n<!-- BEGIN t -->\nold\n<!-- END t -->\noutro\n"
    assert fill_region(text, "t", "new\n") == "intro\n<!-- BEGIN t -->\nnew\n<!-- END t -->\noutro\n"
    with pytest.raises(ValueError, match="no region"):
        fill_region(text, "missing", "x")


def test_update_readme_skips_missing_sources(tmp_path):
    (tmp_path / "README.md").write_text("<!-- BEGIN a -->\n<!-- END a -->\n<!-- BEGIN b -->\nkeep\n<!-- END b -->\n")
    (tmp_path / "a.md").write_text("| x |\n")
    assert update_readme(tmp_path, {"a": "a.md", "b": "b.md"}) == ["a"]
    assert (tmp_path / "README.md").read_text() == "<!-- BEGIN a -->\n| x |\n<!-- END a -->\n<!-- BEGIN b -->\nkeep\n<!-- END b -->\n"


def test_regions_are_filled_in_whichever_document_holds_them(tmp_path):
    """README.md and docs/*.md: each region where it lives, a region held twice (a teaser) in both,
    other Markdown files left alone; the kept name update_readme does the same."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- BEGIN a -->\n<!-- END a -->\n")
    (tmp_path / "docs" / "results.md").write_text("x\n<!-- BEGIN a -->\nold\n<!-- END a -->\n<!-- BEGIN b -->\n<!-- END b -->\n")
    (tmp_path / "docs" / "speed.md").write_text("<!-- BEGIN c -->\n<!-- END c -->\n")
    (tmp_path / "NOTES.md").write_text("<!-- BEGIN c -->\n<!-- END c -->\n")
    for name in "abc":
        (tmp_path / f"{name}.md").write_text(f"| {name} |\n")
    sections = {"a": "a.md", "b": "b.md", "c": "c.md", "d": "d.md"}
    assert update_documents(tmp_path, sections) == {"README.md": ["a"], "docs/results.md": ["a", "b"],
                                                   "docs/speed.md": ["c"]}
    assert (tmp_path / "README.md").read_text() == "<!-- BEGIN a -->\n| a |\n<!-- END a -->\n"
    assert (tmp_path / "docs" / "results.md").read_text() == (
        "x\n<!-- BEGIN a -->\n| a |\n<!-- END a -->\n<!-- BEGIN b -->\n| b |\n<!-- END b -->\n")
    assert (tmp_path / "docs" / "speed.md").read_text() == "<!-- BEGIN c -->\n| c |\n<!-- END c -->\n"
    assert (tmp_path / "NOTES.md").read_text() == "<!-- BEGIN c -->\n<!-- END c -->\n"
    assert update_readme(tmp_path, sections) == ["a", "b", "c"]


def test_a_region_with_a_source_but_no_home_is_an_error_and_nothing_is_written(tmp_path):
    (tmp_path / "README.md").write_text("<!-- BEGIN a -->\n<!-- END a -->\n")
    (tmp_path / "a.md").write_text("| a |\n")
    (tmp_path / "lost.md").write_text("| lost |\n")
    with pytest.raises(ValueError, match="no region '<!-- BEGIN lost -->'"):
        update_documents(tmp_path, {"a": "a.md", "lost": "lost.md"})
    assert (tmp_path / "README.md").read_text() == "<!-- BEGIN a -->\n<!-- END a -->\n"


def test_a_region_can_keep_some_columns_of_a_table(tmp_path):
    table = ("| method   |   auroc |   ap |   N |\n|:---------|--------:|-----:|----:|\n"
             "| entk     |   0.776 | 0.404 | 1024 |\n| pca      |   0.718 | 0.310 | 1024 |\n")
    assert table_columns(table, ("method", "ap")) == "| method | ap |\n| :--- | ---: |\n| entk | 0.404 |\n| pca | 0.310 |\n"
    with pytest.raises(ValueError, match="no column"):
        table_columns(table, ("method", "f1"))
    (tmp_path / "README.md").write_text("<!-- BEGIN t -->\n<!-- END t -->\n")
    (tmp_path / "t.md").write_text(table)
    assert update_readme(tmp_path, {"t": ("t.md", ("N", "auroc"))}) == ["t"]
    assert "| N | auroc |\n| ---: | ---: |\n| 1024 | 0.776 |" in (tmp_path / "README.md").read_text()


def test_region_names_are_the_marker_lines_not_markers_quoted_in_prose():
    text = "regions `<!-- BEGIN name -->` ... `<!-- END name -->`\n<!-- BEGIN b -->\n<!-- END b -->\n<!-- BEGIN a -->\n"
    assert region_names(text) == ["b", "a"]


def test_every_region_of_the_documents_has_a_source_and_every_source_a_home():
    held = {name for path in documents(ROOT) for name in region_names(path.read_text())}
    assert [p.relative_to(ROOT).as_posix() for p in documents(ROOT)][0] == "README.md"
    assert held - set(SECTIONS) == set(), "regions no source fills"
    assert set(SECTIONS) - held == set(), "sources whose region no document holds"


def test_every_region_is_closed_once_per_opening():
    for path in documents(ROOT):
        text = path.read_text()
        for name in region_names(text):
            assert text.count(f"<!-- BEGIN {name} -->") == text.count(f"<!-- END {name} -->") == 1, (path, name)


def test_strip_widget_outputs_removes_progress_bars_and_keeps_the_rest(tmp_path):
    import nbformat

    from entk_utils.io.report import WIDGET_MIME, strip_widget_outputs

    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "x"}, "text/plain": "bar:   0%|"}),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("# text")]), str(path))
    assert strip_widget_outputs(path) == 1
    cleaned = nbformat.read(str(path), as_version=4)
    assert [o.output_type for o in cleaned.cells[0].outputs] == ["stream"]
    assert strip_widget_outputs(path) == 0
