"""Figure 1 of the paper, redrawn for a page: the loss then one panel per constraint, over time.

Each algorithm a colour, test solid and train dashed; a line for the mean over runs and a band
from the lowest to the highest run. Constraint panels show the constrained quantity (e.g.
|PR_g - PR|), i.e. the recorded c_i plus the bound, with the bound drawn as a dotted line.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

SPLIT_COLOURS = {"train": "tab:blue", "test": "tab:orange"}
SPLIT_STYLES = {"test": "-", "train": "--", "validation": "-."}

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
"""Okabe and Ito's palette, distinguishable with the common colour-vision deficiencies (yellow
last: it is faint on white)."""

METHOD_COLOURS = {
    "Adam": "#000000", "Adam + fairret (w=0.3)": "#56B4E9", "GDA": "#CC79A7", "LinearizedALM": "#F0E442",
    "SSL-ALM": "#0072B2", "SSw": "#E69F00", "Stochastic Ghost": "#009E73", "SPBM": "#D55E00",
}
"""The colour of each of the book's methods, the same in every chapter."""

FONT_SIZES = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9.5,
              "ytick.labelsize": 9.5, "legend.fontsize": 9.5}
"""Sizes for a figure shown at its own width (about 7.6 in) on the book's page."""


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


def colours_for(labels: list[str]) -> dict[str, str]:
    """A colour per label: the book's colour for a method it knows (the same in every chapter),
    then the unused Okabe-Ito colours, in order, for the others."""
    colours = {label: METHOD_COLOURS[label] for label in labels if label in METHOD_COLOURS}
    spare = [c for c in OKABE_ITO if c not in colours.values()]
    for label in labels:
        if label not in colours:
            colours[label] = spare.pop(0) if spare else OKABE_ITO[len(colours) % len(OKABE_ITO)]
    return colours


def figure1(
    records: pd.DataFrame,
    bound: float,
    algorithms: list[str] | None = None,
    metrics: list[str] | None = None,
    resolution_s: float | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    ncols: int = 3,
    panel_size: tuple[float, float] = (2.55, 2.0),
    constraint_labels: dict[str, str] | None = None,
) -> Figure:
    """The paper's Figure 1 redrawn for a page: one panel per metric (the loss, then each
    constraint), the algorithms as lines in every panel (one colour each, from a colour-blind-safe
    palette), the splits as line styles (test solid, train dashed), mean over runs with a band from
    the lowest to the highest run. ``ncols`` panels per row; at the default size the figure is
    7.65 in wide, so the book shows it at its own size and its labels read at 9 pt or more."""
    if records.empty:
        raise ValueError("no records to plot: run an experiment first")
    algorithms = algorithms or list(pd.unique(records["algorithm"]))
    unknown = set(algorithms) - set(records["algorithm"])
    if unknown:
        raise ValueError(f"no records for algorithms {sorted(unknown)}; recorded: {sorted(set(records['algorithm']))}")
    bad = [s for s in splits if s not in SPLIT_STYLES]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of {tuple(SPLIT_STYLES)}, got {splits!r}")
    metrics = metrics or ["loss", *constraint_metrics(records)]
    gridded = on_time_grid(records, resolution_s)
    colours = colours_for(algorithms)
    ncols = max(1, min(ncols, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    with sns.axes_style("whitegrid"), plt.rc_context(FONT_SIZES):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharex=True,
                                 figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.55),
                                 layout="constrained")
        constraint_axes = []
        for index, metric in enumerate(metrics):
            ax = axes.flat[index]
            is_constraint = metric.startswith("c[")
            offset = bound if is_constraint else 0.0
            for algorithm in algorithms:
                mine = gridded[gridded["algorithm"] == algorithm]
                for split in splits:
                    stats = band(mine, metric, split)
                    if stats.empty:
                        continue
                    ax.plot(stats["t"], stats["mean"] + offset, color=colours[algorithm], lw=1.3,
                            ls=SPLIT_STYLES[split])
                    ax.fill_between(stats["t"], stats["min"] + offset, stats["max"] + offset,
                                    color=colours[algorithm], alpha=0.12 if split == "train" else 0.2, lw=0)
            title = metric
            if is_constraint:
                ax.axhline(bound, color="black", ls=":", lw=1.1)
                title = (constraint_labels or {}).get(metric, metric[2:-1])
                constraint_axes.append(ax)
            ax.set_title(title)
            if index % ncols == 0:
                ax.set_ylabel("constraint gap" if is_constraint else "loss")
            if index >= len(metrics) - ncols:
                ax.set_xlabel("time (s)")
                ax.tick_params(labelbottom=True)
        for ax in axes.flat[len(metrics):]:
            ax.set_visible(False)
        if constraint_axes:  # one scale for every constraint, so that panels compare at a glance
            low = min(ax.get_ylim()[0] for ax in constraint_axes)
            high = max(ax.get_ylim()[1] for ax in constraint_axes)
            for ax in constraint_axes:
                ax.set_ylim(low, high)
        handles = [plt.Line2D([], [], color=colours[a], lw=2.2, label=a) for a in algorithms]
        handles += [plt.Line2D([], [], color="0.25", lw=1.3, ls=SPLIT_STYLES[s], label=s) for s in splits]
        if constraint_axes:
            handles.append(plt.Line2D([], [], color="black", ls=":", lw=1.1, label=f"bound {bound:g}"))
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4), frameon=False)
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
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, height), layout="constrained", sharey=True)
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
