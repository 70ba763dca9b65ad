"""Budgeted, repeated, seeded runs of one algorithm on a task, with tidy records.

Each run trains a fresh model (seeded) for a wall-clock budget and/or a number of steps and
evaluates loss, accuracy and every constraint on the full train and test sets at regular
training times. Only training is timed: evaluation pauses the clock. Records are tidy, one row
per (run, evaluation, split, metric), and each finished run is written to ``path`` at once, so an
interrupted or failing experiment keeps what it finished.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from tqdm import tqdm

from .problem import StochasticProblem
from .task import FairnessTask

COLUMNS = ["algorithm", "run", "seed", "step", "time_s", "split", "metric", "value"]
AlgorithmFactory = Callable[[StochasticProblem], Any]


def run(
    task: FairnessTask,
    algorithm: type | AlgorithmFactory,
    *,
    hyper: dict[str, Any] | None = None,
    budget_s: float | None = 60.0,
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
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``algorithm`` ``n_runs`` times on ``task``; return the tidy records.

    ``algorithm`` is an algorithm class (built with ``cls.from_problem(problem, **hyper)``) or a
    callable ``problem -> algorithm``. Run ``r`` uses seed ``seed + r`` for the model's
    initialisation and its batches. A run stops when its training time reaches ``budget_s`` or
    after ``max_steps`` steps, whichever comes first (give at least one). Evaluations happen at
    training time 0 and every ``eval_every_s`` seconds of training (default ``budget_s / 120``),
    or every ``eval_every_steps`` steps when there is no time budget. ``n_jobs`` > 1 runs that
    many runs at once in separate processes, each limited to ``threads`` threads.
    """
    if budget_s is None and max_steps is None:
        raise ValueError("give a time budget (budget_s) or a step count (max_steps)")
    if budget_s is not None and not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if not isinstance(n_runs, int) or n_runs < 1:
        raise ValueError(f"n_runs must be a positive integer, got {n_runs!r}")
    if not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    if eval_every_s is None and budget_s is not None:
        eval_every_s = budget_s / 120
    if eval_every_s is not None and not eval_every_s > 0:
        raise ValueError(f"eval_every_s must be > 0, got {eval_every_s!r}")
    if eval_every_steps is None and eval_every_s is None:
        eval_every_steps = max(1, max_steps // 100)
    if eval_every_steps is not None and (not isinstance(eval_every_steps, int) or eval_every_steps < 1):
        raise ValueError(f"eval_every_steps must be a positive integer, got {eval_every_steps!r}")

    factory = _factory(algorithm, hyper or {})
    factory(task.problem(seed, separate_constraint_sampler=separate_constraint_sampler))  # bad hyperparameters fail here, before any run
    label = name or getattr(algorithm, "__name__", type(algorithm).__name__)
    settings = dict(budget_s=budget_s, max_steps=max_steps, eval_every_s=eval_every_s,
                    eval_every_steps=eval_every_steps, threads=threads,
                    separate_constraint_sampler=separate_constraint_sampler)
    jobs = [(r, seed + r) for r in range(n_runs)]
    finished: list[pd.DataFrame] = []
    bar = tqdm(total=n_runs, desc=label, unit="run", disable=not progress)
    try:
        for frame in _execute(task, factory, label, jobs, settings, n_jobs):
            finished.append(frame)
            _save(finished, path)
            bar.update(1)
    except BaseException as error:
        _save(finished, path)
        where = f"; the {len(finished)} finished runs are saved in {path}" if path else ""
        if isinstance(error, Exception):
            raise RuntimeError(f"{label}: a run failed after {len(finished)} finished runs{where}: {error}") from error
        raise
    finally:
        bar.close()
    return _combine(finished)


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


def _execute(task, factory, label, jobs, settings, n_jobs) -> Iterator[pd.DataFrame]:
    if n_jobs == 1 or len(jobs) == 1:
        for r, s in jobs:
            yield single_run(task, factory, label, r, s, **settings)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=min(n_jobs, len(jobs)), return_as="generator_unordered")
    yield from parallel(delayed(single_run)(task, factory, label, r, s, **settings) for r, s in jobs)


def single_run(
    task: FairnessTask,
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
        problem = task.problem(seed, separate_constraint_sampler=separate_constraint_sampler)
        algo = factory(problem)
        rows: list[tuple] = []

        def record(step: int, elapsed: float) -> None:
            for (split, metric), value in task.evaluate(problem.model).items():
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


def _save(frames: list[pd.DataFrame], path: str | Path | None) -> None:
    if path is None or not frames:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    _combine(frames).to_parquet(tmp, index=False)
    tmp.replace(path)


def load_records(path: str | Path) -> pd.DataFrame:
    """Records written by :func:`run`."""
    return pd.read_parquet(path)
