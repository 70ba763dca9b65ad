r"""Stochastic Switching Subgradient method (SSw).

Source: Y. Huang and Q. Lin, *Oracle complexity of single-loop switching subgradient methods for
non-smooth weakly convex functional constrained optimization* (2023), stochastic variant, as
described in section 2.3 of the humancompatible.train paper (which allows eta^f != eta^c).

The method solves  min F(x) = E f(x, xi)  s.t.  C(x) = E c(x, zeta) <= 0  through the scalar
constraint  max_i C_i(x)  (the max of the m constraints). Iteration k = 1, 2, ...:

    cbar_k = (1/J) sum_{j=1..J} c(x_k, zeta_j)          J fresh constraint draws (values only)
    if max_i cbar_{k,i} <= eps_k:                          objective step, fresh xi
        x_{k+1} = x_k - eta^f_k * grad f(x_k, xi)
    else:                                                  constraint step, another fresh zeta
        x_{k+1} = x_k - eta^c_k * S^c(x_k, zeta),   S^c in  d max_i c_i(x_k, zeta)

X = R^n, so proj_X is the identity. Outputs: the last iterate (the model's parameters) and Huang
& Lin's output, an iterate x_tau with tau drawn from the objective-step iterations I with
P(tau = k) = eta^f_k / sum_{s in I} eta^f_s -- uniform for constant steps.

Samples drawn by ``step(problem)``: J calls of ``problem.sample_constraints()`` for the switching
test, then ONE of ``problem.sample_objective()`` (objective step) or
``problem.sample_constraints()`` (constraint step). Every draw is fresh, also when
``problem.shares_samples`` is True. Cost per iteration: J forward passes without autograd (or
one over the J concatenated batches, ``fuse_switching_forward=True``) plus one forward and one
backward pass.

Choices made where the spec leaves one:

* Tolerances (``schedule``): "paper" eps_1 = eps, eps_k = eps_{k-1}/sqrt(k) (the paper's
  experiment; eps_k = eps/sqrt(k!): with eps = 0.1, eps_10 = 5.2e-5, eps_13 = 1.3e-6, below
  1e-6 from k = 14 and exactly 0.0 in float64 from k = 313, so the method soon switches on any
  estimated violation), "constant" eps_k = eps, "sqrt" eps_k = eps/sqrt(k). The current eps_k is
  kept in the algorithm state and the "paper" schedule is applied recursively, exactly as
  written. (The spec says the paper schedule is ~1e-6 "within 10 iterations"; it takes 13-14.)
* Step sizes (``step_schedule``): "constant" (as in the paper's experiment) or "sqrt"
  (eta_k = eta/sqrt(k)), for both eta^f and eta^c. Per-parameter-group eta_f / eta_c are honoured.
* J (``n_switch_samples``) defaults to 1. Each draw is already a minibatch (on ACSIncome a
  balanced one with every group), so J multiplies the rows the switching test sees; J = 1 keeps
  the cost per step at two forward passes and one backward, closest to the paper's experiment
  (whose reference code evaluated the test on one constraint batch -- and then reused that batch
  for the constraint step; here the step's zeta is a fresh draw, as the method specifies).
  Huang & Lin's analysis wants the error of cbar below the tolerance, i.e. J (or the batch) of
  order 1/eps_k^2; with the "paper" schedule no finite J achieves that after a few iterations.
* The switching draws are evaluated one forward pass each by default (correct for any model).
  ``fuse_switching_forward=True`` concatenates the J batches into ONE forward pass and splits the
  outputs back: only valid for row-wise models (output row r depends on input row r only -- an
  MLP without batch norm); a model whose output does not have one row per input row raises.
  Either way c is evaluated on each of the J batches and cbar is their mean.
* S^c is the gradient of ``c.max()`` on the fresh zeta: one backward pass through the argmax
  constraint whatever m (on exact ties PyTorch spreads the gradient evenly over the tied
  constraints, a convex combination of their gradients and still a subgradient of the max).
* Huang & Lin's random output is drawn online, without storing iterates: a weighted reservoir of
  size one over the objective-step iterates x_k (the point at which the test passed, before its
  update), weight eta^f_k. At an eligible objective step, with W the running sum of weights,
  the current x_k replaces the kept one with probability eta^f_k / W; the copy is made only then
  (about log(#objective steps) copies in a run with constant steps). The draw uses the
  algorithm's own ``torch.Generator`` seeded by ``seed``; its state lives in the algorithm state,
  so ``state_dict`` round-trips it. ``output_start`` = S makes only iterations k > S eligible
  (a burn-in; 0 = every objective step, as in the spec).
* Host synchronisations per step: the switch and the finiteness check of cbar (one ``aminmax``
  and ``amax`` on cbar, read on the host: the test compares max_i cbar_i with eps_k rounded to
  cbar's dtype, as the tensor comparison would, so the same steps are taken), the finiteness
  check of the step's f or c, and one uniform draw on eligible objective steps -- none per
  constraint. The reservoir's weight eta^f_k is that of the first parameter group.

Spec vs paper: the spec (docs algorithms.md) and section 2.3 of the paper agree on the update;
the spec's remark that the "paper" schedule reaches ~1e-6 within 10 iterations is off by a few
iterations (see above).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from ..problem import Batch, StochasticProblem
from .base import (HOST_ROUNDING, ConstrainedOptimizer, check_finite, check_nonnegative, check_positive, check_values,
                   resolve_lr, resolve_m)

SCHEDULES = ("paper", "constant", "sqrt")
STEP_SCHEDULES = ("constant", "sqrt")


def tolerance_schedule(schedule: str, eps: float, n: int) -> list[float]:
    """eps_1, ..., eps_n of a tolerance schedule, computed as :class:`SwitchingSubgradient` does."""
    _check_choice("schedule", schedule, SCHEDULES)
    values = [float(eps)]
    for k in range(2, n + 1):
        values.append(_next_tolerance(schedule, float(eps), values[-1], k))
    return values[:n]


def _next_tolerance(schedule: str, eps: float, previous: float, k: int) -> float:
    """eps_k from eps_{k-1} (k >= 2)."""
    if schedule == "paper":
        return previous / math.sqrt(k)
    if schedule == "sqrt":
        return eps / math.sqrt(k)
    return eps


def _step_size(step_schedule: str, eta: float, k: int) -> float:
    return eta / math.sqrt(k) if step_schedule == "sqrt" else eta


def _schedule_factor(group: dict) -> float:
    """lr / initial_lr: the factor a torch.optim.lr_scheduler has applied to lr (eta_f), by which
    eta_c is scaled too (1 without a scheduler: torch's schedulers set ``initial_lr``)."""
    initial = group.get("initial_lr")
    return group["lr"] / initial if initial else 1.0


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


class SwitchingSubgradient(ConstrainedOptimizer):
    """Stochastic switching subgradient (Huang & Lin 2023); see the module docstring.

    Parameters: ``eta_f``, ``eta_c`` objective / constraint step sizes (paper: 0.01 each; ``lr``
    is eta_f and ``eta_c`` is its own key of each parameter group; a ``torch.optim.lr_scheduler``
    sets lr and scales eta_c by the same factor, lr / initial_lr);
    ``eps`` the first tolerance eps_1 (paper: 0.1); ``schedule`` "paper" | "constant" | "sqrt";
    ``n_switch_samples`` J (default 1); ``seed`` of the output's random choice (through :meth:`from_problem`, the problem's seed by default);
    ``step_schedule`` "constant" | "sqrt"; ``output_start`` S (burn-in of the random output);
    ``fuse_switching_forward`` one forward pass for the J switching batches (row-wise models).

    State (``algorithm_state``): ``step``, ``eps`` (the tolerance of the next iteration),
    ``objective_steps``, ``constraint_steps``, ``output_weight`` (sum of eligible eta^f),
    ``output_iteration`` (k of the kept iterate, 0 if none), ``rng_state``; per parameter,
    ``self.state[p]["output"]`` holds the kept iterate.

    Outputs: the model's parameters are the last iterate; :meth:`output_parameters` returns the
    random output, :meth:`load_output_into` copies it into the parameters, and
    :meth:`swapped_output` does so temporarily (``with algo.swapped_output(): evaluate(model)``).

    ``step(loss=f, constraints=c)`` is refused: the switching test needs its own sample, and
    which sample the step needs depends on the test.
    """

    lr_alias = "eta_f"
    values_refusal = (
        "SwitchingSubgradient needs, per step, a switching sample (the test max_i c_i(x, zeta) <= "
        "eps_k on a batch of its own) and then a fresh objective or constraint sample for the step, "
        "whichever the test chose, which one (loss, constraints) pair computed before the step cannot "
        "give. Let it draw them: SwitchingSubgradient(params, problem=hctrain.Problem(model, loss, "
        "constraints, data=loader)) and step()")

    def __init__(self, params: Iterable[Tensor], m: int | None = None, eta_f: float = 0.01,
                 eta_c: float = 0.01, eps: float = 0.1, schedule: str = "paper",
                 n_switch_samples: int = 1, seed: int = 0, *, step_schedule: str = "constant",
                 output_start: int = 0, fuse_switching_forward: bool = False,
                 lr: float | None = None, problem: Any = None):
        m = resolve_m("SwitchingSubgradient", m, problem)
        eta_f = resolve_lr("eta_f", eta_f, lr, 0.01)
        if not isinstance(n_switch_samples, int) or isinstance(n_switch_samples, bool) or n_switch_samples < 1:
            raise ValueError(f"n_switch_samples (J) must be an integer >= 1, got {n_switch_samples!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(output_start, int) or isinstance(output_start, bool) or output_start < 0:
            raise ValueError(f"output_start must be an integer >= 0, got {output_start!r}")
        if not isinstance(fuse_switching_forward, bool):
            raise ValueError(f"fuse_switching_forward must be a bool, got {fuse_switching_forward!r}")
        if m is None:
            raise ValueError("SwitchingSubgradient needs m, the number of constraints, or problem=")
        defaults = dict(
            lr=check_positive("lr (eta_f)", eta_f),
            eta_c=check_positive("eta_c", eta_c),
            eps=check_nonnegative("eps", eps),
            schedule=_check_choice("schedule", schedule, SCHEDULES),
            n_switch_samples=n_switch_samples,
            seed=seed,
            step_schedule=_check_choice("step_schedule", step_schedule, STEP_SCHEDULES),
            output_start=output_start,
            fuse_switching_forward=fuse_switching_forward,
        )
        super().__init__(params, defaults, m, problem)
        for group in self.param_groups:  # per-group overrides must be valid too
            check_positive("lr (eta_f)", group["lr"])
            check_positive("eta_c", group["eta_c"])
        state = self.algorithm_state
        state["eps"] = float(defaults["eps"])
        state["objective_steps"] = 0
        state["constraint_steps"] = 0
        state["output_weight"] = 0.0
        state["output_iteration"] = 0
        # The output's random stream: a live generator, its state written to ``rng_state`` by
        # state_dict() and read back by load_state_dict() (not copied in and out every step).
        self._generator = torch.Generator().manual_seed(seed)
        state["rng_state"] = self._generator.get_state()
        # 0-dim constants for the step's report, made once (a new tensor per step costs a few us)
        self._flags = {True: torch.tensor(True), False: torch.tensor(False)}
        self._nans: dict[torch.dtype, Tensor] = {}

    def state_dict(self) -> dict:
        """torch's state dict, with the output's random stream as of now in ``rng_state``."""
        self.algorithm_state["rng_state"] = self._generator.get_state()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._generator.set_state(self.algorithm_state["rng_state"])

    # --- hyperparameters and counters ---------------------------------------------------------

    @property
    def hyper(self) -> dict:
        """Algorithm-level hyperparameters (those of the first parameter group)."""
        return self.param_groups[0]

    @property
    def tolerance(self) -> float:
        """eps_k of the next iteration k = iteration + 1."""
        return self.algorithm_state["eps"]

    @property
    def objective_steps(self) -> int:
        return self.algorithm_state["objective_steps"]

    @property
    def constraint_steps(self) -> int:
        return self.algorithm_state["constraint_steps"]

    @property
    def has_output(self) -> bool:
        """Whether an eligible objective step has been taken (Huang & Lin's output exists)."""
        return self.algorithm_state["output_iteration"] > 0

    # --- one iteration ------------------------------------------------------------------------

    def switching_estimate(self, problem: StochasticProblem) -> Tensor:
        """cbar = mean of c(x, zeta_j) over J fresh draws, without autograd (m values)."""
        hyper = self.hyper
        J = hyper["n_switch_samples"]
        batches = [problem.sample_constraints() for _ in range(J)]
        with torch.no_grad():
            if J > 1 and hyper["fuse_switching_forward"]:
                if not getattr(problem, "supports_fused_forward", False):
                    raise ValueError("fuse_switching_forward=True needs a problem whose batches can be "
                                     "concatenated into one forward pass (StochasticProblem); with "
                                     "functions of (model, batch) use fuse_switching_forward=False")
                values = self._fused_constraints(problem, batches)
            else:
                values = [problem.constraints(b) for b in batches]
            for c in values:  # shapes only here (no host sync); finiteness on the mean below
                if c.dim() != 1 or c.numel() != self.m:
                    check_values(self.m, None, c)
            return values[0] if J == 1 else torch.stack(values).mean(0)

    @staticmethod
    def _fused_constraints(problem: StochasticProblem, batches: list[Batch]) -> list[Tensor]:
        sizes = [len(b) for b in batches]
        joined = Batch(torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches]),
                       torch.cat([b.group for b in batches]))
        logits = problem.forward(joined)
        if logits.dim() == 0 or logits.shape[0] != sum(sizes):
            raise ValueError(
                "fuse_switching_forward=True needs a row-wise model (one output row per input "
                f"row): {sum(sizes)} rows gave an output of shape {tuple(logits.shape)}; use "
                "fuse_switching_forward=False")
        return [problem.constraints(b, logits=chunk)
                for b, chunk in zip(batches, torch.split(logits, sizes))]

    def scalarize(self, c: Tensor) -> Tensor:
        """The method's constraint function on m values: max_i c_i. Its gradient picks one
        constraint attaining the maximum (``max(dim=0)``: a scatter into one entry), a
        subgradient of the max; ``c.max()`` would spread the gradient evenly over ties, at the
        cost of several more operations on the m-vector, for the same value."""
        return c.max(0).values if c.dim() == 1 else c.max()

    def switching_value(self, cbar: Tensor) -> Tensor:
        """The switching test's statistic max_i cbar_i (a value only: ``amax``, which finds no
        index, where :meth:`scalarize` must pick the constraint its gradient goes through)."""
        return cbar.amax() if cbar.dim() == 1 else cbar.max()

    def is_objective_step(self, switch_value: Tensor | float, eps_k: float) -> bool:
        """The switching test: an objective step when max_i cbar_i <= eps_k. ``switch_value``
        is the tensor or, as :meth:`step` passes it, its value read on the host; then eps_k is
        rounded to the tensor's dtype first, as the tensor comparison rounds it, so the
        decision is the same."""
        if isinstance(switch_value, Tensor):
            return bool(switch_value <= eps_k)
        return switch_value <= eps_k

    def _step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        state, hyper = self.algorithm_state, self.hyper
        k = state["step"] + 1
        eps_k = state["eps"]

        cbar = self.switching_estimate(problem)
        switch_value = self.switching_value(cbar)
        # one op and two reads for the finiteness check and the test: the least and the largest
        # value are finite only when every value is (NaN propagates through both)
        low, high = torch.aminmax(cbar.detach())
        if not (math.isfinite(low.item()) and math.isfinite(high.item())):
            check_values(self.m, None, cbar)  # raises, naming the values
        host = switch_value.item()
        rounding = HOST_ROUNDING.get(switch_value.dtype)
        objective_step = (self.is_objective_step(host, rounding(eps_k)) if rounding is not None
                          else self.is_objective_step(switch_value, eps_k))

        params = self.params
        nan = self._nans.get(cbar.dtype)
        if nan is None:
            nan = self._nans[cbar.dtype] = torch.full((), float("nan"), dtype=cbar.dtype)
        if objective_step:
            loss = problem.objective(problem.sample_objective())
            check_finite(self.m, loss)
            grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
            step_constraint = nan
        else:
            c = problem.constraints(problem.sample_constraints())
            check_finite(self.m, None, c)
            c_scalar = self.scalarize(c)
            grads = torch.autograd.grad(c_scalar, params, allow_unused=True, materialize_grads=True)
            loss, step_constraint = nan, c_scalar.detach()

        # Nothing has changed so far; from here on the iteration is committed.
        if objective_step:
            self._reservoir(k)  # keeps x_k (before its update) if the reservoir picks it
        self._update(grads, "lr" if objective_step else "eta_c", k)
        self._set_grads(grads)
        state["objective_steps" if objective_step else "constraint_steps"] += 1
        state["step"] = k
        state["eps"] = _next_tolerance(hyper["schedule"], hyper["eps"], eps_k, k + 1)
        return {
            "loss": loss.detach(),
            "constraints": cbar.detach(),
            "max_constraint": switch_value.detach(),
            "step_constraint": step_constraint,
            "objective_step": self._flags[bool(objective_step)],
            "eps": torch.tensor(eps_k, dtype=torch.float64),
        }

    def _update(self, grads: tuple[Tensor, ...], rate: str, k: int) -> None:
        """x <- x - eta_k * grad, eta = the group's ``rate`` ("lr", i.e. eta_f, or "eta_c") at iteration k."""
        step_schedule = self.hyper["step_schedule"]
        with torch.no_grad():
            start = 0
            for group in self.param_groups:
                n = len(group["params"])
                eta = _step_size(step_schedule, group[rate] * _schedule_factor(group) if rate == "eta_c"
                                 else group[rate], k)
                torch._foreach_add_(group["params"], grads[start:start + n], alpha=-eta)
                start += n

    def _reservoir(self, k: int) -> None:
        """Weighted reservoir of size one over eligible objective-step iterates x_k."""
        state, hyper = self.algorithm_state, self.hyper
        if k <= hyper["output_start"]:
            return
        weight = _step_size(hyper["step_schedule"], hyper["lr"], k)
        state["output_weight"] += weight
        u = torch.rand((), generator=self._generator, dtype=torch.float64).item()
        if u * state["output_weight"] < weight:  # P = weight / W (always for the first one)
            params = self.params
            kept = []
            for p in params:
                s = self.state[p]
                if "output" not in s:
                    s["output"] = torch.empty_like(p, memory_format=torch.preserve_format)
                kept.append(s["output"])
            with torch.no_grad():
                torch._foreach_copy_(kept, [p.detach() for p in params])
            state["output_iteration"] = k

    # --- Huang & Lin's output -----------------------------------------------------------------

    def output_parameters(self) -> list[Tensor]:
        """Copies of the random output x_tau, one tensor per parameter (in ``self.params`` order).

        Raises ``RuntimeError`` before the first eligible objective step (the output is then
        undefined: every iteration so far was a constraint step or in the burn-in).
        """
        if not self.has_output:
            raise RuntimeError(
                "no objective step has been taken yet (after output_start), so Huang & Lin's "
                "random output is undefined; the last iterate is the model's parameters")
        return [self.state[p]["output"].detach().clone() for p in self.params]

    def load_output_into(self, params: Iterable[Tensor] | None = None) -> None:
        """Copy the random output into ``params`` (default: this optimizer's parameters, i.e. the
        model). This overwrites the last iterate: save it first, or use :meth:`swapped_output`."""
        targets = self.params if params is None else list(params)
        outputs = self.output_parameters()
        if len(targets) != len(outputs) or any(t.shape != o.shape for t, o in zip(targets, outputs)):
            raise ValueError("params do not match the optimizer's parameters in number or shape")
        with torch.no_grad():
            torch._foreach_copy_(targets, outputs)

    @contextlib.contextmanager
    def swapped_output(self) -> Iterator[None]:
        """Inside the block the model holds the random output; the last iterate comes back after."""
        params = self.params
        last = [p.detach().clone() for p in params]
        self.load_output_into()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, last)
