"""hctrain.metrics: the comparison table, replaying final models, group fairness statistics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn

from hctrain.algorithms import GDA, Adam
from hctrain.data import FairnessData
from hctrain.metrics import (comparison_table, fairness_gaps, group_fairness_table, group_statistics,
                             largest_final_constraint, loss_at, replay, replay_error, replay_final_models)
from hctrain.runner import COLUMNS, run
from hctrain.task import FairnessTask


# --- group statistics on a hand-computed example ---------------------------------------------

GROUP = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
LABEL = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], dtype=torch.float32)
PRED = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.float32)


def test_group_statistics_hard_predictions_by_hand() -> None:
    table = group_statistics(PRED, LABEL, GROUP, ["a", "b"])
    assert list(table.index) == ["a", "b", "overall"]
    assert list(table.columns) == ["n", "base rate", "PR", "TPR", "PPV"]
    assert table["n"].tolist() == [4, 6, 10]
    expected = {
        # base rate, PR = P(yhat=1), TPR = P(yhat=1 | y=1), PPV = P(y=1 | yhat=1)
        "a": (2 / 4, 2 / 4, 1 / 2, 1 / 2),          # y=1 rows 0,1 -> yhat 1,0; yhat=1 rows 0,2 -> y 1,0
        "b": (1 / 6, 2 / 6, 1 / 1, 1 / 2),          # y=1 row 4 -> yhat 1; yhat=1 rows 4,5 -> y 1,0
        "overall": (3 / 10, 4 / 10, 2 / 3, 2 / 4),
    }
    for row, values in expected.items():
        assert table.loc[row, ["base rate", "PR", "TPR", "PPV"]].tolist() == pytest.approx(values)
    gaps = fairness_gaps(table)
    assert gaps.to_dict() == pytest.approx({"PR": 0.1, "TPR": 1 / 3, "PPV": 0.0})
    assert fairness_gaps(table, ["TPR"]).to_dict() == pytest.approx({"TPR": 1 / 3})


def test_group_statistics_probabilities_are_expected_counts() -> None:
    p = torch.tensor([0.9, 0.2, 0.6, 0.1, 0.7, 0.4, 0.3, 0.05, 0.5, 0.2])
    table = group_statistics(p, LABEL, GROUP, ["a", "b"])
    pn, yn, gn = p.double().numpy(), LABEL.double().numpy(), GROUP.numpy()
    for row, mask in [("a", gn == 0), ("b", gn == 1), ("overall", np.ones_like(gn, dtype=bool))]:
        pm, ym = pn[mask], yn[mask]
        assert table.loc[row, "PR"] == pytest.approx(pm.mean())
        assert table.loc[row, "TPR"] == pytest.approx((pm * ym).sum() / ym.sum())
        assert table.loc[row, "PPV"] == pytest.approx((pm * ym).sum() / pm.sum())


def test_undefined_statistics_are_nan() -> None:
    # group c: no positive labels (TPR undefined) and no predicted positives (PPV undefined)
    group = torch.cat([GROUP, torch.tensor([2, 2])])
    label = torch.cat([LABEL, torch.tensor([0.0, 0.0])])
    pred = torch.cat([PRED, torch.tensor([0.0, 0.0])])
    table = group_statistics(pred, label, group, ["a", "b", "c"])
    assert table.loc["c", "PR"] == 0.0
    assert math.isnan(table.loc["c", "TPR"]) and math.isnan(table.loc["c", "PPV"])
    gaps = fairness_gaps(table)
    assert math.isnan(gaps["TPR"]) and math.isnan(gaps["PPV"]) and gaps["PR"] == pytest.approx(4 / 12)  # c: 0 vs 4 of 12 overall


def test_group_statistics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        group_statistics(PRED[:-1], LABEL, GROUP, ["a", "b"])
    with pytest.raises(ValueError, match="group codes"):
        group_statistics(PRED, LABEL, GROUP, ["a"])


# --- a tiny task ----------------------------------------------------------------------------

def tiny_data(n_per_group: int = 20, seed: int = 0) -> FairnessData:
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(3).repeat_interleave(n_per_group)
    X = torch.randn(len(group), 3, generator=g) + group[:, None].float()
    y = (X[:, 0] + 0.3 * torch.randn(len(group), generator=g) > 1).float()
    return FairnessData(name="tiny", X_train=X, y_train=y, group_train=group, X_test=X[::2].clone(),
                        y_test=y[::2].clone(), group_test=group[::2].clone(), feature_names=["x0", "x1", "x2"],
                        group_names=["a", "b", "c"], protected="g", source="synthetic", scaler=StandardScaler())


@pytest.fixture(scope="module")
def task() -> FairnessTask:
    return FairnessTask(tiny_data(), bound=0.05, batch_per_group=4)


class FirstFeature(nn.Module):
    """logit = x0: predicts a positive exactly when the first feature is > 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def test_group_fairness_table_of_a_model(task: FairnessTask) -> None:
    d = task.data
    model = FirstFeature()
    hard = group_fairness_table(task, model, split="test")
    expected = group_statistics((d.X_test[:, 0] > 0).float(), d.y_test, d.group_test, d.group_names)
    pd.testing.assert_frame_equal(hard, expected)
    assert hard.loc["a", "PR"] == pytest.approx(float((d.X_test[d.group_test == 0, 0] > 0).float().mean()))
    soft = group_fairness_table(task, model, split="train", hard=False)
    assert soft.loc["overall", "PR"] == pytest.approx(float(torch.sigmoid(d.X_train[:, 0]).mean()))
    # the soft PR gaps are the constraint values plus the bound
    c = task.evaluate(model)
    for k, name in enumerate(d.group_names):
        assert abs(soft.loc[name, "PR"] - soft.loc["overall", "PR"]) - 0.05 == pytest.approx(c[("train", f"c[{name}]")], abs=1e-6)


def test_group_fairness_table_restores_training_mode(task: FairnessTask) -> None:
    model = task.model_fn(task.data.n_features)
    model.train()
    group_fairness_table(task, model)
    assert model.training


# --- replaying recorded runs -----------------------------------------------------------------

def test_replay_rebuilds_the_final_models(task: FairnessTask) -> None:
    hyper = dict(tau=0.05, eta=0.5)
    records = run(task, GDA, hyper=hyper, name="GDA", max_steps=7, budget_s=None, eval_every_steps=3,
                  n_runs=2, seed=5, progress=False)
    models = replay_final_models(task, {"GDA": (GDA, hyper)}, records, runs=2)
    assert len(models["GDA"]) == 2
    for r, model in enumerate(models["GDA"]):
        assert replay_error(task, model, records, "GDA", run=r) == 0.0
    # one step short is a different model
    short = replay(task, GDA, seed=6, steps=6, hyper=hyper)
    assert replay_error(task, short, records, "GDA", run=1) > 0.0


def test_replay_with_a_callable(task: FairnessTask) -> None:
    def factory(problem):
        return Adam.from_problem(problem, lr=0.01)

    records = run(task, factory, name="Adam 0.01", max_steps=5, budget_s=None, n_runs=2, seed=0, progress=False)
    # (n_jobs > 1 replays in the worker processes of a Dask LocalCluster; left out here: starting them takes seconds)
    models = replay_final_models(task, {"Adam 0.01": (factory, None)}, records, runs=2)
    assert [replay_error(task, m, records, "Adam 0.01", run=r) for r, m in enumerate(models["Adam 0.01"])] == [0.0, 0.0]


def test_replay_errors(task: FairnessTask) -> None:
    records = run(task, Adam, name="Adam", max_steps=2, budget_s=None, n_runs=1, progress=False)
    with pytest.raises(ValueError, match="no records for algorithm 'SSw'"):
        replay_final_models(task, {"SSw": (Adam, {})}, records)
    with pytest.raises(ValueError, match="hyper is only used"):
        replay(task, lambda problem: Adam.from_problem(problem), seed=0, steps=1, hyper={"lr": 0.1})
    with pytest.raises(ValueError, match="steps"):
        replay(task, Adam, seed=0, steps=-1)
    with pytest.raises(ValueError, match="run 3"):
        replay_error(task, task.model_fn(3), records, "Adam", run=3)


# --- the comparison table --------------------------------------------------------------------

def synthetic_records() -> pd.DataFrame:
    """Algorithm B (one run), then A (two runs); two constraints g1, g2."""
    rows = []

    def evaluation(alg, run_, step, t, train_loss, test_loss, acc, c_train, c_test):
        for split, loss, cs in (("train", train_loss, c_train), ("test", test_loss, c_test)):
            rows.append((alg, run_, run_, step, t, split, "loss", loss))
            rows.append((alg, run_, run_, step, t, split, "accuracy", acc))
            for name, value in zip(("g1", "g2"), cs):
                rows.append((alg, run_, run_, step, t, split, f"c[{name}]", value))

    evaluation("B", 0, 0, 0.0, 0.69, 0.69, 0.5, (-0.05, -0.05), (-0.05, -0.05))
    evaluation("B", 0, 5, 1.0, 0.60, 0.61, 0.6, (-0.01, -0.02), (-0.01, -0.02))
    evaluation("A", 0, 0, 0.0, 0.70, 0.70, 0.5, (-0.05, -0.05), (-0.05, -0.05))
    evaluation("A", 0, 10, 1.0, 0.50, 0.52, 0.7, (0.01, -0.02), (-0.01, -0.03))
    evaluation("A", 0, 20, 2.0, 0.40, 0.45, 0.8, (-0.01, -0.02), (0.02, -0.01))
    evaluation("A", 1, 0, 0.0, 0.70, 0.70, 0.5, (-0.05, -0.05), (-0.05, -0.05))
    evaluation("A", 1, 10, 1.0, 0.60, 0.62, 0.6, (-0.01, -0.02), (-0.01, -0.03))
    evaluation("A", 1, 30, 2.0, 0.30, 0.35, 0.9, (-0.03, 0.04), (-0.02, -0.01))
    return pd.DataFrame(rows, columns=COLUMNS)


def test_comparison_table_by_hand() -> None:
    table = comparison_table(synthetic_records(), loss_times=(0.5, 1.0))
    assert list(table.index) == ["B", "A"]
    assert list(table.columns) == [
        "final train loss", "final train accuracy", "final test loss", "final test accuracy",
        "largest final train c", "largest final test c", "feasible share train", "feasible share test",
        "train loss at 0.5 s", "train loss at 1 s", "steps per second"]
    a = table.loc["A"]
    assert a["final train loss"] == pytest.approx((0.40 + 0.30) / 2)
    assert a["final test loss"] == pytest.approx((0.45 + 0.35) / 2)
    assert a["final test accuracy"] == pytest.approx((0.8 + 0.9) / 2)
    assert a["largest final train c"] == pytest.approx((-0.01 + 0.04) / 2)
    assert a["largest final test c"] == pytest.approx((0.02 - 0.01) / 2)
    # evaluations after the start: run 0 steps 10, 20; run 1 steps 10, 30
    assert a["feasible share train"] == pytest.approx(2 / 4)   # run 0 step 20, run 1 step 10
    assert a["feasible share test"] == pytest.approx(3 / 4)    # all but run 0 step 20
    assert a["train loss at 0.5 s"] == pytest.approx(0.70)
    assert a["train loss at 1 s"] == pytest.approx((0.50 + 0.60) / 2)
    assert a["steps per second"] == pytest.approx((20 / 2 + 30 / 2) / 2)
    b = table.loc["B"]
    assert b["feasible share train"] == b["feasible share test"] == 1.0
    assert b["largest final train c"] == pytest.approx(-0.01)
    assert b["steps per second"] == pytest.approx(5.0)
    assert loss_at(synthetic_records(), 2.0, split="test").to_dict() == pytest.approx({"B": 0.61, "A": 0.40})


def test_comparison_table_names_loss_times() -> None:
    named = comparison_table(synthetic_records(), loss_times={"quarter": 0.5, "half": 1.0})
    plain = comparison_table(synthetic_records(), loss_times=(0.5, 1.0))
    assert list(named.columns[-3:]) == ["train loss quarter", "train loss half", "steps per second"]
    assert named["train loss quarter"].tolist() == plain["train loss at 0.5 s"].tolist()
    assert named["train loss half"].tolist() == plain["train loss at 1 s"].tolist()


def test_comparison_table_of_nothing() -> None:
    with pytest.raises(ValueError, match="no records"):
        comparison_table(pd.DataFrame(columns=COLUMNS))


def test_largest_final_constraint_names_the_group_of_most_runs() -> None:
    records = synthetic_records()
    table = comparison_table(records)
    for split in ("train", "test"):
        largest = largest_final_constraint(records, split)
        assert list(largest.index) == ["B", "A"]
        assert largest["value"].tolist() == table[f"largest final {split} c"].tolist()
    # A on train: g1 is largest in run 0, g2 in run 1; the tie goes to g2 (mean final c 0.01 > -0.02)
    assert largest_final_constraint(records, "train")["group"].to_dict() == {"B": "g1", "A": "g2"}
    # A on test: g1 in run 0, g2 in run 1; g1's mean final c (0.0) beats g2's (-0.01)
    assert largest_final_constraint(records, "test")["group"].to_dict() == {"B": "g1", "A": "g1"}


def test_largest_final_constraint_counts_runs_not_means() -> None:
    # g1 is the largest in two runs by a little, g2 in one run by a lot: g2 has the larger mean
    rows = [("A", r, r, 10, 1.0, "train", f"c[{g}]", v)
            for r, (v1, v2) in enumerate([(0.01, 0.0), (0.01, 0.0), (-0.3, 0.2)])
            for g, v in (("g1", v1), ("g2", v2))]
    records = pd.DataFrame(rows, columns=COLUMNS)
    largest = largest_final_constraint(records)
    assert largest.loc["A", "group"] == "g1"
    assert largest.loc["A", "value"] == pytest.approx((0.01 + 0.01 + 0.2) / 3)
    with pytest.raises(ValueError, match="split 'test' is not in the records"):
        largest_final_constraint(records, "test")
    with pytest.raises(ValueError, match="no records"):
        largest_final_constraint(pd.DataFrame(columns=COLUMNS))
