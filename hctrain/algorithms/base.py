"""What every algorithm shares: PyTorch optimizer conventions plus ``step(problem)``.

An algorithm is a ``torch.optim.Optimizer`` over the model's parameters whose ``step`` takes the
:class:`~hctrain.problem.StochasticProblem` and draws from it the samples its update needs.
State that belongs to no single parameter (duals, slacks, counters, random streams) lives in
``self.state["algorithm"]`` so that ``state_dict()`` / ``load_state_dict()`` carry it.
"""
from __future__ import annotations

import inspect

import copy
import math
from typing import Any, Iterable

import torch
from torch import Tensor

from ..problem import StochasticProblem

ALGORITHM_STATE = "algorithm"


class ConstrainedOptimizer(torch.optim.Optimizer):
    """Base class: hyperparameters in ``defaults``, ``step(problem)`` does one iteration."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any], m: int | None = None):
        super().__init__(params, defaults)
        if m is not None and (not isinstance(m, int) or m < 1):
            raise ValueError(f"m (the number of constraints) must be a positive integer, got {m!r}")
        self.m = m
        self.state[ALGORITHM_STATE] = {"step": 0}

    @classmethod
    def from_problem(cls, problem: StochasticProblem, **hyper: Any) -> "ConstrainedOptimizer":
        """The algorithm over ``problem``'s parameters with its m constraints.

        An algorithm with its own random choices (a ``seed`` argument: SSw's random output,
        Stochastic Ghost's levels) is seeded with ``problem.seed`` unless ``seed`` is given, so
        that the seeded runs of ``runner.run`` do not all share seed 0.
        """
        if ("seed" not in hyper and getattr(problem, "seed", None) is not None
                and "seed" in inspect.signature(cls.__init__).parameters):
            hyper["seed"] = int(problem.seed)
        return cls(problem.params, m=problem.m, **hyper)

    @property
    def params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def algorithm_state(self) -> dict[str, Any]:
        return self.state[ALGORITHM_STATE]

    @property
    def iteration(self) -> int:
        """Number of completed steps."""
        return self.algorithm_state["step"]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Deep copy so that a loaded optimizer never shares tensors with the dict it came from.
        super().load_state_dict(copy.deepcopy(state_dict))

    def check_problem(self, problem: StochasticProblem) -> None:
        if self.m is not None and problem.m != self.m:
            raise ValueError(
                f"{type(self).__name__} was built for m={self.m} constraints but the problem has "
                f"m={problem.m}; build it with m=problem.m (or {type(self).__name__}.from_problem(problem))"
            )

    def step(self, problem: StochasticProblem) -> dict[str, Tensor]:  # type: ignore[override]
        raise NotImplementedError


# --- validation: clear errors, raised before any state changes -------------------------------

def check_positive(name: str, value: float) -> float:
    if not _is_number(value) or not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    if not _is_number(value) or not value >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_interval(name: str, value: float, low: float, high: float, *,
                   low_open: bool = False, high_open: bool = False) -> float:
    ok = _is_number(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def check_values(m: int | None, loss: Tensor | None = None, constraints: Tensor | None = None) -> None:
    """Raise if the constraint tensor does not hold m values, or if f or c is NaN or infinite."""
    if constraints is not None:
        if m is not None and (constraints.dim() != 1 or constraints.numel() != m):
            raise ValueError(
                f"the constraint function returned a tensor of shape {tuple(constraints.shape)}; "
                f"expected {m} values (one per constraint, m={m})"
            )
        if not bool(torch.isfinite(constraints).all()):
            bad = [i for i, v in enumerate(constraints.tolist()) if not math.isfinite(v)]
            raise ValueError(f"constraint values are not finite at indices {bad[:10]}: "
                             f"{[constraints[i].item() for i in bad[:10]]}; check the data and the step sizes")
    if loss is not None and not bool(torch.isfinite(loss).all()):
        raise ValueError(f"the objective is not finite ({loss.item()}); check the data and the step sizes")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
