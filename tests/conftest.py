"""Fixtures shared by the library tests (the environment is set in ../conftest.py)."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Lines for the end of the run's terminal summary (where the site screenshots went, ...).
SUMMARY_LINES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def summary_lines(request: pytest.FixtureRequest) -> list[str]:
    """Append a line to have it printed in the terminal summary, after the test results."""
    return request.config.stash.setdefault(SUMMARY_LINES, [])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY_LINES, [])
    if lines:
        terminalreporter.section("hctrain")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # --nbval-lax collects every *.ipynb it meets; only chapters under notebooks/ are tests.
    # (This hook applies to paths under tests/; the other test path is notebooks/ itself.)
    if collection_path.suffix == ".ipynb":
        return True
    return None


# What a book build could leave in the source tree if it wrote there instead of --path-output.
BUILD_LEFTOVERS = ["_build", "jupyter_execute", ".jupyter_cache", "notebooks/_build"]


@dataclass(frozen=True)
class BookBuild:
    returncode: int
    log: str
    html: Path  # <output>/_build/html
    wrote_into_repo: list[str]  # BUILD_LEFTOVERS that the build created in the repository


@pytest.fixture(scope="session")
def book_build(tmp_path_factory: pytest.TempPathFactory) -> BookBuild:
    """The repository's book, built once per session as `make book` does, into a temporary folder.

    ``jupyter-book build <repo> -W -n --keep-going --path-output <tmp>``; notebooks are not
    executed (``execute_notebooks: "off"``). Shared by test_book_build.py (the build itself)
    and test_site_browser.py (the pages in a browser), so the book is built only once.
    """
    out = tmp_path_factory.mktemp("book")
    before = {p for p in BUILD_LEFTOVERS if (REPO / p).exists()}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(REPO),
        "--path-output",
        str(out),
        "-W",
        "-n",
        "--keep-going",
    ]
    proc = subprocess.run(
        cmd, cwd=out, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )
    after = {p for p in BUILD_LEFTOVERS if (REPO / p).exists()}
    return BookBuild(
        returncode=proc.returncode,
        log=proc.stdout + proc.stderr,
        html=out / "_build" / "html",
        wrote_into_repo=sorted(after - before),
    )
