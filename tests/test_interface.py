"""One loop, every algorithm: the experiment runner drives each algorithm through the same
``step(problem)``, and every constrained method's J_c^T v costs one backward pass whatever m."""
from __future__ import annotations

import pytest
import torch

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
