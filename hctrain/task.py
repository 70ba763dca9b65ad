"""Tasks: what :func:`hctrain.runner.run` trains and evaluates.

A *task* is anything with the two methods of :class:`Task`: ``problem(seed)`` builds a fresh
problem (a new model initialised from ``seed``, data sources seeded from it) and
``evaluate(model)`` returns ``{(split, metric): value}`` on named splits (``"train"``,
``"validation"``, ``"test"``, ...). :class:`FairnessTask` is the book's; :class:`ProblemTask`
turns any :class:`~hctrain.problem.Problem` factory and a few evaluation sets into a task.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from fairret.statistic import LinearFractionalStatistic, PositiveRate
from torch import Tensor, nn

from .checks import check_integer, check_number, check_seed
from .data import BalancedGroupSampler, FairnessData, held_out_rows
from .fairness import (ConstraintKind, GroupFairnessConstraints, StackedFairnessConstraints, needs_labels,
                       statistic_name)
from .models import paper_mlp
from .problem import Batch, StochasticProblem, TensorSampler, check_constraint_values

SPLITS = ("train", "test")


@runtime_checkable
class Task(Protocol):
    """The protocol :func:`hctrain.runner.run` needs.

    ``problem(seed)`` returns a fresh problem: a new model initialised from ``seed`` and data
    sources seeded from it, so that run r with seed ``seed + r`` is reproducible. The runner asks
    for ``problem(seed, separate_constraint_sampler=True)`` only when it is called with
    ``separate_constraint_sampler=True``.

    ``evaluate(model)`` returns ``{(split, metric): value}``: for each named split (the data the
    task holds out: ``"train"``, ``"validation"``, ``"test"``) the loss under ``"loss"`` and each
    constraint value under ``constraint_metric(name)`` (``"c[<name>]"``), plus any other metric.
    It is called with the clock paused; it must not change the model.
    """

    def problem(self, seed: int) -> Any: ...

    def evaluate(self, model: nn.Module) -> dict[tuple[str, str], float]: ...


class ProblemTask:
    """A task from a problem factory and evaluation sets.

    ``build(seed)`` returns a fresh :class:`~hctrain.problem.Problem` (build the model after
    ``torch.manual_seed(seed)`` and give the Problem ``seed=seed``); ``splits`` maps split names
    to full evaluation batches, in the form the problem's ``loss(model, batch)`` and
    ``constraints(model, batch)`` take (e.g. ``{"train": (x, y), "validation": ..., "test": ...}``);
    ``metrics`` adds named functions ``metric(model, batch) -> float``. ``evaluate(model)`` reports
    the loss, every constraint value (under ``c[<name>]``) and every metric on every split, in
    eval mode and without gradients.
    """

    def __init__(self, build: Callable[[int], Any], splits: Mapping[str, Any],
                 metrics: Mapping[str, Callable[[nn.Module, Any], float]] | None = None):
        if not callable(build):
            raise TypeError(f"build must be a function seed -> hctrain.Problem, got {build!r}")
        if not isinstance(splits, Mapping) or not splits or not all(isinstance(k, str) for k in splits):
            raise TypeError("splits must be a non-empty dict of split names (e.g. 'train', 'validation', "
                            f"'test') to evaluation batches, got {splits!r}")
        self.build = build
        self.splits = dict(splits)
        self.metrics = dict(metrics or {})
        self._template = build(0)  # checks the factory once, and names the constraints
        self.m = self._template.m
        self.constraint_names = list(self._template.constraint_names)

    def problem(self, seed: int = 0, separate_constraint_sampler: bool = False) -> Any:
        if separate_constraint_sampler:
            raise ValueError("a ProblemTask's problems take their sources from build(seed); give the "
                             "Problem constraint_data= there instead of separate_constraint_sampler=True")
        problem = self.build(seed)
        if not callable(getattr(problem, "sample_objective", None)):
            raise TypeError(f"build(seed) must return a hctrain.Problem, got {type(problem).__name__}")
        problem.seed = seed
        return problem

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[tuple[str, str], float]:
        problem = self._template
        was_training = model.training
        model.eval()
        out: dict[tuple[str, str], float] = {}
        try:
            for split, batch in self.splits.items():
                out[(split, "loss")] = float(problem.loss_fn(model, batch))
                values = check_constraint_values(problem.constraint_fn(model, batch), self.m,
                                                 "constraints(model, batch)").tolist()
                for name, value in zip(self.constraint_names, values):
                    out[(split, constraint_metric(name))] = value
                for metric, fn in self.metrics.items():
                    out[(split, metric)] = float(fn(model, batch))
        finally:
            model.train(was_training)
        return out


class FairnessTask:
    """Binary classification with one constraint per group (or pair of groups).

    ``problem(seed)`` builds a fresh :class:`StochasticProblem` (new model initialised from
    ``seed``, balanced batches of ``batch_per_group`` rows per group); ``evaluate(model)``
    computes loss, accuracy and every constraint on the full train and test sets.

    ``statistic`` is a fairret linear-fractional statistic, or a list of them, whose group values
    are constrained: ``PositiveRate()`` (the default: independence, demographic parity),
    ``TruePositiveRate()`` (equal opportunity), ``[TruePositiveRate(), FalsePositiveRate()]``
    (equalized odds, m = 2G), ``PositivePredictiveValue()``, ``Accuracy()``. Statistics that
    take labels get the batch's labels. Each is evaluated on the training set when the task is
    built, so that a statistic undefined for some group (a group without positive labels, for
    the true positive rate) is an error now, naming the group, not in the middle of a run.

    ``estimate`` says what a training batch's loss and constraints estimate.
    ``"population"`` (the default): the groups' batch means weighted by their shares of the
    training rows (:class:`~hctrain.fairness.GroupFairnessConstraints` ``population_shares``),
    so that on a balanced batch the loss and the constraints estimate the population's, the
    quantities :meth:`evaluate` computes on full splits and the problem states.
    ``constraint_on="decisions"`` gives the algorithms proxy constraints (Cotter et al., 2019):
    the constraint values are the statistic's on the decisions ``logit > 0`` (so duals, penalties
    and switching tests act on what a deployed model would do), their gradient the differentiable
    surrogate's on the probabilities (a straight-through value, ``c_soft + (c_hard - c_soft)``
    detached). ``decision_gaps=True`` adds the decisions' constraint values ``d[...]`` to every
    evaluation, next to the probabilities' ``c[...]``; ``certify_alpha`` (e.g. 0.05) adds
    ``gap UCB``, the largest simultaneous 1 - alpha upper confidence bound on the decisions'
    positive-rate gaps (:mod:`hctrain.certificate`). ``validation_size`` holds out that share of
    each group's training rows as a ``"validation"`` split for model selection.
    ``training_margin`` (delta >= 0) trains against ``bound - delta`` while every evaluation
    still reports against ``bound``: the model aims inside the bound by delta, which leaves room
    for the difference between the rows it is fit and selected on and new rows (a gap measured
    on a few hundred rows is noisy by several hundredths). Fix delta before the test set is read.

    ``"batch"`` (the paper's protocol): the batch's own mean loss and overall statistic; on a
    balanced batch (the same number of rows per group) that weights every group equally, so the
    overall rate it constrains against is the unweighted mean of the group rates, not the
    population's (with the labels as predictions on Virginia, two of the five signed gaps
    change sign).
    """

    def __init__(
        self,
        data: FairnessData,
        bound: float = 0.05,
        constraint: ConstraintKind = "one_vs_overall",
        batch_per_group: int = 32,
        model_fn: Callable[[int], nn.Module] = paper_mlp,
        statistic: LinearFractionalStatistic | Sequence[LinearFractionalStatistic] | None = None,
        validation_size: float = 0.0,
        validation_seed: int = 0,
        estimate: str = "population",
        constraint_on: str = "probabilities",
        decision_gaps: bool = False,
        certify_alpha: float | None = None,
        training_margin: float = 0.0,
    ):
        if not isinstance(data, FairnessData):
            raise TypeError(f"data must be a FairnessData (from hctrain.data.load_acsincome or "
                            f"load_dutch_census), got {type(data).__name__}")
        batch_per_group = check_integer("batch_per_group", batch_per_group, low=1, fix="; e.g. 32")
        if not callable(model_fn):
            raise TypeError(f"model_fn must be a callable n_features -> torch.nn.Module, got {model_fn!r}")
        statistics = _check_statistics(statistic)
        validation_size = check_number("validation_size", validation_size, low=0.0, high=1.0, high_open=True,
                                       fix="; e.g. 0.2 (a share of the training rows), or 0 for none")
        self.data = data
        self.validation_size = validation_size
        self._rows = _splits(data, validation_size, check_seed("validation_seed", validation_seed))
        self.splits = tuple(self._rows)
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
        self.estimate = estimate
        if constraint_on not in CONSTRAINT_ON:
            raise ValueError(f"constraint_on must be one of {CONSTRAINT_ON} (what the constraint values "
                             f"the algorithms see are rates of: predicted probabilities, or decisions "
                             f"logit > 0 with the probabilities' gradient), got {constraint_on!r}")
        self.constraint_on = constraint_on
        if not isinstance(decision_gaps, bool):
            raise ValueError(f"decision_gaps must be True or False, got {decision_gaps!r}")
        self.decision_gaps = decision_gaps
        if certify_alpha is not None:
            certify_alpha = check_number("certify_alpha", certify_alpha, low=0.0, high=1.0, low_open=True,
                                         high_open=True, fix="; e.g. 0.05 (95% bounds), or None for none")
            if (constraint not in ("one_vs_overall", "signed_one_vs_overall") or len(statistics) != 1
                    or not isinstance(statistics[0], PositiveRate)):
                raise ValueError("certify_alpha bounds positive-rate gaps |PR_g - PR| (hctrain.certificate); "
                                 "it needs constraint='one_vs_overall' or 'signed_one_vs_overall' and the "
                                 "PositiveRate statistic")
        self.certify_alpha = certify_alpha
        counts = torch.bincount(self._rows["train"].group, minlength=data.n_groups).double()
        self.population_shares = counts / counts.sum()
        shares = self.population_shares if estimate == "population" else None
        bound = check_number("bound", bound, low=0.0, fix="; e.g. bound=0.05")
        training_margin = check_number("training_margin", training_margin, low=0.0, high=bound,
                                       high_open=bound > 0,
                                       fix=f"; a number in [0, bound={bound:g}), e.g. 0.02, or 0 to train at the bound")
        self.training_margin = training_margin
        # what the algorithms see: the bound less the training margin
        self.constraints = _constraints(data.group_names, bound - training_margin, constraint, statistics, shares)
        # evaluation on full splits: the split's own statistics, whatever the training estimate,
        # against the bound itself (so c[...] <= 0 in the records means within the bound)
        self._full_constraints = (self.constraints if shares is None and training_margin == 0 else
                                  _constraints(data.group_names, bound, constraint, statistics, None))
        self.statistics = statistics
        self._labels = any(needs_labels(s) for s in statistics)
        self._check_on_training_data()
        self.batch_per_group = batch_per_group
        self.model_fn = model_fn
        # Fails early, naming the group, when a group is smaller than a batch's share of it.
        BalancedGroupSampler(self._rows["train"].group, batch_per_group, seed=0, group_names=data.group_names)

    @property
    def m(self) -> int:
        return self.constraints.m

    @property
    def bound(self) -> float:
        """The bound the evaluations report against (``c[...]``, ``d[...]`` are gaps minus it)."""
        return self._full_constraints.bound

    @property
    def training_bound(self) -> float:
        """The bound the algorithms train against: ``bound - training_margin``."""
        return self.constraints.bound

    @property
    def constraint_names(self) -> list[str]:
        return self.constraints.names

    def sens(self, group: Tensor) -> Tensor:
        """One-hot group membership, the form fairret's statistics take. (The constraints also
        take the integer codes themselves, which is what :meth:`constraint_values` passes.)"""
        return F.one_hot(group, self.data.n_groups).to(torch.float32)

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        if self.estimate == "batch":
            return F.binary_cross_entropy_with_logits(logits, batch.y)
        # sum_g pi_g mean_{i in g} l_i: the population's mean loss, estimated from any batch
        per_row = F.binary_cross_entropy_with_logits(logits, batch.y, reduction="none")
        G = self.data.n_groups
        sums = per_row.new_zeros(G).index_add_(0, batch.group, per_row)
        sizes = torch.bincount(batch.group, minlength=G).to(per_row.dtype)
        return (self.population_shares.to(per_row) * sums / sizes).sum()

    def constraint_values(self, logits: Tensor, batch: Batch) -> Tensor:
        c = self._soft_constraint_values(logits, batch)
        if self.constraint_on == "probabilities":
            return c
        # proxy constraints (Cotter et al., 2019): the value is the decisions' (what the duals and
        # the switching test read), the gradient the probabilities' (what the primal step needs)
        decisions = (logits.detach() > 0).to(logits.dtype)
        args = (batch.y,) if self._labels else ()
        hard = self.constraints(decisions, batch.group, *args)
        # a positive rate is never 0/0 on a batch that holds every group: the host sync (as in
        # the soft path) only for statistics whose denominator depends on labels or decisions
        if self._labels and not bool(torch.isfinite(hard).all()):  # e.g. precision, no predicted positive
            bad = [n for n, v in zip(self.constraint_names, hard.tolist()) if v != v]
            raise ValueError(f"the decision constraints {bad[:6]} are 0/0 on this batch: no row of the "
                             "group in the statistic's denominator among the decisions logit > 0; draw "
                             f"more rows per group (batch_per_group={self.batch_per_group}) or constrain "
                             "the probabilities (constraint_on='probabilities')")
        return c + (hard - c).detach()

    def _soft_constraint_values(self, logits: Tensor, batch: Batch) -> Tensor:
        # integer codes, not self.sens(...): the group sums are then an index_add_, no one-hot
        if not self._labels:
            return self.constraints.from_logits(logits, batch.group)
        c = self.constraints.from_logits(logits, batch.group, batch.y)
        if not bool(torch.isfinite(c.detach()).all()):  # one host sync, for label statistics only
            bad = [n for n, v in zip(self.constraint_names, c.detach().tolist()) if v != v]
            raise ValueError(
                f"the constraints {bad[:6]} are NaN on this batch: a group's rate is 0/0 when none of its "
                f"{len(batch)} rows in the batch is in the statistic's denominator (for the true positive "
                "rate: no row with label 1; false positive rate: no label 0; positive predictive value: "
                f"no predicted positive); draw more rows per group: batch_per_group={self.batch_per_group} "
                "is too small for this statistic")
        return c

    def _check_on_training_data(self) -> None:
        """Every statistic takes its arguments and is defined for every group on the training set."""
        d, train = self.data, self._rows["train"]
        probs = torch.full_like(train.y, 0.5)
        for statistic in self.statistics:
            part = GroupFairnessConstraints(d.group_names, 0.0, "one_vs_overall", statistic)
            args = (train.y,) if needs_labels(statistic) else ()
            try:
                stats, _ = part.group_statistics(probs, train.group, *args)
            except Exception as error:  # noqa: BLE001 - re-raised with the statistic named
                raise ValueError(f"the statistic {type(statistic).__name__} could not be evaluated on the "
                                 f"training data ({type(error).__name__}: {error}); FairnessTask passes "
                                 "the labels to statistics whose coefficients take them") from error
            undefined = [n for n, v in zip(d.group_names, stats.tolist()) if v != v]
            if undefined:
                raise ValueError(f"{statistic_name(statistic)} is undefined (0/0) for the groups {undefined} "
                                 "on the training data: they have no row in its denominator (e.g. no "
                                 "positive label for the true positive rate); drop them or choose another "
                                 "statistic")

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
        d, train = self.data, self._rows["train"]

        def sampler(stream: int) -> TensorSampler:
            index = BalancedGroupSampler(train.group, self.batch_per_group, seed=seed * 1000 + stream,
                                         group_names=d.group_names)
            return TensorSampler(train.x, train.y, train.group, index)

        problem = StochasticProblem(
            model, self.loss, self.constraint_values, self.m,
            objective_sampler=sampler(0),
            constraint_sampler=sampler(1) if separate_constraint_sampler else None,
            constraint_names=self.constraint_names,
            n_groups=self.data.n_groups,
            # a pass over the training rows, in balanced batches
            epoch_length=-(-len(train) // (self.batch_per_group * d.n_groups)),
        )
        problem.seed = seed
        return problem

    def split(self, name: str) -> Batch:
        """The rows of split ``name`` (``"train"``, ``"validation"`` when ``validation_size`` > 0,
        ``"test"``); training batches are drawn from ``"train"`` only."""
        if name not in self._rows:
            raise ValueError(f"unknown split {name!r}; use one of {self.splits}")
        return self._rows[name]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[tuple[str, str], float]:
        """Loss, accuracy and each constraint value c_i on every split (:meth:`evaluate_predictions`
        of the model's logits)."""
        was_training = model.training
        model.eval()
        out: dict[tuple[str, str], float] = {}
        try:
            for split in self.splits:
                logits = model(self.split(split).x).squeeze(-1)
                out.update(self.evaluate_predictions(split, logits=logits))
        finally:
            model.train(was_training)
        return out

    @torch.no_grad()
    def evaluate_predictions(self, split: str, logits: Tensor | None = None, *,
                             probabilities: Tensor | None = None,
                             decisions: Tensor | None = None) -> dict[tuple[str, str], float]:
        """The metrics of :meth:`evaluate` for predictions on the rows of ``split`` made by any
        model (a scikit-learn or fairlearn classifier, say): ``logits``, or ``probabilities``
        P(y = 1 | x), and the ``decisions`` (0/1; default ``probabilities > 0.5``, which is
        ``logits > 0``). Without probabilities (a model that only decides) the loss and the
        ``c[...]`` values are NaN. Returns ``{(split, metric): value}``: ``loss`` (binary
        cross-entropy), ``accuracy``, ``c[<name>]`` on the probabilities and, with
        ``decision_gaps``, ``d[<name>]`` on the decisions; with ``certify_alpha``, ``gap UCB``: the
        largest of the groups' simultaneous upper confidence bounds on the decisions' gaps
        (:func:`hctrain.certificate.gap_upper_bounds`, Clopper-Pearson)."""
        batch = self.split(split)
        n = len(batch.y)
        if logits is not None and probabilities is not None:
            raise ValueError("give logits or probabilities, not both")
        if logits is not None:
            logits = _rows_tensor("logits", logits, n).to(batch.y.dtype)
            probabilities = torch.sigmoid(logits)
        elif probabilities is not None:
            probabilities = _rows_tensor("probabilities", probabilities, n).to(batch.y.dtype)
            if bool(((probabilities < 0) | (probabilities > 1)).any()):
                raise ValueError("probabilities must lie in [0, 1] (P(y = 1 | x)); for scores give logits=")
        if decisions is None:
            if probabilities is None:
                raise ValueError("give logits, probabilities or decisions for the rows of the split")
            decisions = (logits > 0) if logits is not None else (probabilities > 0.5)
        decisions = _rows_tensor("decisions", decisions, n).to(batch.y.dtype)
        if not bool(((decisions == 0) | (decisions == 1)).all()):
            raise ValueError("decisions must be 0 or 1 (predicted labels)")
        args = (batch.y,) if self._labels else ()
        out: dict[tuple[str, str], float] = {}
        if logits is not None:
            out[(split, "loss")] = float(F.binary_cross_entropy_with_logits(logits, batch.y))
        elif probabilities is not None:
            out[(split, "loss")] = float(F.binary_cross_entropy(probabilities.clamp(1e-7, 1 - 1e-7), batch.y))
        else:
            out[(split, "loss")] = float("nan")
        out[(split, "accuracy")] = float((decisions == batch.y).to(batch.y.dtype).mean())
        if logits is not None:
            values = self._full_constraints.from_logits(logits, batch.group, *args).tolist()
        elif probabilities is not None:
            values = self._full_constraints(probabilities, batch.group, *args).tolist()
        else:
            values = [float("nan")] * self.m
        for name, value in zip(self.constraint_names, values):
            out[(split, constraint_metric(name))] = value
        if self.decision_gaps:  # the same constraints on the decisions
            hard = self._full_constraints(decisions, batch.group, *args)
            for name, value in zip(self.constraint_names, hard.tolist()):
                out[(split, decision_metric(name))] = value
        if self.certify_alpha is not None:
            from .certificate import gap_upper_bounds

            table = gap_upper_bounds(decisions, batch.group, self.data.group_names, alpha=self.certify_alpha)
            out[(split, "gap UCB")] = float(table["upper bound"].max())
        return out


def decision_metric(name: str) -> str:
    """The metric name of constraint ``name`` evaluated on decisions: ``d[<name>]``."""
    return f"d[{name}]"


def _rows_tensor(what: str, values, n: int) -> Tensor:
    t = torch.as_tensor(values).detach().cpu().reshape(-1) if not isinstance(values, Tensor) else values.detach().reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{what} must have one value per row of the split ({n}), got {t.numel()}")
    return t


ESTIMATES = ("batch", "population")
CONSTRAINT_ON = ("probabilities", "decisions")


def _constraints(group_names, bound, kind, statistics, shares):
    if len(statistics) == 1:
        return GroupFairnessConstraints(group_names, bound, kind, statistics[0], population_shares=shares)
    return StackedFairnessConstraints(group_names, bound, kind, statistics, population_shares=shares)


def _splits(data: FairnessData, validation_size: float, seed: int) -> dict[str, Batch]:
    """train (and validation: a share of each group's training rows, drawn with ``seed``) and test."""
    rows = {"train": Batch(data.X_train, data.y_train, data.group_train)}
    if validation_size > 0:
        is_held = held_out_rows(data.group_train, data.group_names, validation_size, seed, "validation_size")
        keep = ~is_held
        rows = {"train": Batch(data.X_train[keep], data.y_train[keep], data.group_train[keep]),
                "validation": Batch(data.X_train[is_held], data.y_train[is_held], data.group_train[is_held])}
    rows["test"] = Batch(data.X_test, data.y_test, data.group_test)
    return rows


def _check_statistics(statistic: object) -> list[LinearFractionalStatistic]:
    """One statistic or a non-empty sequence of them, as a list of fairret statistic instances."""
    from fairret.statistic import PositiveRate
    if statistic is None:
        return [PositiveRate()]
    items = list(statistic) if isinstance(statistic, (list, tuple)) else [statistic]
    if not items:
        raise ValueError("statistic is an empty list; give one fairret statistic or several")
    for item in items:
        if isinstance(item, type) and issubclass(item, LinearFractionalStatistic):
            raise TypeError(f"statistic must be an instance: {item.__name__}(), not the class {item.__name__}")
        if not isinstance(item, LinearFractionalStatistic):
            raise TypeError(f"statistic must be a fairret LinearFractionalStatistic instance (e.g. "
                            f"fairret.statistic.PositiveRate()) or a list of them, got {item!r}")
    return items


def constraint_metric(name: str) -> str:
    """The metric name under which constraint ``name`` is recorded: ``c[name]``."""
    return f"c[{name}]"
