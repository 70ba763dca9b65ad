"""Budgeted, repeated, seeded runs of one algorithm on a task, with tidy records.

Each run trains a fresh model (seeded) for a wall-clock budget and/or a number of steps and
evaluates loss, accuracy and every constraint on the full train and test sets at regular
training times. Only training is timed: evaluation pauses the clock. Records are tidy, one row
per (run, evaluation, split, metric), and each finished run is written to ``path`` at once, so an
interrupted or failing experiment keeps what it finished.

What can go wrong, and what then happens:

* every argument is checked before the first run starts, ``path`` included (a folder, a file
  under a file, a folder that cannot be written: all fail at once);
* a run that fails raises :class:`RunFailedError`; an evaluation that is NaN or infinite is such
  a failure; Ctrl-C raises :class:`RunInterrupted`. Both say which runs finished and where
  they are saved, and carry them in ``.records``;
* a save that fails all the same raises :class:`RecordsNotSavedError`: the finished runs are
  written to a fallback file whose name the error gives, and carried in ``.records``; no
  temporary file is left behind;
* with ``n_jobs > 1`` the runs go to the worker processes of a Dask ``LocalCluster``, which exit
  by themselves when the parent process dies (killed, terminated or interrupted), so none is
  left running.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from tqdm import tqdm

from .checks import check_bool, check_integer, check_number, check_output_file, check_seed, SEED_MAX
from .problem import StochasticProblem
from .task import Task

COLUMNS = ["algorithm", "run", "seed", "step", "time_s", "split", "metric", "value"]
DEFAULT_BUDGET_S = 60.0
"""The time budget of a run when neither ``budget_s`` nor ``max_steps`` is given."""
AlgorithmFactory = Callable[[StochasticProblem], Any]


class RunFailedError(RuntimeError):
    """A run raised; ``records`` holds the runs that finished before it (also saved to ``path``)."""

    def __init__(self, message: str, records: pd.DataFrame):
        super().__init__(message)
        self.records = records


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run`; ``records`` holds the finished runs, saved to ``path`` if given."""

    def __init__(self, message: str, records: pd.DataFrame):
        super().__init__(message)
        self.records = records


class RecordsNotSavedError(OSError):
    """Writing the records to ``path`` failed; they are in ``records`` and in ``fallback`` (a
    file in the temporary folder), unless that could not be written either (then None)."""

    def __init__(self, message: str, records: pd.DataFrame, fallback: Path | None):
        super().__init__(message)
        self.records = records
        self.fallback = fallback


def run(
    task: Task,
    algorithm: type | AlgorithmFactory,
    *,
    hyper: dict[str, Any] | None = None,
    budget_s: float | None = None,
    max_steps: int | None = None,
    n_runs: int = 5,
    seed: int = 0,
    eval_every_s: float | None = None,
    eval_every_steps: int | None = None,
    name: str | None = None,
    path: str | Path | None = None,
    n_jobs: int = 1,
    threads: int | None = 1,
    separate_constraint_sampler: bool = False,
    progress: bool | None = None,
    scheduler: str | None = None,
) -> pd.DataFrame:
    """Run ``algorithm`` ``n_runs`` times on ``task``; return the tidy records.

    ``task`` is anything with ``problem(seed)`` and ``evaluate(model)`` (the protocol
    :class:`hctrain.task.Task`): a :class:`~hctrain.task.FairnessTask`, a
    :class:`~hctrain.task.ProblemTask` over a problem of your own, or a class of your own.

    ``algorithm`` is an algorithm class (built with ``cls.from_problem(problem, **hyper)``) or a
    callable ``problem -> algorithm``. Run ``r`` uses seed ``seed + r`` for the model's
    initialisation and its batches.

    Budgets: ``budget_s`` seconds of training, ``max_steps`` steps, or both (a run stops at
    whichever comes first). With neither, ``budget_s`` is 60 s. With ``max_steps`` alone a run is
    step-budgeted (no clock limit) and evaluates every ``eval_every_steps`` steps (default
    ``max_steps // 100``). With a time budget it evaluates at training time 0 and every
    ``eval_every_s`` seconds of training (default ``budget_s / 120``), or every
    ``eval_every_steps`` steps if only that is given.

    ``path``: a parquet file to which the records are written after each finished run (checked
    for writing before the first run). ``n_jobs`` > 1 runs that many runs at once on Dask (the
    engine of :mod:`hctrain.sweep`): in worker processes of a ``LocalCluster`` started for the
    call, each limited to ``threads`` threads, or on the existing cluster at ``scheduler`` (or
    ``$HCTRAIN_DASK_SCHEDULER``). ``progress``: a bar over runs; by default shown unless
    ``$HCTRAIN_PROGRESS`` is ``0``. Errors: see the module docstring.
    """
    if callable(getattr(task, "sample_objective", None)):
        raise TypeError(
            f"run takes a task, not a problem ({type(task).__name__}): a problem has no evaluation and "
            "no way to build a fresh model per seed. Wrap it: hctrain.task.ProblemTask(build=lambda seed: "
            "<your Problem>, splits={'train': ..., 'validation': ..., 'test': ...}); or train it in your "
            "own loop with algorithm(model.parameters(), problem=problem).step()")
    if not (callable(getattr(task, "problem", None)) and callable(getattr(task, "evaluate", None))):
        raise TypeError(
            f"task must provide problem(seed) and evaluate(model) (the protocol hctrain.task.Task), as "
            f"hctrain.task.FairnessTask and ProblemTask do; got {type(task).__name__}")
    if hyper is not None and not (isinstance(hyper, dict) and all(isinstance(k, str) for k in hyper)):
        raise TypeError(f"hyper must be a dict of hyperparameter names to values, got {hyper!r}")
    n_runs = check_integer("n_runs", n_runs, low=1)
    seed = check_seed("seed", seed)
    if seed + n_runs - 1 > SEED_MAX:
        raise ValueError(f"seed + n_runs - 1 must be <= {SEED_MAX} (run r uses seed + r), got "
                         f"seed={seed}, n_runs={n_runs}")
    n_jobs = check_integer("n_jobs (runs at once)", n_jobs, low=1)
    if threads is not None:
        threads = check_integer("threads (per run)", threads, low=1, fix="; or None to leave torch's setting")
    separate_constraint_sampler = check_bool("separate_constraint_sampler", separate_constraint_sampler)
    if progress is None:  # `make notebooks` sets HCTRAIN_PROGRESS=0: no bars in stored chapters
        progress = os.environ.get("HCTRAIN_PROGRESS", "1") != "0"
    progress = check_bool("progress", progress)
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.strip()):
        raise ValueError(f"scheduler must be the address of a Dask scheduler (e.g. 'tcp://10.0.0.5:8786'), "
                         f"got {scheduler!r}")
    budgets = _budgets(budget_s, max_steps, eval_every_s, eval_every_steps)
    if path is not None:
        path = check_output_file("path", path)

    factory = _factory(algorithm, hyper or {})
    factory(_problem(task, seed, separate_constraint_sampler))  # bad hyperparameters fail here, before any run
    label = name or getattr(algorithm, "__name__", type(algorithm).__name__)
    settings = dict(**budgets, threads=threads, separate_constraint_sampler=separate_constraint_sampler)
    jobs = [(r, seed + r) for r in range(n_runs)]
    finished: list[pd.DataFrame] = []
    bar = tqdm(total=n_runs, desc=label, unit="run", disable=not progress)
    frames = _execute(task, factory, label, jobs, settings, n_jobs, scheduler)
    saved = 0
    try:
        for frame in frames:
            finished.append(frame)
            _save(finished, path, label)
            saved = len(finished)
            bar.update(1)
    except RecordsNotSavedError:
        raise
    except BaseException as error:
        frames.close()  # stops (kills) any worker processes before the records are saved
        done = sorted(int(f["run"].iloc[0]) for f in finished)
        pending = [r for r, _ in jobs if r not in done]
        try:
            if saved < len(finished):  # interrupted between a run's end and its save
                _save(finished, path, label)
            where = (f"saved in {path}" if path and finished else
                     "not saved to a file (no path given); they are in the exception's .records" if finished
                     else "nothing to save")
        except RecordsNotSavedError as failed:
            where = str(failed)
        records = _combine(finished)
        summary = f"{label}: runs {done} of {n_runs} finished ({where}); runs {pending} did not finish"
        if isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(f"interrupted: {summary}", records) from error
        if isinstance(error, Exception):
            raise RunFailedError(f"{label}: a run failed after {len(finished)} finished runs: "
                                 f"{type(error).__name__}: {error}. {summary}", records) from error
        raise
    finally:
        frames.close()
        bar.close()
    return _combine(finished)


def _budgets(budget_s: float | None, max_steps: int | None, eval_every_s: float | None,
             eval_every_steps: int | None) -> dict[str, Any]:
    """The checked budgets and evaluation times of a run, defaults filled in as :func:`run` says."""
    if budget_s is None and max_steps is None:
        budget_s = DEFAULT_BUDGET_S
    if budget_s is not None:
        budget_s = check_number("budget_s (seconds of training per run)", budget_s, low=0.0, low_open=True)
    if max_steps is not None:
        max_steps = check_integer("max_steps", max_steps, low=1)
    if eval_every_s is not None:
        eval_every_s = check_number("eval_every_s", eval_every_s, low=0.0, low_open=True)
    if eval_every_steps is not None:
        eval_every_steps = check_integer("eval_every_steps", eval_every_steps, low=1)
    if eval_every_s is None and eval_every_steps is None:
        if budget_s is not None:
            eval_every_s = budget_s / 120
        else:
            eval_every_steps = max(1, max_steps // 100)
    return dict(budget_s=budget_s, max_steps=max_steps, eval_every_s=eval_every_s,
                eval_every_steps=eval_every_steps)


def _factory(algorithm: type | AlgorithmFactory, hyper: dict[str, Any]) -> AlgorithmFactory:
    if isinstance(algorithm, type):
        if not hasattr(algorithm, "from_problem"):
            raise TypeError(f"{algorithm.__name__} has no from_problem(problem, **hyper); pass a callable "
                            "problem -> algorithm instead")
        return lambda problem: algorithm.from_problem(problem, **hyper)
    if hyper:
        raise ValueError("hyper is only used with an algorithm class; bind the hyperparameters in your callable")
    if not callable(algorithm):
        raise TypeError(f"algorithm must be an algorithm class or a callable problem -> algorithm, got {algorithm!r}")
    return algorithm


def _execute(task, factory, label, jobs, settings, n_jobs, scheduler=None) -> Iterator[pd.DataFrame]:
    if n_jobs == 1 or len(jobs) == 1:
        for r, s in jobs:
            yield single_run(task, factory, label, r, s, **settings)
        return
    from distributed import as_completed

    from .sweep import dask_client

    with dask_client(scheduler, n_workers=min(n_jobs, len(jobs))) as client:
        shared = client.scatter(task, broadcast=True)  # the data travel once per worker
        futures = [client.submit(single_run, shared, factory, label, r, s, pure=False, **settings)
                   for r, s in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)


def single_run(
    task: Task,
    factory: AlgorithmFactory,
    label: str,
    run_index: int,
    seed: int,
    *,
    budget_s: float | None,
    max_steps: int | None,
    eval_every_s: float | None,
    eval_every_steps: int | None,
    threads: int | None = 1,
    separate_constraint_sampler: bool = False,
) -> pd.DataFrame:
    """One seeded run; returns its tidy records."""
    with _threads(threads):
        problem = _problem(task, seed, separate_constraint_sampler)
        algo = factory(problem)
        rows: list[tuple] = []

        def record(step: int, elapsed: float) -> None:
            values = task.evaluate(problem.model)
            bad = [f"{split} {metric} = {value}" for (split, metric), value in values.items()
                   if not math.isfinite(value)]
            if bad:
                raise FloatingPointError(
                    f"run {run_index} (seed {seed}), evaluation at step {step}: {len(bad)} values are "
                    f"not finite ({', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}). The model's "
                    "outputs or the data hold NaN or infinity there: lower the step sizes, or check "
                    "the split (hctrain's loaders refuse missing values unless drop_missing=True)")
            for (split, metric), value in values.items():
                rows.append((label, run_index, seed, step, elapsed, split, metric, value))

        elapsed, step = 0.0, 0
        record(0, 0.0)
        budget = math.inf if budget_s is None else budget_s
        steps_left = math.inf if max_steps is None else max_steps
        while elapsed < budget and step < steps_left:
            stop_time = min(budget, (math.floor(elapsed / eval_every_s) + 1) * eval_every_s) if eval_every_s else budget
            stop_step = min(steps_left, (step // eval_every_steps + 1) * eval_every_steps) if eval_every_steps else steps_left
            start = time.perf_counter()
            deadline = start + (stop_time - elapsed)
            while step < stop_step:
                algo.step(problem)
                step += 1
                if time.perf_counter() >= deadline:
                    break
            elapsed += time.perf_counter() - start
            record(step, elapsed)
    return pd.DataFrame(rows, columns=COLUMNS)


def _problem(task: Task, seed: int, separate_constraint_sampler: bool) -> Any:
    """``task.problem(seed)``, asking for a separate constraint sampler only when one is wanted
    (a task of one's own need not know the keyword)."""
    if separate_constraint_sampler:
        return task.problem(seed, separate_constraint_sampler=True)
    return task.problem(seed)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values(["run", "step"], kind="stable", ignore_index=True)


def _save(frames: list[pd.DataFrame], path: Path | None, label: str = "records") -> None:
    """Write the finished runs to ``path`` (atomically: a temporary file, then a rename). If that
    fails, write them to a fallback file and raise RecordsNotSavedError naming it."""
    if path is None or not frames:
        return
    records = _combine(frames)
    try:
        _write_atomically(records, path)
    except Exception as error:
        fallback: Path | None
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
        try:
            handle, name = tempfile.mkstemp(prefix=f"hctrain-{stem}-", suffix=".parquet")
            os.close(handle)
            fallback = Path(name)
            records.to_parquet(fallback, index=False)
            kept = f"the {len(frames)} finished runs are in {fallback} and in the exception's .records"
        except Exception:
            fallback = None
            kept = f"the {len(frames)} finished runs are only in the exception's .records"
        raise RecordsNotSavedError(f"could not write the records to {path} "
                                   f"({type(error).__name__}: {error}); {kept}", records, fallback) from error


def _write_atomically(records: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        records.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_records(path: str | Path) -> pd.DataFrame:
    """Records written by :func:`run`."""
    return pd.read_parquet(path)
