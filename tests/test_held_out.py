"""Fair on new data (chapter 11): predictions of any model evaluated like a network's, the
certificate in every evaluation, the group among the inputs, the held-out tables, and the
scikit-learn / fairlearn models on a task's splits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fairret.statistic import TruePositiveRate
from torch import nn

from hctrain import peers
from hctrain.certificate import certify
from hctrain.runner import COLUMNS
from hctrain.summary import held_out_runs, held_out_table, selected_steps
from hctrain.task import FairnessTask
from test_metrics import FirstFeature, tiny_data


def task_with_validation(**options) -> FairnessTask:
    return FairnessTask(tiny_data(n_per_group=60), bound=0.05, batch_per_group=4, validation_size=0.25,
                        decision_gaps=True, **options)


def test_predictions_are_evaluated_as_the_models_are():
    task = task_with_validation(certify_alpha=0.05)
    model = FirstFeature()
    values = task.evaluate(model)
    for split in task.splits:
        logits = model(task.split(split).x).squeeze(-1)
        assert task.evaluate_predictions(split, logits=logits) == pytest.approx(
            {k: v for k, v in values.items() if k[0] == split})
        from_probabilities = task.evaluate_predictions(split, probabilities=torch.sigmoid(logits))
        assert from_probabilities == pytest.approx({k: v for k, v in values.items() if k[0] == split}, abs=1e-6)
    # the certificate's largest bound is certify()'s, for the same decisions
    assert values[("test", "gap UCB")] == pytest.approx(certify(model, task)["largest upper bound"])


def test_decisions_only_have_no_loss_and_no_probability_gaps():
    task = task_with_validation()
    test = task.split("test")
    decisions = (test.x[:, 0] > 0).float()
    values = task.evaluate_predictions("test", decisions=decisions)
    assert np.isnan(values[("test", "loss")])
    assert all(np.isnan(v) for (s, m), v in values.items() if m.startswith("c["))
    hard = task.constraints(decisions, test.group)
    assert [values[("test", f"d[{n}]")] for n in task.constraint_names] == pytest.approx(hard.tolist(), abs=1e-6)
    assert values[("test", "accuracy")] == pytest.approx(float((decisions == test.y).float().mean()))


def test_bad_predictions_are_named():
    task = task_with_validation()
    n = len(task.split("test").y)
    with pytest.raises(ValueError, match="one value per row"):
        task.evaluate_predictions("test", logits=torch.zeros(n + 1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        task.evaluate_predictions("test", probabilities=torch.full((n,), 1.5))
    with pytest.raises(ValueError, match="0 or 1"):
        task.evaluate_predictions("test", decisions=torch.full((n,), 0.5))
    with pytest.raises(ValueError, match="not both"):
        task.evaluate_predictions("test", logits=torch.zeros(n), probabilities=torch.zeros(n))
    with pytest.raises(ValueError, match="unknown split"):
        task.evaluate_predictions("holdout", logits=torch.zeros(n))
    with pytest.raises(ValueError, match="certify_alpha"):
        FairnessTask(tiny_data(), certify_alpha=1.5)
    with pytest.raises(ValueError, match="PositiveRate"):
        FairnessTask(tiny_data(), statistic=TruePositiveRate(), certify_alpha=0.05)


def test_group_among_the_inputs():
    data = tiny_data()
    joined = data.with_group_inputs()
    assert joined.n_features == data.n_features + data.n_groups
    assert torch.equal(joined.X_train[:, :3], data.X_train)
    assert torch.equal(joined.X_test[:, 3:].argmax(1), data.group_test)
    assert joined.feature_names[-3:] == ["g=a", "g=b", "g=c"]
    assert torch.equal(joined.y_train, data.y_train) and data.n_features == 3  # the original is unchanged


def test_test_rows_carved_from_the_training_rows():
    data = tiny_data(n_per_group=60)
    carved = data.with_test_from_train(share=0.25, seed=3)
    # a quarter of each group's training rows, and none of the real test rows
    n_train = torch.bincount(data.group_train, minlength=3)
    assert torch.equal(torch.bincount(carved.group_test, minlength=3), torch.round(0.25 * n_train).long())
    assert carved.X_train.shape[0] + carved.X_test.shape[0] == data.X_train.shape[0]
    rows = {tuple(r) for r in data.X_train.tolist()}
    assert all(tuple(r) in rows for r in carved.X_test.tolist())
    assert not {tuple(r) for r in carved.X_test.tolist()} & {tuple(r) for r in carved.X_train.tolist()}
    # the same draw as a task's validation split with the same share and seed
    task = FairnessTask(data, validation_size=0.25, validation_seed=3)
    assert torch.equal(task.split("validation").x, carved.X_test)
    assert torch.equal(data.with_test_from_train(0.25, seed=3).X_test, carved.X_test)
    assert not torch.equal(data.with_test_from_train(0.25, seed=4).X_test, carved.X_test)
    for bad in (0.0, 1.0, float("nan"), "0.2"):
        with pytest.raises((ValueError, TypeError), match="share"):
            data.with_test_from_train(share=bad)
    with pytest.raises(ValueError, match="share=0.99 leaves no training row"):
        tiny_data(n_per_group=10).with_test_from_train(share=0.99)


def records_with_decisions() -> pd.DataFrame:
    rows = []

    def evaluation(alg, run, step, split, loss, acc, c, d, ucb, time_s):
        for metric, value in [("loss", loss), ("accuracy", acc), ("c[a]", c[0]), ("c[b]", c[1]),
                              ("d[a]", d[0]), ("d[b]", d[1]), ("gap UCB", ucb)]:
            rows.append((alg, run, run, step, time_s, split, metric, value))

    # step 10: probabilities inside on validation, decisions outside; step 20 inside on both
    for step, val_d in [(0, [0.0, 0.0]), (10, [0.02, -0.01]), (20, [-0.01, -0.02]), (30, [0.01, 0.0])]:
        evaluation("M", 0, step, "validation", 0.6 - step / 100, 0.7, [-0.01, -0.01], val_d, 0.2, step / 10)
        evaluation("M", 0, step, "test", 0.5 + step / 1000, 0.75 + step / 1000, [-0.01, -0.03],
                   [0.01 - step / 1000, -0.05], 0.04 + step / 1000, step / 10)
    return pd.DataFrame(rows, columns=COLUMNS)


def test_selection_reads_the_decision_gaps_too():
    assert selected_steps(records_with_decisions()).loc[("M", 0), "step"] == 20


def test_held_out_tables():
    records = records_with_decisions()
    runs = held_out_runs(records, bound=0.05)
    row = runs.loc[("M", 0)]
    assert row["loss"] == pytest.approx(0.52) and row["accuracy"] == pytest.approx(0.77)
    assert row["probability gap"] == pytest.approx(0.04)  # max c + bound
    assert row["decision gap"] == pytest.approx(0.05 + (0.01 - 0.02))
    assert bool(row["both within bound"]) and row["gap UCB"] == pytest.approx(0.06) and not bool(row["certified"])
    assert row["training time (s)"] == pytest.approx(3.0)
    last = held_out_runs(records, bound=0.05, iterate="last").loc[("M", 0)]
    assert last["accuracy"] == pytest.approx(0.78)
    table = held_out_table(records, bound=0.05)
    assert table.loc["M", "share within bound"] == 1.0 and table.loc["M", "share certified"] == 0.0
    assert table.loc["M", "runs"] == 1
    with pytest.raises(ValueError, match="iterate"):
        held_out_runs(records, bound=0.05, iterate="best")
    with pytest.raises(ValueError, match="split"):
        held_out_runs(records, bound=0.05, split="holdout")


fairlearn = pytest.importorskip("fairlearn")


def test_scikit_learn_and_fairlearn_models_on_the_task():
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    task = task_with_validation(certify_alpha=0.05)
    plain = peers.classifier_records(task, LogisticRegression(), n_runs=2)
    assert list(plain.columns) == COLUMNS and set(plain["split"]) == {"train", "validation", "test"}
    assert set(plain["run"]) == {0, 1} and (plain["step"] == 1).all()
    fitted = LogisticRegression().fit(task.split("train").x.numpy(), task.split("train").y.numpy())
    test = task.split("test")
    expected = task.evaluate_predictions("test", probabilities=torch.as_tensor(fitted.predict_proba(test.x.numpy())[:, 1]))
    mine = plain[(plain["run"] == 0) & (plain["split"] == "test")].set_index("metric")["value"]
    assert mine["loss"] == pytest.approx(expected[("test", "loss")], abs=1e-6)
    assert mine["d[a]"] == pytest.approx(expected[("test", "d[a]")])

    fair = peers.fairlearn_reduction(task, LogisticRegression(), bound=0.05)
    train = fair[fair["split"] == "train"].set_index("metric")["value"]
    assert max(train[f"d[{n}]"] for n in task.constraint_names) <= 0.05  # near the bound on train
    assert held_out_table(fair, 0.05).index.tolist() == ["fairlearn EG (LogisticRegression)"]

    big = FairnessTask(tiny_data(n_per_group=400), bound=0.05, batch_per_group=4, decision_gaps=True)
    limit = peers.fairlearn_thresholds(big, DecisionTreeClassifier(max_depth=3), fit_on="test")
    test_values = limit[limit["split"] == "test"].set_index("metric")["value"]
    assert np.isnan(test_values["loss"]) and np.isnan(test_values["c[a]"])
    gaps = [test_values[f"d[{n}]"] + 0.05 for n in big.constraint_names]
    assert max(gaps) <= 0.05  # equal rates on the rows it was fit on, up to its randomized decisions
    with pytest.raises(ValueError, match="fit_on"):
        peers.fairlearn_thresholds(task, DecisionTreeClassifier(), fit_on="holdout")


def test_hct_pbm_anneals_per_pass_over_the_data():
    pytest.importorskip("humancompatible.train")
    task = task_with_validation()
    problem = task.problem(0)
    assert problem.epoch_length == -(-len(task.split("train")) // (4 * 3))
    pbm = peers.build("HCT PBM", problem)
    assert pbm.dual.epoch_length == problem.epoch_length
    assert peers.build("HCT PBM", problem, epoch_length=7).dual.epoch_length == 7


def test_training_margin_trains_inside_and_reports_against_the_bound():
    data = tiny_data()
    plain = FairnessTask(data, bound=0.1, batch_per_group=4)
    inside = FairnessTask(data, bound=0.1, batch_per_group=4, training_margin=0.03)
    assert inside.bound == 0.1 and inside.training_bound == pytest.approx(0.07) and plain.training_bound == 0.1
    torch.manual_seed(0)
    model = inside.model_fn(data.n_features)
    batch = inside.problem(0).sample_objective()
    logits = model(batch.x).squeeze(-1)
    # the algorithms see every constraint 0.03 tighter
    assert torch.allclose(inside.constraint_values(logits, batch), plain.constraint_values(logits, batch) + 0.03)
    # the evaluations are the same as without the margin: gaps minus the bound itself
    assert inside.evaluate(model) == pytest.approx(plain.evaluate(model))
    for bad in (-0.01, 0.1, 0.2, float("nan")):
        with pytest.raises(ValueError, match="training_margin"):
            FairnessTask(data, bound=0.1, batch_per_group=4, training_margin=bad)
