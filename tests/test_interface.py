"""One loop, every algorithm: the experiment runner drives each algorithm through the same
``step(problem)``, and every constrained method's J_c^T v costs one backward pass whatever m."""
from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hctrain.algorithms import (GDA, SPBM, SSLALM, Adam, FairretRegularized, LinearizedALM,
                                SwitchingSubgradient)
from hctrain.algorithms.ghost import StochasticGhost
from hctrain.data import load_acsincome
from hctrain.runner import run
from hctrain.task import FairnessTask
from hctrain.testing import NoisyQuadratic

ALGORITHMS = [
    (Adam, {}), (FairretRegularized, {"weight": 0.3}), (GDA, {}), (LinearizedALM, {}),
    (SSLALM, {}), (SwitchingSubgradient, {}), (SPBM, {}), (StochasticGhost, {"max_level": 1}),
]


@pytest.fixture(scope="module")
def task() -> FairnessTask:
    return FairnessTask(load_acsincome("VA", download=False, verbose=False), bound=0.05,
                        batch_per_group=8)


@pytest.mark.parametrize("cls, hyper", ALGORITHMS, ids=[c.__name__ for c, _ in ALGORITHMS])
def test_the_runner_drives_every_algorithm(task, cls, hyper):
    records = run(task, cls, hyper=hyper, budget_s=None, max_steps=4, eval_every_steps=2,
                  n_runs=1, progress=False)
    assert set(records["algorithm"]) == {cls.__name__}
    assert sorted(records["step"].unique()) == [0, 2, 4]
    metrics = set(records["metric"])
    assert {"loss", "accuracy"} | {f"c[{g}]" for g in task.constraint_names} <= metrics
    assert records["value"].notna().all()
    # the parameters moved
    first = records[(records["step"] == 0) & (records["metric"] == "loss") & (records["split"] == "train")]
    last = records[(records["step"] == 4) & (records["metric"] == "loss") & (records["split"] == "train")]
    assert float(first["value"].iloc[0]) != float(last["value"].iloc[0])


CONSTRAINED = [GDA, LinearizedALM, SSLALM, SwitchingSubgradient, SPBM]


@pytest.mark.parametrize("cls", CONSTRAINED, ids=[c.__name__ for c in CONSTRAINED])
@pytest.mark.parametrize("m", [3, 200])
def test_one_backward_pass_per_step_whatever_m(cls, m):
    generator = torch.Generator().manual_seed(m)
    # x = 0 is feasible (so the KKT point is found at once); x0 = (5, 5, 5) violates about half
    q = NoisyQuadratic(torch.zeros(3), torch.randn(m, 3, generator=generator), torch.ones(m), sigma=0.1)
    problem = q.problem(seed=0, x0=torch.full((3,), 5.0))
    assert (q.constraint_value(problem.params[0].detach()) > 0).any()
    algo = cls.from_problem(problem)
    backwards = []
    problem.params[0].register_hook(lambda g: backwards.append(1))
    for _ in range(5):
        algo.step(problem)
    assert len(backwards) == 5, f"{cls.__name__}: {len(backwards)} backward passes in 5 steps (m={m})"


STEPPED = CONSTRAINED + [StochasticGhost]


def _quadratic_problem(m: int = 4):
    generator = torch.Generator().manual_seed(m)
    q = NoisyQuadratic(torch.zeros(3), torch.randn(m, 3, generator=generator), torch.ones(m), sigma=0.1)
    return q.problem(seed=0, x0=torch.full((3,), 5.0))


@pytest.mark.parametrize("cls", STEPPED, ids=[c.__name__ for c in STEPPED])
def test_torch_step_hooks_run_once_per_step(cls):
    problem = _quadratic_problem()
    algo = cls.from_problem(problem)
    calls = []
    algo.register_step_pre_hook(lambda opt, args, kwargs: calls.append(("pre", opt, args[1:], kwargs)))
    algo.register_step_post_hook(lambda opt, args, kwargs: calls.append(("post", opt.iteration)))
    glob = register_optimizer_step_pre_hook(
        lambda opt, a, k: calls.append(("global",)) if opt is algo else None)  # (SPBM's inner Adam: its own)
    try:
        algo.step(problem)
        algo.step(problem)
    finally:
        glob.remove()
    assert [c[0] for c in calls] == ["global", "pre", "post", "global", "pre", "post"]
    assert calls[1][1] is algo and calls[1][2] == (problem,) and calls[1][3] == {"loss": None, "constraints": None}
    assert calls[2][1] == 1 and calls[5][1] == 2  # the post hook sees the finished step
    calls.clear()
    algo.step(problem)  # the hooks removed (global) or still there (own)
    assert [c[0] for c in calls] == ["pre", "post"]


def test_a_pre_hook_may_replace_the_arguments():
    problem = _quadratic_problem()
    algo = GDA.from_problem(problem)
    loss, c = problem.sample_objective_and_constraints()
    # torch's contract: a pre hook returning (args, kwargs) changes the call; here from step(problem)
    # to the values computed above
    algo.register_step_pre_hook(lambda opt, args, kwargs: ((opt,), {"loss": loss, "constraints": c}))
    algo.step(problem)
    expected = (c.detach() * algo.param_groups[0]["eta"]).clamp(0.0, algo.param_groups[0]["dual_bound"])
    assert torch.equal(algo.dual, expected)


def test_hooks_of_a_subclass_with_its_own_step_run_once():
    class Logged(GDA):
        def step(self, problem=None, **kwargs):  # torch wraps this one; the base step inside must not
            return super().step(problem, **kwargs)

    problem = _quadratic_problem()
    algo = Logged.from_problem(problem)
    calls = []
    algo.register_step_pre_hook(lambda *a: calls.append("pre"))
    algo.register_step_post_hook(lambda *a: calls.append("post"))
    algo.step(problem)
    assert calls == ["pre", "post"]


@pytest.mark.parametrize("cls", [GDA, SPBM], ids=["GDA", "SPBM"])
def test_the_profiler_records_the_step_under_torchs_name(cls):
    problem = _quadratic_problem()
    algo = cls.from_problem(problem)
    algo.step(problem)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        algo.step(problem)
    names = [e.name for e in prof.events()]
    assert names.count(f"Optimizer.step#{cls.__name__}.step") == 1
