"""Tables of final numbers from run records."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .checks import check_number


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


def slug(text: object) -> str:
    """``text`` as a glue name part: lower case, runs of other characters as one ``_``
    (``"Adam + fairret (w=0.3)"`` -> ``"adam_fairret_w_0_3"``, ``"SSL-ALM"`` -> ``"ssl_alm"``)."""
    import re

    return re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")


def glue_table(prefix: str, table: pd.DataFrame | pd.Series) -> list[str]:
    """Glue every value of ``table`` for the chapter's prose (myst-nb ``glue``, not displayed):
    the value in row ``r``, column ``c`` as ``{prefix}_{slug(r)}_{slug(c)}`` (a Series: as
    ``{prefix}_{slug(r)}``). Numbers are glued as plain floats or ints, so that the text can format
    them (``{glue:text}`name:.3f```). Returns the names glued."""
    from myst_nb import glue

    frame = table.to_frame(name="") if isinstance(table, pd.Series) else table
    names = []
    for row, values in frame.iterrows():
        for column, value in values.items():
            parts = [prefix, slug(row), slug(column)]
            name = "_".join(p for p in parts if p)
            if value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value):
                value = float("nan")
            elif isinstance(value, (bool, np.bool_)):
                value = bool(value)
            elif isinstance(value, (int, np.integer)):
                value = int(value)
            elif isinstance(value, (float, np.floating)):
                value = float(value)
            glue(name, value, display=False)
            names.append(name)
    return names


def per_run_table(records: pd.DataFrame, iterate: str = "last") -> pd.DataFrame:
    """One row per (algorithm, run): the last evaluation's loss, accuracy and largest constraint
    value max_g c_g on train and test (a positive value is a violation), and whether every
    constraint held there. ``iterate="selected"``: the evaluation chosen on the validation split
    instead (:func:`selected_steps`)."""
    if iterate not in ("last", "selected"):
        raise ValueError(f"iterate must be 'last' or 'selected', got {iterate!r}")
    final = final_values(records) if iterate == "last" else selected_values(records)
    constraint = final["metric"].str.startswith("c[")
    rows = []
    keys = ["algorithm", "run"]
    for split in ("train", "test"):
        mine = final[final["split"] == split]
        wide = mine[~mine["metric"].str.startswith("c[")].pivot_table(index=keys, columns="metric", values="value")
        wide = wide.rename(columns=lambda m: f"{split} {m}")
        worst = mine[constraint[mine.index]].groupby(keys)["value"].max().rename(f"largest {split} c")
        rows.append(wide.join(worst))
    table = rows[0].join(rows[1])
    for split in ("train", "test"):
        table[f"inside on {split}"] = table[f"largest {split} c"] <= 0
    first = [f"{s} {m}" for s in ("train", "test") for m in ("loss", "accuracy") if f"{s} {m}" in table]
    table = table[first + [c for c in table.columns if c not in first]]
    order = list(pd.unique(records["algorithm"]))
    table = table.reset_index()
    table["algorithm"] = pd.Categorical(table["algorithm"], order, ordered=True)
    return table.sort_values(keys).set_index(keys)


def selected_steps(records: pd.DataFrame, split: str = "validation", margin: float = 0.0) -> pd.DataFrame:
    """Per (algorithm, run), the evaluation chosen on ``split`` by a rule fixed in advance: among
    the evaluations after the start at which every constraint held on ``split`` (every recorded
    ``c[...]`` and, where the task records them, the decisions' ``d[...]``), the one with the
    lowest ``split`` loss; if there is none, the one with the smallest largest constraint value.
    Returns one row per run: ``step``, whether it was ``feasible`` on the split, and its
    ``split`` loss and largest constraint value. The test set plays no part in the choice.

    ``margin`` (>= 0, in the constraints' units) asks for every constraint to hold with that much
    to spare on ``split``, ``c <= -margin`` (for gaps: ``gap <= bound - margin``): the chosen
    iterate then sits inside the bound on the split by the margin, which leaves room for the
    difference between the split and new data. It is part of the rule: fix it before looking at
    the test set.

    The chosen iterate's numbers on every split are already in the records (every evaluation
    evaluates every split): :func:`selected_values` returns them. To rebuild the model itself,
    replay the run to that step (``hctrain.metrics.replay``)."""
    margin = check_number("margin", margin, low=0.0, fix="; e.g. margin=0.01 (constraint units)")
    mine = records[(records["split"] == split) & (records["step"] > 0)]
    if mine.empty:
        raise ValueError(f"no evaluations on the split {split!r} after the start: give the task a "
                         f"validation split (FairnessTask(..., validation_size=0.2)) and run again")
    keys = ["algorithm", "run", "step"]
    loss = mine[mine["metric"] == "loss"].set_index(keys)["value"].rename("loss")
    worst = mine[mine["metric"].str.startswith(("c[", "d["))].groupby(keys)["value"].max().rename("largest c")
    table = pd.concat([loss, worst], axis=1).reset_index()
    table["feasible"] = table["largest c"] <= -margin
    # feasible first, then the lowest loss; if none is feasible, the smallest violation
    table["key1"] = ~table["feasible"]
    # a model without a loss (decisions only) is ranked by its constraints alone
    table["key2"] = table["loss"].where(table["feasible"] & table["loss"].notna(), table["largest c"])
    chosen = (table.sort_values(["algorithm", "run", "key1", "key2", "step"], kind="stable")
              .groupby(["algorithm", "run"], sort=False).head(1))
    order = list(pd.unique(records["algorithm"]))
    chosen = chosen.assign(algorithm=pd.Categorical(chosen["algorithm"], order, ordered=True))
    return (chosen.sort_values(["algorithm", "run"]).drop(columns=["key1", "key2"])
            .rename(columns={"loss": f"{split} loss", "largest c": f"largest {split} c"})
            .set_index(["algorithm", "run"]))


def selected_values(records: pd.DataFrame, split: str = "validation", margin: float = 0.0) -> pd.DataFrame:
    """The records of the evaluations :func:`selected_steps` chooses (with its ``margin``), one per
    run: the same columns as ``final_values``, so that :func:`per_run_table` and the tables built
    on ``final_values`` read them as they read the last iterate."""
    chosen = selected_steps(records, split, margin).reset_index()[["algorithm", "run", "step"]]
    chosen["algorithm"] = chosen["algorithm"].astype(str)
    out = records.merge(chosen, on=["algorithm", "run", "step"], how="inner")
    return out.drop(columns=["time_s"]).reset_index(drop=True)


def held_out_runs(records: pd.DataFrame, bound: float, iterate: str = "selected",
                  split: str = "test", margin: float = 0.0) -> pd.DataFrame:
    """One row per (algorithm, run) on ``split`` at the ``iterate`` (``"selected"`` on
    validation by :func:`selected_steps`, or ``"last"``): loss, accuracy, the largest
    positive-rate gap on the probabilities (``max_g c_g + bound``, for one-vs-overall constraints
    ``|PR_g - PR|``) and on the decisions (from ``d[...]``), whether both are within ``bound``,
    the certificate's largest upper bound (``gap UCB``) and whether it is within ``bound``, and
    the training time of the run (seconds, at its last evaluation). ``margin``: the selection
    rule's (:func:`selected_steps`), for ``iterate="selected"``."""
    if iterate not in ("last", "selected"):
        raise ValueError(f"iterate must be 'last' or 'selected', got {iterate!r}")
    chosen = final_values(records) if iterate == "last" else selected_values(records, margin=margin)
    mine = chosen[chosen["split"] == split]
    if mine.empty:
        raise ValueError(f"no evaluations on the split {split!r}; recorded: {sorted(set(records['split']))}")
    keys = ["algorithm", "run"]
    wide = mine.pivot_table(index=keys, columns="metric", values="value", dropna=False, observed=True)
    out = pd.DataFrame(index=wide.index)
    out["loss"] = wide.get("loss")
    out["accuracy"] = wide.get("accuracy")
    probability = [c for c in wide.columns if c.startswith("c[")]
    decision = [c for c in wide.columns if c.startswith("d[")]
    out["probability gap"] = wide[probability].max(axis=1, skipna=False) + bound if probability else np.nan
    out["decision gap"] = wide[decision].max(axis=1) + bound if decision else np.nan
    out["both within bound"] = ((out["probability gap"] <= bound) | out["probability gap"].isna()) & (
        out["decision gap"] <= bound)
    out["gap UCB"] = wide["gap UCB"] if "gap UCB" in wide else np.nan
    out["certified"] = out["gap UCB"] <= bound
    time_s = records.groupby(keys)["time_s"].max()
    out["training time (s)"] = time_s.reindex(out.index)
    order = list(pd.unique(records["algorithm"]))
    out = out.reset_index()
    out["algorithm"] = pd.Categorical(out["algorithm"], order, ordered=True)
    return out.sort_values(keys).set_index(keys)


def held_out_table(records: pd.DataFrame, bound: float, iterate: str = "selected",
                   split: str = "test", margin: float = 0.0) -> pd.DataFrame:
    """One row per algorithm from :func:`held_out_runs`: the mean over runs of the loss, accuracy,
    both gaps, the certificate's upper bound and the training time, the share of runs with both
    gaps within ``bound`` and the share certified within it, and the number of runs."""
    runs = held_out_runs(records, bound, iterate, split, margin)
    grouped = runs.groupby(level="algorithm", observed=True)
    table = grouped[["loss", "accuracy", "probability gap", "decision gap", "gap UCB"]].mean()
    table["share within bound"] = grouped["both within bound"].mean()
    table["share certified"] = grouped["certified"].mean()
    table["training time (s)"] = grouped["training time (s)"].mean()
    table["runs"] = grouped.size()
    return table
