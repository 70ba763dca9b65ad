"""A chapter re-run through papermill with non-default parameters records what was asked."""
import os
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")

REPO = Path(__file__).resolve().parents[1]


def test_baselines_chapter_with_other_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCTRAIN_QUICK", "0")  # the injected parameters alone set the protocol
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "02_CA.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "02_baselines.ipynb"), str(out), cwd=str(REPO / "notebooks"),
        kernel_name="python3", progress_bar=False,
        parameters=dict(state="CA", n_runs=2, budget_s=1.0, seed=11, n_jobs=1, weight=0.2,
                        results_dir=str(tmp_path / "results")),
    )
    records = pd.concat(pd.read_parquet(p) for p in (tmp_path / "results").glob("02_*.parquet"))
    assert set(records["algorithm"]) == {"Adam", "Adam + fairret (w=0.2)"}
    assert sorted(records["seed"].unique()) == [11, 12]
    assert records.groupby("algorithm")["run"].nunique().tolist() == [2, 2]
    assert records["time_s"].max() < 1.5
    outputs = "".join(o.get("text", "") for c in nbformat.read(out, 4).cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "ACSIncome CA 2018" in outputs


def test_quick_mode_never_overrides_passed_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCTRAIN_QUICK", "1")  # quick defaults: 2 runs of 3 s
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    papermill.execute_notebook(
        str(REPO / "notebooks" / "02_baselines.ipynb"), str(tmp_path / "02_quick.ipynb"),
        cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
        parameters=dict(n_runs=3, budget_s=0.5, n_jobs=1, results_dir=str(tmp_path / "results")),
    )
    records = pd.concat(pd.read_parquet(p) for p in (tmp_path / "results").glob("02_*.parquet"))
    assert records.groupby("algorithm")["run"].nunique().tolist() == [3, 3]
    assert 0.5 <= records["time_s"].max() < 0.8


@pytest.mark.parametrize("name, value", [("budget_s", -1), ("n_runs", 0), ("seed", "a")])
def test_invalid_parameters_fail_the_chapter(name, value, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCTRAIN_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(papermill.PapermillExecutionError, match=rf"chapter parameter {name} must be") as info:
        papermill.execute_notebook(
            str(REPO / "notebooks" / "02_baselines.ipynb"), str(tmp_path / "02_bad.ipynb"),
            cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
            parameters={name: value, "results_dir": str(tmp_path / "results")},
        )
    assert f"-p {name} VALUE" in str(info.value)
    assert not (tmp_path / "results").exists()  # stopped before any run
