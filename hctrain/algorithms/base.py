"""What every algorithm shares: PyTorch optimizer conventions plus ``step()``.

An algorithm is a ``torch.optim.Optimizer`` over the model's parameters. Its ``step`` draws from
a problem (:class:`~hctrain.problem.Problem`, or the book's
:class:`~hctrain.problem.StochasticProblem`) the samples its update needs; the problem is given
at construction (``GDA(model.parameters(), problem=problem)``, then ``step()``) or to each call
(``step(problem)``). One-sample methods (GDA, LinearizedALM, SPBM, and SSL-ALM with
``two_samples=False``) also take values computed in the caller's own loop,
``step(loss=f, constraints=c)``; the methods that need independent samples refuse that form,
naming the sample.

Conventions shared with ``torch.optim``: every parameter group carries ``lr``, the primal step
size (the paper's symbol -- tau, eta_f, gamma_0 -- is accepted as an alias in the constructor and
in parameter groups), so ``torch.optim.lr_scheduler`` works; after a step, each parameter's
``.grad`` holds the direction the primal update used (``x <- x - lr * grad`` for the
gradient methods, the Adam input for SPBM). State that belongs to no single parameter (duals,
slacks, counters, random streams) lives in ``self.state["algorithm"]`` so that ``state_dict()`` /
``load_state_dict()`` carry it.
"""
from __future__ import annotations

import inspect

import copy
import math
import struct
from typing import Any, Iterable

import torch
from torch import Tensor
from torch.optim import optimizer as _torch_optimizer

from ..checks import check_number
from ..problem import StochasticProblem, check_constraint_values, check_loss

ALGORITHM_STATE = "algorithm"


def _as_float32(value: float) -> float:
    """``value`` rounded to float32, as comparing it with a float32 tensor rounds it."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range: the tensor comparison sees inf
        return math.copysign(math.inf, value)


HOST_ROUNDING = {torch.float64: float, torch.float32: _as_float32}
"""dtype -> the rounding of a Python float that comparing it with a tensor of that dtype applies
(a decision taken on the host from ``tensor.item()`` is then the tensor comparison's)."""


def resolve_m(name: str, m: Any, problem: Any) -> Any:
    """m from the argument or from ``problem.m`` (they must agree when both are given)."""
    if problem is not None:
        if not callable(getattr(problem, "sample_objective", None)) or not hasattr(problem, "m"):
            raise TypeError(f"problem must be a hctrain.Problem (or StochasticProblem), got "
                            f"{type(problem).__name__}")
        if m is None:
            return problem.m
        if m != problem.m:
            raise ValueError(f"{name} was given m={m!r} but the problem has m={problem.m}; leave m out "
                             "when a problem is given")
    return m


def resolve_lr(alias: str, alias_value: Any, lr: Any, default: float) -> Any:
    """The primal step size from ``lr`` or the paper's name for it, whose default is ``default``.
    ``lr`` wins; giving both is an error unless they agree or the alias kept its default."""
    if lr is not None and alias_value != default and alias_value != lr:
        raise ValueError(f"lr and {alias} are the same hyperparameter (lr is {alias}); give one, got "
                         f"lr={lr!r} and {alias}={alias_value!r}")
    return alias_value if lr is None else lr


class ConstrainedOptimizer(torch.optim.Optimizer):
    """Base class: hyperparameters in ``defaults``, ``step()`` does one iteration.

    A subclass implements ``_step(problem)`` (draw the samples, update, return the step's
    information) and, for a one-sample method, ``_step_values(loss, constraints)`` (the same
    update on values the caller computed); ``lr_alias`` names the paper's symbol for ``lr``.
    """

    lr_alias: str | None = None
    values_refusal: str | None = None  # why step(loss=, constraints=) is refused (None: accepted)

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any], m: int | None = None,
                 problem: Any = None):
        super().__init__(params, defaults)
        if m is not None and (not isinstance(m, int) or m < 1):
            raise ValueError(f"m (the number of constraints) must be a positive integer, got {m!r}")
        self.m = m
        self.state[ALGORITHM_STATE] = {"step": 0}
        self.problem = problem
        self._checked_problem: Any = None
        if problem is not None:
            self.check_problem(problem)
            self._checked_problem = problem

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, with the paper's name of ``lr`` translated and the group's
        own hyperparameters checked first."""
        alias = self.lr_alias
        if isinstance(param_group, dict) and alias is not None and alias in param_group:
            param_group = dict(param_group)
            value = param_group.pop(alias)
            if "lr" in param_group and param_group["lr"] != value:
                raise ValueError(f"parameter group {len(self.param_groups)}: lr and {alias} are the same "
                                 f"hyperparameter; give one, got lr={param_group['lr']!r} and {alias}={value!r}")
            param_group["lr"] = value
        check_group_hyperparameters(self, param_group, len(self.param_groups))
        super().add_param_group(param_group)
        drop_frozen(self)

    @classmethod
    def from_problem(cls, problem: StochasticProblem, **hyper: Any) -> "ConstrainedOptimizer":
        """The algorithm over ``problem``'s parameters with its m constraints.

        An algorithm with its own random choices (a ``seed`` argument: SSw's random output,
        Stochastic Ghost's levels) is seeded with ``problem.seed`` unless ``seed`` is given, so
        that the seeded runs of ``runner.run`` do not all share seed 0. An algorithm that counts
        epochs (SPBM's annealing) takes ``problem.epoch_length`` unless ``epoch_length`` is given.
        """
        if ("seed" not in hyper and getattr(problem, "seed", None) is not None
                and "seed" in inspect.signature(cls.__init__).parameters):
            hyper["seed"] = int(problem.seed)
        if ("epoch_length" not in hyper and getattr(problem, "epoch_length", None) is not None
                and "epoch_length" in inspect.signature(cls.__init__).parameters):
            hyper["epoch_length"] = int(problem.epoch_length)  # SPBM's annealing counts epochs
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

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state, tagged with the algorithm's name (see :func:`check_state_dict`)."""
        return tag_state_dict(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` of the same algorithm, over parameters of the
        same shapes and the same m; anything else is refused, naming what differs, before
        anything changes."""
        check_state_dict(self, state_dict)
        # Deep copy so that a loaded optimizer never shares tensors with the dict it came from.
        super().load_state_dict(copy.deepcopy(state_dict))

    def check_problem(self, problem: StochasticProblem) -> None:
        """m agrees, and the optimizer's parameters are (some of) the problem model's."""
        name = type(self).__name__
        if not callable(getattr(problem, "sample_objective", None)):
            if callable(problem):
                raise TypeError(f"{name}.step takes no closure: its update needs f and c separately. Give "
                                f"it a problem ({name}(params, problem=hctrain.Problem(...)), then step())"
                                + ("" if self.values_refusal else ", or the values: step(loss=f, constraints=c)"))
            raise TypeError(f"{name}.step needs a hctrain.Problem (or StochasticProblem), got "
                            f"{type(problem).__name__}")
        if self.m is not None and problem.m != self.m:
            raise ValueError(
                f"{name} was built for m={self.m} constraints but the problem has "
                f"m={problem.m}; build it with m=problem.m (or {name}.from_problem(problem))"
            )
        model_params = {id(p) for p in getattr(problem, "params", None) or ()}
        if model_params and not any(id(p) in model_params for p in self.params):
            raise ValueError(
                f"{name} was built over parameters that are not the problem's model's, so a step would "
                f"train nothing the problem evaluates: build it over that model's parameters, "
                f"{name}(problem.model.parameters(), problem=problem) (a model copied or rebuilt after "
                "the optimizer has new parameters)")

    def step(self, problem: Any = None, *, loss: Tensor | None = None,  # type: ignore[override]
             constraints: Tensor | None = None) -> dict[str, Tensor]:
        """One iteration: on samples the algorithm draws from ``problem`` (default: the problem
        given at construction), or, for a one-sample method, on ``loss`` and ``constraints``
        computed by the caller on its own batch (with their graphs; one backward pass inside).

        torch's step hooks (``register_step_pre_hook`` / ``register_step_post_hook``, per
        optimizer and global) run as for any ``torch.optim`` optimizer, and under a profiler the
        step is recorded as ``Optimizer.step#<name>.step``. torch would wrap ``step`` in that
        machinery unconditionally; here it is entered only when a hook is registered or a
        profiler runs, because its ``record_function`` costs a CPU step tens of microseconds
        even when nothing records (``benchmarks/README.md``)."""
        if type(self).step is ConstrainedOptimizer.step and (
                self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks
                or torch.autograd._profiler_enabled()):
            return _HOOKED_STEP(self, problem, loss=loss, constraints=constraints)
        # (a subclass's own step is wrapped by torch as usual, and calls this one inside)
        return self._unhooked_step(problem, loss=loss, constraints=constraints)

    step.hooked = True  # type: ignore[attr-defined]  # torch.optim.Optimizer: do not wrap it again

    def _unhooked_step(self, problem: Any = None, *, loss: Tensor | None = None,
                       constraints: Tensor | None = None) -> dict[str, Tensor]:
        name = type(self).__name__
        if loss is not None or constraints is not None:
            if problem is not None:
                raise TypeError(f"{name}.step: give a problem or loss=/constraints=, not both")
            if self.values_refusal is not None:
                raise ValueError(self.values_refusal)
            if loss is None or constraints is None:
                raise TypeError(f"{name}.step(loss=..., constraints=...) needs both the loss and the "
                                "constraint values of this step")
            loss = check_loss(loss, "loss")
            constraints = check_constraint_values(constraints, self.m, "constraints")
            return self._step_values(loss, constraints)
        if problem is None:
            problem = self.problem
            if problem is None:
                raise TypeError(
                    f"{name}.step() needs a problem: build the optimizer with {name}(params, "
                    f"problem=problem) and call step(), or call step(problem)"
                    + ("" if self.values_refusal else "; or give this step's values, step(loss=f, constraints=c)"))
        if problem is not self._checked_problem:
            self.check_problem(problem)
            self._checked_problem = problem
        return self._step(problem)

    def _step(self, problem: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def _step_values(self, loss: Tensor, constraints: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def _set_grads(self, grads: Iterable[Tensor]) -> None:
        """``.grad`` of each parameter: the direction the primal update used (no copy)."""
        for p, g in zip(self.params, grads):
            p.grad = g


_HOOKED_STEP = torch.optim.Optimizer.profile_hook_step(ConstrainedOptimizer._unhooked_step)
"""``step`` inside torch's own wrapper: record_function, then the pre hooks, the step, the post hooks."""


# --- validation: clear errors, raised before any state changes -------------------------------

def check_positive(name: str, value: float) -> float:
    return check_number(name, value, low=0.0, low_open=True)


def check_nonnegative(name: str, value: float) -> float:
    return check_number(name, value, low=0.0)


def check_interval(name: str, value: float, low: float, high: float, *,
                   low_open: bool = False, high_open: bool = False) -> float:
    return check_number(name, value, low=low, high=high, low_open=low_open, high_open=high_open)


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
            values = [constraints[i].item() for i in bad[:10]]
            why = ("a mean or rate over the rows of a batch that holds none of them (an empty group, a "
                   "group without positive labels) is 0/0: draw larger batches, or a fixed number of rows "
                   "per group" if any(v != v for v in values) else
                   "the model's outputs overflowed: lower the step sizes, or check the data")
            raise ValueError(f"constraint values are not finite at indices {bad[:10]}: {values}; {why}")
    if loss is not None and not bool(torch.isfinite(loss).all()):
        raise ValueError(f"the objective is not finite ({loss.item()}); check the data and the step sizes")




def check_finite(m: int | None, loss: Tensor | None = None, *constraints: Tensor) -> None:
    """:func:`check_values` with one host synchronisation: the shapes are checked in Python, and
    finiteness through one sum (f + sum of every c is finite whenever each is; only when it is
    not does :func:`check_values` look at the values, and raise naming them). A sum that
    overflows while every value is finite raises nothing, as :func:`check_values` would not.
    Cheaper than ``torch.isfinite(...).all()`` on every tensor, which on the CPU costs more than
    the rest of a small step's bookkeeping. On the CPU the sums are added in Python (reading a
    0-dim CPU tensor costs less than one more tensor operation); elsewhere as tensors, so that
    one host synchronisation reads them all."""
    sums = []
    for c in constraints:
        if m is not None and (c.dim() != 1 or c.numel() != m):
            check_values(m, None, c)  # raises, naming the shape
        sums.append(c.detach().sum())
    if loss is not None:
        sums.append(loss.detach())
    if not sums:
        return
    if sums[0].device.type == "cpu":
        total = sum(s.item() for s in sums)
    else:
        total = float(sum(sums[1:], sums[0]))
    if not math.isfinite(total):
        for c in constraints:
            check_values(m, None, c)
        check_values(m, loss)


def check_adam_hyperparameters(lr: Any, betas: Any, eps: Any) -> tuple[float, tuple[float, float], float]:
    """Adam's lr > 0, betas a pair in [0, 1), eps > 0 (eps = 0 divides by zero where a
    gradient coordinate is 0; lr = 0 never moves)."""
    lr = check_number("lr", lr, low=0.0, low_open=True, fix="; e.g. lr=1e-3")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), e.g. (0.9, 0.999), got {betas!r}")
    betas = (check_number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
             check_number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True))
    eps = check_number("eps", eps, low=0.0, low_open=True, fix="; e.g. eps=1e-8")
    return lr, betas, eps


# --- state dicts: refuse a state from another algorithm, model or m ---------------------------

STATE_TAG = "hctrain_algorithm"
"""Key of ``state_dict()`` naming the algorithm that saved it (torch ignores extra keys)."""


STATE_M = "hctrain_m"
"""Key of ``state_dict()`` holding the number of constraints m the state was saved for."""


def tag_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict[STATE_TAG] = type(optimizer).__name__
    state_dict[STATE_M] = getattr(optimizer, "m", None)
    return state_dict


def _shape(value: Any) -> Any:
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        return [tuple(v.shape) for v in value]
    return None


def check_state_dict(optimizer: torch.optim.Optimizer, state_dict: Any) -> None:
    """Raise ValueError, naming the difference, unless ``state_dict`` was saved by the same
    algorithm over parameters of the same shapes (and, for constrained methods, the same m)."""
    name = type(optimizer).__name__
    if not (isinstance(state_dict, dict) and "state" in state_dict and "param_groups" in state_dict):
        got = f"a dict with keys {sorted(map(str, state_dict))}" if isinstance(state_dict, dict) else type(state_dict).__name__
        raise ValueError(f"{name}.load_state_dict needs what {name}.state_dict() returns (keys 'state' "
                         f"and 'param_groups'); got {got}")
    tag = state_dict.get(STATE_TAG)
    if tag is not None and tag != name:
        raise ValueError(f"this state was saved by {tag}, not {name}: resume it with a {tag}, or start "
                         f"the {name} afresh")
    m, saved_m = getattr(optimizer, "m", None), state_dict.get(STATE_M)
    if saved_m is not None and m is not None and saved_m != m:
        raise ValueError(f"the state is for m={saved_m} constraints, this {name} has m={m}: resume it "
                         "on the problem it was saved for")
    saved_groups, groups = state_dict["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise ValueError(f"the state has {len(saved_groups)} parameter groups, this {name} has "
                         f"{len(groups)}: it was saved for another model or another grouping")
    by_id: dict[Any, tuple[int, Tensor]] = {}
    position = 0
    for i, (saved, group) in enumerate(zip(saved_groups, groups)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"parameter group {i}: the state holds {len(saved['params'])} parameters, "
                             f"this {name} has {len(group['params'])}: it was saved for another model")
        saved_keys, keys = set(saved) - {"params"}, set(group) - {"params"}
        if saved_keys != keys:
            raise ValueError(
                f"parameter group {i}: the state's hyperparameters are not {name}'s (missing: "
                f"{sorted(keys - saved_keys)}, not {name}'s: {sorted(saved_keys - keys)}): it was "
                "saved by another algorithm")
        for saved_id, p in zip(saved["params"], group["params"]):
            by_id[saved_id] = (position, p)
            position += 1
    for key, entry in state_dict["state"].items():
        if key == ALGORITHM_STATE:
            continue
        if key not in by_id:
            raise ValueError(f"the state holds an entry for parameter {key!r}, which none of its "
                             "parameter groups lists: it is not a state_dict() of this optimizer")
        position, p = by_id[key]
        for field, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"parameter {position} has shape {tuple(p.shape)}, but the state's "
                                 f"{field!r} for it has shape {tuple(value.shape)}: the state was saved "
                                 "for another model")
    current = optimizer.state.get(ALGORITHM_STATE)
    if current is None:
        return
    saved_state = state_dict["state"].get(ALGORITHM_STATE)
    if not isinstance(saved_state, dict):
        raise ValueError(f"the state has no {ALGORITHM_STATE!r} entry (steps, duals, ...): it was not "
                         f"saved by {name}")
    missing = sorted(set(current) - set(saved_state))
    if missing:
        raise ValueError(f"the state lacks {name}'s {missing}: it was saved by another algorithm")
    for field, value in current.items():
        mine, theirs = _shape(value), _shape(saved_state[field])
        if mine is None or mine == theirs:
            continue
        which = ""
        if (isinstance(mine, tuple) and isinstance(theirs, tuple) and len(mine) == len(theirs) == 1
                and m is not None and mine[0] == m):
            which = f": the state is for m={theirs[0]} constraints, this {name} has m={m}"
        elif isinstance(mine, list):
            which = ": the state was saved for another model"
        raise ValueError(f"the state's {field!r} has shape {theirs}, this {name}'s has {mine}{which}")


def drop_frozen(optimizer: torch.optim.Optimizer) -> None:
    """Leave the parameters that do not require grad (a frozen layer) out of the group just
    added: the algorithms differentiate their parameters, which a frozen one cannot be (torch's
    optimizers skip them too, as their .grad stays None)."""
    group = optimizer.param_groups[-1]
    trainable = [p for p in group["params"] if p.requires_grad]
    if not trainable:
        optimizer.param_groups.pop()
        raise ValueError(f"parameter group {len(optimizer.param_groups)} has no parameter that requires "
                         "grad (all frozen): leave it out, or unfreeze them (requires_grad_(True))")
    group["params"] = trainable


def check_group_hyperparameters(optimizer: torch.optim.Optimizer, group: Any, index: int) -> None:
    """A parameter group's own values of numeric hyperparameters are finite numbers >= 0 (pairs
    such as Adam's betas: pairs of them); each algorithm checks its own ranges on top of this."""
    if not isinstance(group, dict):
        return  # torch's own error for a non-dict group follows
    alias = getattr(optimizer, "lr_alias", None)
    for key, value in group.items():
        default = optimizer.defaults.get(key)
        if key == "params" or default is None or isinstance(default, (bool, str)):
            continue
        where = f"parameter group {index}: {key}" + (f" ({alias})" if key == "lr" and alias else "")
        if isinstance(default, (int, float)):
            check_number(where, value, low=0.0)
        elif isinstance(default, tuple) and all(isinstance(d, (int, float)) for d in default):
            if not (isinstance(value, (tuple, list)) and len(value) == len(default)):
                raise ValueError(f"{where} must be a tuple of {len(default)} numbers like {default}, got {value!r}")
            for i, v in enumerate(value):
                check_number(f"{where}[{i}]", v, low=0.0)
