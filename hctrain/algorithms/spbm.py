"""Stochastic Penalty-Barrier Method (SPBM).

Source: A. Bosak, A. Kliachkin, J. Lepsova, G. Bareilles, J. Marecek (2026), *Stochastic
Penalty-Barrier Methods for Constrained Machine Learning*, arXiv 2605.18618. This module follows
the project's specification (``specs/algorithms.md``, section SPBM); the paper itself was not
available to its author, and the humancompatible-train paper (section 2) does not describe SPBM,
so nothing here overrides the specification except where stated below.

Problem: min_x E f(x, xi)  s.t.  E c(x, zeta) <= 0, c with m components.

Penalty-barrier function phi (``penalty=``), a barrier-like branch for t below a joint t0 and the
quadratic penalty t + t^2/2 above it::

    quadratic_logarithmic:  phi(t) = t + t^2/2                      t >= -1/2
                                     -(1/4) ln(-2t) - 3/8           t <  -1/2
    quadratic_reciprocal:   phi(t) = t + t^2/2                      t >= -1/3
                                     (32/27) / (1 - t) - 7/6        t <  -1/3

The specification's constants were checked and are right: at t0 = -1/2 both branches give
phi = -3/8 and phi' = 1/2 (left: phi'(t) = -1/(4t)); at t0 = -1/3 both give phi = -5/18 and
phi' = 2/3 (left: phi'(t) = (32/27)/(1-t)^2). Even phi'' is continuous (= 1 at both joints), so
phi is C^2, convex, strictly increasing (phi' > 0 everywhere), with phi(0) = 0, phi'(0) = 1;
phi' -> 0 as t -> -inf (the push on a well-satisfied constraint fades) and phi' = 1 + t grows
linearly with the violation.

One iteration k, with duals lambda_k in [lambda_min, lambda_max]^m, penalties p_k in
[p_min, p_max]^m (both m-vectors), anchor z_k, and t_k = c(x_k, zeta_k) / p_k (elementwise)::

    P_k(x)      = f(x, xi_k) + sum_i lambda_k,i p_k,i phi( c_i(x, zeta_k) / p_k,i ) + (mu/2) ||x - z_k||^2
    G_k         = grad f(x_k, xi_k) + J_c(x_k, zeta_k)^T ( lambda_k * phi'(t_k) ) + mu (x_k - z_k)
    x_{k+1}     = Adam(x_k, G_k)                                           (one Adam step, lr)
    lambda_{k+1} = clip( gamma lambda_k + (1 - gamma) lambda_k * phi'(t_k), lambda_min, lambda_max )
    p_{k+1}     = clip( K p_k, p_min, p_max )                                     'diminishing'
    p_{k+1}     = clip( K p_k + (1 - K) p_k / psi_k, p_min, p_max ),              'stabilised'
                  psi_k = phi'(c_k) if phi'(c_k) < 1 else delta * phi'(c_k),   c_k = c(x_k, zeta_k)
    z_{k+1}     = z_k + anchor_beta (x_k - z_k)

with gamma and K annealed by epoch e = k // E (E steps per pass over the training data):
gamma_e = 1 - 1 / (sqrt(e) + 1 / (1 - gamma)) and K_e = 1 - 1 / (sqrt(e) + 1 / (1 - K)), which
start at gamma and K and tend to 1 (the duals average over ever longer windows, the penalties
settle).

G_k is the gradient of P_k at x_k: d/dx [lambda p phi(c/p)] = lambda phi'(c/p) grad c, so the
weights lambda * phi'(t) are computed on the m-vector and J_c^T (weights) comes from ONE backward
pass of f + (weights . c) (no autograd through phi's branches: fewer ops, and phi' is
available in closed form). The dual update is exponential (multiplicative) dual averaging:
lambda_{k+1} = lambda_k (1 + (1 - gamma)(phi'(t_k) - 1)), so lambda grows while the constraint
is violated (phi' > 1), shrinks while it is satisfied (phi' < 1), and is at rest only where
c = 0 (phi'(0) = 1). The stabilised schedule shrinks p while the constraint is violated
(psi > 1) and lets it grow back when satisfied (psi < 1); with delta = 1 its two branches agree.

Samples: one draw per step. When ``problem.shares_samples`` the same batch is xi_k and zeta_k
(one forward pass gives f and c); otherwise xi_k and zeta_k are drawn from the two samplers (two
forward passes). Either way one backward pass. The dual and penalty updates use the same
c(x_k, zeta_k) as the primal step (the specification asks for no second constraint sample).

The penalty schedule's psi, the anchor's target and the annealing are the reference
implementation's (humancompatible-train, ``dual_optim/pbm.py`` and ``moreau.py``, audited line by
line at commit 908896c): psi from phi' at the raw c (its ``_update_penalties_adapt`` is handed
phi'(c)), the anchor moved towards x_k before the inner optimizer's step, and gamma_e, K_e as above
(its ``gamma_schedule`` and ``K_schedule``, stepped once per ``epoch_length`` calls). Earlier
versions of this module evaluated psi at c / p, moved the anchor towards x_{k+1} and kept gamma and
K constant; those forms stay as options (``psi_at="c/p"``, ``anchor_at="x_next"``,
``annealing=False``) because chapter 6's same-run ablation finds them a trade rather than a
mistake: on Virginia they end at a lower training loss with larger violations on test.
``annealing=None`` (the default) anneals when the epoch length is known: given as
``epoch_length``, or taken from the problem (``FairnessTask`` problems: a pass over the training
rows in balanced batches; a :class:`~hctrain.problem.Problem` over a DataLoader: ``len(loader)``);
``SPBM(params, m)`` alone, in a loop of the user's own, keeps gamma and K constant. The reference
advanced its epoch counter only when gamma was annealed; here the two schedules share it.

Choices made where the specification leaves one (all documented defaults):

* Order: the primal step uses (lambda_k, p_k); the duals and penalties are updated after it from
  the same c_k (simultaneous, as in GDA). The reference code updates them before its backward
  pass but builds the step's function from snapshots of (lambda_k, p_k): the same iteration.
* ``schedule="diminishing"`` gives the plain geometric schedule.
* anchor_beta = 0.5 (the specification gives no value for SPBM's beta): the reference's default
  and the humancompatible-train paper's value for SSL-ALM's identical anchor update, making z an
  exponential average of the last few iterates. Adam moves each coordinate by about lr per step, so with beta = 0.5 the
  anchor lags by about lr and mu (x - z) is of order mu * lr: it damps step-to-step noise without
  holding back the drift (a lag of lr / beta grows as beta shrinks). Measured on the noisy QP:
  beta in {0.05, 0.2, 0.5, 1} gives the same distances to x* to three decimals, so the choice is
  not critical there. beta = 1 or mu = 0 switches the smoothing off. Any beta in (0, 1] keeps the
  stationary points (at a fixed point x = z the term vanishes).
* The Adam state (exp_avg, exp_avg_sq, step per parameter) lives in ``self.state[p]`` of this
  optimizer, shared with the inner ``torch.optim.Adam``; the anchors, duals and penalties live in
  ``algorithm_state``. ``state_dict()`` therefore carries all of it.
* Hyperparameters lr, betas, eps, mu and anchor_beta are per parameter group (the inner Adam's
  groups mirror this optimizer's, re-synchronised every step, so an lr scheduler on SPBM works);
  the dual and penalty hyperparameters are read from the first group.
* ``schedule`` also accepts the spelling "stabilized"; it is stored as "stabilised".

Defaults: lr = 0.01, mu = 1, gamma = 0.9, K = 0.9, delta = 1 (the newest reference defaults),
p in [0.1, 1] starting at 1, lambda in [1e-4, 100] starting at 1e-4 (the specification's), all
kept (the benchmark configuration of the reference: gamma = K = 0.9, mu = 1, lr = 0.01). They
work as given: without an epoch length gamma and K stay constant (the reference constructor
failed with its own defaults because its annealing demanded one). Measured with the defaults:

* Waking the dual from 1e-4 (constant violation c, one constraint, no annealing): lambda grows
  by 1 + (1 - gamma) c / p per step, and the stabilised schedule lowers p towards p_min = 0.1 by
  the factor K + (1 - K) / (1 + c) per step (psi = phi'(c) = 1 + c). lambda >= 1 after 132 / 249 /
  481 / 2,340 steps for c = 0.2 / 0.1 / 0.05 / 0.01 (ACSIncome's violations |PR_g - PR| - 0.05
  are of order 0.1: ~250 steps, a fraction of a second). With gamma = 0.99 it takes ~4x longer
  (1,080 steps for c = 0.1).
* gamma: on ACSIncome (m = 5) gamma = 0.9 holds the constraints near the bound and reacts faster
  to the small groups than gamma = 0.99. But on the noisy QP of ``hctrain.testing``
  (NoisyQuadratic, sigma = 0.3) gamma = 0.9 does NOT converge: the dual moves by ~10% per step,
  much faster than Adam (about lr per step) moves the constraint, so lambda overshoots to
  lambda_max, Adam's second moment remembers the huge gradients, lambda then collapses to
  lambda_min, and the iterate limit-cycles (distance ~0.3 to x* after 3,000 steps, against 0.013
  with gamma = 0.99; without noise gamma = 0.9 gets there, but only by ~12,000 steps). Rule of
  thumb: 1 / (1 - gamma) steps should exceed the number of Adam steps the constraint needs to
  respond; raise gamma (0.99) when the duals oscillate between their bounds.
* schedule = "diminishing" fixes p at p_min after 22 steps; with noisy constraints t = c / p is
  then noisy, and because phi' is convex the rest point E[phi'(t)] = 1 lies inside the feasible set:
  on the noisy QP the average iterate ends ~0.18 inside each constraint (distance 0.14 to x*),
  against ~0.01 with the stabilised schedule, which lets p grow back.

Cost per step: one forward (two without shared samples), one backward seeded with (1, weights)
(no graph for the dot product f + weights . c), one host synchronisation (the finiteness check),
and ~15 elementwise ops on m-vectors (phi' at t and at c, computed in one pass over the stacked
pair; weights, duals, penalties). The Moreau term, the Adam
step and the anchor update (``_fused_adam_step``) treat each parameter group as one vector
(``flat_adam.FlatAdamGroup``: Adam's state and the anchors are views into contiguous buffers),
so they are a dozen tensor ops whatever the number of parameter tensors: the same operations as
``torch.optim.Adam``'s default single-tensor path, identical bit for bit (tested), without its
per-parameter Python loop and its ``.grad`` round trip. A group with mixed dtypes or devices
takes ``torch._foreach_*`` ops instead. On the CPU, multiplicative constants enter as cached
0-dim tensors, because a mul/div/add with a Python scalar costs PyTorch a scalar-to-tensor
conversion (several microseconds); clamp bounds stay Python scalars (tensor bounds are slower).
The first step, and every step while a hook is registered on the inner Adam (``inner_adam``) or
one of its non-default options is set, goes through ``torch.optim.Adam.step`` instead.

Measured (``benchmarks/step_time.py``, ``benchmarks/results/step_time.md``, a 2-core Intel Xeon
VM, one thread, the plain loop at 0.41 ms per step at m = 5): an SPBM step costs 1.22-1.24 times
a plain ``torch.optim.Adam`` loop's from m = 5 to m = 9,900; after the parameters became views of
the flat vector and (t, c) one division, 1.18 / 1.17 / 1.14 / 1.20 at m = 5 / 90 / 870 / 9,900
(``benchmarks/results/intel-xeon/step_time_2026-12-05_run3.md``, the plain loop at 0.39 ms);
after the scratch buffers and a cheaper bookkeeping per step, 1.19 / 1.17 / 1.19 / 1.22
(``intel-xeon/step_time_2026-12-06.md``: 9,900 still misses 1.2). Removing one part at a time at
m = 5, the flat Adam step with the Moreau term and the anchor takes about 0.2 of the plain
loop's time and the m-vector updates (phi', duals, penalties) about 0.2; those m-vector
operations timed alone take about 24 us (0.06), so most of their cost in a step is the fixed
per-operation cost of small CPU ops after a backward pass, whatever library runs them (the same
updates in NumPy on the tensors' memory measured no faster: an ad-hoc same-run check on the AMD
VM below, 80 rounds at m = 5, 1.133 against 1.130). What does save time is fewer operations:
phi' at t and at the raw c, which the default schedule needs, in one pass over the stacked pair
(two operations fewer than two passes, the same numbers bit for bit) measured 1.095-1.102 /
1.134 / 1.114 / 1.129 against 1.118-1.125 / 1.155 / 1.140 / 1.133 for two passes at m = 5 / 90 /
870 / 9,900 (same runs, interleaved, 60 rounds, on the AMD VM; an ad-hoc script, not stored);
an addcmul for the dual factor measured no faster. torch's fused CPU
Adam kernel (``torch._fused_adam_``) in the flat step measured 1.19-1.26 in a full run beside
this path's 1.22-1.27 (``benchmarks/results/step_time_spbm_fused.md``), no clear gain for numbers
equal to these only up to rounding, so it was not kept. The project's target, 1.2, is not met
on that machine (measured before the stacked pair; not measured there since). On a 2-core AMD
EPYC VM that code measured 1.13-1.18 (two full runs, ``benchmarks/results/amd-epyc/step_time.md``)
and this code 1.13-1.17 and 1.14-1.16 (``amd-epyc/step_time_2026-12-04_run1.md``, ``_run2.md``):
there the target is met.

CPU kernels (``cpu_kernels``): on the CPU, for float32 and float64, the m-vector work runs as
two one-pass kernels compiled with numba instead of about fifteen tensor operations. Before the
backward pass, one kernel computes phi' at t_k and at c_k, the weights and the finiteness check
of c, writing only scratch buffers. After the Adam step, the other updates the duals and the
penalties. On x86 CPUs with AVX2 or AVX-512, the flat Adam step's moment and parameter updates
also run as two kernels around a torch ``sqrt``. The kernels do the same IEEE operations in the
same order, so the numbers are identical bit for bit (``tests/test_cpu_kernels.py``). A subclass
that overrides one of the m-vector methods keeps the tensor path, and ``HCTRAIN_CPU_KERNELS=0``
switches the kernels off. Measured with them on the Xeon VM: 1.07 / 1.08 / 1.10 / 1.15 at
m = 5 / 90 / 870 / 9,900 (``intel-xeon/step_time_2026-12-06_kernels.md``), so the target is met
at every m.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor
from torch.optim import optimizer as _torch_optimizer

from ..problem import StochasticProblem
from .base import (ConstrainedOptimizer, check_interval, check_nonnegative, check_positive,
                   check_finite, resolve_m)
from . import cpu_kernels
from .flat_adam import FlatAdamGroup

# --- penalty-barrier functions, vectorised over the m-vector ---------------------------------

PSI_AT = ("c", "c/p")
ANCHOR_AT = ("x_k", "x_next")

_LOG_JOINT = -0.5
_REC_JOINT = -1.0 / 3.0


def quadratic_logarithmic(t: Tensor) -> Tensor:
    """phi(t) = t + t^2/2 for t >= -1/2, -(1/4) ln(-2t) - 3/8 below (C^2 at the joint)."""
    left = torch.clamp(t, max=_LOG_JOINT)  # keeps the unused branch finite (and its gradient zero)
    return torch.where(t >= _LOG_JOINT, t + 0.5 * t * t, -0.25 * torch.log(-2.0 * left) - 0.375)


def quadratic_logarithmic_derivative(t: Tensor) -> Tensor:
    """phi'(t) = 1 + t for t >= -1/2, -1/(4t) below.

    Computed as max(1 + t, -1/(4 min(t, -1/2))): the barrier branch lies above the tangent line
    1 + t (their difference is (1 + 2t)^2 / (-4t) >= 0 for t < 0) and the clamped branch is 1/2 <= 1 + t
    above the joint, so the maximum is phi' exactly -- four cheap ops instead of a masked where.
    """
    return torch.maximum(t + 1.0, torch.clamp(t, max=_LOG_JOINT).reciprocal().mul_(-0.25))


def quadratic_reciprocal(t: Tensor) -> Tensor:
    """phi(t) = t + t^2/2 for t >= -1/3, (32/27)/(1 - t) - 7/6 below (C^2 at the joint)."""
    left = torch.clamp(t, max=_REC_JOINT)
    return torch.where(t >= _REC_JOINT, t + 0.5 * t * t, (32.0 / 27.0) / (1.0 - left) - 7.0 / 6.0)


def quadratic_reciprocal_derivative(t: Tensor) -> Tensor:
    """phi'(t) = 1 + t for t >= -1/3, (32/27)/(1 - t)^2 below.

    Computed as max(1 + t, (32/27)/(1 - min(t, -1/3))^2): g(t) = (32/27)/(1-t)^2 - (1+t) has
    g = g' = 0 at t = -1/3 and g'' > 0, so g >= 0 and the maximum picks the right branch.
    """
    left = torch.clamp(t, max=_REC_JOINT).neg_().add_(1.0)  # 1 - min(t, -1/3) >= 4/3
    return torch.maximum(t + 1.0, left.mul_(left).reciprocal_().mul_(32.0 / 27.0))


PENALTY_BARRIER_FUNCTIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "quadratic_logarithmic": (quadratic_logarithmic, quadratic_logarithmic_derivative),
    "quadratic_reciprocal": (quadratic_reciprocal, quadratic_reciprocal_derivative),
}
PENALTY_BARRIER_JOINTS = {"quadratic_logarithmic": _LOG_JOINT, "quadratic_reciprocal": _REC_JOINT}
SCHEDULES = ("stabilised", "diminishing")
_SCHEDULE_ALIASES = {"stabilised": "stabilised", "stabilized": "stabilised", "diminishing": "diminishing"}


def _global_step_hooks() -> bool:
    """Whether a global optimizer step hook is registered (it must see the inner Adam's step)."""
    return bool(getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
                or getattr(_torch_optimizer, "_global_optimizer_post_hooks", None))


class SPBM(ConstrainedOptimizer):
    """Stochastic Penalty-Barrier Method: Adam on f + sum_i lambda_i p_i phi(c_i/p_i) + (mu/2)||x - z||^2,
    exponential dual averaging on lambda, a penalty schedule on p (see the module docstring).

    ``dual`` (lambda) and ``penalty_parameters`` (p) are m-vectors in ``algorithm_state``.
    ``lr`` is the inner Adam's; after a step ``.grad`` holds G_k, the gradient Adam was given
    (a view of SPBM's own buffer, overwritten by the next step, as a backward pass would
    accumulate into a ``.grad`` of torch's: clone it to keep it).
    ``step(loss=f, constraints=c)`` runs the same update on values computed in the caller's loop.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], m: int | None = None, lr: float = 0.01, mu: float = 1.0,
                 anchor_beta: float = 0.5, gamma: float = 0.9, K: float = 0.9, delta: float = 1.0,
                 penalty: str = "quadratic_logarithmic", schedule: str = "stabilised",
                 p_min: float = 0.1, p_max: float = 1.0, lambda_min: float = 1e-4, lambda_max: float = 100.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, psi_at: str = "c",
                 anchor_at: str = "x_k", annealing: bool | None = None, epoch_length: int | None = None, *,
                 problem: Any = None):
        # --- validation, before anything is built ---
        m = resolve_m("SPBM", m, problem)
        if m is None or isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"SPBM needs m, the number of constraints, as a positive integer; got {m!r}")
        if penalty not in PENALTY_BARRIER_FUNCTIONS:
            raise ValueError(f"unknown penalty {penalty!r}; use one of {tuple(PENALTY_BARRIER_FUNCTIONS)}")
        if schedule not in _SCHEDULE_ALIASES:
            raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        if psi_at not in PSI_AT:
            raise ValueError(f"psi_at must be one of {PSI_AT} (where the penalty schedule evaluates phi': "
                             f"at the raw constraint value, the reference's, or at c/p), got {psi_at!r}")
        if anchor_at not in ANCHOR_AT:
            raise ValueError(f"anchor_at must be one of {ANCHOR_AT} (the iterate the anchor moves towards: "
                             f"x_k before the step, the reference's, or x_{{k+1}} after it), got {anchor_at!r}")
        if annealing is not None and not isinstance(annealing, bool):
            raise ValueError(f"annealing must be True, False or None (on when the epoch length is known), "
                             f"got {annealing!r}")
        if epoch_length is None:
            epoch_length = getattr(problem, "epoch_length", None)
        if epoch_length is not None and (isinstance(epoch_length, bool) or not isinstance(epoch_length, int)
                                         or epoch_length < 1):
            raise ValueError(f"epoch_length must be a positive integer (steps per pass over the training "
                             f"data, e.g. len(train_loader)), got {epoch_length!r}")
        if annealing and epoch_length is None:
            raise ValueError(
                "annealing=True anneals gamma and K by epoch (the reference's schedules gamma_e = 1 - 1/(sqrt(e) "
                "+ 1/(1 - gamma))): give epoch_length, the number of steps in one pass over the training data "
                "(e.g. len(train_loader)), or a problem that knows it (problem=)")
        annealing = epoch_length is not None if annealing is None else annealing
        defaults = dict(
            lr=check_positive("lr", lr),
            betas=(check_interval("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                   check_interval("betas[1]", betas[1], 0.0, 1.0, high_open=True)),
            eps=check_positive("eps", eps),
            mu=check_nonnegative("mu", mu),
            anchor_beta=check_interval("anchor_beta", anchor_beta, 0.0, 1.0, low_open=True),
            gamma=check_interval("gamma", gamma, 0.0, 1.0, high_open=True),
            K=check_interval("K", K, 0.0, 1.0, low_open=True),
            delta=check_positive("delta", delta),
            penalty=penalty,
            schedule=_SCHEDULE_ALIASES[schedule],
            p_min=check_positive("p_min", p_min),
            p_max=check_positive("p_max", p_max),
            lambda_min=check_positive("lambda_min", lambda_min),
            lambda_max=check_positive("lambda_max", lambda_max),
            psi_at=psi_at, anchor_at=anchor_at, annealing=annealing, epoch_length=epoch_length,
        )
        if p_max < p_min:
            raise ValueError(f"p_max must be >= p_min, got p_min={p_min!r}, p_max={p_max!r}")
        if lambda_max < lambda_min:
            raise ValueError(f"lambda_max must be >= lambda_min, got lambda_min={lambda_min!r}, "
                             f"lambda_max={lambda_max!r}")
        self._constants: dict[tuple, Tensor] = {}  # see _const (before super().__init__: add_param_group)
        self._pair: tuple[Tensor, ...] | None = None  # see _pair_buffers
        self._divisor_row: Tensor | None = None  # see _divisor_of
        self._adam_state_complete = False  # see _fused_adam_ready
        self._flat: dict[int, FlatAdamGroup | None] = {}  # see _flat_group
        super().__init__(params, defaults, m, problem)

        first = self.params[0]
        dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        with torch.no_grad():
            self.algorithm_state["dual"] = torch.full((m,), float(lambda_min), dtype=dtype, device=first.device)
            # p is the first row of [p; 1] (see _pair_buffers)
            self.algorithm_state["penalty"] = self._divisor_of(
                torch.full((m,), float(p_max), dtype=dtype, device=first.device))
            self.algorithm_state["anchor"] = [p.detach().clone() for p in self.params]
        # The inner Adam keeps its per-parameter state in this optimizer's self.state (shared).
        self._adam = torch.optim.Adam(
            [{"params": g["params"], "lr": g["lr"], "betas": g["betas"], "eps": g["eps"]} for g in self.param_groups])
        self._adam.state = self.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (lr, betas, eps, mu, anchor_beta may differ per group); the inner Adam and the
        anchors follow it."""
        super().add_param_group(param_group)
        self._adam_state_complete = False
        self._flat = {}
        group = self.param_groups[-1]
        try:
            check_positive("lr", group["lr"])
            check_nonnegative("mu", group["mu"])
            check_positive("eps", group["eps"])
            check_interval("anchor_beta", group["anchor_beta"], 0.0, 1.0, low_open=True)
            betas = group["betas"]
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
                raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
            for i, b in enumerate(betas):
                check_interval(f"betas[{i}]", b, 0.0, 1.0, high_open=True)
        except ValueError:
            self.param_groups.pop()
            raise
        if hasattr(self, "_adam"):  # a group added after construction
            self._adam.add_param_group({"params": group["params"], "lr": group["lr"], "betas": group["betas"],
                                        "eps": group["eps"]})
            with torch.no_grad():
                self.algorithm_state["anchor"].extend(p.detach().clone() for p in group["params"])

    # --- read access ---
    @property
    def dual(self) -> Tensor:
        """lambda, the m dual variables."""
        return self.algorithm_state["dual"]

    @property
    def penalty_parameters(self) -> Tensor:
        """p, the m penalty parameters."""
        return self.algorithm_state["penalty"]

    @property
    def anchor(self) -> list[Tensor]:
        """z, the Moreau anchor (one tensor per parameter)."""
        return self.algorithm_state["anchor"]

    @property
    def inner_adam(self) -> torch.optim.Adam:
        """The torch.optim.Adam that takes the primal step (its state is this optimizer's ``state``)."""
        return self._adam

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._adam_state_complete = False
        self._flat = {}
        self._adam.state = self.state  # load_state_dict rebuilt self.state: share it again
        self._sync_adam()

    def _sync_adam(self) -> None:
        for group, inner in zip(self.param_groups, self._adam.param_groups):
            inner["lr"], inner["betas"], inner["eps"] = group["lr"], group["betas"], group["eps"]

    def penalty_barrier(self, t: Tensor) -> Tensor:
        """phi(t) of the configured penalty-barrier function."""
        return PENALTY_BARRIER_FUNCTIONS[self.param_groups[0]["penalty"]][0](t)

    def penalty_barrier_derivative(self, t: Tensor, out: Tensor | None = None) -> Tensor:
        """phi'(t) of the configured penalty-barrier function (written into ``out`` when given:
        a tensor of t's shape, dtype and device that does not overlap t).

        The same operations as :func:`quadratic_logarithmic_derivative` /
        :func:`quadratic_reciprocal_derivative` (the result is identical bit for bit), done in
        place on one buffer, with the multiplicative constants as cached 0-dim tensors (a
        mul with a Python scalar costs PyTorch a scalar-to-tensor conversion, several
        microseconds on the CPU) and the clamp bounds as Python scalars (the opposite holds for
        clamp: tensor bounds make it a three-input op, 3-5x slower on long vectors).
        """
        const = self._const
        if self.param_groups[0]["penalty"] == "quadratic_logarithmic":
            barrier = torch.clamp(t, max=_LOG_JOINT, out=out)
            torch.div(const(-0.25, t), barrier, out=barrier)  # = reciprocal * -0.25 exactly (a power of 2)
            return torch.maximum(torch.add(t, const(1.0, t), out=self._scratch("t+1", t)), barrier,
                                 out=barrier)
        left = torch.clamp(t, max=_REC_JOINT, out=out).neg_().add_(const(1.0, t))  # 1 - min(t, -1/3) >= 4/3
        barrier = left.mul_(left).reciprocal_().mul_(const(32.0 / 27.0, t))
        return torch.maximum(torch.add(t, const(1.0, t), out=self._scratch("t+1", t)), barrier, out=barrier)

    def _divisor_of(self, pen: Tensor) -> Tensor:
        """A (2, m) tensor [p; 1] holding ``pen``'s values in its first row, which it returns: the
        penalties live there, so that c / [p; 1] gives the pair (t_k, c_k) in one division
        (c / 1 is c exactly)."""
        divisor = torch.ones((2, pen.shape[0]), dtype=pen.dtype, device=pen.device)
        row = divisor[0]
        row.copy_(pen)
        self._divisor, self._divisor_row = divisor, row
        return row

    def _pair_buffers(self, pen: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """For phi' at t_k and at c_k in one pass: [p; 1] (p, when it was replaced -- a loaded state,
        a device move -- is moved back into the first row), a reusable (2, m) buffer for the pair
        (t_k, c_k), phi' of it (another) and views of that one's rows. Rewritten by every step and
        read only within it; cached views cost no ``stack``/``unbind`` per step."""
        if pen is not self._divisor_row:
            self.algorithm_state["penalty"] = self._divisor_of(pen)
        bufs = self._pair
        if (bufs is None or bufs[0].dtype != pen.dtype or bufs[0].device != pen.device
                or bufs[0].shape[1] != pen.shape[0]):
            pair = pen.new_empty((2, pen.shape[0]))
            dphi = torch.empty_like(pair)
            bufs = self._pair = (pair, pair[0], dphi, *dphi.unbind())
        return (self._divisor, *bufs)

    def _buffer(self, like: Tensor) -> Tensor:
        """A reusable 0-dim tensor of ``like``'s dtype and device (the bias correction of the step)."""
        key = ("buffer", like.dtype, like.device)
        buf = self._constants.get(key)
        if buf is None:
            buf = self._constants[key] = torch.zeros((), dtype=like.dtype, device=like.device)
        return buf

    def _scratch(self, name: str, like: Tensor) -> Tensor:
        """A reusable tensor of ``like``'s shape, dtype and device for intermediate ``name`` of a step
        (written and read within one step: no allocation per step)."""
        key = ("scratch", name)
        buf = self._constants.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._constants[key] = torch.empty_like(like)
        return buf

    def _memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``self._constants[key]``, made by ``make()`` the first time (hyperparameters and fixed
        constants only: a handful of values)."""
        cached = self._constants.get(key)
        if cached is None:
            if len(self._constants) > 256:  # hyperparameters changed many times: start afresh
                self._constants.clear()
            cached = self._constants[key] = make()
        return cached

    def _const(self, value: float, like: Tensor) -> Tensor:
        """``value`` as a 0-dim tensor of ``like``'s dtype and device, cached (:meth:`_memo`)."""
        return self._memo((value, like.dtype, like.device),
                          lambda: torch.tensor(value, dtype=like.dtype, device=like.device))

    # --- one iteration ---
    def _sample(self, problem: StochasticProblem) -> tuple[Tensor, Tensor]:
        if problem.shares_samples:
            return problem.objective_and_constraints(problem.sample_objective())
        xi = problem.sample_objective()
        zeta = problem.sample_constraints()
        return problem.objective(xi), problem.constraints(zeta)

    def _constraint_weights(self, lam: Tensor, dphi: Tensor) -> Tensor:
        """The v of the primal gradient's J_c^T v: d/dc_i [lambda_i p_i phi(c_i/p_i)] = lambda_i phi'(t_i)."""
        return lam * dphi

    def _annealed(self, hp: dict) -> dict:
        """gamma_e and K_e of epoch e = k // epoch_length (the reference's schedules, both -> 1):
        gamma_e = 1 - 1 / (sqrt(e) + 1 / (1 - gamma)), K_e likewise; gamma_0 = gamma, K_0 = K."""
        if not hp["annealing"]:
            return hp
        e = self.algorithm_state["step"] // hp["epoch_length"]
        if e == 0:
            return hp
        root = math.sqrt(e)
        K = 1.0 if hp["K"] == 1.0 else 1.0 - 1.0 / (root + 1.0 / (1.0 - hp["K"]))
        return {**hp, "gamma": 1.0 - 1.0 / (root + 1.0 / (1.0 - hp["gamma"])), "K": K}

    def _update_duals(self, lam: Tensor, t: Tensor, dphi: Tensor, hp: dict) -> None:
        """lambda <- clip(gamma lambda + (1 - gamma) lambda phi'(t), lambda_min, lambda_max)."""
        gamma, const = hp["gamma"], self._const
        factor = torch.mul(dphi, const(1.0 - gamma, lam), out=self._scratch("dual factor", dphi))
        lam.mul_(factor.add_(const(gamma, lam)))
        lam.clamp_(hp["lambda_min"], hp["lambda_max"])  # Python bounds: see penalty_barrier_derivative

    def _update_penalties(self, pen: Tensor, dphi: Tensor, hp: dict) -> None:
        """p <- clip(K p) or clip(K p + (1 - K) p / psi), psi = phi'(t) (times delta where phi'(t) >= 1)."""
        K, const = hp["K"], self._const
        if hp["schedule"] == "diminishing":
            pen.mul_(const(K, pen))
        else:
            delta = hp["delta"]
            psi = dphi if delta == 1.0 else torch.where(dphi < 1.0, dphi, dphi * const(delta, dphi))
            torch.addcdiv(torch.mul(pen, const(K, pen), out=self._scratch("K p", pen)), pen, psi,
                          value=1.0 - K, out=pen)
        pen.clamp_(hp["p_min"], hp["p_max"])

    def _fused_adam_ready(self) -> bool:
        """True when the inner Adam's update can be done by :meth:`_fused_adam_step`: plain Adam
        (no amsgrad, maximize, weight decay, capturable, differentiable or fused options), no step
        hooks on the inner Adam, and every parameter's Adam state already initialised (the first
        step goes through ``torch.optim.Adam.step``, which creates the state exactly as usual;
        once complete, the state is not checked again until ``load_state_dict`` or
        ``add_param_group`` changes it)."""
        adam = self._adam
        if adam._optimizer_step_pre_hooks or adam._optimizer_step_post_hooks or _global_step_hooks():
            return False
        for inner in adam.param_groups:
            if (inner["amsgrad"] or inner["maximize"] or inner["weight_decay"] or inner["capturable"]
                    or inner["differentiable"] or inner["fused"]):
                return False
        if not self._adam_state_complete:
            for p in self.params:
                st = self.state.get(p)
                if not st or "exp_avg" not in st or p.is_complex():
                    return False
            self._adam_state_complete = True
        return True

    def _fused_adam_step(self, grads: list[Tensor]) -> None:
        """Moreau term, Adam step and anchor update for all parameters, without torch.optim.Adam.

        A group whose parameters share dtype and device (the usual case) is stepped as one
        vector (:class:`~hctrain.algorithms.flat_adam.FlatAdamGroup`); any other group with
        ``torch._foreach_*`` ops over its tensors. Both do the operations of ``torch.optim.Adam``'s
        single-tensor path (CPU default) in the same order with the same scalars: the result is
        identical bit for bit (``tests/test_spbm.py`` checks it), without the per-parameter Python
        loop, the ``.grad`` round trip and the inner optimizer's wrappers.
        """
        start = 0
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            n = len(params)
            if n == 0:
                continue
            g = grads[start:start + n]
            flat = self._flat_group(index, params, start)
            if flat is not None:
                flat.step(g, group["lr"], group["betas"], group["eps"], group["mu"], group["anchor_beta"],
                          self._const, self._buffer(params[0]), group["anchor_at"])
            else:
                self._foreach_adam_step(group, g, self.algorithm_state["anchor"][start:start + n])
            start += n

    def _set_flat_grads(self, grads: list[Tensor]) -> None:
        """``.grad`` after a flat step: G_k (with the Moreau term) where a flat buffer holds it."""
        start = 0
        for index, group in enumerate(self.param_groups):
            n = len(group["params"])
            flat = self._flat.get(index)
            views = flat.grad_views if flat is not None else grads[start:start + n]
            for p, g in zip(group["params"], views):
                if p.grad is not g:  # still there from the last step: the setter's checks cost more
                    p.grad = g
            start += n

    def _flat_group(self, index: int, params: list[Tensor], first: int) -> FlatAdamGroup | None:
        """The flat buffers of group ``index``, (re)built when missing or stale; None when the group
        cannot be flattened (mixed dtypes or devices, different step counts). That verdict is kept
        until ``load_state_dict`` or ``add_param_group`` clears it: the foreach path computes the
        same numbers, so nothing is lost by not checking again every step."""
        if index in self._flat and self._flat[index] is None:
            return None
        states = [self.state[p] for p in params]
        anchors = self.algorithm_state["anchor"]
        flat = self._flat.get(index)
        if flat is not None and flat.is_current(params, states, anchors):
            return flat
        # drop the stale buffers first: parameters that are still views of them are then held by
        # nothing else, and the new buffers can take them over (FlatAdamGroup.shared)
        self._flat.pop(index, None)
        del flat
        if not FlatAdamGroup.applicable(params, states):
            self._flat[index] = None
            return None
        with torch.no_grad():
            flat = self._flat[index] = FlatAdamGroup(params, states, anchors, first)
        return flat

    def _foreach_adam_step(self, group: dict, g: list[Tensor], z: list[Tensor]) -> None:
        """The same update as :class:`FlatAdamGroup` with ``torch._foreach_*`` ops over the
        group's tensors, each with its own step count, dtype and device."""
        params = group["params"]
        if group["mu"] > 0:  # G = grad f + J_c^T w + mu (x - z)
            torch._foreach_add_(g, torch._foreach_sub(params, z), alpha=group["mu"])
        if group["anchor_at"] == "x_k":  # z <- z + beta (x_k - z)
            torch._foreach_lerp_(z, params, group["anchor_beta"])
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1.0)
        counts = [st.item() for st in steps]  # as torch.optim.Adam reads them (steps live on the CPU)
        torch._foreach_lerp_(exp_avgs, g, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [(1 - beta2 ** k) ** 0.5 for k in counts])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, [-(lr / (1 - beta1 ** k)) for k in counts])
        if group["anchor_at"] != "x_k":
            torch._foreach_lerp_(z, params, group["anchor_beta"])  # z <- z + beta (x_{k+1} - z)

    def _torch_adam_step(self, grads: list[Tensor]) -> None:
        """The same update through ``torch.optim.Adam.step`` (first step, hooks, non-default options)."""
        params = self.params
        anchors = self.algorithm_state["anchor"]
        start = 0
        for group in self.param_groups:  # Moreau term mu (x - z)
            n = len(group["params"])
            if group["mu"] > 0 and n:
                torch._foreach_add_(grads[start:start + n],
                                    torch._foreach_sub(group["params"], anchors[start:start + n]),
                                    alpha=group["mu"])
            start += n
        self._move_anchors("x_k")  # z <- z + beta (x_k - z), where the anchor follows x_k
        for p, g in zip(params, grads):
            p.grad = g
        self._adam.step()
        self._move_anchors("x_next")  # z <- z + beta (x_{k+1} - z), where it follows x_{k+1}

    def _move_anchors(self, at: str) -> None:
        anchors = self.algorithm_state["anchor"]
        start = 0
        for group in self.param_groups:
            n = len(group["params"])
            if n and group["anchor_at"] == at:
                torch._foreach_lerp_(anchors[start:start + n], group["params"], group["anchor_beta"])
            start += n

    def _step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        """One SPBM iteration; returns the sampled loss f(x_k, xi_k) and constraints c(x_k, zeta_k)."""
        return self._step_values(*self._sample(problem))

    def _step_values(self, loss: Tensor, c: Tensor) -> dict[str, Tensor]:
        state = self.algorithm_state
        lam = state["dual"]
        if (lam.device == c.device and c.dim() == 1 and c.numel() == self.m and self._kernels_compute_hooks()
                and cpu_kernels.applicable(lam)):
            return self._kernel_step_values(loss, c)
        check_finite(self.m, loss, c)
        c_d, loss_d = c.detach(), loss.detach()
        if state["dual"].device != c.device:  # e.g. a CPU checkpoint resumed on a GPU
            state["dual"], state["penalty"] = state["dual"].to(c.device), state["penalty"].to(c.device)
        lam, pen = state["dual"], state["penalty"]
        hp = self.param_groups[0]

        with torch.no_grad():
            c_l = c_d if c_d.dtype == lam.dtype else c_d.to(lam.dtype)
            # phi'(t_k), and the penalty schedule's phi' (at the raw c_k, the reference's, or at t_k)
            if hp["psi_at"] == "c":  # both in one pass over the pair (t_k, c_k)
                divisor, pair, t, dphi_pair, dphi, dphi_schedule = self._pair_buffers(pen)
                pen = self._divisor_row
                torch.div(c_l, divisor, out=pair)  # rows c / p and c / 1 = c
                self.penalty_barrier_derivative(pair, out=dphi_pair)
            else:
                t = c_l.div(pen)
                dphi = dphi_schedule = self.penalty_barrier_derivative(t)
            weights = self._constraint_weights(lam, dphi)  # at c(x_k, zeta_k)
            if weights.dtype != c.dtype:
                weights = weights.to(c.dtype)

        grads = self._gradients(loss, c, weights)
        with torch.no_grad():
            self._primal_step(grads)
            hp = self._annealed(hp)
            self._update_duals(lam, t, dphi, hp)
            self._update_penalties(pen, dphi_schedule, hp)

        state["step"] += 1
        return {"loss": loss_d, "constraints": c_d}

    def _kernel_step_values(self, loss: Tensor, c: Tensor) -> dict[str, Tensor]:
        """The same iteration with the m-vector work in two one-pass CPU kernels
        (:mod:`~hctrain.algorithms.cpu_kernels`; identical numbers): phi', the weights and the
        finiteness check of c before the backward pass, the duals and penalties after it."""
        c_d, loss_d = c.detach(), loss.detach()
        state = self.algorithm_state
        lam, pen = state["dual"], state["penalty"]
        hp = self.param_groups[0]
        c_l = c_d if c_d.dtype == lam.dtype else c_d.to(lam.dtype)
        at_c = hp["psi_at"] == "c"
        dphi = self._scratch("dphi t", lam)
        dphi_schedule = self._scratch("dphi c", lam) if at_c else dphi
        weights = self._scratch("weights", lam)
        dtype = lam.dtype
        log = hp["penalty"] == "quadratic_logarithmic"
        views, cache = cpu_kernels.numpy_view, self._constants
        lam_np, pen_np = views(cache, "dual", lam), views(cache, "penalty", pen)
        dphi_np, schedule_np = views(cache, "dphi t", dphi), views(cache, "dphi c", dphi_schedule)
        kernels = cpu_kernels.kernels()
        finite = kernels.penalty_weights(
            c_l.numpy(), pen_np, lam_np, dphi_np, schedule_np, views(cache, "weights", weights),
            self._const_array((_LOG_JOINT, -0.25, 1.0) if log else (_REC_JOINT, 32.0 / 27.0, 1.0), dtype),
            not log, at_c)
        if not finite or not math.isfinite(loss_d.item()):
            check_finite(self.m, loss, c)  # raises, naming the values
        grads = self._gradients(loss, c, weights if weights.dtype == c.dtype else weights.to(c.dtype))
        with torch.no_grad():
            self._primal_step(grads)
        hp = self._annealed(hp)
        gamma, K = hp["gamma"], hp["K"]
        kernels.dual_penalty_update(
            lam_np, pen_np, dphi_np, schedule_np,
            self._const_array((1.0 - gamma, gamma, hp["lambda_min"], hp["lambda_max"], K, 1.0 - K,
                               hp["p_min"], hp["p_max"], hp["delta"], 1.0), dtype),
            hp["schedule"] == "stabilised", hp["delta"] != 1.0)
        state["step"] += 1
        return {"loss": loss_d, "constraints": c_d}

    _KERNEL_HOOKS = ("_constraint_weights", "_update_duals", "_update_penalties", "penalty_barrier_derivative",
                     "_annealed")

    @classmethod
    def _kernels_compute_hooks(cls) -> bool:
        """Whether the kernels compute what this class's m-vector methods do: true for SPBM, and for
        a subclass only where it overrides none of them (its own versions then take the tensor path)."""
        verdict = cls.__dict__.get("_kernel_verdict")
        if verdict is None:
            verdict = all(getattr(cls, name) is getattr(SPBM, name) for name in cls._KERNEL_HOOKS)
            cls._kernel_verdict = verdict
        return verdict

    def _const_array(self, values: tuple[float, ...], dtype: torch.dtype) -> np.ndarray:
        """``values`` rounded to ``dtype`` as a NumPy array for the kernels (cached, :meth:`_memo`)."""
        return self._memo(("array", values, dtype), lambda: torch.tensor(values, dtype=dtype).numpy())

    def _gradients(self, loss: Tensor, c: Tensor, weights: Tensor) -> list[Tensor]:
        """grad f + J_c^T weights: one backward pass whatever m is, seeded with (1, weights); the
        same as differentiating f + weights . c, without building the dot product's graph."""
        outputs, seeds = [], []
        if loss.requires_grad:
            outputs.append(loss)
            seeds.append(None)
        if c.requires_grad:
            outputs.append(c)
            seeds.append(weights)
        if not outputs:  # neither depends on the parameters: autograd says so, as before
            outputs, seeds = [loss], [None]
        return list(torch.autograd.grad(outputs, self.params, grad_outputs=seeds,
                                        allow_unused=True, materialize_grads=True))

    def _primal_step(self, grads: list[Tensor]) -> None:
        """Moreau term, Adam step and anchor update (under ``torch.no_grad()``)."""
        self._sync_adam()
        if self._fused_adam_ready():
            self._fused_adam_step(grads)
            self._set_flat_grads(grads)
        else:
            self._torch_adam_step(grads)
