r"""Upper confidence bounds on a fixed model's group gaps, from held-out data.

A model trained to satisfy :math:`|\mathrm{PR}_g - \mathrm{PR}| \le b` on training batches is
fair on new people only if the population's gaps are within the bound. Held-out data (a test
split never used for training or model selection) give a *certificate*: for every group, a
one-sided upper confidence bound :math:`U_g` on the gap :math:`|\mathrm{PR}_g - \mathrm{PR}|`,
valid simultaneously for all groups,

.. math::

    P\big(|\mathrm{PR}_g - \mathrm{PR}| \le U_g \text{ for every } g\big) \ge 1 - \alpha ,

and the model is certified inside the bound when :math:`\max_g U_g \le b`.

How. The held-out rows of group :math:`g` are :math:`n_g` independent draws from the group's
population, so its rate :math:`\hat r_g` estimates :math:`\mathrm{PR}_g`. Each group rate gets a
two-sided interval :math:`[L_g, H_g]` at level :math:`1 - \alpha/G` (Bonferroni over the
:math:`G` groups, so that all :math:`G` intervals hold at once with probability at least
:math:`1 - \alpha`):

* ``kind="labels"`` (predicted labels, 0 or 1): the exact Clopper–Pearson interval of a binomial
  proportion, which never undercovers;
* ``kind="probabilities"`` (predicted probabilities in [0, 1]): Hoeffding's interval
  :math:`\hat r_g \pm \sqrt{\log(4G/\alpha) / (2 n_g)}` (two-sided, each side at
  :math:`\alpha/(2G)`), valid for any bounded variable.

The overall rate is :math:`\mathrm{PR} = \sum_h w_h \mathrm{PR}_h` with :math:`w_h` the groups'
shares (known: the population's, or the held-out split's own by default). Then
:math:`\mathrm{PR}_g - \mathrm{PR} = (1 - w_g)\mathrm{PR}_g - \sum_{h \ne g} w_h \mathrm{PR}_h`,
and on the event that every interval holds,

.. math::

    |\mathrm{PR}_g - \mathrm{PR}| \le U_g = \max\Big((1 - w_g) H_g - \sum_{h\ne g} w_h L_h,\;
    \sum_{h \ne g} w_h H_h - (1 - w_g) L_g\Big).

So the bounds hold simultaneously with probability at least :math:`1 - \alpha`. They are
conservative (Bonferroni, the worst case over the box of intervals), never optimistic. They
are valid only for a model fixed before the held-out rows are looked at: a model chosen by its
test gaps, or a test split reused to tune, voids them.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .checks import check_number

KINDS = ("labels", "probabilities")


def clopper_pearson(successes: np.ndarray, trials: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact two-sided interval of a binomial proportion at level 1 - alpha, elementwise:
    the alpha/2 quantile of Beta(k, n - k + 1) and the 1 - alpha/2 quantile of Beta(k + 1, n - k)."""
    from scipy.stats import beta

    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {k.tolist()} of {n.tolist()}")
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        high = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return low, high


def _weights(n: np.ndarray, shares: Sequence[float] | None) -> np.ndarray:
    """The weights w_g of the overall rate: ``shares`` checked, or the rows' own n_g / sum(n)."""
    w = n / n.sum() if shares is None else np.asarray(shares, dtype=float)
    if w.shape != n.shape or (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
        raise ValueError(f"shares must be {n.size} nonnegative weights summing to 1, got {shares!r}")
    return w


def gap_upper_bounds(values: Tensor | np.ndarray, group: Tensor | np.ndarray, group_names: Sequence[str],
                     alpha: float = 0.05, kind: str = "labels",
                     shares: Sequence[float] | None = None) -> pd.DataFrame:
    """Per group: the held-out rate, its simultaneous interval, the gap ``|rate_g - overall|`` and
    its upper confidence bound U_g (see the module docstring), all groups at once at level
    1 - ``alpha``. ``values`` are predicted labels (``kind="labels"``: 0 or 1) or predicted
    probabilities (``kind="probabilities"``), one per held-out row; ``group`` the rows' integer
    group codes; ``shares`` the weights w_g of the overall rate (default: the rows' own shares)."""
    alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True, fix="; e.g. 0.05")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    v = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=float)
    g = group.detach().cpu().numpy() if isinstance(group, Tensor) else np.asarray(group)
    G = len(group_names)
    if v.shape != g.shape or v.ndim != 1:
        raise ValueError(f"values and group must be 1-d of the same length, got {v.shape} and {g.shape}")
    if g.size == 0 or g.min() < 0 or g.max() >= G:
        raise ValueError(f"group codes must lie in 0..{G - 1} (one per name in group_names)")
    if kind == "labels" and not np.isin(v, (0.0, 1.0)).all():
        raise ValueError("kind='labels' takes predicted labels (0 or 1); for probabilities use "
                         "kind='probabilities'")
    if kind == "probabilities" and ((v < 0).any() or (v > 1).any()):
        raise ValueError("kind='probabilities' takes values in [0, 1] (torch.sigmoid of the logits)")
    n = np.bincount(g, minlength=G).astype(float)
    if (n == 0).any():
        empty = [name for name, count in zip(group_names, n) if count == 0]
        raise ValueError(f"the groups {empty} have no held-out row: no bound is possible for them")
    sums = np.bincount(g, weights=v, minlength=G)
    rate = sums / n
    level = alpha / G  # Bonferroni: all G two-sided intervals at once
    if kind == "labels":
        low, high = clopper_pearson(np.round(sums), n, level)
    else:
        half = np.sqrt(math.log(4 * G / alpha) / (2 * n))
        low, high = np.clip(rate - half, 0.0, 1.0), np.clip(rate + half, 0.0, 1.0)
    w = _weights(n, shares)
    overall = float(w @ rate)
    others_low, others_high = w @ low - w * low, w @ high - w * high  # sum over h != g
    upper = np.maximum((1 - w) * high - others_low, others_high - (1 - w) * low)
    return pd.DataFrame({"n": n.astype(int), "rate": rate, "low": low, "high": high,
                         "gap": np.abs(rate - overall), "upper bound": upper},
                        index=pd.Index(list(group_names), name="group"))


@torch.no_grad()
def certify(model: torch.nn.Module, task, split: str = "test", alpha: float = 0.05,
            kind: str = "labels", bound: float | None = None) -> dict:
    """The certificate of ``model`` on a held-out split of a :class:`~hctrain.task.FairnessTask`
    (positive-rate constraints): the table of :func:`gap_upper_bounds`, the largest upper bound,
    and whether it is within ``bound`` (default: the task's). Decisions are
    ``logit > 0``; probabilities ``sigmoid(logit)``."""
    batch = task.split(split)
    was_training = model.training
    model.eval()
    try:
        logits = model(batch.x).squeeze(-1)
    finally:
        model.train(was_training)
    values = (logits > 0).double() if kind == "labels" else torch.sigmoid(logits.double())
    table = gap_upper_bounds(values, batch.group, task.data.group_names, alpha=alpha, kind=kind)
    bound = task.bound if bound is None else bound
    largest = float(table["upper bound"].max())
    return {"table": table, "largest upper bound": largest, "certified": largest <= bound,
            "alpha": alpha, "kind": kind, "split": split}


def within_bound_probability(n: Sequence[int], rates: Sequence[float], bound: float,
                             shares: Sequence[float] | None = None, draws: int = 200_000,
                             seed: int = 0) -> float:
    r"""The probability that a held-out sample shows every group's decision gap within ``bound``,
    for a fixed model whose *population* decision rates are ``rates``: what a test split of
    ``n[g]`` rows per group can tell about a bound.

    On the sample the group rates are :math:`\hat r_g = K_g / n_g` with independent
    :math:`K_g \sim \mathrm{Binomial}(n_g, r_g)`, the overall rate is
    :math:`\hat r = \sum_h w_h \hat r_h` (``shares`` :math:`w`, by default the sample's own
    :math:`n_g / \sum_h n_h`), and the event is :math:`\max_g |\hat r_g - \hat r| \le b`. Estimated
    from ``draws`` Monte Carlo samples (standard error at most :math:`0.5/\sqrt{\text{draws}}`).
    A model whose population gaps are all zero still lands outside the bound on a small sample
    with the probability one minus this value."""
    n = np.asarray(n)
    r = np.asarray(rates, dtype=float)
    if n.ndim != 1 or n.size < 2 or r.shape != n.shape:
        raise ValueError(f"n and rates must be 1-d, one entry per group (at least two), got {n.shape} and {r.shape}")
    if not np.issubdtype(n.dtype, np.integer) or (n < 1).any():
        raise ValueError(f"n must be integer row counts >= 1 per group, got {n.tolist()}")
    if not np.isfinite(r).all() or (r < 0).any() or (r > 1).any():
        raise ValueError(f"rates must be probabilities in [0, 1], got {r.tolist()}")
    bound = check_number("bound", bound, low=0.0, fix="; e.g. 0.05")
    if not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    w = _weights(n, shares)
    rng = np.random.default_rng(seed)
    inside = 0
    for start in range(0, draws, 50_000):  # in chunks: memory stays small for many groups
        size = min(50_000, draws - start)
        sample = rng.binomial(n, r, size=(size, n.size)) / n
        gaps = np.abs(sample - (sample @ w)[:, None]).max(axis=1)
        inside += int((gaps <= bound + 1e-12).sum())
    return inside / draws
