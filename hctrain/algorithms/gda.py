"""Stochastic gradient descent-ascent on the Lagrangian (the textbook baseline; Cooper's
Lagrangian formulation with plain gradient steps).

    L(x, y) = F(x) + y^T C(x),   y >= 0

One draw serves as xi and zeta (f and c from one forward pass, J_c^T y in the same backward)
when the problem's objective and constraints share a sampler; a problem with a constraint
sampler of its own gives zeta its own draw (``problem.sample_objective_and_constraints``):

    x_{k+1} = x_k - tau * ( grad f(x_k, xi) + J_c(x_k, xi)^T y_k )
    y_{k+1} = clip( y_k + eta * c(x_k, xi), 0, M_y )

Simultaneous updates (both use x_k, y_k). The dual is clipped coordinatewise to [0, M_y].
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ..problem import StochasticProblem
from .base import ConstrainedOptimizer, check_finite, check_positive


class GDA(ConstrainedOptimizer):
    """Gradient descent on x, projected gradient ascent on y >= 0."""

    def __init__(self, params: Iterable[Tensor], m: int, tau: float = 0.05, eta: float = 0.1,
                 dual_bound: float = 100.0):
        defaults = dict(tau=check_positive("tau", tau), eta=check_positive("eta", eta),
                        dual_bound=check_positive("dual_bound", dual_bound))
        super().__init__(params, defaults, m)
        if m is None:
            raise ValueError("GDA needs m, the number of constraints")
        like = self.params[0]
        self.algorithm_state["dual"] = torch.zeros(m, dtype=like.dtype, device=like.device)

    @property
    def dual(self) -> Tensor:
        return self.algorithm_state["dual"]

    def step(self, problem: StochasticProblem) -> dict[str, Tensor]:  # type: ignore[override]
        self.check_problem(problem)
        group = self.param_groups[0]
        loss, c = problem.sample_objective_and_constraints()
        check_finite(self.m, loss, c)
        y = self.dual
        # grad f + J_c^T y from one backward pass seeded with (1, y): the gradient of
        # f + y . c without recording the dot product
        grads = torch.autograd.grad((loss, c), self.params, grad_outputs=(None, y.to(c.dtype)))
        params = self.params
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-group["tau"])
            y.add_(c.detach().to(y.dtype), alpha=group["eta"]).clamp_(0.0, group["dual_bound"])
        self.algorithm_state["step"] += 1
        return {"loss": loss.detach(), "constraints": c.detach()}
