"""Baselines: unconstrained Adam, and Adam on the loss plus a fairret regularizer.

Neither treats the constraints as constraints: Adam ignores them; the regularizer adds
w * NormLoss(PositiveRate) (fairret) to the loss with a fixed weight w.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from fairret.loss import NormLoss
from fairret.statistic import PositiveRate
from torch import Tensor

from ..problem import StochasticProblem, check_loss
from ..checks import check_integer, check_number
from .base import (ALGORITHM_STATE, check_adam_hyperparameters, check_group_hyperparameters,
                   check_nonnegative, check_state_dict, check_values, drop_frozen, tag_state_dict)


class Adam(torch.optim.Adam):
    """x_{k+1} = Adam(x_k, grad f(x_k, xi_k)), PyTorch's defaults; the constraints are ignored.

    ``step()`` draws xi from the problem given at construction (or ``step(problem)``);
    ``step(loss=f)`` differentiates a loss computed in the caller's loop (``constraints=`` is
    accepted and ignored, so the call is the same as the constrained one-sample methods'); with
    neither, ``step()`` / ``step(closure)`` is ``torch.optim.Adam.step`` on the ``.grad`` the
    caller's backward pass left.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, m: int | None = None, *,
                 problem: Any = None):
        lr, betas, eps = check_adam_hyperparameters(lr, betas, eps)
        weight_decay = check_nonnegative("weight_decay", weight_decay)
        if m is None and problem is not None:
            m = problem.m
        if m is not None:
            m = check_integer("m (the number of constraints)", m, low=1)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.m = m
        self.state[ALGORITHM_STATE] = {"step": 0}
        self.problem = problem

    @classmethod
    def from_problem(cls, problem: StochasticProblem, **hyper: Any) -> "Adam":
        return cls(problem.params, m=problem.m, **hyper)

    @property
    def params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def objective(self, problem: StochasticProblem) -> Tensor:
        """The scalar that Adam minimises on this step's sample."""
        return problem.objective(problem.sample_objective())

    def step(self, problem: Any = None, *, loss: Tensor | None = None,  # type: ignore[override]
             constraints: Tensor | None = None) -> Any:
        if loss is not None:
            if problem is not None:
                raise TypeError(f"{type(self).__name__}.step: give a problem or loss=, not both")
            return self._step_on(check_loss(loss, "loss"))
        if constraints is not None:
            raise TypeError(f"{type(self).__name__}.step(constraints=...) needs loss= as well")
        if problem is None:
            problem = self.problem
        if problem is None or (callable(problem) and not hasattr(problem, "sample_objective")):
            # torch.optim.Adam.step(closure): the caller's backward pass filled .grad
            result = super().step(problem)
            self.state[ALGORITHM_STATE]["step"] += 1
            return result
        return self._step_on(self.objective(problem))

    def _step_on(self, loss: Tensor) -> dict[str, Tensor]:
        check_values(None, loss)
        params = self.params  # frozen parameters were left out (drop_frozen): their .grad stays None
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        for p, g in zip(params, grads):
            p.grad = g
        super().step()
        self.state[ALGORITHM_STATE]["step"] += 1
        return {"loss": loss.detach()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_group_hyperparameters(self, param_group, len(self.param_groups))
        if isinstance(param_group, dict) and "lr" in param_group:
            check_adam_hyperparameters(param_group["lr"], param_group.get("betas", (0.9, 0.999)),
                                       param_group.get("eps", 1e-8))
        super().add_param_group(param_group)
        drop_frozen(self)

    def state_dict(self) -> dict[str, Any]:
        return tag_state_dict(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_dict(self, state_dict)
        super().load_state_dict(copy.deepcopy(state_dict))


class FairretRegularized(Adam):
    """Adam on f(x, xi) + w * NormLoss(x, xi): fairret's p-norm of ``|PR_g / PR - 1|`` over groups.

    The constraint bound plays no role: the regularizer pushes every group's positive rate
    towards the overall one with a fixed weight ``weight``.
    """

    def __init__(self, params, n_groups: int, weight: float = 1.0, p: int = 1,
                 lr: float = 1e-3, **adam: Any):
        n_groups = check_integer("n_groups", n_groups, low=2)
        self.weight = check_nonnegative("weight", weight)
        check_number("p (of fairret's p-norm)", p, low=1.0, fix="; e.g. p=1 or p=2")
        super().__init__(params, lr=lr, **adam)
        self.n_groups = n_groups
        self.fairret_loss = NormLoss(PositiveRate(), p=p)

    @classmethod
    def from_problem(cls, problem: StochasticProblem, **hyper: Any) -> "FairretRegularized":
        if problem.n_groups is None:
            raise ValueError("FairretRegularized needs a problem with protected groups (problem.n_groups is None)")
        return cls(problem.params, m=problem.m, n_groups=problem.n_groups, **hyper)

    def regularizer(self, logits: Tensor, group: Tensor) -> Tensor:
        """w * NormLoss(logits, one-hot groups): add it to your loss in your own loop,
        ``opt.step(loss=f + opt.regularizer(logits, group))``."""
        sens = F.one_hot(group.long(), self.n_groups).to(logits.dtype)
        return self.weight * self.fairret_loss(logits.reshape(-1, 1), sens)

    def objective(self, problem: StochasticProblem) -> Tensor:
        if not getattr(problem, "supports_fused_forward", False):
            raise TypeError("FairretRegularized draws batches with group codes (a StochasticProblem, "
                            "e.g. FairnessTask.problem); in your own loop add the regularizer to the "
                            "loss: opt.step(loss=f + opt.regularizer(logits, group))")
        batch = problem.sample_objective()
        logits = problem.forward(batch)
        return problem.objective(batch, logits) + self.regularizer(logits, batch.group)
