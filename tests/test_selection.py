"""The iterate chosen on validation (hctrain.summary.selected_steps): a rule fixed in advance,
feasible on validation first, then the lowest validation loss; the test split plays no part."""
from __future__ import annotations

import pandas as pd
import pytest

from hctrain.summary import held_out_runs, held_out_table, per_run_table, selected_steps, selected_values
from hctrain.runner import COLUMNS


def records() -> pd.DataFrame:
    rows = []

    def evaluation(run, step, split, loss, cs):
        rows.append(("M", run, run, step, float(step), split, "loss", loss))
        rows.append(("M", run, run, step, float(step), split, "accuracy", 1 - loss))
        for g, c in enumerate(cs):
            rows.append(("M", run, run, step, float(step), split, f"c[g{g}]", c))

    # run 0: step 30 is feasible on validation with the lowest feasible loss; step 20 has a lower
    # loss but is infeasible; the test split would pick step 20 (feasible and lowest there)
    for step, val_loss, val_c, test_loss, test_c in [(0, 0.7, [0.1, 0.2], 0.7, [0.1, 0.2]),
                                                    (10, 0.5, [-0.01, -0.02], 0.6, [0.05, 0.0]),
                                                    (20, 0.4, [0.03, -0.01], 0.3, [-0.1, -0.1]),
                                                    (30, 0.45, [-0.001, -0.03], 0.5, [0.02, 0.01]),
                                                    (40, 0.46, [0.01, 0.0], 0.4, [-0.05, -0.05])]:
        evaluation(0, step, "validation", val_loss, val_c)
        evaluation(0, step, "test", test_loss, test_c)
        evaluation(0, step, "train", val_loss, val_c)
    # run 1: never feasible on validation: the smallest largest constraint wins (step 20)
    for step, val_c in [(0, [0.0, -1.0]), (10, [0.2, 0.1]), (20, [0.04, 0.05]), (30, [0.3, 0.06])]:
        evaluation(1, step, "validation", 0.5 - step / 100, val_c)
        evaluation(1, step, "test", 0.5, [-0.5, -0.5])
    return pd.DataFrame(rows, columns=COLUMNS)


def test_rule_feasible_first_then_loss_and_never_the_test_set():
    chosen = selected_steps(records())
    assert chosen.loc[("M", 0), "step"] == 30 and bool(chosen.loc[("M", 0), "feasible"])
    assert chosen.loc[("M", 0), "validation loss"] == pytest.approx(0.45)
    assert chosen.loc[("M", 1), "step"] == 20 and not bool(chosen.loc[("M", 1), "feasible"])
    assert chosen.loc[("M", 1), "largest validation c"] == pytest.approx(0.05)
    # the start (step 0) is never chosen, although run 1 is feasible there
    by_test = selected_steps(records(), split="test")
    assert by_test.loc[("M", 0), "step"] == 20  # what choosing on the test set would have done


def test_selected_values_feed_the_tables():
    values = selected_values(records())
    assert set(values.groupby("run")["step"].first()) == {30, 20}
    assert set(values["split"]) == {"validation", "test", "train"}
    table = per_run_table(records()[records()["run"] == 0], iterate="selected")
    assert table.loc[("M", 0), "test loss"] == pytest.approx(0.5)
    assert table.loc[("M", 0), "largest test c"] == pytest.approx(0.02)
    last = per_run_table(records()[records()["run"] == 0])
    assert last.loc[("M", 0), "test loss"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="iterate"):
        per_run_table(records(), iterate="best")
    with pytest.raises(ValueError, match="validation_size"):
        selected_steps(records()[records()["split"] != "validation"])


def test_margin_asks_for_room_inside_the_bound():
    # run 0 on validation: step 10 has largest c = -0.01, step 30 has -0.001 (lower loss). With a
    # margin of 0.005 only step 10 holds with room to spare; with 0.02 none does, and the rule
    # falls back to the smallest largest constraint value (step 10 again, -0.01)
    assert selected_steps(records()).loc[("M", 0), "step"] == 30
    with_margin = selected_steps(records(), margin=0.005)
    assert with_margin.loc[("M", 0), "step"] == 10 and bool(with_margin.loc[("M", 0), "feasible"])
    too_much = selected_steps(records(), margin=0.02)
    assert too_much.loc[("M", 0), "step"] == 10 and not bool(too_much.loc[("M", 0), "feasible"])
    values = selected_values(records(), margin=0.005)
    assert set(values[values["run"] == 0]["step"]) == {10}
    for bad in (-0.01, float("nan"), "0.01"):
        with pytest.raises(ValueError, match="margin"):
            selected_steps(records(), margin=bad)
    # the tables pass the margin on to the rule
    assert held_out_runs(records(), 0.05).loc[("M", 0), "loss"] == pytest.approx(0.5)  # step 30
    assert held_out_runs(records(), 0.05, margin=0.005).loc[("M", 0), "loss"] == pytest.approx(0.6)  # step 10
    assert held_out_table(records()[records()["run"] == 0], 0.05, margin=0.005).loc["M", "loss"] == pytest.approx(0.6)
