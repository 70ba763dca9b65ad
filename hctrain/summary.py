"""Tables of final numbers from run records."""
from __future__ import annotations

import pandas as pd


def final_values(records: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of every run: one row per (algorithm, run, split, metric)."""
    last_step = records.groupby(["algorithm", "run"])["step"].transform("max")
    return records[records["step"] == last_step].drop(columns=["time_s"]).reset_index(drop=True)


def final_table(records: pd.DataFrame, split: str = "test", metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation over runs of each metric's final value on ``split``.

    Constraint metrics ``c[...]`` are values of c_i (the bound already subtracted): a positive
    number is a violation.
    """
    final = final_values(records)
    final = final[final["split"] == split]
    if metrics is not None:
        final = final[final["metric"].isin(metrics)]
    order = list(pd.unique(final["metric"]))
    table = final.pivot_table(index="metric", columns="algorithm", values="value", aggfunc=["mean", "std"])
    table = table.reindex(order)
    table.columns = [f"{alg} {stat}" for stat, alg in table.columns]
    return table[[f"{alg} {stat}" for alg in pd.unique(final["algorithm"]) for stat in ("mean", "std")]]


def steps_per_second(records: pd.DataFrame) -> pd.Series:
    """Mean training steps per second of training time, per algorithm."""
    last = records.loc[records.groupby(["algorithm", "run"])["step"].idxmax()]
    rate = last["step"] / last["time_s"]
    return rate.groupby(last["algorithm"]).mean().rename("steps per second")
