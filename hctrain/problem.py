"""The stochastic problem of the paper, eq. (1):

    min_x  F(x) = E_xi[ f(x, xi) ]   subject to   C(x) = E_zeta[ c(x, zeta) ] <= 0,   c: R^n -> R^m

x are a model's parameters; xi and zeta are minibatches drawn by two samplers (which may be the
same sampler). Algorithms receive a :class:`StochasticProblem` and draw what their update needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Batch:
    """A minibatch: inputs, labels and protected-group codes (0..G-1)."""

    x: Tensor
    y: Tensor
    group: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


class BatchSampler(Protocol):
    """Draws a :class:`Batch`; its random state round-trips through ``state_dict``."""

    def __call__(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IndexSampler(Protocol):
    def sample(self) -> Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorSampler:
    """Batches of rows of (x, y, group) tensors at the indices an index sampler draws."""

    def __init__(self, x: Tensor, y: Tensor, group: Tensor, index_sampler: IndexSampler):
        if not (x.shape[0] == y.shape[0] == group.shape[0]):
            raise ValueError(
                f"x, y and group must have the same number of rows, got {x.shape[0]}, "
                f"{y.shape[0]} and {group.shape[0]}"
            )
        self.x, self.y, self.group = x, y, group
        self.index_sampler = index_sampler

    def __call__(self) -> Batch:
        idx = self.index_sampler.sample()
        return Batch(self.x[idx], self.y[idx], self.group[idx])

    def state_dict(self) -> dict[str, Any]:
        return self.index_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index_sampler.load_state_dict(state)


LossFn = Callable[[Tensor, Batch], Tensor]
ConstraintFn = Callable[[Tensor, Batch], Tensor]


class StochasticProblem:
    """A model, an objective f, m constraints c, and the samplers of xi and zeta.

    ``loss_fn(logits, batch)`` returns the scalar f on a batch; ``constraint_fn(logits, batch)``
    returns the m values c(x, zeta) (<= 0 is feasible). When ``constraint_sampler`` is None the
    objective and the constraints are sampled from the same distribution, and one draw may serve
    as both xi and a zeta (``shares_samples``): one forward pass then gives f and c.
    ``n_groups`` is the number of protected groups behind ``Batch.group`` (None without groups).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        constraint_fn: ConstraintFn,
        m: int,
        objective_sampler: BatchSampler,
        constraint_sampler: BatchSampler | None = None,
        constraint_names: list[str] | None = None,
        n_groups: int | None = None,
    ):
        if m < 1:
            raise ValueError(f"m (the number of constraints) must be >= 1, got {m}")
        self.model = model
        self.loss_fn = loss_fn
        self.constraint_fn = constraint_fn
        self.m = m
        self.objective_sampler = objective_sampler
        self.constraint_sampler = constraint_sampler or objective_sampler
        self.shares_samples = constraint_sampler is None
        self.constraint_names = constraint_names or [f"c{i}" for i in range(m)]
        self.n_groups = n_groups
        self.seed: int | None = None  # set by whoever builds the problem from a seed
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

    def sample_objective(self) -> Batch:
        """Draw xi."""
        return self.objective_sampler()

    def sample_constraints(self) -> Batch:
        """Draw zeta (independent of every earlier draw)."""
        return self.constraint_sampler()

    def forward(self, batch: Batch) -> Tensor:
        return self.model(batch.x).squeeze(-1)

    def objective(self, batch: Batch, logits: Tensor | None = None) -> Tensor:
        """f(x, xi) on ``batch``."""
        return self.loss_fn(self.forward(batch) if logits is None else logits, batch)

    def constraints(self, batch: Batch, logits: Tensor | None = None) -> Tensor:
        """c(x, zeta) on ``batch``: a tensor of m values."""
        return self.constraint_fn(self.forward(batch) if logits is None else logits, batch)

    def objective_and_constraints(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """f and c on the same batch with one forward pass."""
        logits = self.forward(batch)
        return self.loss_fn(logits, batch), self.constraint_fn(logits, batch)

    def sample_objective_and_constraints(self) -> tuple[Tensor, Tensor]:
        """f(x, xi) and c(x, zeta), both with their graphs, for a one-sample method: with
        ``shares_samples`` one draw serves as xi and zeta (one forward pass); otherwise xi and
        zeta are drawn from their own samplers (two forward passes)."""
        if self.shares_samples:
            return self.objective_and_constraints(self.sample_objective())
        return self.objective(self.sample_objective()), self.constraints(self.sample_constraints())

    def state_dict(self) -> dict[str, Any]:
        """The samplers' random states (the model's weights are the algorithm's business)."""
        state = {"objective_sampler": self.objective_sampler.state_dict()}
        if not self.shares_samples:
            state["constraint_sampler"] = self.constraint_sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective_sampler.load_state_dict(state["objective_sampler"])
        if not self.shares_samples:
            self.constraint_sampler.load_state_dict(state["constraint_sampler"])
