"""When, how long and with which parameters each chapter notebook was last executed.

The book renders the outputs stored in the notebooks; it never executes them. Chapters are
executed with papermill (``make notebooks``), which records the run in the notebook's metadata
(``metadata.papermill``: start and end time, duration, the parameters passed with ``-p``, and
whether a cell raised). This module reads that record back::

    python -m hctrain.status                     # writes book/_execution_status.md
    python -m hctrain.status --print             # prints the table

``book/execution.md`` includes the generated markdown table.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd

NOT_PAPERMILL = "not executed with papermill"
COLUMNS = ["notebook", "chapter", "executed_at", "duration_s", "mode", "parameters", "status"]


def _first_heading(nb: nbformat.NotebookNode) -> str | None:
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            line = line.strip()
            if line.startswith("#"):
                title = line.lstrip("#").strip()
                if title:
                    return title
    return None


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def _is_true(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def notebook_status(path: str | Path) -> dict[str, Any]:
    """One row of :func:`execution_table` for the notebook at ``path``."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    row: dict[str, Any] = {
        "notebook": path.name,
        "chapter": _first_heading(nb) or path.stem,
        "executed_at": None,
        "duration_s": None,
        "mode": None,
        "parameters": None,
        "status": NOT_PAPERMILL,
    }
    pm = nb.metadata.get("papermill")
    if not isinstance(pm, dict) or not (pm.get("start_time") or pm.get("end_time")):
        return row
    params = dict(pm.get("parameters") or {})
    duration = pm.get("duration")
    row["executed_at"] = _parse_time(pm.get("end_time")) or _parse_time(pm.get("start_time"))
    row["duration_s"] = float(duration) if duration is not None else None
    # Chapters read HCTRAIN_QUICK themselves (papermill does not record the environment);
    # `make notebooks` runs them with it unset, i.e. on the full protocol, so a run is "quick"
    # only when quick mode was asked for through a parameter.
    row["mode"] = "quick" if _is_true(params.get("quick", False)) else "full"
    row["parameters"] = (
        ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) if params else "defaults"
    )
    if pm.get("exception"):
        row["status"] = "failed (a cell raised)"
    elif row["executed_at"] is None or duration is None:
        row["status"] = "interrupted"
    else:
        row["status"] = "ok"
    return row


def execution_table(notebook_dir: str | Path = "notebooks") -> pd.DataFrame:
    """Execution record of every ``*.ipynb`` directly in ``notebook_dir``, sorted by file name.

    Columns: ``notebook`` (file name), ``chapter`` (first markdown heading), ``executed_at``
    (UTC end time of the papermill run), ``duration_s``, ``mode`` ("full" or "quick"),
    ``parameters`` (the ``-p`` overrides, or "defaults") and ``status`` ("ok", "failed (a cell
    raised)", "interrupted" or "not executed with papermill").
    """
    paths = sorted(Path(notebook_dir).glob("*.ipynb"))
    rows = [notebook_status(p) for p in paths]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["executed_at"] = pd.to_datetime(table["executed_at"], utc=True)
    table["duration_s"] = pd.to_numeric(table["duration_s"]).astype("float64")
    return table


def _format_duration(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A plain markdown table of :func:`execution_table` (no extra dependency)."""
    if table.empty:
        return "*No chapter notebooks found.*\n"
    header = ["Chapter", "Notebook", "Executed (UTC)", "Duration", "Mode", "Parameters", "Status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        when = row.executed_at
        when_s = None if pd.isna(when) else pd.Timestamp(when).strftime("%Y-%m-%d %H:%M")
        duration = None if pd.isna(row.duration_s) else float(row.duration_s)
        cells = [
            _cell(row.chapter),
            f"`{row.notebook}`",
            _cell(when_s),
            _format_duration(duration),
            _cell(row.mode),
            _cell(row.parameters),
            _cell(row.status),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_status(
    notebook_dir: str | Path = "notebooks",
    output: str | Path = "book/_execution_status.md",
) -> Path:
    """Write the markdown table for ``notebook_dir`` to ``output`` and return its path."""
    output = Path(output)
    text = (
        "% Generated by `python -m hctrain.status` (run by `make notebooks`); do not edit.\n\n"
        + to_markdown(execution_table(notebook_dir))
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hctrain.status",
        description="Tabulate the papermill execution record of the chapter notebooks.",
    )
    parser.add_argument("--notebooks", default="notebooks", help="notebook folder")
    parser.add_argument(
        "--output", default="book/_execution_status.md", help="markdown file to write"
    )
    parser.add_argument("--print", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    if args.print:
        print(to_markdown(execution_table(args.notebooks)), end="")
    else:
        path = write_status(args.notebooks, args.output)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
