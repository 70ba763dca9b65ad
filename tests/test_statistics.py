"""Any fairret statistic in FairnessTask (issue 9, item 4), and its validation split."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fairret.statistic import (Accuracy, FalsePositiveRate, PositivePredictiveValue, PositiveRate,
                               TruePositiveRate)

from hctrain.algorithms import SSLALM
from hctrain.data import load_dutch_census
from hctrain.problem import Batch
from hctrain.runner import run
from hctrain.task import FairnessTask


@pytest.fixture(scope="module")
def dutch():
    return load_dutch_census(verbose=False)


def fairret_gaps(statistic, probs, data, bound):
    """|S_g - S| - b from fairret's own statistic on one-hot groups (labels where it takes them)."""
    sens = F.one_hot(data.group_train).to(probs.dtype)
    args = () if isinstance(statistic, PositiveRate) else (data.y_train.to(probs.dtype).unsqueeze(-1),)
    per_group = statistic(probs.unsqueeze(-1), sens, *args).reshape(-1)
    overall = statistic.overall_statistic(probs.unsqueeze(-1), *args).reshape(-1)
    return (per_group - overall).abs() - bound


@pytest.mark.parametrize("statistic", [PositiveRate(), TruePositiveRate(), FalsePositiveRate(),
                                       PositivePredictiveValue(), Accuracy(),
                                       [TruePositiveRate(), FalsePositiveRate()]],
                         ids=["PR", "TPR", "FPR", "PPV", "accuracy", "equalized_odds"])
def test_constraints_equal_fairrets_value_on_full_data(dutch, statistic):
    task = FairnessTask(dutch, bound=0.02, statistic=statistic)
    statistics = statistic if isinstance(statistic, list) else [statistic]
    assert task.m == 2 * len(statistics)
    logits = torch.randn(len(dutch.y_train), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = Batch(dutch.X_train, dutch.y_train.double(), dutch.group_train)
    ours = task.constraint_values(logits, batch)
    theirs = torch.cat([fairret_gaps(s, torch.sigmoid(logits), dutch, 0.02) for s in statistics])
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    if len(statistics) == 2:
        assert task.constraint_names == ["TPR Male", "TPR Female", "FPR Male", "FPR Female"]


def test_equalized_odds_trains_through_the_runner(dutch):
    task = FairnessTask(dutch, bound=0.02, statistic=[TruePositiveRate(), FalsePositiveRate()])
    records = run(task, SSLALM, max_steps=30, eval_every_steps=10, n_runs=1, progress=False)
    assert {"c[TPR Female]", "c[FPR Male]"} <= set(records["metric"])


def test_a_statistic_class_instead_of_an_instance_is_named(dutch):
    with pytest.raises(TypeError, match=r"TruePositiveRate\(\), not the class"):
        FairnessTask(dutch, statistic=TruePositiveRate)


def test_a_statistic_undefined_for_a_group_fails_when_the_task_is_built(dutch):
    import dataclasses
    y = dutch.y_train.clone()
    y[dutch.group_train == 1] = 0.0  # no positive label in group 1: its TPR is 0/0
    data = dataclasses.replace(dutch, y_train=y)
    with pytest.raises(ValueError, match=r"TPR is undefined \(0/0\) for the groups \['Female'\]"):
        FairnessTask(data, statistic=TruePositiveRate())


def test_a_rate_that_is_0_over_0_in_a_small_batch_names_the_groups_and_the_batch(dutch):
    task = FairnessTask(dutch, bound=0.02, statistic=TruePositiveRate(), batch_per_group=2)
    batch = Batch(dutch.X_train[:4], torch.zeros(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"NaN on this batch.*batch_per_group=2 is too small"):
        task.constraint_values(torch.zeros(4), batch)


def test_validation_split_is_held_out_of_training(dutch):
    task = FairnessTask(dutch, validation_size=0.2)
    train, validation = task.split("train"), task.split("validation")
    assert len(train) + len(validation) == len(dutch.y_train)
    for g in range(dutch.n_groups):  # a share of every group
        share = (validation.group == g).sum() / (dutch.group_train == g).sum()
        assert abs(float(share) - 0.2) < 0.01
    problem = task.problem(0)
    assert problem.objective_sampler.x.shape[0] == len(train)
    values = task.evaluate(problem.model)
    assert {s for s, _ in values} == {"train", "validation", "test"}
    plain = FairnessTask(dutch)
    assert plain.splits == ("train", "test")  # the paper's protocol: no validation unless asked
    with pytest.raises(ValueError, match="validation_size"):
        FairnessTask(dutch, validation_size=1.0)
