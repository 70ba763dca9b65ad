"""Time and memory of a training step, for every hctrain algorithm and every peer, in one run.

The reference is the loop a user writes without constraints: ``torch.optim.Adam`` with
forward, loss, backward and step (:class:`hctrain.peers.TorchAdam`). Every contestant trains a
fresh copy of the same model (the same initialisation) on the same pre-drawn batches
(:class:`PoolSampler`: drawing a batch is a list lookup, so sampling costs nothing and is the
same for all). After a warm-up the contestants run in interleaved rounds: in each round each
takes a block of ``steps`` consecutive steps (the first contestant rotating from round to
round), every step timed on its own; a contestant's time in a round is the median of its block,
and its ratio is that median over the reference's median in the same round. A drift in the
machine's speed slower than a round therefore hits numerator and denominator alike. Reported:
the median over rounds of the medians (ms per step) and of the ratios, with their
inter-quartile range.

Two families of problems with many constraints:

- :func:`fairness_problems`: ACSIncome with the place of birth (POBP) as the protected
  attribute, the top k places, pairwise positive-rate constraints (m = k (k - 1));
- :func:`per_sample_problems`: a bound on the loss of every example of a subsample of the
  training set (m of them, the Feasible Learning form), the objective on ordinary minibatches.

:func:`step_memory` gives what a step keeps alive: the bytes the autograd graph saves for the
backward pass, and the bytes of the contestant's own state (duals, slacks, anchors, moments).
"""
from __future__ import annotations

import gc
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import peers
from .algorithms import GDA, SSLALM, Adam, FairretRegularized, LinearizedALM, SwitchingSubgradient
from .checks import check_integer, check_number
from .data import FairnessData
from .models import paper_mlp
from .problem import Batch, StochasticProblem
from .task import FairnessTask

REFERENCE = "torch Adam"


# --- the same batches for everyone ------------------------------------------------------------

class PoolSampler:
    """A batch sampler that cycles through a fixed list of pre-drawn batches (its own cursor)."""

    def __init__(self, pool: list[Batch]):
        if not pool:
            raise ValueError("the pool of batches is empty; draw at least one batch")
        self.pool = pool
        self.position = 0

    def __call__(self) -> Batch:
        batch = self.pool[self.position]
        self.position = (self.position + 1) % len(self.pool)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


@dataclass
class ProblemFactory:
    """Builds the same problem afresh for each contestant: a new model from ``model_fn`` (seeded),
    samplers over the fixed pools. ``constraint_pool`` None: one sampler serves f and c."""

    name: str
    m: int
    model_fn: Callable[[], nn.Module]
    loss_fn: Callable[[Tensor, Batch], Tensor]
    constraint_fn: Callable[[Tensor, Batch], Tensor]
    objective_pool: list[Batch]
    constraint_pool: list[Batch] | None = None
    n_groups: int | None = None
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def to(self, device: str | torch.device) -> "ProblemFactory":
        """The same problem with its batches (and the models it builds) on ``device``."""
        device = torch.device(device)

        def move(pool: list[Batch] | None) -> list[Batch] | None:
            return None if pool is None else [Batch(b.x.to(device), b.y.to(device), b.group.to(device)) for b in pool]

        return ProblemFactory(self.name, self.m, self.model_fn, self.loss_fn, self.constraint_fn,
                              move(self.objective_pool), move(self.constraint_pool), self.n_groups,
                              self.seed, dict(self.info), device)

    def __call__(self) -> StochasticProblem:
        torch.manual_seed(self.seed)
        problem = StochasticProblem(
            self.model_fn().to(self.device), self.loss_fn, self.constraint_fn, self.m,
            objective_sampler=PoolSampler(self.objective_pool),
            constraint_sampler=None if self.constraint_pool is None else PoolSampler(self.constraint_pool),
            n_groups=self.n_groups)
        problem.seed = self.seed
        return problem


def task_problem(task: FairnessTask, pool_size: int = 64, seed: int = 0, name: str | None = None) -> ProblemFactory:
    """A fairness task's problem over ``pool_size`` balanced batches drawn once from its sampler."""
    pool_size = check_integer("pool_size", pool_size, low=1)
    sampler = task.problem(seed).objective_sampler
    pool = [sampler() for _ in range(pool_size)]
    d = task.data
    return ProblemFactory(
        name or f"{task.m} constraints", task.m, lambda: task.model_fn(d.n_features), task.loss,
        task.constraint_values, pool, n_groups=d.n_groups, seed=seed,
        info=dict(family="fairness", groups=d.n_groups, batch_rows=len(pool[0]),
                  constraint_rows=len(pool[0])))


def fairness_problems(load: Callable[[int], FairnessData], ks: list[int], bound: float = 0.05,
                      batch_per_group: int = 16, pool_size: int = 64) -> list[ProblemFactory]:
    """Pairwise positive-rate constraints among k groups (m = k (k-1)), for each k in ``ks``:
    ``load(k)`` gives the data of the k groups (e.g. ``lambda k: load_acsincome("CA",
    protected="POBP", max_groups=k)``); a batch holds ``batch_per_group`` rows of each group."""
    out = []
    for k in ks:
        k = check_integer("k (groups kept)", k, low=2)
        # the batch's mean loss, as in the plain torch.optim.Adam loop the methods are timed against
        task = FairnessTask(load(k), bound=bound, constraint="pairwise", batch_per_group=batch_per_group,
                            estimate="batch")
        out.append(task_problem(task, pool_size, name=f"fairness, {k} groups"))
    return out


def per_sample_problems(data: FairnessData, ms: list[int], epsilon: float = 0.6,
                        batch_size: int = 128, pool_size: int = 64, seed: int = 0) -> list[ProblemFactory]:
    """One constraint per training example of a subsample of size m (Feasible Learning):

        c_i(x) = (BCE(model(x_i), y_i) - epsilon) / m <= 0,     i = 1..m,

    all m evaluated on every constraint draw (the constraint batch is the subsample itself); the
    objective is the mean loss on uniform minibatches of ``batch_size`` rows. The 1/m leaves the
    feasible set as it is and keeps J_c^T y, a sum of m per-example gradients, on the scale of
    one mean gradient: without it the methods' default step sizes diverge within a few steps
    for m in the thousands."""
    epsilon = check_number("epsilon", epsilon, low=0.0, low_open=True)
    batch_size = check_integer("batch_size", batch_size, low=1)
    generator = torch.Generator().manual_seed(seed)
    n = data.X_train.shape[0]
    rows = torch.randperm(n, generator=generator)
    pool = []
    for _ in range(check_integer("pool_size", pool_size, low=1)):
        idx = torch.randint(n, (batch_size,), generator=generator)
        pool.append(Batch(data.X_train[idx], data.y_train[idx], data.group_train[idx]))
    eps = torch.tensor(float(epsilon))

    def loss(logits: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, batch.y)

    def per_example(logits: Tensor, batch: Batch) -> Tensor:
        return (F.binary_cross_entropy_with_logits(logits, batch.y, reduction="none") - eps) / logits.shape[0]

    out = []
    for m in ms:
        m = check_integer("m (examples constrained)", m, low=1, high=n)
        sub = rows[:m]
        subsample = Batch(data.X_train[sub], data.y_train[sub], data.group_train[sub])
        out.append(ProblemFactory(
            f"per-sample, {m} examples", m, lambda: paper_mlp(data.n_features), loss, per_example,
            pool, constraint_pool=[subsample], seed=seed,
            info=dict(family="per-sample", groups=None, batch_rows=batch_size, constraint_rows=m)))
    return out


# --- who runs ---------------------------------------------------------------------------------

@dataclass
class Contestant:
    """A row of the benchmark: how to build it on a problem, and what it must meet.

    ``target``: the largest ratio to the reference it should have. ``counterpart``/``speedup``:
    the peer it is compared with and the factor by which it should be faster (speedup 1: no
    slower)."""

    name: str
    build: Callable[[StochasticProblem], Any]
    kind: str                       # "reference", "hctrain" or "peer"
    target: float | None = None
    counterpart: str | None = None
    speedup: float | None = None
    package: str | None = None      # the peer library it needs
    slow: bool = False              # Stochastic Ghost: few steps, a time budget


def _lazy(module: str, name: str) -> Callable[[StochasticProblem], Any]:
    def build(problem: StochasticProblem):
        cls = getattr(__import__(module, fromlist=[name]), name)
        return cls.from_problem(problem)
    return build


def _peer(name: str) -> Callable[[StochasticProblem], Any]:
    return lambda problem: peers.build(name, problem)


CONTESTANTS: tuple[Contestant, ...] = (
    Contestant(REFERENCE, _peer(REFERENCE), "reference"),
    Contestant("Adam", Adam.from_problem, "hctrain"),
    Contestant("fairret", FairretRegularized.from_problem, "hctrain"),
    Contestant("GDA", GDA.from_problem, "hctrain", 1.2, "Cooper GDA", 1.25),
    Contestant("ALM", LinearizedALM.from_problem, "hctrain", 1.2, "HCT ALM", 1.25),
    Contestant("SSL-ALM", SSLALM.from_problem, "hctrain", 1.5),
    Contestant("SSw", SwitchingSubgradient.from_problem, "hctrain", 1.2, "HCT SSG", 1.0),
    Contestant("SPBM", _lazy("hctrain.algorithms.spbm", "SPBM"), "hctrain", 1.2, "HCT PBM", 1.25),
    Contestant("Ghost", _lazy("hctrain.algorithms.ghost", "StochasticGhost"), "hctrain", slow=True),
    Contestant("HCT ALM", _peer("HCT ALM"), "peer", package="humancompatible-train"),
    Contestant("HCT PBM", _peer("HCT PBM"), "peer", package="humancompatible-train"),
    Contestant("HCT SSG", _peer("HCT SSG"), "peer", package="humancompatible-train"),
    Contestant("Cooper GDA", _peer("Cooper GDA"), "peer", package="cooper-optim"),
    Contestant("Cooper AL", _peer("Cooper AL"), "peer", package="cooper-optim"),
)
NAMES = tuple(c.name for c in CONTESTANTS)


def contestants(names: list[str] | None = None) -> list[Contestant]:
    """The contestants named (all by default), the reference always first."""
    if names is None:
        return list(CONTESTANTS)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown contestant(s) {unknown}; use names from {list(NAMES)}")
    return [c for c in CONTESTANTS if c.name == REFERENCE or c.name in names]


def missing_package(contestant: Contestant) -> str | None:
    """Why a peer cannot run here (its library is not installed), or None."""
    if contestant.package and not peers.available()[contestant.package]:
        return f"{contestant.package} not installed (pip install \"hctrain[peers]\")"
    return None


# --- timing -----------------------------------------------------------------------------------

@dataclass
class Runner:
    contestant: Contestant
    problem: StochasticProblem | None = None
    optimizer: Any = None
    status: str = "ok"
    rounds: list[list[float]] = field(default_factory=list)   # seconds per step, per round
    warmup_s: list[float] = field(default_factory=list)
    spent_s: float = 0.0

    @property
    def active(self) -> bool:
        return self.status == "ok"


def _timed_steps(runner: Runner, n: int) -> list[float]:
    """``n`` steps, each timed on its own (on a GPU, up to the end of its kernels); an error
    stops this contestant (its status says why)."""
    times = []
    step, problem, perf = runner.optimizer.step, runner.problem, time.perf_counter
    device = problem.params[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    try:
        for _ in range(n):
            sync(device)
            t0 = perf()
            step(problem)
            sync(device)
            times.append(perf() - t0)
    except Exception as e:  # reported in the table, the others go on
        runner.status = f"failed: {type(e).__name__}: {e}"
        traceback.print_exc(limit=3)
    runner.spent_s += sum(times)
    return times


def measure(factory: ProblemFactory, who: list[Contestant], rounds: int = 30, steps: int = 10,
            warmup: int = 20, slow_steps: int = 2, slow_warmup: int = 1, slow_budget_s: float = 30.0,
            skip_slow_above: int | None = 90) -> list[Runner]:
    """Interleaved rounds of every contestant on ``factory``'s problem (see the module docstring).
    The reference must be first in ``who``."""
    if not who or who[0].name != REFERENCE:
        raise ValueError(f"the first contestant must be the reference {REFERENCE!r}")
    for name, value in (("rounds", rounds), ("steps", steps), ("slow_steps", slow_steps)):
        check_integer(name, value, low=1)
    check_integer("warmup", warmup, low=0)
    runners = []
    for contestant in who:
        runner = Runner(contestant)
        why = missing_package(contestant)
        if why:
            runner.status = f"skipped: {why}"
        elif contestant.slow and skip_slow_above is not None and factory.m > skip_slow_above:
            runner.status = f"skipped (m > {skip_slow_above})"
        else:
            try:
                runner.problem = factory()
                runner.optimizer = contestant.build(runner.problem)
            except Exception as e:
                runner.status = f"failed to build: {type(e).__name__}: {e}"
        runners.append(runner)
    for runner in runners:
        if runner.active:
            gc.collect()
            runner.warmup_s = _timed_steps(runner, slow_warmup if runner.contestant.slow else warmup)
    if not runners[0].active:
        raise RuntimeError(f"the reference did not run on {factory.name}: {runners[0].status}")
    for r in range(rounds):
        k = r % len(runners)
        gc.collect()
        gc.disable()  # as timeit does
        try:
            for runner in runners[k:] + runners[:k]:
                if not runner.active:
                    continue
                if runner.contestant.slow:
                    if runner.spent_s >= slow_budget_s:
                        runner.rounds.append([])
                        continue
                    runner.rounds.append(_timed_steps(runner, slow_steps))
                else:
                    runner.rounds.append(_timed_steps(runner, steps))
        finally:
            gc.enable()
    return runners


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarise(factory: ProblemFactory, runners: list[Runner]) -> list[dict[str, Any]]:
    """One row per contestant: median ms/step, median ratio to the reference [IQR], mean ms/step."""
    reference = [statistics.median(t) if t else None for t in runners[0].rounds]
    rows = []
    for runner in runners:
        c = runner.contestant
        medians, ratios = [], []
        for i, times in enumerate(runner.rounds):
            if times and i < len(reference) and reference[i]:
                med = statistics.median(times)
                medians.append(med)
                ratios.append(med / reference[i])
        all_times = [t for times in runner.rounds for t in times]
        row = dict(problem=factory.name, family=factory.info.get("family"), m=factory.m,
                   contestant=c.name, kind=c.kind, status=runner.status, median_ms=None, ratio=None,
                   ratio_q25=None, ratio_q75=None, mean_ms=None, timed_steps=len(all_times))
        if medians:
            q25, q75 = _quartiles(ratios)
            row.update(median_ms=1e3 * statistics.median(medians), ratio=statistics.median(ratios),
                       ratio_q25=q25, ratio_q75=q75, mean_ms=1e3 * statistics.fmean(all_times))
        elif runner.warmup_s and runner.active:  # a slow contestant spent its budget warming up
            ref = statistics.median([r for r in reference if r])
            row.update(median_ms=1e3 * statistics.median(runner.warmup_s),
                       mean_ms=1e3 * statistics.fmean(runner.warmup_s),
                       ratio=statistics.median(runner.warmup_s) / ref, status="warm-up steps only",
                       timed_steps=len(runner.warmup_s))
        rows.append(row)
    return rows


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of one problem's rows: the ratio to the reference (``kind`` "ratio", met when
    ``value <= threshold``) and the speed-up over the counterpart, the counterpart's ratio over
    the contestant's (``kind`` "speed-up", met when ``value >= threshold``). One dict per
    (contestant, target); ``met`` is None when a row has no timing."""
    by = {r["contestant"]: r for r in rows}
    out = []
    for c in CONTESTANTS:
        row = by.get(c.name)
        if row is None:
            continue
        if c.target is not None:
            met = None if row["ratio"] is None else row["ratio"] <= c.target
            out.append(dict(problem=row["problem"], m=row["m"], contestant=c.name, kind="ratio",
                            threshold=c.target, target=f"at most {c.target:g}x the {REFERENCE} loop",
                            value=row["ratio"], met=met))
        if c.counterpart is not None:
            other = by.get(c.counterpart)
            value = (other["ratio"] / row["ratio"] if other and other["ratio"] and row["ratio"] else None)
            wanted = "no slower than" if c.speedup == 1.0 else f"at least {c.speedup:g}x faster than"
            out.append(dict(problem=row["problem"], m=row["m"], contestant=c.name, kind="speed-up",
                            threshold=c.speedup, target=f"{wanted} {c.counterpart}", value=value,
                            met=None if value is None else value >= c.speedup))
    return out


# --- memory -----------------------------------------------------------------------------------

def _tensor_bytes(obj: Any, exclude: set[int], seen: set[int], depth: int = 0) -> int:
    """Bytes of the tensors reachable from ``obj`` (optimizer state, modules, containers, object
    attributes), each storage counted once, the storages in ``exclude`` not at all."""
    if depth > 16 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        key = storage.data_ptr()
        if key in exclude or key == 0:
            return 0
        exclude.add(key)
        return storage.nbytes()
    if isinstance(obj, torch.optim.Optimizer):
        return (_tensor_bytes(dict(obj.state), exclude, seen, depth + 1)
                + _tensor_bytes([g["params"] for g in obj.param_groups], exclude, seen, depth + 1)
                + _tensor_bytes(vars(obj), exclude, seen, depth + 1))
    if isinstance(obj, nn.Module):
        return _tensor_bytes(list(obj.parameters()) + list(obj.buffers()), exclude, seen, depth + 1)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, exclude, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_tensor_bytes(v, exclude, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__.split(".")[0] in (
            "hctrain", "humancompatible", "cooper"):
        return _tensor_bytes(vars(obj), exclude, seen, depth + 1)
    return 0


def step_memory(factory: ProblemFactory, contestant: Contestant, steps: int = 3) -> dict[str, Any]:
    """What one step of ``contestant`` holds: ``graph_bytes``, the largest total over a step of
    the tensors autograd saves for the backward pass (counted by ``saved_tensors_hooks``, each
    storage once; the model's weights excluded), and ``state_bytes``, the tensors the
    contestant keeps between steps (moments, duals, slacks, anchors; not the weights or the
    data). Measured over ``steps`` steps after one warm-up step."""
    problem = factory()
    optimizer = contestant.build(problem)
    weights = {p.untyped_storage().data_ptr() for p in problem.model.parameters()}
    optimizer.step(problem)
    graph = 0
    for _ in range(check_integer("steps", steps, low=1)):
        storages: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in weights:
                storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            optimizer.step(problem)
        graph = max(graph, sum(storages.values()))
    data = set()
    for pool in (factory.objective_pool, factory.constraint_pool or []):
        for b in pool:
            data.update(t.untyped_storage().data_ptr() for t in (b.x, b.y, b.group))
    state = _tensor_bytes(optimizer, set(weights) | data, set())
    return dict(problem=factory.name, m=factory.m, contestant=contestant.name,
                graph_bytes=graph, state_bytes=state)


def step_times(factory: ProblemFactory, contestant: Contestant, budget_s: float = 30.0,
               max_steps: int = 10_000, warmup: int = 1) -> dict[str, Any]:
    """Steps of one contestant alone until ``budget_s`` seconds of stepping (at least one step
    after the warm-up): their count, mean (the expected cost, for methods whose step cost is
    random such as Stochastic Ghost's), median and 90th percentile, in ms."""
    budget_s = check_number("budget_s", budget_s, low=0.0, low_open=True)
    runner = Runner(contestant)
    runner.problem = factory()
    runner.optimizer = contestant.build(runner.problem)
    _timed_steps(runner, check_integer("warmup", warmup, low=0))
    times: list[float] = []
    while runner.active and (not times or sum(times) < budget_s) and len(times) < max_steps:
        times += _timed_steps(runner, 1)
    if not times:
        raise RuntimeError(f"{contestant.name} took no step on {factory.name}: {runner.status}")
    ordered = sorted(times)
    return dict(problem=factory.name, m=factory.m, contestant=contestant.name, steps=len(times),
                mean_ms=1e3 * statistics.fmean(times), median_ms=1e3 * statistics.median(times),
                p90_ms=1e3 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                status=runner.status)
