"""Proxy constraints on decisions (FairnessTask(constraint_on="decisions")): the value the
algorithms read is the decisions' rate, the gradient the probabilities'."""
from __future__ import annotations

import pytest
import torch

from hctrain.algorithms import GDA
from hctrain.task import FairnessTask
from test_metrics import tiny_data


def test_value_is_the_decisions_and_gradient_the_probabilities():
    soft_task = FairnessTask(tiny_data(n_per_group=40), bound=0.05, batch_per_group=8)
    task = FairnessTask(tiny_data(n_per_group=40), bound=0.05, batch_per_group=8, constraint_on="decisions")
    batch = task.problem(0).sample_objective()
    logits = torch.randn(len(batch.y), generator=torch.Generator().manual_seed(3), requires_grad=True)
    c = task.constraint_values(logits, batch)
    hard = task.constraints((logits.detach() > 0).float(), batch.group)
    assert torch.equal(c.detach(), hard)
    soft = soft_task.constraint_values(logits, batch)
    assert not torch.equal(soft.detach(), hard)  # the two really differ on this batch
    (g_proxy,) = torch.autograd.grad(c.sum(), logits)
    (g_soft,) = torch.autograd.grad(soft.sum(), logits)
    assert torch.equal(g_proxy, g_soft)


def test_gda_updates_its_duals_on_the_decisions():
    task = FairnessTask(tiny_data(n_per_group=40), bound=0.0, batch_per_group=8, constraint_on="decisions")
    problem, twin = task.problem(5), task.problem(5)
    algo = GDA.from_problem(problem, eta=0.5)
    batch = twin.sample_objective()
    with torch.no_grad():
        logits = twin.forward(batch)
    expected = (0.5 * task.constraints((logits > 0).float(), batch.group)).clamp(0.0, 100.0)
    algo.step(problem)
    assert torch.allclose(algo.dual, expected.to(algo.dual.dtype), atol=1e-7)


def test_evaluations_report_the_decision_gaps():
    task = FairnessTask(tiny_data(n_per_group=40), bound=0.05, batch_per_group=8, decision_gaps=True)
    model = task.problem(0).model
    values = task.evaluate(model)
    names = task.constraint_names
    assert all(("test", f"d[{n}]") in values and ("test", f"c[{n}]") in values for n in names)
    test = task.split("test")
    with torch.no_grad():
        hard = task.constraints((model(test.x).squeeze(-1) > 0).float(), test.group)
    assert [values[("test", f"d[{n}]")] for n in names] == pytest.approx(hard.tolist())
    plain = FairnessTask(tiny_data(n_per_group=40), bound=0.05, batch_per_group=8)
    assert not any(metric.startswith("d[") for _, metric in plain.evaluate(model))


def test_bad_options():
    with pytest.raises(ValueError, match="constraint_on"):
        FairnessTask(tiny_data(), constraint_on="labels")
    with pytest.raises(ValueError, match="decision_gaps"):
        FairnessTask(tiny_data(), decision_gaps="yes")
