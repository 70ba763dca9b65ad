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


def final_per_cell(records: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per sweep cell (records of :func:`hctrain.sweep.run_sweep`): its parameters
    (state, method, seed), the final loss and accuracy on ``split``, ``max_c`` -- the largest
    final constraint value c_i, so that ``max_c <= 0`` means every constraint holds -- and
    ``feasible``."""
    if "cell" not in records.columns:
        raise ValueError("final_per_cell needs sweep records (a 'cell' column); for runner.run records "
                         "use final_table")
    last = records.groupby("cell")["step"].transform("max")
    final = records[(records["step"] == last) & (records["split"] == split)]
    keys = final.groupby("cell")[["state", "method", "seed", "algorithm", "step"]].first()
    values = final.pivot_table(index="cell", columns="metric", values="value", aggfunc="first")
    constraints = [c for c in values.columns if c.startswith("c[")]
    table = keys.join(values[["loss", "accuracy"]])
    table["max_c"] = values[constraints].max(axis=1)
    table["feasible"] = table["max_c"] <= 0
    return table.reset_index()
