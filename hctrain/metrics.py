"""Comparing algorithms: a summary table of run records, and group fairness of final models.

* :func:`comparison_table` turns the tidy records of :func:`hctrain.runner.run` into one row per
  algorithm: final loss and accuracy, the largest final constraint value, how often all
  constraints held, the train loss at given times, steps per second.
  :func:`largest_final_constraint` gives the same largest final value with the group it belongs
  to, so that a page which names the group quotes the table's number.
* :func:`replay` rebuilds the final model of a recorded run. ``run`` keeps records, not models;
  but a run is determined by its seed and its number of steps (the time budget only decides
  when it stops), so stepping a fresh ``task.problem(seed)`` as many times as the run did gives
  the same weights. :func:`replay_final_models` does this for recorded runs and
  :func:`replay_error` checks the result against the run's last evaluation.
* :func:`group_fairness_table` measures a model per group with fairret's statistics: positive
  rate (independence), true positive rate (separation) and positive predictive value
  (sufficiency), next to their values on the whole split; :func:`fairness_gaps` reduces it to
  the largest gap max_g |S_g - S| per statistic.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from fairret.statistic import (LinearFractionalStatistic, PositivePredictiveValue, PositiveRate,
                               TruePositiveRate)
from torch import Tensor, nn

from .plots import constraint_metrics
from .problem import StochasticProblem
from .runner import _factory, _threads
from .summary import final_values, steps_per_second
from .task import FairnessTask

__all__ = ["STATISTICS", "comparison_table", "largest_final_constraint", "loss_at", "replay", "replay_final_models",
           "replay_error", "group_statistics", "group_fairness_table", "fairness_gaps"]

STATISTICS: dict[str, tuple[LinearFractionalStatistic, bool]] = {
    "PR": (PositiveRate(), False),               # P(yhat = 1 | g): independence
    "TPR": (TruePositiveRate(), True),           # P(yhat = 1 | y = 1, g): separation (equal opportunity)
    "PPV": (PositivePredictiveValue(), True),    # P(y = 1 | yhat = 1, g): sufficiency (calibration)
}
"""Name -> (fairret statistic, whether it takes the labels)."""

OVERALL = "overall"


# --- the summary table of run records -------------------------------------------------------

def loss_at(records: pd.DataFrame, time_s: float, split: str = "train") -> pd.Series:
    """Per algorithm, the mean over runs of the loss at the last evaluation at or before ``time_s``."""
    loss = records[(records["split"] == split) & (records["metric"] == "loss") & (records["time_s"] <= time_s + 1e-9)]
    last = loss.sort_values("time_s", kind="stable").groupby(["algorithm", "run"], sort=False)["value"].last()
    return last.groupby(level="algorithm", sort=False).mean()


def comparison_table(
    records: pd.DataFrame, loss_times: Sequence[float] | Mapping[str, float] = ()
) -> pd.DataFrame:
    """One row per algorithm (in order of appearance), each number a mean over runs.

    * ``final {split} loss`` / ``accuracy``: the last evaluation of each run.
    * ``largest final {split} c``: max over groups of the last evaluation's c_g, per run (a
      positive number is a violation of the bound).
    * ``feasible share {split}``: the share of evaluations after the start (step > 0; all runs
      pooled) at which every c_g <= 0 on that split.
    * ``train loss at {t} s``: see :func:`loss_at`, for each ``t`` in ``loss_times``; given a
      mapping such as ``{"quarter": budget / 4}``, the column is named ``train loss quarter``.
    * ``steps per second``: training steps per second of training time.
    """
    if records.empty:
        raise ValueError("no records: run an experiment first")
    order = list(pd.unique(records["algorithm"]))
    constraints = constraint_metrics(records)
    final = final_values(records)
    columns: dict[str, pd.Series] = {}
    for split in ("train", "test"):
        mine = final[final["split"] == split]
        for metric in ("loss", "accuracy"):
            columns[f"final {split} {metric}"] = mine[mine["metric"] == metric].groupby("algorithm")["value"].mean()
    for split in ("train", "test"):
        columns[f"largest final {split} c"] = _largest_final(final, constraints, split)["value"]
    for split in ("train", "test"):
        cons = records[(records["split"] == split) & records["metric"].isin(constraints) & (records["step"] > 0)]
        worst = cons.groupby(["algorithm", "run", "step"])["value"].max()
        columns[f"feasible share {split}"] = worst.le(0).groupby(level="algorithm").mean()
    if isinstance(loss_times, Mapping):
        named = {f"train loss {label}": t for label, t in loss_times.items()}
    else:
        named = {f"train loss at {t:g} s": t for t in loss_times}
    for column, t in named.items():
        columns[column] = loss_at(records, t)
    columns["steps per second"] = steps_per_second(records)
    return pd.DataFrame(columns).reindex(order).rename_axis("algorithm")


def largest_final_constraint(records: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """Per algorithm (in order of appearance), the largest constraint value at the end of a run.

    * ``value``: the mean over runs of :math:`\\max_g c_g` at each run's last evaluation on
      ``split``, the ``largest final {split} c`` column of :func:`comparison_table`.
    * ``group``: the group whose :math:`c_g` is that maximum in the most runs (the name inside
      ``c[...]``); a tie goes to the group with the larger mean final :math:`c_g`.
    """
    if records.empty:
        raise ValueError("no records: run an experiment first")
    if split not in set(records["split"]):
        raise ValueError(f"split {split!r} is not in the records, which have {sorted(set(records['split']))}")
    order = list(pd.unique(records["algorithm"]))
    return _largest_final(final_values(records), constraint_metrics(records), split).reindex(order)


def _largest_final(final: pd.DataFrame, constraints: list[str], split: str) -> pd.DataFrame:
    mine = final[(final["split"] == split) & final["metric"].isin(constraints)]
    per_run = mine.loc[mine.groupby(["algorithm", "run"])["value"].idxmax()]
    mean_c = mine.groupby(["algorithm", "metric"])["value"].mean()
    rows = {}
    for algorithm, runs in per_run.groupby("algorithm", sort=False):
        counts = runs["metric"].value_counts()
        tied = counts.index[counts == counts.max()]
        metric = max(tied, key=lambda m: mean_c[(algorithm, m)])
        rows[algorithm] = {"value": runs["value"].mean(), "group": metric[2:-1]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("algorithm")


# --- rebuilding final models -------------------------------------------------------------------

def replay(
    task: FairnessTask,
    algorithm: type | Callable[[StochasticProblem], Any],
    *,
    seed: int,
    steps: int,
    hyper: Mapping[str, Any] | None = None,
    threads: int | None = 1,
    separate_constraint_sampler: bool = False,
) -> nn.Module:
    """The model after ``steps`` steps of ``algorithm`` on ``task.problem(seed)``.

    Built and stepped exactly as :func:`hctrain.runner.single_run` does (``algorithm`` is a class
    with ``hyper``, or a callable ``problem -> algorithm``), without the evaluations, which
    change nothing in the run. So with the seed and the final step count of a recorded run it
    returns that run's final model, up to floating-point non-determinism (none on a CPU with
    one thread, see :func:`replay_error`).
    """
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    with _threads(threads):
        problem = task.problem(int(seed), separate_constraint_sampler=separate_constraint_sampler)
        algo = _factory(algorithm, dict(hyper or {}))(problem)
        for _ in range(int(steps)):
            algo.step(problem)
    return problem.model


def replay_final_models(
    task: FairnessTask,
    algorithms: Mapping[str, tuple[type | Callable[[StochasticProblem], Any], Mapping[str, Any] | None]],
    records: pd.DataFrame,
    runs: int = 1,
    n_jobs: int = 1,
    threads: int | None = 1,
    separate_constraint_sampler: bool = False,
) -> dict[str, list[nn.Module]]:
    """The final models of the first ``runs`` recorded runs of each algorithm, by :func:`replay`.

    ``algorithms`` maps each recorded algorithm name to ``(algorithm, hyper)`` as given to
    ``run``. Seeds and step counts are read from ``records``; ``n_jobs`` replays run at once in
    the worker processes of a Dask LocalCluster. Replaying costs as much training time as the runs took.
    """
    last = records.loc[records.groupby(["algorithm", "run"])["step"].idxmax(), ["algorithm", "run", "seed", "step"]]
    jobs = []
    for name, (algorithm, hyper) in algorithms.items():
        mine = last[(last["algorithm"] == name) & (last["run"] < runs)].sort_values("run")
        if mine.empty:
            raise ValueError(f"no records for algorithm {name!r}; recorded: {sorted(set(records['algorithm']))}")
        jobs += [(name, algorithm, hyper, int(row.seed), int(row.step)) for row in mine.itertuples()]

    def one(algorithm, hyper, seed, steps):
        return replay(task, algorithm, seed=seed, steps=steps, hyper=hyper, threads=threads,
                      separate_constraint_sampler=separate_constraint_sampler)

    if n_jobs == 1 or len(jobs) == 1:
        models = [one(*job[1:]) for job in jobs]
    else:
        from .sweep import dask_client

        with dask_client(n_workers=min(n_jobs, len(jobs))) as client:  # the engine of run(n_jobs=...)
            models = client.gather([client.submit(one, *job[1:], pure=False) for job in jobs])
    out: dict[str, list[nn.Module]] = {name: [] for name in algorithms}
    for job, model in zip(jobs, models):
        out[job[0]].append(model)
    return out


def replay_error(task: FairnessTask, model: nn.Module, records: pd.DataFrame, algorithm: str, run: int = 0) -> float:
    """Largest |difference| between ``task.evaluate(model)`` and the run's last recorded evaluation.

    0 (or about 1e-7) when ``model`` is that run's final model.
    """
    final = final_values(records)
    final = final[(final["algorithm"] == algorithm) & (final["run"] == run)]
    if final.empty:
        raise ValueError(f"no records for algorithm {algorithm!r}, run {run}")
    now = task.evaluate(model)
    return max(abs(now[(row.split, row.metric)] - row.value) for row in final.itertuples())


# --- group fairness of a model ------------------------------------------------------------

def group_statistics(
    pred: Tensor,
    label: Tensor,
    group: Tensor,
    group_names: list[str],
    statistics: Mapping[str, tuple[LinearFractionalStatistic, bool]] | None = None,
) -> pd.DataFrame:
    """Per group, and overall, each fairret statistic of predictions ``pred`` (N,) with labels (N,).

    ``pred`` is 0/1 predictions or probabilities (fairret then uses the expected counts). Rows:
    the groups (codes ``0..G-1`` of ``group``, named by ``group_names``) and ``"overall"``;
    columns: ``n``, ``base rate`` (the mean label) and one per statistic. A statistic whose
    denominator is zero on a group (e.g. PPV without predicted positives) is NaN there.
    """
    statistics = STATISTICS if statistics is None else statistics
    G = len(group_names)
    pred = pred.detach().reshape(-1, 1).double()
    label = label.detach().reshape(-1, 1).double()
    group = group.detach().reshape(-1)
    if not (len(pred) == len(label) == len(group)):
        raise ValueError(f"pred, label and group must have the same length, got {len(pred)}, {len(label)}, {len(group)}")
    if len(group) and (int(group.min()) < 0 or int(group.max()) >= G):
        raise ValueError(f"group codes must lie in 0..{G - 1} (one per name in group_names)")
    sens = torch.nn.functional.one_hot(group.long(), G).double()
    counts = sens.sum(0)
    columns: dict[str, np.ndarray] = {
        "n": np.append(counts.numpy(), float(len(group))).astype(int),
        "base rate": np.append(((sens.T @ label).squeeze(-1) / counts).numpy(), float(label.mean())),
    }
    for name, (stat, needs_label) in statistics.items():
        args = (label,) if needs_label else ()
        values = []
        for s in (sens, None):
            num = stat.num(pred, s, *args).reshape(-1)
            denom = stat.denom(pred, s, *args).reshape(-1)
            value = torch.where(denom != 0, num / torch.where(denom != 0, denom, 1.0), torch.nan)
            values.append(value.numpy())
        columns[name] = np.concatenate(values)
    return pd.DataFrame(columns, index=pd.Index([*group_names, OVERALL], name="group"))


@torch.no_grad()
def group_fairness_table(
    task: FairnessTask,
    model: nn.Module,
    split: str = "test",
    hard: bool = True,
    statistics: Mapping[str, tuple[LinearFractionalStatistic, bool]] | None = None,
) -> pd.DataFrame:
    """:func:`group_statistics` of ``model`` on a split of ``task``.

    ``hard=True`` scores the predicted labels yhat = 1[logit > 0] (the predictions the accuracy
    counts); ``hard=False`` the predicted probabilities, as the training constraints do.
    """
    was_training = model.training
    model.eval()
    try:
        batch = task.split(split)
        logits = model(batch.x).squeeze(-1)
    finally:
        model.train(was_training)
    pred = (logits > 0).double() if hard else torch.sigmoid(logits.double())
    return group_statistics(pred, batch.y, batch.group, task.data.group_names, statistics)


def fairness_gaps(table: pd.DataFrame, statistics: list[str] | None = None) -> pd.Series:
    """max over groups of |S_g - S| for each statistic of a :func:`group_statistics` table.

    NaN for a statistic that is undefined on some group (e.g. PPV of a group without predicted
    positives): the largest gap is then unknown.
    """
    statistics = statistics or [c for c in table.columns if c not in ("n", "base rate")]
    groups = table.drop(index=OVERALL)
    return pd.Series({s: float((groups[s] - table.loc[OVERALL, s]).abs().max(skipna=False)) for s in statistics},
                     name="largest gap")
