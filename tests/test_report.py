import pytest

from entk_utils.io.report import fill_region, update_readme


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
