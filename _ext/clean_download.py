"""Downloaded notebooks that read without Sphinx: the copies behind the download button.

The page's download button offers ``_sources/<chapter>.ipynb``, a copy of the chapter as it is
in the repository, whose Markdown holds MyST roles and directives that only Sphinx renders
(``{cite}``, ``{eq}``, ``{glue:text}``, ``{literalinclude}``, exercises, dropdowns). After the
build this extension rewrites those copies (and only them; the chapters themselves are not
touched) into plain Markdown that Jupyter, Colab and GitHub render:

* ``{cite}`key``` -> "(Author et al., year)", ``{cite:t}`key``` -> "Author et al. (year)", with
  the labels of the bibliography page (``bibstyle.AuthorYearLabelStyle``);
* ``{eq}`label``` -> "(n)", the equation's number on the page; ``{doc}`text <path>``` -> text;
* ``{glue:text}`name:format``` -> the value stored in the notebook's own outputs, formatted;
  ``{glue:md}`name``` -> the stored Markdown;
* ``{literalinclude}`` -> the included code, as a fenced block;
* ``{math}`` -> a ``$$`` display; exercises, solutions and dropdowns -> bold headings.

Whatever it cannot resolve it leaves as it was, and ``tests/test_book_build.py`` fails on any
MyST role left in a downloaded notebook.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROLE = re.compile(r"\{(cite|cite:t|cite:p|eq|doc|glue:text|glue:md|glue)\}`([^`]*)`")
FENCE = re.compile(r"^(?P<fence>```+|:::+)\{(?P<name>[\w-]+)\}[ \t]*(?P<argument>.*)$")


def _labels(app) -> dict[str, tuple[str, str]]:
    """Citation key -> (authors, year), as the bibliography page prints them."""
    from pybtex.database import parse_file

    from bibstyle import AuthorYearLabelStyle

    entries = []
    for name in app.config.bibtex_bibfiles:
        entries += list(parse_file(str(Path(app.srcdir) / name)).entries.values())
    out = {}
    for entry, label in zip(entries, AuthorYearLabelStyle().format_labels(entries)):
        who, _, year = label.rpartition(", ")
        out[entry.key] = (who, year)
    return out


def _glued(nb: dict) -> dict[str, dict]:
    values = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook", {})
            if record.get("name"):  # data keys carry a prefix: application/papermill.record/text/plain
                prefix = record.get("mime_prefix", "")
                values[record["name"]] = {key[len(prefix):] if key.startswith(prefix) else key: value
                                          for key, value in output.get("data", {}).items()}
    return values


def _glue_text(data: dict, spec: str) -> str | None:
    text = data.get("text/plain")
    if text is None:
        return None
    text = "".join(text) if isinstance(text, list) else text
    if not spec:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if isinstance(value, str) else text
    try:
        return format(ast.literal_eval(text), spec)
    except (ValueError, SyntaxError, TypeError):
        return text


def _include(argument: str, options: dict[str, str], base: Path) -> str | None:
    path = (base / argument.strip()).resolve()
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    obj = options.get("pyobject")
    if obj:
        from sphinx.pycode import ModuleAnalyzer

        tags = ModuleAnalyzer.for_file(str(path), "").find_tags()
        if obj not in tags:
            return None
        _, start, end = tags[obj]
        lines = lines[start - 1:end - 1]
        while lines and not lines[-1].strip():
            lines.pop()
    language = options.get("language", "")
    return f"```{language}\n" + "\n".join(lines) + "\n```"


def clean_markdown(source: str, *, labels, equations, glued, base: Path) -> str:
    """The cell's Markdown without MyST roles and directives."""
    return _roles(_directives(source, base), labels=labels, equations=equations, glued=glued)


def _roles(text: str, *, labels, equations, glued) -> str:

    def role(match: re.Match) -> str:
        name, text = match.group(1), match.group(2)
        if name.startswith("cite"):
            keys = [k.strip() for k in text.split(",")]
            if not all(k in labels for k in keys):
                return match.group(0)
            if name == "cite:t":
                return "; ".join(f"{labels[k][0]} ({labels[k][1]})" for k in keys)
            return "(" + "; ".join(f"{labels[k][0]}, {labels[k][1]}" for k in keys) + ")"
        if name == "eq":
            number = equations.get(text)
            return f"({number})" if number is not None else match.group(0)
        if name == "doc":
            shown = re.match(r"(.*?)\s*<[^>]*>$", text)
            return shown.group(1) if shown else text
        key, _, spec = text.partition(":")
        data = glued.get(key)
        if data is None:
            return match.group(0)
        if name == "glue:md":
            md = data.get("text/markdown")
            return ("".join(md) if isinstance(md, list) else md) if md is not None else match.group(0)
        value = _glue_text(data, spec)
        return value if value is not None else match.group(0)

    return ROLE.sub(role, text)


def _directives(source: str, base: Path) -> str:
    out, lines, i = [], source.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        fence, name, argument = match.group("fence"), match.group("name"), match.group("argument")
        body, options, j = [], {}, i + 1
        while j < len(lines) and re.match(r"^:[\w-]+:", lines[j]):
            key, _, value = lines[j][1:].partition(":")
            options[key] = value.strip()
            j += 1
        if name in ("solution-start", "solution-end"):  # single-line fences
            while j < len(lines) and lines[j].strip() != fence:
                j += 1
            out.append("**Solution.**" if name == "solution-start" else "")
            i = j + 1
            continue
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j])
            j += 1
        i = j + 1
        if name == "literalinclude":
            code = _include(argument, options, base)
            out.append(code if code is not None else "\n".join([match.group(0), *body, fence]))
        elif name == "math":
            out.extend(["$$", *body, "$$"])
        elif name in ("exercise", "solution", "dropdown"):
            title = {"exercise": f"Exercise {argument.strip()}.", "solution": "Solution.",
                     "dropdown": argument.strip().removesuffix(": click to unfold")}[name]
            out.extend([f"**{title}**", "", _directives("\n".join(body), base)])
        else:
            out.extend([match.group(0), *body, fence])
    return "\n".join(out)


def _rewrite(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    labels = _labels(app)
    math = app.env.get_domain("math")
    for docname in app.env.found_docs:
        copy = Path(app.outdir) / "_sources" / f"{docname}.ipynb"
        if not copy.is_file():
            continue
        nb = json.loads(copy.read_text())
        equations = {label: ".".join(map(str, number)) if isinstance(number, tuple) else str(number)
                     for label, (doc, number) in math.equations.items() if doc == docname}
        glued = _glued(nb)
        base = (Path(app.srcdir) / docname).parent
        for cell in nb["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = clean_markdown(source, labels=labels, equations=equations, glued=glued, base=base)
        copy.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def setup(app):
    app.connect("build-finished", _rewrite)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
