"""The peer libraries on an hctrain problem, each through its own documented training loop.

Each class here trains a :class:`~hctrain.problem.StochasticProblem` the way that library's
documentation tells a user to, with ``step(problem)`` doing one iteration on one draw of the
problem's objective sampler (f and c from one forward pass, as the peers' loops do):

- :class:`TorchAdam`: the plain ``torch.optim.Adam`` loop (forward, loss, backward, step) that
  ignores the constraints -- the reference of every speed comparison in the book;
- :class:`HCTDual`: humancompatible-train's dual optimizers (``ALM``, ``PBM``, ``SSG``) with a
  ``torch.optim.Adam`` primal, through ``dual.forward_update(loss, c).backward()``;
- :class:`CooperLagrangian`: Cooper's Lagrangian (gradient descent-ascent: Adam on the primal,
  SGD on the multipliers, simultaneous updates) or its augmented Lagrangian (alternating
  dual-primal updates, a constant penalty coefficient).

The peers come with the optional ``peers`` extra (``pip install "hctrain[peers]"``):
:func:`available` says which are installed, and building one that is not raises an
``ImportError`` naming the package to install.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import Tensor

from .checks import check_number
from .problem import StochasticProblem

PACKAGES = {"humancompatible-train": "humancompatible.train", "cooper-optim": "cooper", "fairlearn": "fairlearn"}


def available() -> dict[str, bool]:
    """Which peer libraries are importable: ``{"humancompatible-train": bool, "cooper-optim": bool,
    "fairlearn": bool}``."""
    return {name: _spec(module) is not None for name, module in PACKAGES.items()}


def _spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


def _require(package: str) -> None:
    if not available()[package]:
        raise ImportError(f"{package} is not installed; install the peers extra: "
                          f'pip install "hctrain[peers]" (or pip install {package} torch==2.13.0)')


def _like(problem: StochasticProblem) -> Tensor:
    return problem.params[0]


class TorchAdam:
    """The loop a user writes without constraints: ``zero_grad``, forward, loss, ``backward``,
    ``torch.optim.Adam.step`` (PyTorch's defaults; the constraints are never computed)."""

    name = "torch Adam"

    def __init__(self, problem: StochasticProblem, lr: float = 1e-3):
        self.optimizer = torch.optim.Adam(problem.params, lr=check_number("lr", lr, low=0.0, low_open=True))

    def step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        batch = problem.sample_objective()
        self.optimizer.zero_grad()
        loss = problem.loss_fn(problem.forward(batch), batch)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}


class HCTDual:
    """humancompatible-train's ``method`` ("ALM", "PBM" or "SSG") with an Adam primal, in its
    documented loop::

        optimizer.zero_grad()
        dual.forward_update(loss, constraints).backward()
        optimizer.step()

    ``ALM``: ``lr`` (dual step, 0.1), ``penalty`` (rho, 1.0), inequality constraints
    (``is_ineq=True``). ``PBM``: its defaults, ``epoch_length`` steps per annealing epoch (100).
    ``SSG``: ``constraint_tol`` 0. (``PBM``'s ``epoch_length``: the problem's, a pass over the
    training rows, where it has one.) ``dual`` holds the humancompatible-train optimizer.
    """

    METHODS = ("ALM", "PBM", "SSG")

    def __init__(self, problem: StochasticProblem, method: str = "ALM", lr: float = 1e-3,
                 **dual: Any):
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        _require("humancompatible-train")
        from humancompatible.train import dual_optim

        like = _like(problem)
        if method == "ALM":
            dual = {"lr": 0.1, "penalty": 1.0, "is_ineq": True, **dual}
        elif method == "PBM":  # annealing epochs of one pass over the data, as hctrain's SPBM
            dual = {"epoch_length": getattr(problem, "epoch_length", None) or 100, **dual}
        else:
            dual = {"constraint_tol": 0.0, **dual}
        self.name = f"HCT {method}"
        self.dual = getattr(dual_optim, method)(m=problem.m, device=like.device, **dual)
        self.optimizer = torch.optim.Adam(problem.params, lr=check_number("lr", lr, low=0.0, low_open=True))

    def step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        self.optimizer.zero_grad()
        loss, c = problem.sample_objective_and_constraints()
        self.dual.forward_update(loss, c).backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "constraints": c.detach()}


class CooperLagrangian:
    """Cooper's Lagrangian formulation (``augmented=False``: simultaneous gradient
    descent-ascent, Adam(lr) on the primal and SGD(dual_lr, maximize=True) on the multipliers)
    or its augmented Lagrangian (``augmented=True``: a constant penalty coefficient ``penalty``,
    alternating dual-then-primal updates, as Cooper documents for that formulation). One
    ``roll`` per step."""

    def __init__(self, problem: StochasticProblem, augmented: bool = False, lr: float = 1e-3,
                 dual_lr: float = 0.1, penalty: float = 1.0):
        _require("cooper-optim")
        import cooper

        like = _like(problem)
        self.name = "Cooper AL" if augmented else "Cooper GDA"
        multiplier = cooper.multipliers.DenseMultiplier(num_constraints=problem.m, device=like.device,
                                                        dtype=like.dtype)
        if augmented:
            coefficient = cooper.penalty_coefficients.DensePenaltyCoefficient(
                init=torch.full((problem.m,), float(penalty), dtype=like.dtype, device=like.device))
            constraint = cooper.Constraint(cooper.ConstraintType.INEQUALITY,
                                           formulation_type=cooper.formulations.AugmentedLagrangian,
                                           multiplier=multiplier, penalty_coefficient=coefficient)
        else:
            constraint = cooper.Constraint(cooper.ConstraintType.INEQUALITY,
                                           formulation_type=cooper.formulations.Lagrangian,
                                           multiplier=multiplier)

        class Problem(cooper.ConstrainedMinimizationProblem):
            def __init__(self):
                super().__init__()
                self.constraint = constraint

            def compute_cmp_state(self):
                loss, c = problem.sample_objective_and_constraints()
                return cooper.CMPState(loss=loss, observed_constraints={
                    self.constraint: cooper.ConstraintState(violation=c)})

        self.cmp = Problem()
        primal = torch.optim.Adam(problem.params, lr=check_number("lr", lr, low=0.0, low_open=True))
        dual = torch.optim.SGD(self.cmp.dual_parameters(), lr=check_number("dual_lr", dual_lr, low=0.0),
                               maximize=True)
        kind = (cooper.optim.AlternatingDualPrimalOptimizer if augmented
                else cooper.optim.SimultaneousOptimizer)
        self.optimizer = kind(cmp=self.cmp, primal_optimizers=primal, dual_optimizers=dual)
        self.multiplier = multiplier

    def step(self, problem: StochasticProblem) -> dict[str, Tensor]:
        rollout = self.optimizer.roll()
        violation = next(iter(rollout.cmp_state.observed_constraints.values())).violation
        return {"loss": rollout.loss.detach(), "constraints": violation.detach()}


def build(name: str, problem: StochasticProblem, **hyper: Any):
    """A peer by its name in ``NAMES`` (``"torch Adam"``, ``"HCT ALM"``, ``"HCT PBM"``,
    ``"HCT SSG"``, ``"Cooper GDA"``, ``"Cooper AL"``), over ``problem``."""
    if name == "torch Adam":
        return TorchAdam(problem, **hyper)
    if name.startswith("HCT "):
        return HCTDual(problem, method=name[4:], **hyper)
    if name in ("Cooper GDA", "Cooper AL"):
        return CooperLagrangian(problem, augmented=name == "Cooper AL", **hyper)
    raise ValueError(f"unknown peer {name!r}; use one of {NAMES}")


NAMES = ("torch Adam", "HCT ALM", "HCT PBM", "HCT SSG", "Cooper GDA", "Cooper AL")
PACKAGE_OF = {"torch Adam": None, "HCT ALM": "humancompatible-train", "HCT PBM": "humancompatible-train",
              "HCT SSG": "humancompatible-train", "Cooper GDA": "cooper-optim", "Cooper AL": "cooper-optim"}


# --- fairlearn: reductions and post-processing on a FairnessTask's splits ------------------------

def _fitted_records(task, name: str, n_runs: int, seed: int, fit, predict) -> "pd.DataFrame":
    """Records in the runner's columns of ``n_runs`` fits: run r calls ``fit(seed + r)`` (timed,
    ``time_s``), then ``predict(model, split, seed + r) -> (probabilities or None, decisions or
    None)`` on every split of the task, evaluated by ``task.evaluate_predictions`` (``step`` 1)."""
    import time

    import pandas as pd

    from .runner import COLUMNS

    rows = []
    for r in range(n_runs):
        start = time.perf_counter()
        model = fit(seed + r)
        fit_s = time.perf_counter() - start
        for split in task.splits:
            probabilities, decisions = predict(model, split, seed + r)
            values = task.evaluate_predictions(split, probabilities=probabilities, decisions=decisions)
            rows += [(name, r, seed + r, 1, fit_s, s, metric, value) for (s, metric), value in values.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def _seeded(estimator, seed: int):
    from sklearn.base import clone

    estimator = clone(estimator)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    return estimator


def classifier_records(task, estimator, *, name: str | None = None, n_runs: int = 1,
                       seed: int = 0) -> "pd.DataFrame":
    """A scikit-learn classifier without constraints (``predict_proba``), fit on the task's
    ``"train"`` split: records as :func:`fairlearn_reduction`'s, the reference a constrained
    model's loss and accuracy are read against."""
    name = name or type(estimator).__name__
    train = task.split("train")

    def fit(run_seed: int):
        return _seeded(estimator, run_seed).fit(train.x.numpy(), train.y.numpy())

    def predict(model, split: str, run_seed: int):
        return torch.as_tensor(model.predict_proba(task.split(split).x.numpy())[:, 1]), None

    return _fitted_records(task, name, n_runs, seed, fit, predict)


def fairlearn_reduction(task, estimator, *, name: str | None = None, bound: float | None = None,
                        n_runs: int = 1, seed: int = 0, **options: Any) -> "pd.DataFrame":
    """fairlearn's ``ExponentiatedGradient`` (Agarwal et al., 2018) with
    ``DemographicParity(difference_bound=bound)`` -- ``|P(h = 1 | g) - P(h = 1)| <= bound``
    for every group, the book's constraint on decisions -- around a scikit-learn ``estimator``,
    fit on the task's ``"train"`` split (its inputs, labels and groups). Run r clones the
    estimator with ``random_state = seed + r`` (where it has one) and draws the randomized
    classifier's decisions with the same seed. Returns records in the runner's columns (one
    evaluation, ``step`` 1, ``time_s`` the fit's wall time) with the metrics of
    :meth:`hctrain.task.FairnessTask.evaluate_predictions` on every split: the probabilities
    are the randomized classifier's P(h = 1 | x)."""
    _require("fairlearn")
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient

    # trained as the torch methods are: at the task's training bound (bound - training_margin)
    bound = getattr(task, "training_bound", task.bound) if bound is None else check_number("bound", bound, low=0.0)
    name = name or f"fairlearn EG ({type(estimator).__name__})"
    train = task.split("train")

    def fit(run_seed: int):
        reduction = ExponentiatedGradient(_seeded(estimator, run_seed),
                                          constraints=DemographicParity(difference_bound=bound), **options)
        return reduction.fit(train.x.numpy(), train.y.numpy(), sensitive_features=train.group.numpy())

    def predict(reduction, split: str, run_seed: int):
        x = task.split(split).x.numpy()
        return (torch.as_tensor(reduction._pmf_predict(x)[:, 1]),
                torch.as_tensor(reduction.predict(x, random_state=run_seed)))

    return _fitted_records(task, name, n_runs, seed, fit, predict)


def fairlearn_thresholds(task, estimator, *, fit_on: str = "validation", name: str | None = None,
                         n_runs: int = 1, seed: int = 0) -> "pd.DataFrame":
    """fairlearn's ``ThresholdOptimizer`` (Hardt et al., 2016) with
    ``constraints="demographic_parity"``: ``estimator`` fit on ``"train"``, then per-group
    (randomized) thresholds on its scores chosen on the split ``fit_on`` to maximise accuracy
    at *equal* positive rates. The decisions use the group, at prediction time too. With
    ``fit_on="validation"`` it is a method; with ``fit_on="test"`` it is an optimistic limit
    (thresholds chosen on the rows they are scored on), not a result. Records as
    :func:`fairlearn_reduction`'s; a thresholded classifier has no probabilities, so its loss and
    ``c[...]`` are NaN."""
    _require("fairlearn")
    from fairlearn.postprocessing import ThresholdOptimizer

    if fit_on not in task.splits:
        raise ValueError(f"fit_on must be one of the task's splits {task.splits}, got {fit_on!r}")
    name = name or f"fairlearn thresholds ({type(estimator).__name__}, on {fit_on})"
    train, tune = task.split("train"), task.split(fit_on)

    def fit(run_seed: int):
        scorer = _seeded(estimator, run_seed).fit(train.x.numpy(), train.y.numpy())
        thresholds = ThresholdOptimizer(estimator=scorer, constraints="demographic_parity",
                                        objective="accuracy_score", prefit=True, predict_method="predict_proba")
        return thresholds.fit(tune.x.numpy(), tune.y.numpy(), sensitive_features=tune.group.numpy())

    def predict(thresholds, split: str, run_seed: int):
        rows = task.split(split)
        return None, torch.as_tensor(thresholds.predict(rows.x.numpy(), sensitive_features=rows.group.numpy(),
                                                        random_state=run_seed))

    return _fitted_records(task, name, n_runs, seed, fit, predict)
