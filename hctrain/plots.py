"""Figure 1 of the paper: per algorithm, the loss then one panel per constraint, over time.

Train in blue and test in orange; a line for the mean over runs and a band from the lowest to
the highest run. Constraint panels show the constrained quantity (e.g. |PR_g - PR|), i.e. the
recorded c_i plus the bound, with the bound drawn as a dashed line.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

SPLIT_COLOURS = {"train": "tab:blue", "test": "tab:orange"}


def constraint_metrics(records: pd.DataFrame) -> list[str]:
    """The recorded constraint metrics ``c[...]``, in order of first appearance."""
    return [m for m in pd.unique(records["metric"]) if m.startswith("c[")]


def on_time_grid(records: pd.DataFrame, resolution_s: float | None = None) -> pd.DataFrame:
    """Records with ``t``: evaluation times rounded to a common grid so runs can be averaged.

    The default resolution is the median spacing between evaluations (the paper rounds to 0.1 s).
    """
    records = records.copy()
    if resolution_s is None:
        gaps = records.groupby(["algorithm", "run"])["time_s"].apply(lambda t: np.diff(np.unique(t)))
        spacing = np.concatenate([g for g in gaps if len(g)]) if len(gaps) else np.array([])
        resolution_s = float(np.median(spacing)) if spacing.size else 0.1
    records["t"] = (records["time_s"] / resolution_s).round() * resolution_s
    return records


def band(records: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    """Mean, min and max over runs of one metric on one split, per time ``t``."""
    sub = records[(records["metric"] == metric) & (records["split"] == split)]
    # a run contributes once per grid time (its last evaluation there)
    sub = sub.sort_values("time_s").groupby(["run", "t"], as_index=False).last()
    return sub.groupby("t")["value"].agg(["mean", "min", "max"]).reset_index()


def figure1(
    records: pd.DataFrame,
    bound: float,
    algorithms: list[str] | None = None,
    metrics: list[str] | None = None,
    resolution_s: float | None = None,
    panel_size: tuple[float, float] = (2.6, 2.1),
    constraint_labels: dict[str, str] | None = None,
) -> Figure:
    """One row per algorithm: loss, then each constraint, train and test, mean and min-max band."""
    if records.empty:
        raise ValueError("no records to plot: run an experiment first")
    algorithms = algorithms or list(pd.unique(records["algorithm"]))
    unknown = set(algorithms) - set(records["algorithm"])
    if unknown:
        raise ValueError(f"no records for algorithms {sorted(unknown)}; recorded: {sorted(set(records['algorithm']))}")
    metrics = metrics or ["loss", *constraint_metrics(records)]
    gridded = on_time_grid(records, resolution_s)
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(algorithms), len(metrics), squeeze=False, sharex=True, sharey="col",
                             figsize=(panel_size[0] * len(metrics), panel_size[1] * len(algorithms)),
                             layout="constrained")
    for row, algorithm in enumerate(algorithms):
        mine = gridded[gridded["algorithm"] == algorithm]
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            is_constraint = metric.startswith("c[")
            offset = bound if is_constraint else 0.0
            for split, colour in SPLIT_COLOURS.items():
                stats = band(mine, metric, split)
                if stats.empty:
                    continue
                ax.plot(stats["t"], stats["mean"] + offset, color=colour, lw=1.2, label=split)
                ax.fill_between(stats["t"], stats["min"] + offset, stats["max"] + offset, color=colour,
                                alpha=0.25, lw=0)
            if is_constraint:
                ax.axhline(bound, color="black", ls="--", lw=0.9, label="bound")
            if row == 0:
                title = metric if not is_constraint else metric[2:-1]
                if constraint_labels and metric in constraint_labels:
                    title = constraint_labels[metric]
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{algorithm}\nloss", fontsize=9)
            elif col == 1:
                ax.set_ylabel("constraint gap", fontsize=9)
            if row == len(algorithms) - 1:
                ax.set_xlabel("time (s)")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    return fig


def state_heatmaps(table: pd.DataFrame, methods: list[str], bound: float,
                   states: list[str] | None = None, limit: float | None = None,
                   state_labels: dict[str, str] | None = None) -> Figure:
    """Two heat maps, states (rows, in the order of ``states``) by methods (columns): the final
    test value of the largest constraint c_i (diverging at 0: red is a violation, blue slack;
    the colour scale ends at +-``limit``, default 2 x bound) and the final test accuracy (colour
    scale from the 2nd to the 98th percentile). ``table`` is
    :func:`hctrain.summary.final_per_cell` of a sweep."""
    states = states or sorted(pd.unique(table["state"]))
    gap = table.pivot_table(index="state", columns="method", values="max_c").reindex(index=states, columns=methods)
    accuracy = table.pivot_table(index="state", columns="method", values="accuracy").reindex(index=states, columns=methods)
    height = max(3.0, 0.19 * len(states) + 1.6)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, height), layout="constrained", sharey=True)
    limit = 2 * bound if limit is None else limit
    sns.heatmap(gap, ax=left, cmap="RdBu_r", center=0.0, vmin=-limit, vmax=limit,
                cbar_kws={"label": "largest final test $c_g$ (> 0: violated)", "shrink": 0.6, "extend": "both"})
    sns.heatmap(accuracy, ax=right, cmap="viridis", robust=True,
                cbar_kws={"label": "final test accuracy", "shrink": 0.6, "extend": "both"})
    if state_labels:
        left.set_yticks(np.arange(len(states)) + 0.5, [state_labels.get(s, s) for s in states])
    for ax, title in ((left, f"Largest constraint on test (bound {bound})"), (right, "Accuracy on test")):
        ax.set(title=title, xlabel="", ylabel="")
        ax.tick_params(axis="x", labelrotation=45, labelsize=9)
        ax.tick_params(axis="y", labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return fig
