"""The README's code for a user's own model, data and loop runs as written (fewer steps)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_own_model_data_and_loop_runs_as_written():
    first, second = _section("Your own model, data and loop")
    assert len(first.strip().splitlines()) <= 25  # the README's promise: at most 25 lines
    torch.manual_seed(0)
    scope: dict = {}
    exec(first.replace("range(2000)", "range(40)"), scope)
    c = scope["info"]["constraints"]
    assert c.shape == (2,) and torch.isfinite(c).all()
    exec(second, scope)  # the own-loop form, one epoch
    assert scope["opt"].iteration == len(scope["loader"])


def test_fairness_task_and_held_out_table_run_as_written():
    first, second = _section("The book's fairness task in 10 lines")
    scope: dict = {}

    def shorter(code: str) -> str:  # offline, and a few steps instead of minutes
        code = code.replace('load_acsincome("VA")', 'load_acsincome("VA", download=False, verbose=False)')
        return re.sub(r"budget_s=\d+, n_runs=5", "max_steps=10, n_runs=1, progress=False", code)

    exec(shorter(first), scope)
    exec(shorter(second), scope)
    table = scope["held_out_table"](scope["records"], bound=0.05)
    assert list(table.index) == ["SSLALM"] and {"decision gap", "share certified"} <= set(table.columns)
