"""The book builds offline, warning-free, with one HTML page per _toc.yml entry.

Builds the repository itself (as `make book` does) into a temporary folder with
``jupyter-book build <repo> -W -n --keep-going --path-output <tmp>`` (the session fixture
``book_build`` in conftest.py, shared with test_site_browser.py, so the book is built once).
Notebooks are not executed (``execute_notebooks: "off"``): their stored outputs are rendered.
Skip with ``pytest -m "not book"``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]


def toc_entries(toc: dict) -> list[str]:
    """Every `file` of a jb-book _toc.yml, root first, in reading order."""
    entries = [toc["root"]]

    def walk(items: list[dict]) -> None:
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            for key in ("chapters", "sections", "parts"):
                walk(item.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return entries


def source_of(entry: str) -> Path | None:
    """The .md or .ipynb file of a _toc.yml entry (given with or without its suffix)."""
    for suffix in ("", ".md", ".ipynb"):
        path = REPO / f"{entry}{suffix}"
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def entries() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    assert toc.get("format") == "jb-book"
    return [e.removesuffix(".md").removesuffix(".ipynb") for e in toc_entries(toc)]


def test_toc_entries_exist(entries):
    missing = [e for e in entries if source_of(e) is None]
    assert not missing, f"_toc.yml lists files that do not exist (.md or .ipynb): {missing}"


def test_config_never_executes_notebooks():
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True


def test_book_builds(entries, request):
    missing = [e for e in entries if source_of(e) is None]
    if missing:
        pytest.fail(f"cannot build: _toc.yml lists missing files {missing}")
    build = request.getfixturevalue("book_build")  # built once per session (conftest.py)
    log = build.log
    assert build.returncode == 0, f"jupyter-book build failed ({build.returncode}):\n{log[-6000:]}"

    html = build.html
    assert (html / "index.html").is_file()
    pages = {e: html / f"{e}.html" for e in entries}
    absent = [str(p.relative_to(html)) for p in pages.values() if not p.is_file()]
    assert not absent, f"no HTML page for: {absent}"
    for entry, page in pages.items():
        assert page.stat().st_size > 1000, f"{entry}: suspiciously small page"

    # The execution record and the bibliography are really there.
    assert "Chapter" in (html / "book" / "execution.html").read_text(encoding="utf-8") or (
        "No chapter notebooks" in (html / "book" / "execution.html").read_text(encoding="utf-8")
    )
    refs = (html / "book" / "references.html").read_text(encoding="utf-8")
    assert "humancompatible.train" in refs

    wrote = build.wrote_into_repo
    assert not wrote, f"the build wrote into the repository: {wrote}"


MYST_LEFTOVERS = re.compile(r"\{(cite|cite:t|cite:p|eq|doc|glue|glue:text|glue:md|numref|ref)\}`"
                            r"|(```+|:::+)\{(literalinclude|exercise|solution|solution-start|solution-end|"
                            r"dropdown|math)\}")


def test_downloaded_notebooks_read_without_sphinx(entries, request):
    """The notebooks behind the download button (_sources/) hold plain Markdown: citations,
    equation references, glued numbers, included code and exercises resolved (_ext/clean_download.py)."""
    build = request.getfixturevalue("book_build")
    assert build.returncode == 0, build.log[-3000:]
    chapters = [e for e in entries if e.startswith("notebooks/")]
    left = {}
    for entry in chapters:
        copy = build.html / "_sources" / f"{entry}.ipynb"
        assert copy.is_file(), f"no downloadable copy of {entry}"
        nb = json.loads(copy.read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        found = sorted({m.group(0) for m in MYST_LEFTOVERS.finditer(text)})
        if found:
            left[entry] = found
    assert not left, f"MyST left in downloaded notebooks: {left}"
    first = json.loads((build.html / "_sources" / "notebooks" / "01_problem_and_data.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in first["cells"] if c["cell_type"] == "markdown")
    assert "(Kliachkin et al., 2025b)" in text  # a citation, as the bibliography labels it
    spbm = json.loads((build.html / "_sources" / "notebooks" / "06_spbm.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in spbm["cells"] if c["cell_type"] == "markdown")
    assert "class SPBM(ConstrainedOptimizer):" in code  # the included listing, inlined
    # the repository's chapters themselves are untouched
    assert "{cite}`" in (REPO / "notebooks" / "01_problem_and_data.ipynb").read_text(encoding="utf-8")


def test_chapters_store_no_progress_bars() -> None:
    # a tqdm bar is noise to a reader; `make notebooks` runs with HCTRAIN_PROGRESS=0
    import json
    import re

    bar = re.compile(r"\d+%\|.*\|")
    found = []
    for path in sorted(Path(__file__).resolve().parents[1].glob("notebooks/*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", ""))
                widget = "application/vnd.jupyter.widget-view+json" in output.get("data", {})
                if widget or (output.get("name") == "stderr" and bar.search(text)):
                    found.append(path.name)
    assert not found, f"progress bars stored in {sorted(set(found))}"


def test_every_chapter_installs_hctrain_when_it_is_missing() -> None:
    """Colab and Binder start without hctrain: each chapter's first code cell installs it from the
    repository named in _config.yml (the cell is hidden on the site and a no-op where hctrain is
    installed); the parameters cell comes after it."""
    import json

    url = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))["repository"]["url"]
    wrong = []
    for path in sorted(REPO.glob("notebooks/*.ipynb")):
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        first, source = code[0], "".join(code[0]["source"])
        tags = first["metadata"].get("tags", [])
        if not ("launch" in tags and "remove-cell" in tags and f"git+{url}" in source
                and "import hctrain" in source and "parameters" in code[1]["metadata"].get("tags", [])):
            wrong.append(path.name)
    assert not wrong, f"chapters without the launch cell before the parameters cell: {wrong}"


def test_chapters_store_no_warnings_or_empty_outputs() -> None:
    """A stored warning (or anything on stderr) or an empty output box is noise on the page: the
    chapters are executed so that none is left (issue 12, item 2)."""
    import json

    found = []
    for path in sorted(REPO.glob("notebooks/*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", ""))
                if output.get("name") == "stderr" or "Warning:" in text:
                    found.append(f"{path.name} cell {index}: {text.strip()[:80]}")
                elif output.get("output_type") == "stream" and not text.strip():
                    found.append(f"{path.name} cell {index}: an empty output")
    assert not found, "\n".join(found)
