"""hctrain.status: the execution-status table read from papermill's notebook metadata."""
from __future__ import annotations

import nbformat
import pandas as pd
import pytest

from hctrain.status import NOT_PAPERMILL, execution_table, main, to_markdown, write_status


def _notebook(title: str, papermill: dict | None = None) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import os"),
        nbformat.v4.new_markdown_cell(f"Some text first.\n\n# {title}\n\n## A section"),
        nbformat.v4.new_code_cell("quick = False", metadata={"tags": ["parameters"]}),
    ]
    if papermill is not None:
        nb.metadata["papermill"] = papermill
    return nb


PM_FULL = {
    "default_parameters": {},
    "duration": 3723.5,
    "end_time": "2025-10-01T12:02:03.500000+00:00",
    "environment_variables": {},
    "exception": None,
    "input_path": "notebooks/02_baselines.ipynb",
    "output_path": "notebooks/02_baselines.ipynb",
    "parameters": {},
    "start_time": "2025-10-01T11:00:00+00:00",
    "version": "2.7.0",
}


@pytest.fixture
def nbdir(tmp_path):
    nbformat.write(_notebook("Problem and data"), tmp_path / "01_problem_and_data.ipynb")
    nbformat.write(_notebook("Baselines | Adam", PM_FULL), tmp_path / "02_baselines.ipynb")
    quick = dict(PM_FULL, duration=12.25, exception=True, parameters={"quick": True, "state": "CA"})
    nbformat.write(_notebook("Quick run", quick), tmp_path / "03_quick.ipynb")
    (tmp_path / "notes.txt").write_text("not a notebook")
    return tmp_path


def test_execution_table(nbdir):
    table = execution_table(nbdir)
    assert list(table["notebook"]) == [
        "01_problem_and_data.ipynb",
        "02_baselines.ipynb",
        "03_quick.ipynb",
    ]
    assert list(table["chapter"]) == ["Problem and data", "Baselines | Adam", "Quick run"]

    never = table.iloc[0]
    assert never["status"] == NOT_PAPERMILL
    assert pd.isna(never["executed_at"]) and pd.isna(never["duration_s"])

    full = table.iloc[1]
    assert full["status"] == "ok"
    assert full["mode"] == "full"
    assert full["parameters"] == "defaults"
    assert full["duration_s"] == pytest.approx(3723.5)
    assert full["executed_at"] == pd.Timestamp("2025-10-01 12:02:03.5", tz="UTC")

    quick = table.iloc[2]
    assert quick["mode"] == "quick"
    assert quick["parameters"] == 'quick=true, state="CA"'
    assert quick["status"] == "failed (a cell raised)"


def test_markdown_and_cli(nbdir, tmp_path, capsys):
    md = to_markdown(execution_table(nbdir))
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 3
    assert "Baselines \\| Adam" in md  # a pipe in a title does not break the table
    assert "1 h 02 min" in md and "12.2 s" in md
    assert NOT_PAPERMILL in lines[2]

    out = write_status(nbdir, tmp_path / "book" / "_status.md")
    assert out.read_text().endswith(md)

    assert main(["--notebooks", str(nbdir), "--print"]) == 0
    assert capsys.readouterr().out == md


def test_empty_folder(tmp_path):
    table = execution_table(tmp_path)
    assert table.empty and list(table.columns)[:2] == ["notebook", "chapter"]
    assert "No chapter notebooks" in to_markdown(table)


def test_committed_page_matches_the_chapters(tmp_path):
    """book/_execution_status.md is what `make status` writes for the stored notebooks."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    committed = (root / "book" / "_execution_status.md").read_text(encoding="utf-8")
    fresh = write_status(root / "notebooks", tmp_path / "status.md").read_text(encoding="utf-8")
    assert committed == fresh, (
        "book/_execution_status.md is stale: a chapter was re-executed after the page was "
        "written. Run `make status` and commit the page."
    )
