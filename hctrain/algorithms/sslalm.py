r"""Stochastic Smoothed and Linearized Augmented Lagrangian method (SSL-ALM) and its unsmoothed
one-sample baseline, the stochastic linearized ALM.

Source: Huang, Zhang and Alacaoglu (2025), "Stochastic smoothed primal-dual algorithms for
nonconvex optimization with linear inequality constraints", as applied to nonlinear inequality
constraints in the humancompatible.train paper, section 2.2, eqs. (2)-(3).

Problem and slack form
----------------------
min_x F(x) = E f(x, xi)  s.t.  C(x) = E c(x, zeta) <= 0  is solved as the equality-constrained
problem over X = R^n x R^m_{>=0}

    min_{x, s >= 0}  F(x)   s.t.   C(x) + s = 0,

with the augmented Lagrangian and its proximal (smoothed) version, z = (z^x, z^s) an anchor,

    L_rho(x, s, y)      = F(x) + y^T (C(x) + s) + (rho/2) ||C(x) + s||^2
    K_{rho,mu}(x,s,y,z) = L_rho(x, s, y) + (mu/2) ||(x, s) - z||^2.

Update (one call of ``step``), with xi, zeta_1, zeta_2 the samples described below:

    y_{k+1}   = y_k + eta * (c(x_k, zeta_1) + s_k),       then the dual safeguard
    b_k       = y_{k+1} + rho * (c(x_k, zeta_2) + s_k)                  (one m-vector)
    G_x       = grad f(x_k, xi) + J_c(x_k, zeta_1)^T b_k + mu (x_k - z^x_k)
    G_s       = b_k + mu (s_k - z^s_k)
    (x, s)_{k+1} = proj_X((x, s)_k - tau * (G_x, G_s))     (x unchanged by proj; s clamped at 0)
    z_{k+1}   = z_k + beta * ((x, s)_k - z_k)

Dual safeguard (``dual_safeguard``), bound M_y = ``dual_bound``:

* ``"reset"`` (default): y_{k+1} <- 0 when ||y_{k+1}||_2 >= M_y. This is what the source
  algorithm (its lines 4-5) and the reference implementation behind the paper's Figure 1 do,
  so the paper's hyperparameters are tuned for it. On an accelerator it is implemented without
  a host sync (a masked fill with the 0/1 indicator); on the CPU, where a sync is cheap, by a
  host branch on the norm (the same resets, fewer ops). The number of resets is counted in
  ``algorithm_state["dual_resets"]``.
* ``"clip"``: each coordinate clamped to [-M_y, M_y] (the common alternative; y is free in sign
  in the slack form, since the constraint C + s = 0 is an equality).

Choices where the paper and the spec differ, and why
---------------------------------------------------
* Dual step with the slack. The paper's eq. (3) writes y_{k+1} = y_k + eta c(x, zeta_1); its
  AL L_rho(x, y) is written without s although it states X = R^n x R^m_{>=0}. We follow the spec
  and the reference code: y_{k+1} = y_k + eta (c(x_k, zeta_1) + s_k). In the (x, s) problem the
  constraint is C(x) + s = 0, and grad_y L_rho = C(x) + s, so this is the dual *ascent* step on
  the AL actually minimised; without s the dual would grow whenever a constraint is inactive
  (c < 0 would drive y negative) and the slack would never be accounted for. The paper's
  formula is the same update with "c" read as the constraint of the slack problem.
* Bias. Eq. (2) is built so that E[G] = grad K: the penalty's J^T c needs the Jacobian and the
  value from *independent* samples zeta_1, zeta_2 (E[J(zeta_1)^T c(zeta_2)] = J_C^T C, whereas
  E[J(zeta)^T c(zeta)] = J_C^T C + Cov term, e.g. E[Z^T Z] x for a noisy linear constraint).
  ``two_samples=False`` reuses zeta_1 as zeta_2 (biased by rho * Cov; for the ablation and
  :class:`LinearizedALM`). Note that, as in the paper and the reference code, y_{k+1} is itself
  computed from zeta_1, so J(zeta_1)^T y_{k+1} still carries a bias of eta * Cov, a factor
  eta / (rho + eta) smaller than the one-sample penalty's (1/11 with the paper's values). The
  paper's "E[G] = grad K(x_k, y_{k+1}, z_k)" treats y_{k+1} as fixed; it is not independent of
  zeta_1.

Samples per step
----------------
xi (objective), zeta_1 (dual step and Jacobian), zeta_2 (penalty value); only zeta_1 and zeta_2
must be independent for E[G] = grad K, so:

* ``problem.shares_samples`` True: one draw A = ``sample_objective()`` serves as xi and zeta_1
  (one forward with grad gives f and c(x, zeta_1)); one draw B = ``sample_constraints()`` is
  zeta_2 (one forward *without* grad: c(x, zeta_2) only enters as a value).
* otherwise three draws: xi = ``sample_objective()``, zeta_1 then zeta_2 = ``sample_constraints()``
  (forwards: f with grad, c(zeta_1) with grad, c(zeta_2) without grad).
* ``two_samples=False``: no zeta_2 draw, c(x, zeta_1) is reused.

Whatever m, one backward pass: grad f + J_c^T b_k = autograd.grad(f + (b_k.detach() * c_1).sum()).

Cost per step: shares_samples: 2 forwards (1 with graph) + 1 backward; separate samplers:
3 forwards (2 with graph) + 1 backward; ``two_samples=False`` one forward fewer.

Hyperparameters live in the param groups (``state_dict`` carries them). eta, rho, dual_bound,
dual_safeguard, two_samples and the slack's tau, mu, beta are read from the first group; tau,
mu, beta of each group apply to its weights. State: dual y, slack s, slack anchor z^s, step
and reset counters in ``algorithm_state``; the weight anchor z^x in ``self.state[p]["anchor"]``
(z_0 = x_0, s_0 = 0, y_0 = 0). With mu = 0 the anchor is neither used nor updated.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from ..problem import StochasticProblem
from .base import (HOST_ROUNDING, ConstrainedOptimizer, check_interval, check_nonnegative,
                   check_positive, check_finite, resolve_lr, resolve_m)

DUAL_SAFEGUARDS = ("reset", "clip")


def _check_common(m: int, rho: float, tau: float, eta: float, dual_bound: float,
                  dual_safeguard: str, two_samples: bool) -> dict:
    if m is None:
        raise ValueError("SSL-ALM needs m, the number of constraints, or problem=")
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ValueError(f"m (the number of constraints) must be a positive integer, got {m!r}")
    if dual_safeguard not in DUAL_SAFEGUARDS:
        raise ValueError(f"dual_safeguard must be one of {DUAL_SAFEGUARDS}, got {dual_safeguard!r}")
    if not isinstance(two_samples, bool):
        raise ValueError(f"two_samples must be True or False, got {two_samples!r}")
    return dict(rho=check_nonnegative("rho", rho), lr=check_positive("lr (tau)", tau),
                eta=check_positive("eta", eta), dual_bound=check_positive("dual_bound", dual_bound),
                dual_safeguard=dual_safeguard, two_samples=two_samples)


class SSLALM(ConstrainedOptimizer):
    """SSL-ALM on (x, s) with dual y: see the module docstring for the update.

    Defaults are the paper's ACSIncome values (mu=2, rho=1, tau=0.05, eta=0.1, beta=0.5,
    M_y=100) with the reference code's reset safeguard and two independent constraint samples.
    ``lr`` is tau (the paper's name is accepted as an alias). ``step(loss=f, constraints=c)`` is
    refused while ``two_samples`` is on: zeta_2 must be a second, independent constraint sample.
    """

    lr_alias = "tau"

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], m: int | None = None, mu: float = 2.0,
                 rho: float = 1.0, tau: float = 0.05, eta: float = 0.1, beta: float = 0.5,
                 dual_bound: float = 100.0, dual_safeguard: str = "reset", two_samples: bool = True,
                 *, lr: float | None = None, problem: Any = None):
        m = resolve_m(type(self).__name__, m, problem)
        defaults = _check_common(m, rho, resolve_lr("tau", tau, lr, 0.05), eta, dual_bound,
                                 dual_safeguard, two_samples)
        defaults["mu"] = check_nonnegative("mu", mu)
        defaults["beta"] = check_interval("beta", beta, 0.0, 1.0, low_open=True)
        super().__init__(params, defaults, m, problem)
        for group in self.param_groups:  # per-group overrides are validated too
            check_positive("lr (tau)", group["lr"])
            check_nonnegative("mu", group["mu"])
            check_interval("beta", group["beta"], 0.0, 1.0, low_open=True)
        params = self.params
        like = params[0]
        with torch.no_grad():
            for p in params:
                self.state[p]["anchor"] = p.detach().clone()
        state = self.algorithm_state
        state["dual"] = torch.zeros(m, dtype=like.dtype, device=like.device)
        state["slack"] = torch.zeros(m, dtype=like.dtype, device=like.device)
        state["slack_anchor"] = torch.zeros(m, dtype=like.dtype, device=like.device)
        state["dual_resets"] = torch.zeros((), dtype=torch.long, device=like.device)
        self._built = True

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``; a group added after construction is checked as the
        constructor checks its groups, and its weights get their anchors z_0 = x_0."""
        super().add_param_group(param_group)
        if not getattr(self, "_built", False):
            return  # during __init__: checked and anchored there
        group = self.param_groups[-1]
        try:
            check_positive("lr (tau)", group["lr"])
            check_nonnegative("mu", group["mu"])
            check_interval("beta", group["beta"], 0.0, 1.0, low_open=True)
        except ValueError:
            self.param_groups.pop()
            raise
        with torch.no_grad():
            for p in group["params"]:
                self.state[p]["anchor"] = p.detach().clone()

    @property
    def dual(self) -> Tensor:
        """y, the multipliers of C(x) + s = 0."""
        return self.algorithm_state["dual"]

    @property
    def slack(self) -> Tensor:
        """s >= 0, the slacks of C(x) + s = 0."""
        return self.algorithm_state["slack"]

    @property
    def anchor(self) -> list[Tensor]:
        """z^x, the proximal anchor of the weights (one tensor per parameter)."""
        return [self.state[p]["anchor"] for p in self.params]

    @property
    def slack_anchor(self) -> Tensor:
        """z^s, the proximal anchor of the slacks."""
        return self.algorithm_state["slack_anchor"]

    def _constraint_samples(self, problem: StochasticProblem, two_samples: bool
                            ) -> tuple[Tensor, Tensor, Tensor]:
        """f(x, xi), c(x, zeta_1) (both with graph) and c(x, zeta_2) (a value)."""
        if problem.shares_samples:
            loss, c1 = problem.objective_and_constraints(problem.sample_objective())  # xi = zeta_1
        else:
            loss = problem.objective(problem.sample_objective())
            c1 = problem.constraints(problem.sample_constraints())
        if two_samples:
            with torch.no_grad():
                c2 = problem.constraints(problem.sample_constraints())
        else:
            c2 = c1.detach()
        return loss, c1, c2

    @property
    def values_refusal(self) -> str | None:  # type: ignore[override]
        if not self.param_groups[0]["two_samples"]:
            return None
        name = type(self).__name__
        return (f"{name} needs two independent constraint samples per step, zeta_1 (the dual step and "
                "the Jacobian) and zeta_2 (the penalty's value; E[J(zeta_1)^T c(zeta_2)] = J_C^T C "
                "only when they are independent), which one (loss, constraints) pair cannot give. Let "
                f"it draw them: {name}(params, problem=hctrain.Problem(model, loss, constraints, "
                "data=loader)) and step(); or use the one-sample form of the method, LinearizedALM or "
                f"{name}(two_samples=False), which accepts step(loss=f, constraints=c)")

    def _step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        return self._update(*self._constraint_samples(problem, self.param_groups[0]["two_samples"]))

    def _step_values(self, loss: Tensor, c: Tensor) -> dict[str, Tensor]:
        return self._update(loss, c, c.detach())

    def _update(self, loss: Tensor, c1: Tensor, c2: Tensor) -> dict[str, Tensor]:
        g0 = self.param_groups[0]
        eta, rho, bound = g0["eta"], g0["rho"], g0["dual_bound"]
        if g0["two_samples"]:
            check_finite(self.m, loss, c1, c2)
        else:
            check_finite(self.m, loss, c1)

        state = self.algorithm_state
        y, s, zs = state["dual"], state["slack"], state["slack_anchor"]
        with torch.no_grad():
            # dual step on zeta_1, then the safeguard
            y.add_(c1.detach().to(y.dtype) + s, alpha=eta)
            if g0["dual_safeguard"] == "reset":
                norm = torch.linalg.vector_norm(y)
                rounded = HOST_ROUNDING.get(y.dtype) if y.is_cpu else None
                if rounded is not None:
                    # on the CPU a host branch costs less than the three masked ops; the test is
                    # the tensor comparison's (the bound rounded to y's dtype), so the same resets
                    if float(norm) >= rounded(bound):
                        y.zero_()
                        state["dual_resets"].add_(1)
                else:  # no host sync on an accelerator
                    reset = norm >= bound
                    y.masked_fill_(reset, 0.0)
                    state["dual_resets"].add_(reset)
            else:
                y.clamp_(-bound, bound)
            # b_k = y_{k+1} + rho (c(x_k, zeta_2) + s_k): one m-vector
            bracket = (c2.to(y.dtype) + s).mul_(rho).add_(y)

        # grad f + J_c^T b_k from one backward pass seeded with (1, b_k): the gradient of
        # f + b_k . c_1 without recording the dot product
        outputs, seeds = [loss], [None]
        if c1.requires_grad:
            outputs.append(c1)
            seeds.append(bracket.to(c1.dtype))
        grads = torch.autograd.grad(outputs, self.params, grad_outputs=seeds,
                                    allow_unused=True, materialize_grads=True)

        with torch.no_grad():
            start = 0
            for group in self.param_groups:
                ps = group["params"]
                gs = list(grads[start:start + len(ps)])
                start += len(ps)
                tau, mu, beta = group["lr"], group["mu"], group["beta"]
                if mu > 0:
                    zs_x = [self.state[p]["anchor"] for p in ps]
                    diff = torch._foreach_sub(ps, zs_x)          # x_k - z_k
                    torch._foreach_add_(gs, diff, alpha=mu)      # G_x
                    torch._foreach_add_(zs_x, diff, alpha=beta)  # z_{k+1}
                torch._foreach_add_(ps, gs, alpha=-tau)          # x_{k+1} (X = R^n in x)
            # slack: G_s = b_k + mu (s_k - z^s_k); s_{k+1} = max(s_k - tau G_s, 0)
            tau, mu, beta = g0["lr"], g0["mu"], g0["beta"]
            g_s = bracket
            if mu > 0:
                diff_s = s - zs
                g_s.add_(diff_s, alpha=mu)
                zs.add_(diff_s, alpha=beta)
            s.add_(g_s, alpha=-tau).clamp_(min=0.0)
        self._set_grads(grads)
        state["step"] += 1
        return {"loss": loss.detach(), "constraints": c1.detach()}


class LinearizedALM(SSLALM):
    """The plain stochastic linearized ALM: SSL-ALM with mu = 0 (no smoothing; beta = 1, so the
    anchor would have no effect, and it is not used) and, by default, ONE constraint sample
    (``two_samples=False``): the dual step, the Jacobian and the penalty value all use zeta_1,

        y_{k+1} = y_k + eta (c(x_k, zeta) + s_k)      (then the safeguard)
        x_{k+1} = x_k - tau [grad f(x_k, xi) + J_c(x_k, zeta)^T (y_{k+1} + rho (c(x_k, zeta) + s_k))]
        s_{k+1} = max(s_k - tau (y_{k+1} + rho (c(x_k, zeta) + s_k)), 0)

    This is the textbook method; the chapter uses it to show what the smoothing (mu, z) and the
    second, independent constraint sample of SSL-ALM buy: with one sample the penalty term
    rho E[J^T c] = rho (J_C^T C + Cov) is biased, and the limit point moves.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], m: int | None = None, rho: float = 1.0,
                 tau: float = 0.05, eta: float = 0.1, dual_bound: float = 100.0,
                 dual_safeguard: str = "reset", two_samples: bool = False, *,
                 lr: float | None = None, problem: Any = None):
        super().__init__(params, m, mu=0.0, rho=rho, tau=tau, eta=eta, beta=1.0,
                         dual_bound=dual_bound, dual_safeguard=dual_safeguard,
                         two_samples=two_samples, lr=lr, problem=problem)
