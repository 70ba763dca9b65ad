"""Every page of the built book, opened in headless Chromium: its title, its figures, no errors.

The book is built once per session (the ``book_build`` fixture in conftest.py, shared with
test_book_build.py), served over http://127.0.0.1 on a free port, and each page listed in
_toc.yml is opened with Selenium in Debian's Chromium (``/usr/bin/chromium`` driven by
``/usr/bin/chromedriver``; Selenium Manager is never used, so nothing is downloaded). Per page:

* the article's ``<h1>`` is there and reads as the source's first heading;
* every ``<img>`` of the article loaded (``complete && naturalWidth > 0``), and a chapter
  notebook shows at least as many loaded figures in its cell outputs as it stores image
  outputs (so at least one for any chapter with a stored ``image/png``);
* no error output: no rendered traceback (an ``error`` output, ``div.output.traceback``), no
  stderr stream that holds a traceback or an ``...Error:``/``...Exception:`` line (tqdm progress
  bars and warnings on stderr are allowed), no docutils/Sphinx error markup, and no failed
  request or script error for the site's own files in the browser console;
* a full-page screenshot goes to ``$HCTRAIN_ARTIFACTS/screenshots/<page>.png``
  (default ``artifacts/screenshots/`` in the repository, ignored by git).

``.ci/run`` installs Chromium with apt-get. Without a browser the test is skipped locally and
fails in CI (``CI=true``, or ``HCTRAIN_REQUIRE_BROWSER=1`` as ``.ci/run`` sets).
Skip with ``pytest -m "not book"``.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from test_book_build import source_of, toc_entries

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("HCTRAIN_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("HCTRAIN_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOTS = Path(os.environ.get("HCTRAIN_ARTIFACTS") or REPO / "artifacts") / "screenshots"

# Chromium on a machine without a display, GPU or internet (as root in CI: no sandbox).
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    # Offline, as a reader without internet: every host but the local server fails to resolve,
    # so a page that needs a CDN (MathJax, fonts) shows what such a reader sees.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,1000",
]

# A stderr stream counts as error output when it holds a traceback or an exception line.
STDERR_ERROR = re.compile(
    r"Traceback \(most recent call last\)"
    r"|^\s*[A-Za-z_][\w.]*(Error|Exception):"
    r"|^\s*(ERROR|CRITICAL)\b",
    re.MULTILINE,
)
# Outputs that myst-nb renders from a higher-priority mime type than an image (HTML builder).
ABOVE_IMAGES = ("application/vnd.jupyter.widget-view+json", "application/javascript", "text/html")
IMAGE_MIMES = ("image/svg+xml", "image/png", "image/jpeg", "image/gif")
REMOVED_TAGS = {"remove-cell", "remove_cell", "remove-output", "remove_output"}
# Console errors that every Jupyter Book 1 page logs, whatever the book holds: sphinx-thebe
# 0.3.1 (which jupyter-book 1.0.4 always loads, even with `thebe: false`) puts its settings
# <script> into each page twice, pydata-sphinx-theme complains about an empty stored theme
# mode in a new profile, and the browser asks for /favicon.ico, which the book has none of.
CONSOLE_NOISE = re.compile(
    r"Identifier 'THEBE_JS_URL' has already been declared"
    r"|Got invalid theme mode"
    r"|/favicon\.ico - Failed to load resource"
)


# --- what the sources say each page should show ---------------------------------------------


def toc_pages() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    return [f.removesuffix(".md").removesuffix(".ipynb") for f in toc_entries(toc)]


def _first_heading(markdown: str) -> str | None:
    lines = markdown.splitlines()
    if lines and lines[0].strip() == "---":  # MyST front matter
        end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), 0)
        lines = lines[end + 1 :]
    fence = None
    for line in lines:
        stripped = line.strip()
        m = re.match(r"(`{3,}|~{3,}|:{3,})", stripped)
        if m:
            if fence is None:
                fence = m.group(1)[0] * len(m.group(1))
            elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                fence = None
            continue
        if fence is None:
            h = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if h:
                return h.group(1)
    return None


def expected_title(source: Path) -> str | None:
    """The first heading of a .md page or of a notebook's markdown cells (the page title)."""
    if source.suffix == ".ipynb":
        nb = json.loads(source.read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "markdown":
                heading = _first_heading("".join(cell.get("source", "")))
                if heading is not None:
                    return heading
        return None
    return _first_heading(source.read_text(encoding="utf-8"))


def title_parts(heading: str) -> list[str]:
    """The plain-text pieces of a markdown heading that must appear in the rendered <h1>.

    Markup is dropped (links keep their text, roles/code their content); math is left out,
    since MathJax renders it differently.
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url)
    text = re.sub(r"\{[\w:-]+\}`([^`]*)`", r"\1", text)  # {role}`content`
    text = text.replace("`", "").replace("**", "").replace("*", "")
    parts = re.split(r"\$\$.*?\$\$|\$[^$]*\$", text)
    return [" ".join(p.split()) for p in parts if p.strip()]


def expected_figures(source: Path) -> int:
    """How many image outputs a notebook stores that myst-nb renders as <img> (0 for .md)."""
    if source.suffix != ".ipynb":
        return 0
    nb = json.loads(source.read_text(encoding="utf-8"))
    count = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        if REMOVED_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if any(m in data for m in IMAGE_MIMES) and not any(m in data for m in ABOVE_IMAGES):
                count += 1
    return count


# --- the browser side -----------------------------------------------------------------------

# Runs in the page: everything the checks need, in one round trip.
PAGE_REPORT_JS = r"""
const article = document.querySelector('article.bd-article') || document.querySelector('main')
  || document.body;
const h1 = article.querySelector('h1');
let title = null;
if (h1) {
  const copy = h1.cloneNode(true);
  copy.querySelectorAll('.headerlink').forEach(e => e.remove());
  title = copy.textContent.replace(/\s+/g, ' ').trim();
}
const imgs = [...article.querySelectorAll('img')].map(i => ({
  src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
  figure: !!i.closest('.cell_output'), shown: i.getBoundingClientRect().width,
}));
// An output's own text, without the copy button's label.
const text = e => [...e.querySelectorAll('pre')].map(p => p.textContent).join('\n') || e.textContent;
const errors = [];
for (const sel of ['.output.traceback', '.output.error',
                   '[data-mime-type="application/vnd.jupyter.stderr"]',
                   '.system-message', '.problematic']) {
  article.querySelectorAll(sel).forEach(e => errors.push(
    sel + ': ' + text(e).trim().slice(0, 300)));
}
const stderr = [...article.querySelectorAll('.output.stderr')].map(text);
const outputs = [...article.querySelectorAll('.cell_output .output:not(.stderr):not(.traceback)')]
  .map(text);
return {title, imgs, errors, stderr, outputs, url: location.href, doc: document.title};
"""

# Runs in the page once MathJax has typeset it (or at once without MathJax): the math the
# page holds (Sphinx's .math elements), what MathJax rendered, where MathJax came from, and any
# TeX left as text outside code.
MATH_REPORT_JS = r"""
const done = arguments[arguments.length - 1];
const article = document.querySelector('article.bd-article') || document.querySelector('main')
  || document.body;
const finish = () => {
  const copy = article.cloneNode(true);
  copy.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .headerlink')
    .forEach(e => e.remove());
  const text = copy.textContent;
  const raw = [];
  for (const pattern of [/\\\(/, /\\\[/, /\\begin\{/, /\$\$/]) {
    const m = text.match(pattern);
    if (m) raw.push(text.slice(Math.max(0, m.index - 30), m.index + 50).replace(/\s+/g, ' '));
  }
  const script = [...document.scripts].find(s => /mathjax|tex-.*chtml/i.test(s.src || ''));
  done({math: article.querySelectorAll('.math').length,
        rendered: article.querySelectorAll('mjx-container').length,
        src: script ? script.src : null, raw});
};
// MathJax loads deferred: wait for its startup (at most 20 s), unless the page has no math.
const start = Date.now();
const wait = () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(finish, finish);
  } else if (!article.querySelector('.math') || Date.now() - start > 20000) {
    finish();
  } else {
    setTimeout(wait, 100);
  }
};
wait();
"""

ALL_IMAGES_SETTLED_JS = r"""
const imgs = [...document.images];
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
return imgs.every(i => i.complete);
"""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def browser_required() -> bool:
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get("HCTRAIN_REQUIRE_BROWSER"))


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the Python package selenium (pip install -e '.[test]')")
    if missing:
        msg = (
            f"headless Chromium is not available: missing {', '.join(missing)} "
            "(apt-get install chromium chromium-driver; .ci/run does this)"
        )
        if browser_required():
            pytest.fail(f"{msg}; in CI (CI=true or HCTRAIN_REQUIRE_BROWSER=1) it must run")
        pytest.skip(msg)

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager is skipped and never downloads anything.
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(40)
    try:
        yield driver
    finally:
        driver.quit()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def site(book_build):
    """The built book's HTML served on a free port of 127.0.0.1; yields its base URL."""
    html = book_build.html
    if not (html / "index.html").is_file():
        log = book_build.log[-3000:]
        pytest.fail(f"the book was not built (exit {book_build.returncode}):\n{log}")
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def screenshots(summary_lines) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    yield SCREENSHOTS
    shots = sorted(SCREENSHOTS.glob("*.png"))
    if shots:
        summary_lines.append(f"screenshots of {len(shots)} book pages: {SCREENSHOTS}")


def full_page_screenshot(driver, path: Path) -> None:
    """The whole page, not only the window: the viewport is made as tall as the page for the
    shot (Chrome DevTools; a capture beyond the viewport would smear the sticky sidebars)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    viewport = metrics.get("cssLayoutViewport") or metrics["layoutViewport"]
    width = int(viewport["clientWidth"])
    height = max(1, min(int(size["height"]), 16000))  # Chromium's largest texture
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))


def page_problems(driver, base_url: str, entry: str, source: Path, shot: Path) -> list[str]:
    """Opens one page, saves its screenshot, and lists everything wrong with it."""
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"{base_url}/{entry}.html"
    driver.get("about:blank")
    driver.get_log("browser")  # drop what earlier pages logged, late messages included
    driver.get(url)
    problems: list[str] = []
    try:
        WebDriverWait(driver, 30, poll_frequency=0.2).until(
            lambda d: d.execute_script(ALL_IMAGES_SETTLED_JS)
        )
    except Exception:  # noqa: BLE001 - reported below, image by image
        problems.append("images still loading after 30 s")
    time.sleep(0.2)  # let late console messages arrive
    report = driver.execute_script(PAGE_REPORT_JS)
    math = driver.execute_async_script(MATH_REPORT_JS)
    full_page_screenshot(driver, shot)

    # The title.
    heading = expected_title(source)
    if not report["title"]:
        problems.append("no <h1> in the article")
    elif heading is None:
        problems.append(f"{source.name} has no heading to compare with <h1> {report['title']!r}")
    else:
        absent = [p for p in title_parts(heading) if p not in report["title"]]
        if absent:
            problems.append(
                f"<h1> {report['title']!r} does not match the source's heading {heading!r}"
            )

    # The figures.
    broken = [i["src"] for i in report["imgs"] if not (i["complete"] and i["width"] > 0)]
    if broken:
        problems.append(f"images that did not load: {broken}")
    figures = sum(1 for i in report["imgs"] if i["figure"] and i["complete"] and i["width"] > 0)
    # A figure drawn for the page (about 7.6 in, 770 px) is shown at its own size; one scaled
    # down to less than 80% has labels below the 9 pt they were drawn at. (Hidden ones, in a
    # folded solution, have no width yet.)
    shrunk = [f"{i['src']} at {i['shown'] / i['width']:.0%}" for i in report["imgs"]
              if i["figure"] and i["width"] > 0 and 0 < i["shown"] < 0.8 * i["width"]]
    if shrunk:
        problems.append(f"figures shrunk below 80% of their size at the page width: {shrunk}")
    stored = expected_figures(source)
    if figures < stored:
        problems.append(
            f"{stored} image output(s) stored in {source.name}, "
            f"but {figures} loaded figure(s) shown"
        )

    # The maths: rendered by a MathJax the site ships, none left as raw TeX.
    if math["math"]:
        if not (math["src"] or "").startswith(base_url):
            problems.append(f"MathJax is not served by the site itself: {math['src']!r}")
        if not math["rendered"]:
            problems.append(f"{math['math']} math element(s) and none rendered by MathJax")
    problems += [f"raw TeX on the page: {r!r}" for r in math["raw"]]

    # Error output.
    problems += [f"error output: {e}" for e in report["errors"]]
    for text in report["stderr"]:
        if STDERR_ERROR.search(text):
            problems.append(f"error on stderr: {text.strip()[:300]!r}")
    for text in report["outputs"]:
        if "Traceback (most recent call last)" in text:
            problems.append(f"a traceback in a cell output: {text.strip()[:300]!r}")

    # The site's own files: no failed request, no script error (CDN requests may fail offline).
    for log in driver.get_log("browser"):
        message = log.get("message", "")
        own = base_url in message and not CONSOLE_NOISE.search(message)
        if log.get("level") == "SEVERE" and own:
            problems.append(f"browser console: {log['message'][:300]}")
    return problems


PAGES = toc_pages()


def test_toc_lists_pages():
    assert PAGES, "_toc.yml lists no pages"


@pytest.mark.parametrize("entry", PAGES)
def test_page_in_browser(browser, site, screenshots, entry):
    source = source_of(entry)
    assert source is not None, f"_toc.yml lists {entry}, which has no .md or .ipynb file"
    shot = screenshots / f"{entry.replace('/', '__')}.png"
    problems = page_problems(browser, site, entry, source, shot)
    assert not problems, (
        f"{site}/{entry}.html (screenshot {shot}):\n" + "\n".join(f"- {p}" for p in problems)
    )


# --- the checks themselves catch a broken page -----------------------------------------------

BROKEN_CONFIG = """\
title: broken
only_build_toc_files: true
execute:
  execute_notebooks: "off"
sphinx:
  config:
    html_theme_options:
      use_download_button: false
"""


def _broken_notebook() -> dict:
    import matplotlib.pyplot as plt
    from io import BytesIO

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    code_cell = {
        "cell_type": "code", "execution_count": 1, "metadata": {}, "source": "plot()",
        "outputs": [
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": png, "text/plain": "<Figure>"}},
            {"output_type": "stream", "name": "stderr",
             "text": "Traceback (most recent call last):\n  File 'x', line 1\n"
                     "RuntimeError: bad\n"},
            {"output_type": "error", "ename": "ValueError", "evalue": "boom",
             "traceback": ["\u001b[0;31mValueError\u001b[0m: boom"]},
        ],
    }
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {},
             "source": "# A broken page\n\n![a picture that is not there](missing.png)\n"},
            code_cell,
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def test_checks_catch_a_broken_page(browser, tmp_path):
    """A tiny book whose one page has every fault the checks look for: each is reported."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "_config.yml").write_text(BROKEN_CONFIG, encoding="utf-8")
    (src / "_toc.yml").write_text("format: jb-book\nroot: broken\n", encoding="utf-8")
    (src / "broken.ipynb").write_text(json.dumps(_broken_notebook()), encoding="utf-8")
    # The page's own heading passes; another one in the "source" must not.
    (tmp_path / "renamed.md").write_text("# Another title\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
         "build", str(src), "--path-output", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    html = tmp_path / "out" / "_build" / "html"
    assert (html / "broken.html").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    for figure in (html / "_images").glob("*.png"):  # the stored figure fails to load
        figure.unlink()

    handler = functools.partial(_QuietHandler, directory=str(html))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        shots = tmp_path / "shots"
        shots.mkdir()
        problems = page_problems(browser, base, "broken", src / "broken.ipynb", shots / "a.png")
        renamed = page_problems(browser, base, "broken", tmp_path / "renamed.md", shots / "b.png")
    finally:
        server.shutdown()
        server.server_close()

    text = "\n".join(problems)
    assert "images that did not load" in text and "missing.png" in text
    assert "1 image output(s) stored in broken.ipynb, but 0 loaded figure(s) shown" in text
    assert "error output: .output.traceback" in text and "boom" in text
    assert "error on stderr" in text and "RuntimeError: bad" in text
    assert "browser console" in text  # the 404s of missing.png and of the figure
    assert not any("<h1>" in p for p in problems), problems
    assert any("does not match the source's heading 'Another title'" in p for p in renamed), renamed
    assert (shots / "a.png").stat().st_size > 1000
