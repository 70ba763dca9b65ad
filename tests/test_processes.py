"""No process is left behind: killing, terminating or interrupting the parent of a parallel run
(``run(..., n_jobs=2)`` or ``run_sweep``, on a Dask LocalCluster) ends every worker process it
started, and its stdout closes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from hctrain.algorithms import Adam
from hctrain.data import load_acsincome
from hctrain.runner import RunInterrupted, run
from hctrain.task import FairnessTask

if __name__ == "__main__":  # the workers are spawned processes: the script must be importable
    task = FairnessTask(load_acsincome("VA", download=False, verbose=False))
    try:
        run(task, Adam, budget_s=300.0, n_runs=2, n_jobs=2, progress=False, path=sys.argv[1])
    except RunInterrupted as error:
        print("INTERRUPTED:", error, flush=True)
        sys.exit(3)
"""


SWEEP_SCRIPT = """
import sys
from hctrain.sweep import grid, run_sweep

if __name__ == "__main__":
    run_sweep(grid(method="Adam", seed=range(4), budget_s=300.0), sys.argv[1], n_workers=2, progress=False)
"""


def _alive(process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _training_workers(parent, timeout: float = 180.0, cpu_s: float = 6.0) -> list:
    """The parent's descendants once two of them have used ``cpu_s`` seconds of CPU: past their
    start (a spawned worker spends a few seconds of CPU importing torch and distributed), so
    the signal reaches a run that is training, not a cluster still starting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        busy = []
        for child in children:
            try:
                if child.cpu_times().user > cpu_s and "python" in child.name().lower():
                    busy.append(child)
            except psutil.NoSuchProcess:
                pass
        if len(busy) >= 2:
            return children
        time.sleep(0.5)
    raise AssertionError(f"the workers did not start training within {timeout} s")


# Known issue (open): run after the rest of the suite, the SIGINT case hangs (the parent does not
# exit within 120 s); alone, or after any part of the suite tried so far, it passes. Until the
# cause is found it is marked as an expected failure that still runs (and may pass).
SIGINT_HANGS_IN_FULL_SUITE = pytest.mark.xfail(
    reason="known: the interrupted parent hangs when run after the whole suite; passes alone",
    raises=subprocess.TimeoutExpired, strict=False)


@pytest.mark.parametrize("how, code", [(signal.SIGKILL, SCRIPT), (signal.SIGTERM, SCRIPT),
                                       pytest.param(signal.SIGINT, SCRIPT, marks=SIGINT_HANGS_IN_FULL_SUITE),
                                       (signal.SIGKILL, SWEEP_SCRIPT)],
                         ids=["run-SIGKILL", "run-SIGTERM", "run-SIGINT", "sweep-SIGKILL"])
def test_no_worker_outlives_its_parent(how, code, tmp_path: Path) -> None:
    script = tmp_path / "parallel_run.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "records.parquet")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            text=True)
    descendants: list = []
    try:
        parent = psutil.Process(proc.pid)
        descendants = _training_workers(parent)
        proc.send_signal(how)
        out, _ = proc.communicate(timeout=120)  # returns only when nothing holds the pipe open
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [(p.pid, p.cmdline()) for p in descendants if _alive(p)]
        assert not left, f"left running after {how.name} of the parent: {left}"
        if how == signal.SIGINT and code == SCRIPT:
            assert proc.returncode == 3, out
            assert ("INTERRUPTED: interrupted: Adam: runs [] of 2 finished (nothing to save); "
                    "runs [0, 1] did not finish") in out
    finally:
        for p in [proc, *descendants]:
            try:
                p.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        proc.wait()
