"""Stochastic gradient descent-ascent on the Lagrangian (the textbook baseline; Cooper's
Lagrangian formulation with plain gradient steps).

    L(x, y) = F(x) + y^T C(x),   y >= 0

One draw serves as xi and zeta (f and c from one forward pass, J_c^T y in the same backward)
when the problem's objective and constraints share a sampler; a problem with a constraint
sampler of its own gives zeta its own draw (``problem.sample_objective_and_constraints``):

    x_{k+1} = x_k - tau * ( grad f(x_k, xi) + J_c(x_k, xi)^T y_k )
    y_{k+1} = clip( y_k + eta * c(x_k, xi), 0, M_y )

Simultaneous updates (both use x_k, y_k). The dual is clipped coordinatewise to [0, M_y].
``lr`` is tau (the paper's name is accepted as an alias); ``step(loss=f, constraints=c)`` runs the
same update on values computed in the caller's loop.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from ..problem import StochasticProblem
from .base import ConstrainedOptimizer, check_finite, check_positive, resolve_lr, resolve_m


class GDA(ConstrainedOptimizer):
    """Gradient descent on x, projected gradient ascent on y >= 0."""

    lr_alias = "tau"

    def __init__(self, params: Iterable[Tensor], m: int | None = None, tau: float = 0.05,
                 eta: float = 0.1, dual_bound: float = 100.0, *, lr: float | None = None,
                 problem: Any = None):
        m = resolve_m("GDA", m, problem)
        defaults = dict(lr=check_positive("lr (tau)", resolve_lr("tau", tau, lr, 0.05)),
                        eta=check_positive("eta", eta),
                        dual_bound=check_positive("dual_bound", dual_bound))
        if m is None:
            raise ValueError("GDA needs m, the number of constraints, or problem=")
        super().__init__(params, defaults, m, problem)
        like = self.params[0]
        self.algorithm_state["dual"] = torch.zeros(m, dtype=like.dtype, device=like.device)

    @property
    def dual(self) -> Tensor:
        return self.algorithm_state["dual"]

    def _step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        return self._step_values(*problem.sample_objective_and_constraints())

    def _step_values(self, loss: Tensor, c: Tensor) -> dict[str, Tensor]:
        group = self.param_groups[0]
        check_finite(self.m, loss, c)
        y = self.dual
        # grad f + J_c^T y from one backward pass seeded with (1, y): the gradient of
        # f + y . c without recording the dot product
        grads = torch.autograd.grad((loss, c), self.params, grad_outputs=(None, y.to(c.dtype)),
                                    allow_unused=True, materialize_grads=True)
        with torch.no_grad():
            start = 0
            for g in self.param_groups:  # each group's own lr (a scheduler may set them apart)
                n = len(g["params"])
                torch._foreach_add_(g["params"], grads[start:start + n], alpha=-g["lr"])
                start += n
            y.add_(c.detach().to(y.dtype), alpha=group["eta"]).clamp_(0.0, group["dual_bound"])
        self._set_grads(grads)
        self.algorithm_state["step"] += 1
        return {"loss": loss.detach(), "constraints": c.detach()}
