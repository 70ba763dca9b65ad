"""Sweeps on a real Dask cluster (a LocalCluster of 2 worker processes on the loopback): records
equal to a sequential run, nothing done twice, nothing lost when a worker dies, bad cells reported
while the others finish, and papermill sweeps of a notebook."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

from hctrain.algorithms import GDA, Adam  # noqa: E402
from hctrain.data import load_acsincome  # noqa: E402
from hctrain.runner import COLUMNS, run  # noqa: E402
from hctrain.sweep import cell_key, grid, normalize, notebook_name, run_notebook_sweep, run_sweep  # noqa: E402
from hctrain.task import FairnessTask  # noqa: E402

# Each test (with its share of the cluster's start and stop) well under a minute here; a test
# that waits on a future nobody finishes fails after 5 minutes with every thread's stack
# (pytest-timeout) rather than holding the whole run.
pytestmark = pytest.mark.timeout(300)


@contextmanager
def loopback_cluster():
    """A Client on a LocalCluster of 2 worker processes listening on 127.0.0.1, closed on exit."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    dask = distributed.Client(cluster)
    try:
        dask.wait_for_workers(2, timeout=120)
        assert all(address.startswith("tcp://127.0.0.1:") for address in dask.scheduler_info()["workers"])
        yield dask
    finally:
        dask.close(timeout=60)
        cluster.close(timeout=60)


@pytest.fixture(scope="module")
def client():
    with loopback_cluster() as dask:
        yield dask


def test_grid_and_keys() -> None:
    cells = grid(method=["Adam", "GDA"], state="VA", seed=range(3), max_steps=10, hyper=[{}, {"tau": 0.1}])
    assert len(cells) == 2 * 3 * 2
    keys = {cell_key(c) for c in cells}
    assert len(keys) == 12
    assert cell_key({"method": "GDA", "seed": 1}) == cell_key({"seed": 1, "method": "GDA", "state": "VA"})
    assert cell_key({"method": "GDA", "seed": 1}).startswith("GDA_VA_seed1_")
    with pytest.raises(ValueError, match=r"unknown method 'Adamw'"):
        normalize({"method": "Adamw"})
    with pytest.raises(ValueError, match=r"unknown cell parameters \['lr'\]"):
        normalize({"method": "Adam", "lr": 0.1})


def test_sweep_records_equal_a_sequential_run(client, tmp_path: Path) -> None:
    cells = grid(method=["Adam", "GDA"], seed=[0, 1], max_steps=20, eval_every_steps=10)
    result = run_sweep(cells, tmp_path / "sweep", client=client, progress=False)
    assert result.cells["status"].tolist() == ["ran"] * 4
    assert len(list((tmp_path / "sweep").glob("*.parquet"))) == 4
    task = FairnessTask(load_acsincome("VA", download=False, verbose=False))
    for method, cls in (("Adam", Adam), ("GDA", GDA)):
        mine = (result.records[result.records["method"] == method][COLUMNS]
                .sort_values(["run", "step", "split", "metric"], ignore_index=True))
        theirs = (run(task, cls, max_steps=20, eval_every_steps=10, n_runs=2, progress=False)
                  .sort_values(["run", "step", "split", "metric"], ignore_index=True))
        pd.testing.assert_frame_equal(mine.drop(columns="time_s"), theirs.drop(columns="time_s"))
    # the files are a parquet dataset: the cell's parameters are columns
    dataset = pd.read_parquet(tmp_path / "sweep")
    assert len(dataset) == len(result.records)
    assert {"state", "budget_s", "max_steps", "hyper", "cell"} <= set(dataset.columns)

    # a second run of the same sweep executes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "sweep").iterdir()}
    again = run_sweep(cells, tmp_path / "sweep", client=client, progress=False)
    assert again.cells["status"].tolist() == ["done before"] * 4
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "sweep").iterdir()} == before
    pd.testing.assert_frame_equal(again.records, result.records)


def test_a_bad_cell_is_reported_and_the_others_finish(client, tmp_path: Path) -> None:
    cells = [{"method": "Adam", "state": "XX", "max_steps": 5},
             {"method": "Adam", "max_steps": 5},
             {"method": "SSL-ALM", "max_steps": 5, "batch_per_group": 10_000}]
    result = run_sweep(cells, tmp_path, client=client, progress=False)
    assert result.cells["status"].tolist() == ["failed", "ran", "failed"]
    assert "unknown state 'XX'" in result.cells["error"].iloc[0]
    assert "fewer than batch_per_group=10000" in result.cells["error"].iloc[2]
    failed = json.loads((tmp_path / f"{cell_key(cells[0])}.failed.json").read_text())
    assert failed["cell"]["state"] == "XX" and "Traceback" in failed["traceback"]
    assert len(result.failed) == 2 and sorted(result.records["cell"].unique()) == [cell_key(cells[1])]


def test_a_killed_worker_loses_no_finished_cell(tmp_path: Path) -> None:
    # on a cluster of its own, so that the other tests never meet a worker being restarted
    with loopback_cluster() as client:
        _kill_a_worker_during_a_sweep(client, tmp_path)


def _kill_a_worker_during_a_sweep(client, tmp_path: Path) -> None:
    cells = grid(method="Adam", seed=range(6), max_steps=1500, eval_every_steps=500)
    pids = list(client.run(lambda: __import__("os").getpid()).values())
    killed: list[int] = []
    finished_before: dict[str, int] = {}

    def kill_one_worker_after_the_first_cell() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.glob("*.parquet")):
            time.sleep(0.05)
        finished_before.update({p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")})
        psutil.Process(pids[0]).kill()
        killed.append(pids[0])

    killer = threading.Thread(target=kill_one_worker_after_the_first_cell)
    killer.start()
    result = run_sweep(cells, tmp_path, client=client, progress=False)
    killer.join()
    assert killed
    assert result.cells["status"].tolist() == ["ran"] * 6
    assert sorted(result.records["run"].unique()) == list(range(6))
    assert finished_before and all(
        (tmp_path / name).stat().st_mtime_ns == mtime for name, mtime in finished_before.items())
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_notebook_sweep(client, tmp_path: Path) -> None:
    notebook = tmp_path / "chapter.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1\nb = 'x'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("assert a > 0, 'a must be positive'\nprint(a * 2, b)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook)
    cells = [{"a": 1, "b": "y"}, {"a": 2, "b": "y"}, {"a": -1, "b": "y"}]
    table = run_notebook_sweep(notebook, cells, tmp_path / "out", client=client, progress=False)
    assert table["status"].tolist() == ["ran", "ran", "failed"]
    assert "a must be positive" in table["error"].iloc[2]
    first = nbformat.read(tmp_path / "out" / notebook_name(notebook, cells[0]), as_version=4)
    assert first.metadata["papermill"]["parameters"] == {"a": 1, "b": "y"}
    assert first.metadata["hctrain"]["sweep_parameters"] == {"a": 1, "b": "y"}
    assert first.cells[-1].outputs[0]["text"] == "2 y\n"
    assert notebook_name(notebook, cells[1]) == "chapter__a=2__b=y.ipynb"
    assert not list((tmp_path / "out").glob(".*.running"))
    assert (tmp_path / "out" / "chapter__a=-1__b=y.failed.ipynb").is_file()  # where it failed
    again = run_notebook_sweep(notebook, cells, tmp_path / "out", client=client, progress=False)
    assert again["status"].tolist() == ["done before", "done before", "failed"]


def test_a_chapter_over_a_parameter_grid(client, tmp_path: Path) -> None:
    # chapter 1 in quick mode (the workers inherit HCTRAIN_QUICK=1 from conftest.py), two states
    chapter = Path(__file__).resolve().parents[1] / "notebooks" / "01_problem_and_data.ipynb"
    table = run_notebook_sweep(chapter, [{"state": "VA"}, {"state": "CA"}], tmp_path, client=client,
                               progress=False)
    assert table["status"].tolist() == ["ran", "ran"], table["error"].tolist()
    for state in ("VA", "CA"):
        nb = nbformat.read(tmp_path / f"01_problem_and_data__state={state}.ipynb", as_version=4)
        assert nb.metadata["papermill"]["parameters"] == {"state": state}
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert f"ACSIncome {state} 2018" in printed


def test_an_existing_cluster_by_address(client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    cell = {"method": "Adam", "max_steps": 5}
    by_argument = run_sweep([cell], tmp_path / "a", scheduler=address, progress=False)
    monkeypatch.setenv("HCTRAIN_DASK_SCHEDULER", address)
    by_environment = run_sweep([cell], tmp_path / "b", progress=False)
    assert by_argument.cells["status"].tolist() == by_environment.cells["status"].tolist() == ["ran"]
    pd.testing.assert_frame_equal(by_argument.records.drop(columns="time_s"),
                                  by_environment.records.drop(columns="time_s"))
    # runner.run(n_jobs=2) goes to the same cluster, and gives the sequential records
    task = FairnessTask(load_acsincome("VA", download=False, verbose=False))
    two = run(task, Adam, max_steps=6, eval_every_steps=3, n_runs=2, n_jobs=2, progress=False)
    one = run(task, Adam, max_steps=6, eval_every_steps=3, n_runs=2, progress=False)
    pd.testing.assert_frame_equal(two.drop(columns="time_s"), one.drop(columns="time_s"))


def test_cells_with_different_budgets_form_one_dataset(client, tmp_path: Path) -> None:
    cells = [{"method": "Adam", "max_steps": 4}, {"method": "Adam", "budget_s": 0.2, "seed": 1}]
    result = run_sweep(cells, tmp_path, client=client, progress=False)
    assert result.cells["status"].tolist() == ["ran", "ran"]
    dataset = pd.read_parquet(tmp_path)  # one schema across the files
    assert sorted(dataset["run"].unique()) == [0, 1]
    assert dataset["budget_s"].isna().any() and dataset["max_steps"].isna().any()
