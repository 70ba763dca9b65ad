"""Fairness constraints built on fairret's statistics.

For a statistic S (by default fairret's ``PositiveRate``: S_g = mean predicted probability of a
positive on group g) and a bound b, two families of constraints c(x, zeta) <= 0:

- one-vs-overall (the paper's, eq. 5):  c_g = |S_g - S| - b,        m = G
- pairwise:                             c_(g,h) = S_g - S_h - b,    m = G (G - 1), g != h

Both are computed from one forward pass as a tensor of m values. A linear-fractional statistic
is S_g = sum_{n in g} (a_n + b_n p_n) / sum_{n in g} (c_n + d_n p_n), with the coefficients
(a, b, c, d) given by fairret's canonical form; the group sums are one matrix product with the
one-hot group matrix (calling the statistic itself gives the same values, see the tests, but
checks its arguments and synchronises on every call, which costs more than a training step).
"""
from __future__ import annotations

from typing import Literal

import torch
from fairret.statistic import LinearFractionalStatistic, PositiveRate
from torch import Tensor

ConstraintKind = Literal["one_vs_overall", "pairwise"]
KINDS: tuple[str, ...] = ("one_vs_overall", "pairwise")


class GroupFairnessConstraints:
    """m fairness constraint values from predicted probabilities and one-hot group membership."""

    def __init__(
        self,
        group_names: list[str],
        bound: float = 0.05,
        kind: ConstraintKind = "one_vs_overall",
        statistic: LinearFractionalStatistic | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown constraint kind {kind!r}; use one of {KINDS}")
        if len(group_names) < 2:
            raise ValueError(f"fairness constraints need at least 2 groups, got {len(group_names)}")
        if not (bound >= 0.0 and bound == bound and bound != float("inf")):
            raise ValueError(f"bound must be a finite number >= 0, got {bound}")
        self.group_names = list(group_names)
        self.bound = float(bound)
        self.kind = kind
        self.statistic = statistic if statistic is not None else PositiveRate()
        G = len(group_names)
        if kind == "one_vs_overall":
            self.names = [f"{g}" for g in group_names]
        else:
            first, second = torch.where(~torch.eye(G, dtype=torch.bool))
            self._first, self._second = first, second
            self.names = [f"{group_names[i]} - {group_names[j]}" for i, j in zip(first.tolist(), second.tolist())]
        self.m = len(self.names)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def _terms(self, probs: Tensor, stat_args: tuple) -> tuple[Tensor, Tensor]:
        """Per-row numerator and denominator terms of the canonical form."""
        s = self.statistic

        def coefficient(value):
            return value.squeeze(-1) if isinstance(value, Tensor) and value.dim() == 2 else value

        num = coefficient(s.num_intercept(*stat_args)) + coefficient(s.num_slope(*stat_args)) * probs
        denom = coefficient(s.denom_intercept(*stat_args)) + coefficient(s.denom_slope(*stat_args)) * probs
        return num, denom.expand_as(num) if isinstance(denom, Tensor) else torch.full_like(num, denom)

    def group_statistics(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> tuple[Tensor, Tensor]:
        """(S_g for every group, overall S) from probabilities (N,) and one-hot groups (N, G)."""
        num, denom = self._terms(probs, stat_args)
        per_group = sens.T @ torch.stack((num, denom), dim=1)
        return per_group[:, 0] / per_group[:, 1], num.sum() / denom.sum()

    def gaps(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> Tensor:
        """The constrained quantities before the bound: |S_g - S| or S_g - S_h."""
        stats, overall = self.group_statistics(probs, sens, *stat_args)
        if self.kind == "one_vs_overall":
            return (stats - overall).abs()
        return stats[self._first] - stats[self._second]

    def __call__(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> Tensor:
        """c(x, zeta): m values, feasible when <= 0. ``stat_args`` go to the statistic (e.g. labels)."""
        return self.gaps(probs, sens, *stat_args) - self.bound
