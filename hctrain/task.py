"""A fairness task: data, constraints, model and batches, ready to hand to an algorithm."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from fairret.statistic import LinearFractionalStatistic
from torch import Tensor, nn

from .checks import check_integer, check_seed
from .data import BalancedGroupSampler, FairnessData
from .fairness import ConstraintKind, GroupFairnessConstraints
from .models import paper_mlp
from .problem import Batch, StochasticProblem, TensorSampler

SPLITS = ("train", "test")


class FairnessTask:
    """Binary classification with one constraint per group (or pair of groups).

    ``problem(seed)`` builds a fresh :class:`StochasticProblem` (new model initialised from
    ``seed``, balanced batches of ``batch_per_group`` rows per group); ``evaluate(model)``
    computes loss, accuracy and every constraint on the full train and test sets.
    """

    def __init__(
        self,
        data: FairnessData,
        bound: float = 0.05,
        constraint: ConstraintKind = "one_vs_overall",
        batch_per_group: int = 32,
        model_fn: Callable[[int], nn.Module] = paper_mlp,
        statistic: LinearFractionalStatistic | None = None,
    ):
        if not isinstance(data, FairnessData):
            raise TypeError(f"data must be a FairnessData (from hctrain.data.load_acsincome or "
                            f"load_dutch_census), got {type(data).__name__}")
        batch_per_group = check_integer("batch_per_group", batch_per_group, low=1, fix="; e.g. 32")
        if not callable(model_fn):
            raise TypeError(f"model_fn must be a callable n_features -> torch.nn.Module, got {model_fn!r}")
        if statistic is not None and not isinstance(statistic, LinearFractionalStatistic):
            raise TypeError(f"statistic must be a fairret LinearFractionalStatistic instance (e.g. "
                            f"fairret.statistic.PositiveRate()), got {statistic!r}")
        self.data = data
        self.constraints = GroupFairnessConstraints(data.group_names, bound, constraint, statistic)
        self.batch_per_group = batch_per_group
        self.model_fn = model_fn
        # Fails early, naming the group, when a group is smaller than a batch's share of it.
        BalancedGroupSampler(data.group_train, batch_per_group, seed=0, group_names=data.group_names)

    @property
    def m(self) -> int:
        return self.constraints.m

    @property
    def bound(self) -> float:
        return self.constraints.bound

    @property
    def constraint_names(self) -> list[str]:
        return self.constraints.names

    def sens(self, group: Tensor) -> Tensor:
        """One-hot group membership, the form fairret's statistics take. (The constraints also
        take the integer codes themselves, which is what :meth:`constraint_values` passes.)"""
        return F.one_hot(group, self.data.n_groups).to(torch.float32)

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, batch.y)

    def constraint_values(self, logits: Tensor, batch: Batch) -> Tensor:
        # integer codes, not self.sens(...): the group sums are then an index_add_, no one-hot
        return self.constraints.from_logits(logits, batch.group)

    def problem(self, seed: int = 0, separate_constraint_sampler: bool = False) -> StochasticProblem:
        """A fresh problem: the model initialised with ``seed``, batches drawn from ``seed``.

        With ``separate_constraint_sampler`` the constraint batches come from a sampler of their
        own (a second random stream); otherwise one balanced sampler serves both.
        """
        seed = check_seed("seed", seed)
        if not isinstance(separate_constraint_sampler, bool):
            raise ValueError(f"separate_constraint_sampler must be True or False, got {separate_constraint_sampler!r}")
        torch.manual_seed(seed)
        model = self.model_fn(self.data.n_features)
        d = self.data

        def sampler(stream: int) -> TensorSampler:
            index = BalancedGroupSampler(d.group_train, self.batch_per_group, seed=seed * 1000 + stream,
                                         group_names=d.group_names)
            return TensorSampler(d.X_train, d.y_train, d.group_train, index)

        problem = StochasticProblem(
            model, self.loss, self.constraint_values, self.m,
            objective_sampler=sampler(0),
            constraint_sampler=sampler(1) if separate_constraint_sampler else None,
            constraint_names=self.constraint_names,
            n_groups=self.data.n_groups,
        )
        problem.seed = seed
        return problem

    def split(self, name: str) -> Batch:
        d = self.data
        if name == "train":
            return Batch(d.X_train, d.y_train, d.group_train)
        if name == "test":
            return Batch(d.X_test, d.y_test, d.group_test)
        raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[tuple[str, str], float]:
        """Loss, accuracy and each constraint value c_i on the full train and test sets."""
        was_training = model.training
        model.eval()
        out: dict[tuple[str, str], float] = {}
        for split in SPLITS:
            batch = self.split(split)
            logits = model(batch.x).squeeze(-1)
            out[(split, "loss")] = float(self.loss(logits, batch))
            out[(split, "accuracy")] = float(((logits > 0).float() == batch.y).float().mean())
            for name, value in zip(self.constraint_names, self.constraint_values(logits, batch).tolist()):
                out[(split, constraint_metric(name))] = value
        model.train(was_training)
        return out


def constraint_metric(name: str) -> str:
    """The metric name under which constraint ``name`` is recorded: ``c[name]``."""
    return f"c[{name}]"
