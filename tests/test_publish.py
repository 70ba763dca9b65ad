"""`make publish-site` pushes the built site to a gh-pages branch (ghp-import), here to a bare
repository on disk; the GitHub Pages workflow builds with `make book` and deploys that folder."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_publish_pushes_the_site_to_gh_pages(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    remote = tmp_path / "remote.git"
    git("init", "--bare", "-q", str(remote), cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start", cwd=work)
    git("remote", "add", "origin", str(remote), cwd=work)
    site = work / "_build" / "html"
    (site / "_static").mkdir(parents=True)
    (site / "index.html").write_text("<html>book</html>")
    (site / "_static" / "hctrain.css").write_text("body {}")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # publishing twice replaces the branch: one commit, no history
        result = subprocess.run(["make", "-f", str(REPO / "Makefile"), "publish-site",
                                 f"VENV={REPO / '.venv'}"], cwd=work, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    files = git("ls-tree", "-r", "--name-only", "gh-pages", cwd=remote).split()
    assert sorted(files) == [".nojekyll", "_static/hctrain.css", "index.html"]
    assert len(git("rev-list", "gh-pages", cwd=remote).split()) == 1
    assert git("show", "gh-pages:index.html", cwd=remote) == "<html>book</html>"


def test_publish_without_a_built_site_says_so(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    git("init", "-q", cwd=tmp_path)
    result = subprocess.run(["make", "-f", str(REPO / "Makefile"), "publish-site", f"VENV={REPO / '.venv'}"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "run make book first" in result.stderr


def test_pages_workflow_builds_with_make_book_and_deploys_the_site() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    build = workflow["jobs"]["build"]["steps"]
    assert any(step.get("run") == "make book" for step in build)
    upload = next(s for s in build if str(s.get("uses", "")).startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert any(str(s.get("uses", "")).startswith("actions/deploy-pages") for s in deploy["steps"])
    assert workflow["permissions"]["pages"] == "write"
