"""The book builds offline, warning-free, with one HTML page per _toc.yml entry.

Builds the repository itself (as `make book` does) into a temporary folder with
``jupyter-book build <repo> -W -n --keep-going --path-output <tmp>``. Notebooks are not
executed (``execute_notebooks: "off"``): their stored outputs are rendered. Skip with
``pytest -m "not book"``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
# What a build could leave in the source tree if it wrote there instead of --path-output.
BUILD_LEFTOVERS = ["_build", "jupyter_execute", ".jupyter_cache", "notebooks/_build"]


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


def _source(entry: str) -> Path | None:
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
    missing = [e for e in entries if _source(e) is None]
    assert not missing, f"_toc.yml lists files that do not exist (.md or .ipynb): {missing}"


def test_config_never_executes_notebooks():
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True


def test_book_builds(entries, tmp_path):
    missing = [e for e in entries if _source(e) is None]
    if missing:
        pytest.fail(f"cannot build: _toc.yml lists missing files {missing}")
    before = {p for p in BUILD_LEFTOVERS if (REPO / p).exists()}

    cmd = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(REPO),
        "--path-output",
        str(tmp_path),
        "-W",
        "-n",
        "--keep-going",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"jupyter-book build failed ({proc.returncode}):\n{log[-6000:]}"

    html = tmp_path / "_build" / "html"
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

    after = {p for p in BUILD_LEFTOVERS if (REPO / p).exists()}
    assert after == before, f"the build wrote into the repository: {sorted(after - before)}"
