import pytest

from entk_utils.report import fill_region, update_readme


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
