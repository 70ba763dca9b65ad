"""Bad input is caught before any work starts, with a message naming the argument, the value and
the fix; no finished record is lost; data are checked at load; state dicts are checked before
they are loaded. (Processes left behind: tests/test_processes.py.)"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import hctrain.data as hd
import hctrain.runner as hr
from hctrain.algorithms import (GDA, SPBM, SSLALM, Adam, FairretRegularized, LinearizedALM,
                                StochasticGhost, SwitchingSubgradient)
from hctrain.checks import check_parameters
from hctrain.data import (ACS_CACHE_FILE, DUTCH_FILE, BalancedGroupSampler, DataPathError,
                          DataUnavailableError, MissingValuesError, load_acsincome, load_dutch_census)
from hctrain.runner import (RecordsNotSavedError, RunFailedError, RunInterrupted, load_records,
                            run)
from hctrain.task import FairnessTask

NAN = float("nan")


@pytest.fixture(scope="module")
def va():
    return load_acsincome("VA", download=False, verbose=False)


@pytest.fixture(scope="module")
def task(va) -> FairnessTask:
    return FairnessTask(va, bound=0.05)


@pytest.fixture(scope="module")
def va_rows() -> pd.DataFrame:
    """Virginia's rows of the offline cache, for writing damaged copies of it."""
    table = pd.read_parquet(hd.SHARED_DATA_DIR / ACS_CACHE_FILE)
    return table[table["ST"] == 51].reset_index(drop=True)


# --- loaders ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(year="abc"), r"year must be an integer, got 'abc' \(str\)"),
    (dict(year=None), r"year must be an integer, got None"),
    (dict(year=NAN), r"year must be an integer, got nan"),
    (dict(year=2018.9), r"year must be an integer, got 2018.9.*not rounded"),
    (dict(year=2018.0), r"year must be an integer, got 2018.0"),
    (dict(year=True), r"year must be an integer, got True"),
    (dict(year=2030), r"year 2030 does not exist yet.*latest possible"),
    (dict(year=2020), r"year 2020 has no standard ACS 1-Year PUMS.*2019 or 2021"),
    (dict(test_size="0.2"), r"test_size.*got '0.2' \(str\); pass the number itself, 0.2"),
    (dict(test_size=NAN), r"test_size.*\(0, 1\), got nan"),
    (dict(max_groups=2.5), r"max_groups must be an integer >= 2, got 2.5"),
    (dict(max_groups="3"), r"max_groups must be an integer >= 2, got '3' \(str\)"),
    (dict(seed=-1), r"seed must be an integer in \[0, 4294967295\], got -1"),
    (dict(seed="a"), r"seed must be an integer.*got 'a' \(str\)"),
    (dict(seed=NAN), r"seed must be an integer.*got nan"),
    (dict(seed=2**32), r"seed must be an integer in \[0, 4294967295\]"),
    (dict(state=51), r"state must be a non-empty string, got 51 \(int\)"),
    (dict(protected=None), r"unknown protected attribute None"),
    (dict(download="no"), r"download must be True or False, got 'no' \(str\)"),
    (dict(verbose=1), r"verbose must be True or False, got 1 \(int\)"),
    (dict(drop_missing=None), r"drop_missing must be True or False"),
])
def test_load_acsincome_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_acsincome(**{"download": False, "verbose": False, **kwargs})


def test_explicit_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataPathError, match=rf"data_dir: the folder {missing} does not exist"):
        load_acsincome(download=False, verbose=False, data_dir=missing)
    with pytest.raises(DataPathError, match="data_dir"):
        load_acsincome(download=True, verbose=False, data_dir=missing)
    assert not missing.exists()  # not created by the download either
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataPathError, match="is a file, not a folder"):
        load_acsincome(download=False, verbose=False, data_dir=a_file)


def test_data_dir_environment_variable_that_does_not_exist(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HCTRAIN_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataPathError, match=r"HCTRAIN_DATA_DIR \(environment variable\).*does not exist"):
        load_acsincome(download=False, verbose=False)
    with pytest.raises(DataPathError, match="HCTRAIN_DATA_DIR"):
        load_dutch_census(verbose=False)


def test_cache_name_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / ACS_CACHE_FILE).mkdir()
    with pytest.raises(DataUnavailableError, match=rf"{ACS_CACHE_FILE} is a folder, not the data file"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)


def test_corrupt_cache_names_the_file(tmp_path: Path, va_rows: pd.DataFrame) -> None:
    path = tmp_path / ACS_CACHE_FILE
    va_rows.to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\0" * 64 + data[164:])  # a damaged page header
    with pytest.raises(DataUnavailableError, match=rf"cannot read {path}: it is damaged.*Restore the file"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)
    path.write_bytes(b"not a parquet file")
    os.utime(path, ns=(2, 2))
    with pytest.raises(DataUnavailableError, match=rf"cannot read {path}"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)


def test_incomplete_cache_names_the_column(tmp_path: Path, va_rows: pd.DataFrame) -> None:
    path = tmp_path / ACS_CACHE_FILE
    va_rows.drop(columns="ST").to_parquet(path)
    with pytest.raises(DataUnavailableError, match=rf"{path} is incomplete: it has no column ST"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)
    os.utime(path, ns=(1, 1))
    va_rows.assign(WKHP=va_rows["WKHP"].astype(str)).to_parquet(path)
    with pytest.raises(DataUnavailableError, match=r"column WKHP holds text"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)


def test_missing_values_are_an_error_or_dropped_on_request(tmp_path: Path, va_rows: pd.DataFrame) -> None:
    rows = va_rows.copy()
    rows.loc[:9, "AGEP"] = np.nan
    rows.loc[5:14, "WKHP"] = np.inf
    rows.to_parquet(tmp_path / ACS_CACHE_FILE)
    with pytest.raises(MissingValuesError, match=r"15 of 21,301 rows have missing or infinite values "
                                                 r"\(AGEP: 10, WKHP: 10\).*drop_missing=True"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)
    data = load_acsincome(download=False, verbose=False, data_dir=tmp_path, drop_missing=True)
    assert len(data.y_train) + len(data.y_test) == 21_301 - 15
    assert "15 rows with missing or infinite values dropped (AGEP: 10, WKHP: 10)" in data.source
    assert bool(torch.isfinite(data.X_train).all()) and bool(torch.isfinite(data.X_test).all())


def test_labels_must_be_binary(tmp_path: Path, va_rows: pd.DataFrame) -> None:
    va_rows.assign(label=va_rows["label"] * 2).to_parquet(tmp_path / ACS_CACHE_FILE)
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, found \[2\]"):
        load_acsincome(download=False, verbose=False, data_dir=tmp_path)


def test_dutch_explicit_path_is_never_replaced(tmp_path: Path) -> None:
    assert (hd.SHARED_DATA_DIR / DUTCH_FILE).is_file()  # a fallback would exist
    with pytest.raises(DataPathError, match=rf"{tmp_path / DUTCH_FILE} does not exist"):
        load_dutch_census(path=tmp_path, verbose=False)
    with pytest.raises(DataPathError, match="does not exist"):
        load_dutch_census(path=tmp_path / "nowhere", verbose=False)
    with pytest.raises(DataPathError, match="does not exist"):
        load_dutch_census(path=tmp_path / "other.parquet", verbose=False)


def test_dutch_missing_values(tmp_path: Path) -> None:
    table = pd.read_parquet(hd.SHARED_DATA_DIR / DUTCH_FILE)
    table.loc[:2, "age"] = None
    table.to_parquet(tmp_path / DUTCH_FILE)
    with pytest.raises(MissingValuesError, match=r"3 of 60,420 rows have missing values \(age: 3\)"):
        load_dutch_census(path=tmp_path, verbose=False)
    data = load_dutch_census(path=tmp_path, verbose=False, drop_missing=True)
    assert "3 rows with missing values dropped" in data.source
    with pytest.raises(ValueError, match="seed"):
        load_dutch_census(seed=-1, verbose=False)
    with pytest.raises(ValueError, match="test_size"):
        load_dutch_census(test_size="0.2", verbose=False)


@pytest.mark.parametrize("value, message", [
    (8.7, r"batch_per_group must be an integer >= 1, got 8.7"),
    ("8", r"batch_per_group must be an integer >= 1, got '8' \(str\)"),
    (NAN, r"batch_per_group must be an integer >= 1, got nan"),
    (0, r"batch_per_group must be an integer >= 1, got 0"),
])
def test_sampler_batch_per_group(va, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        BalancedGroupSampler(va.group_train, value, seed=0)


# --- the task --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(bound="0.05"), ValueError, r"bound must be a finite number >= 0, got '0.05' \(str\); pass the number itself"),
    (dict(bound=None), ValueError, r"bound must be a finite number >= 0, got None"),
    (dict(bound=NAN), ValueError, r"bound .*got nan"),
    (dict(bound=-0.1), ValueError, r"bound .*got -0.1"),
    (dict(batch_per_group="8"), ValueError, r"batch_per_group must be an integer >= 1, got '8' \(str\)"),
    (dict(batch_per_group=NAN), ValueError, r"batch_per_group must be an integer >= 1, got nan"),
    (dict(batch_per_group=8.7), ValueError, r"batch_per_group must be an integer >= 1, got 8.7"),
    (dict(constraint="pairs"), ValueError, r"unknown constraint kind 'pairs'"),
    (dict(model_fn=3), TypeError, r"model_fn must be a callable"),
    (dict(statistic="TPR"), TypeError, r"statistic must be a fairret LinearFractionalStatistic"),
])
def test_fairness_task_bad_arguments(va, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        FairnessTask(va, **kwargs)


def test_fairness_task_needs_fairness_data() -> None:
    with pytest.raises(TypeError, match="data must be a FairnessData"):
        FairnessTask({"X": 1})


# --- the runner: checks before any work --------------------------------------------------------

class Counting(Adam):
    """Adam that counts its steps, to show that nothing trained."""

    steps = 0

    def step(self, problem):
        type(self).steps += 1
        return super().step(problem)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threads=0), r"threads \(per run\) must be an integer >= 1, got 0"),
    (dict(threads=1.5), r"threads .*got 1.5"),
    (dict(n_jobs=0), r"n_jobs \(runs at once\) must be an integer >= 1, got 0"),
    (dict(n_runs=2.0), r"n_runs must be an integer >= 1, got 2.0"),
    (dict(seed=-1), r"seed must be an integer in \[0, 4294967295\], got -1"),
    (dict(seed="a"), r"seed must be an integer.*'a' \(str\)"),
    (dict(seed=NAN), r"seed must be an integer.*nan"),
    (dict(max_steps=2.5), r"max_steps must be an integer >= 1, got 2.5"),
    (dict(budget_s="1"), r"budget_s .*got '1' \(str\); pass the number itself, 1"),
    (dict(budget_s=NAN), r"budget_s .*got nan"),
    (dict(budget_s=-1), r"budget_s .*got -1"),
    (dict(max_steps=5, eval_every_steps=0), r"eval_every_steps must be an integer >= 1, got 0"),
    (dict(eval_every_s=-1.0), r"eval_every_s must be a finite number > 0"),
    (dict(progress="no"), r"progress must be True or False"),
    (dict(separate_constraint_sampler=1), r"separate_constraint_sampler must be True or False"),
    (dict(name=3), r"name must be a string"),
    (dict(hyper=dict(lr="1e-3")), r"lr must be a finite number > 0, got '1e-3' \(str\)"),
])
def test_run_bad_arguments_fail_before_training(task, kwargs, message) -> None:
    Counting.steps = 0
    with pytest.raises(ValueError, match=message):
        run(task, Counting, **{"max_steps": 3, "n_runs": 1, "progress": False, **kwargs})
    assert Counting.steps == 0


def test_run_on_a_bare_problem_is_a_clear_error(task) -> None:
    with pytest.raises(TypeError, match=r"run takes a task, not a problem \(StochasticProblem\).*ProblemTask.*own loop"):
        run(task.problem(0), Adam, max_steps=3, n_runs=1, progress=False)
    with pytest.raises(TypeError, match="hyper must be a dict"):
        run(task, Adam, hyper=[("lr", 0.1)], max_steps=3, n_runs=1, progress=False)


def test_bad_output_paths_fail_before_training(task, tmp_path: Path) -> None:
    Counting.steps = 0
    regular = tmp_path / "a_file"
    regular.write_text("x")
    cases = [
        (tmp_path, IsADirectoryError, "is a folder; give a file name inside it"),
        (regular / "records.parquet", NotADirectoryError, "is a file, so .* cannot be created under it"),
        (regular / "deeper" / "records.parquet", NotADirectoryError, "is a file"),
    ]
    if sys.platform.startswith("linux"):  # /proc takes no files, not even from root
        cases.append((Path("/proc/hctrain-test/records.parquet"), PermissionError, "cannot create the folder"))
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases.append((locked / "records.parquet", PermissionError, "cannot write in"))
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            run(task, Counting, max_steps=3, n_runs=2, path=path, progress=False)
    assert Counting.steps == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a_file"] + (["locked"] if os.geteuid() != 0 else []))


def test_a_failed_save_keeps_every_finished_run(task, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out" / "records.parquet"
    real = pd.DataFrame.to_parquet
    calls = []

    def full_disk(self, target, *args, **kwargs):
        target = Path(target)
        if target.parent == path.parent:
            calls.append(target)
            if len(calls) >= 2:  # the second save fails half-way
                target.write_bytes(b"half")
                raise OSError(28, "No space left on device")
        return real(self, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(RecordsNotSavedError, match=rf"could not write the records to {path}.*No space left.*"
                                                   r"the 2 finished runs are in \S+hctrain-Adam-\S+\.parquet") as info:
        run(task, Adam, max_steps=4, eval_every_steps=2, n_runs=3, path=path, progress=False)
    error = info.value
    assert sorted(error.records["run"].unique()) == [0, 1]
    assert error.fallback is not None and error.fallback.is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(error.fallback), error.records)
    assert sorted(load_records(path)["run"].unique()) == [0]  # the first save stands
    assert [p.name for p in path.parent.iterdir()] == ["records.parquet"]  # no temporary file left
    error.fallback.unlink()


def test_nan_at_evaluation_is_an_error(va, tmp_path: Path) -> None:
    class NanLater(FairnessTask):
        def evaluate(self, model):
            values = super().evaluate(model)
            if self.calls_left == 0:
                values[("test", "c[Widowed]")] = NAN
            self.calls_left -= 1
            return values

    task = NanLater(va)
    task.calls_left = 5  # run 0: 3 evaluations; run 1 fails at its third
    path = tmp_path / "records.parquet"
    with pytest.raises(RunFailedError, match=r"run 1 \(seed 1\), evaluation at step 4: 1 values are not "
                                             r"finite \(test c\[Widowed\] = nan\).*runs \[0\] of 2 finished "
                                             rf"\(saved in {path}\); runs \[1\] did not finish") as info:
        run(task, Adam, max_steps=4, eval_every_steps=2, n_runs=2, path=path, progress=False)
    assert sorted(info.value.records["run"].unique()) == [0]
    assert load_records(path)["value"].notna().all()


def test_ctrl_c_reports_the_saved_runs(task, tmp_path: Path) -> None:
    class Interrupted(Adam):
        def step(self, problem):
            if problem.seed == 2:
                raise KeyboardInterrupt
            return super().step(problem)

    path = tmp_path / "records.parquet"
    with pytest.raises(RunInterrupted, match=rf"interrupted: Interrupted: runs \[0, 1\] of 4 finished "
                                             rf"\(saved in {path}\); runs \[2, 3\] did not finish") as info:
        run(task, Interrupted, max_steps=3, n_runs=4, path=path, progress=False)
    assert isinstance(info.value, KeyboardInterrupt)
    assert sorted(load_records(path)["run"].unique()) == [0, 1]
    with pytest.raises(RunInterrupted, match=r"not saved to a file \(no path given\).*\.records"):
        run(task, Interrupted, max_steps=3, n_runs=4, progress=False)


def test_max_steps_alone_is_step_budgeted(task) -> None:
    records = run(task, Adam, max_steps=200, n_runs=1, progress=False)
    assert sorted(records["step"].unique()) == list(range(0, 201, 2))
    both = run(task, Adam, max_steps=200, budget_s=30.0, eval_every_steps=50, n_runs=1, progress=False)
    assert sorted(both["step"].unique()) == [0, 50, 100, 150, 200]


# --- algorithms ------------------------------------------------------------------------------

def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("make, message", [
    (lambda: Adam(_params(), lr=0), r"lr must be a finite number > 0, got 0; e.g. lr=1e-3"),
    (lambda: Adam(_params(), lr="1e-3"), r"lr .*got '1e-3' \(str\); pass the number itself"),
    (lambda: Adam(_params(), betas=0.9), r"betas must be a pair"),
    (lambda: Adam(_params(), betas=(0.9, 1.0)), r"betas\[1\] must be a number in \[0, 1\)"),
    (lambda: Adam(_params(), eps=0), r"eps must be a finite number > 0, got 0"),
    (lambda: Adam(_params(), eps="1e-8"), r"eps .*'1e-8' \(str\)"),
    (lambda: Adam(_params(), weight_decay="0"), r"weight_decay .*'0' \(str\)"),
    (lambda: Adam(_params(), weight_decay=-1), r"weight_decay must be a finite number >= 0"),
    (lambda: Adam(_params(), m=2.0), r"m \(the number of constraints\) must be an integer >= 1"),
    (lambda: FairretRegularized(_params(), n_groups=2, lr=0), r"lr must be a finite number > 0"),
    (lambda: FairretRegularized(_params(), n_groups=2, p=0), r"p \(of fairret's p-norm\) must be a finite number >= 1, got 0"),
    (lambda: FairretRegularized(_params(), n_groups=2, p=-1), r"p \(of fairret's p-norm\).*got -1"),
    (lambda: FairretRegularized(_params(), n_groups=2, p=NAN), r"p \(of fairret's p-norm\).*got nan"),
    (lambda: FairretRegularized(_params(), n_groups=2, p="0.1"), r"p \(of fairret's p-norm\).*'0.1' \(str\)"),
    (lambda: FairretRegularized(_params(), n_groups=2.0), r"n_groups must be an integer >= 2"),
    (lambda: FairretRegularized(_params(), n_groups=2, weight="1"), r"weight .*'1' \(str\)"),
    (lambda: SPBM(_params(), m=2, eps=0), r"eps must be a finite number > 0, got 0"),
    (lambda: SPBM(_params(), m=2, lr=0), r"lr must be a finite number > 0"),
    (lambda: GDA(_params(), m=2, tau="0.1"), r"lr \(tau\) .*'0.1' \(str\)"),
    (lambda: SSLALM(_params(), m=2, eta=NAN), r"eta must be a finite number > 0, got nan"),
])
def test_algorithm_bad_hyperparameters(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def _stepped(cls, m, model_seed=0, shape=(4, 3), **hyper):
    """An algorithm of ``cls`` after 3 steps on a small problem with m constraints."""
    from hctrain.problem import Batch, StochasticProblem

    torch.manual_seed(model_seed)
    model = torch.nn.Linear(shape[1], shape[0])
    generator = torch.Generator().manual_seed(0)

    class Sampler:
        def __call__(self):
            x = torch.randn(8, shape[1], generator=generator)
            return Batch(x, torch.zeros(8), torch.zeros(8, dtype=torch.long))

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    problem = StochasticProblem(model, lambda out, b: (out ** 2).mean(),
                                lambda out, b: out.mean(0)[:m] - 1.0, m, Sampler())
    algorithm = cls.from_problem(problem, **hyper)
    for _ in range(3):
        algorithm.step(problem)
    return algorithm


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else
               (_same(x, y) if isinstance(x, dict) else x == y)
               for x, y in zip(a.values(), b.values())) and a.keys() == b.keys()


@pytest.mark.parametrize("source, target, message", [
    (lambda: _stepped(SSLALM, 3), lambda: _stepped(GDA, 3), r"this state was saved by SSLALM, not GDA"),
    (lambda: _stepped(SSLALM, 3), lambda: _stepped(LinearizedALM, 3), r"saved by SSLALM, not LinearizedALM"),
    (lambda: _stepped(GDA, 3), lambda: _stepped(Adam, 3), r"saved by GDA, not Adam"),
    (lambda: _stepped(SSLALM, 3), lambda: _stepped(SSLALM, 2), r"the state is for m=3 constraints, this SSLALM has m=2"),
    (lambda: _stepped(GDA, 3), lambda: _stepped(GDA, 2), r"m=3 constraints, this GDA has m=2"),
    (lambda: _stepped(SPBM, 3), lambda: _stepped(SPBM, 2), r"m=3 constraints, this SPBM has m=2"),
    (lambda: _stepped(Adam, 3), lambda: _stepped(Adam, 3, shape=(5, 3)), r"parameter 0 has shape \(5, 3\).*'exp_avg'.*\(4, 3\).*another model"),
    (lambda: _stepped(SSLALM, 3), lambda: _stepped(SSLALM, 3, shape=(5, 3)), r"'anchor'.*another model"),
    (lambda: _stepped(SwitchingSubgradient, 3), lambda: _stepped(SwitchingSubgradient, 3, shape=(5, 3)), r"another model"),
    (lambda: _stepped(StochasticGhost, 2, max_level=1), lambda: _stepped(StochasticGhost, 3, max_level=1), r"saved by|m=|shape"),
])
def test_load_state_dict_refuses_a_foreign_state(source, target, message) -> None:
    saved = source().state_dict()
    algorithm = target()
    before = algorithm.state_dict()
    with pytest.raises(ValueError, match=message):
        algorithm.load_state_dict(saved)
    after = algorithm.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key in before["state"]:
        assert _same(before["state"][key], after["state"][key])


def test_load_state_dict_refuses_an_untagged_state_of_another_algorithm() -> None:
    saved = _stepped(GDA, 3).state_dict()
    del saved["hctrain_algorithm"]  # e.g. a state written by hand, or by an older version
    with pytest.raises(ValueError, match=r"hyperparameters are not SSLALM's.*another algorithm"):
        _stepped(SSLALM, 3).load_state_dict(saved)
    saved = _stepped(SSLALM, 3).state_dict()
    del saved["hctrain_algorithm"], saved["hctrain_m"]
    with pytest.raises(ValueError, match=r"'dual' has shape \(3,\), this SSLALM's has \(2,\): the state is "
                                         r"for m=3 constraints, this SSLALM has m=2"):
        _stepped(SSLALM, 2).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"needs what SSLALM.state_dict\(\) returns"):
        _stepped(SSLALM, 3).load_state_dict({"dual": torch.zeros(3)})


def test_load_state_dict_accepts_its_own_state() -> None:
    for cls, hyper in ((Adam, {}), (GDA, {}), (SSLALM, {}), (SPBM, {}), (SwitchingSubgradient, {}),
                       (StochasticGhost, dict(max_level=1))):
        saved = _stepped(cls, 2, **hyper).state_dict()
        fresh = _stepped(cls, 2, model_seed=1, **hyper)
        fresh.load_state_dict(saved)
        assert fresh.state_dict()["hctrain_algorithm"] == cls.__name__


# --- chapters ---------------------------------------------------------------------------------

def test_chapter_parameters_are_checked() -> None:
    check_parameters(budget_s=3.0, n_runs=2, seed=0, eval_every_s=None, results_dir="../results",
                     algorithms=["Adam"], quick=True, margin=None, calibration_margins=[0.0, 0.02],
                     calibration_methods=["GDA"], calibration_share=0.2)
    check_parameters(margin=0.02)
    for kwargs, message in [(dict(budget_s=-1), r"budget_s must be a finite number > 0, got -1.*-p budget_s"),
                            (dict(n_runs=0), "n_runs"), (dict(n_draws=2.5), "n_draws"),
                            (dict(algorithms=[]), "algorithms"), (dict(state=None), "state"),
                            (dict(margin=-0.01), r"margin must be a finite number >= 0.*or None to calibrate"),
                            (dict(calibration_margins=[0.0, -0.02]), r"calibration_margins\[1\]"),
                            (dict(calibration_margins="[0, 0.02]"), "non-empty list of numbers"),
                            (dict(calibration_share=1.0), "calibration_share")]:
        with pytest.raises(ValueError, match=message):
            check_parameters(**kwargs)
    with pytest.raises(TypeError, match="knows no parameter 'lr'"):
        check_parameters(lr=1e-3)


@pytest.mark.parametrize("make, message", [
    (lambda p: GDA([{"params": p, "tau": "0.1"}], m=2), r"parameter group 0: lr \(tau\) must be a finite number >= 0, got '0.1' \(str\)"),
    (lambda p: SwitchingSubgradient([{"params": p, "eta_f": NAN}], m=2), r"eta_f.*nan"),
    (lambda p: Adam([{"params": p, "lr": 0}]), r"lr must be a finite number > 0, got 0"),
    (lambda p: Adam([{"params": p, "betas": 0.9}]), r"parameter group 0: betas must be a tuple of 2 numbers"),
    (lambda p: SPBM([{"params": p, "eps": 0}], m=2), r"eps must be a finite number > 0, got 0"),
    (lambda p: SSLALM([{"params": p, "mu": -1.0}], m=2), r"mu must be a finite number >= 0, got -1.0"),
])
def test_parameter_group_overrides_are_checked(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make(_params())


def test_task_problem_checks_its_seed(task) -> None:
    for seed in (-1, "a", NAN, 1.5):
        with pytest.raises(ValueError, match="seed must be an integer"):
            task.problem(seed)


def test_gda_dual_follows_the_parameters() -> None:
    gda = GDA([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))], m=2)
    assert gda.dual.dtype == torch.float64 and gda.dual.device.type == "cpu"


def test_check_finite_names_bad_values_with_one_sync():
    from hctrain.algorithms.base import check_finite
    check_finite(3, torch.tensor(0.5), torch.tensor([0.1, -0.2, 0.0]))
    check_finite(2, None, torch.tensor([3e38, 3e38]))  # the sum overflows; every value is finite
    with pytest.raises(ValueError, match=r"not finite at indices \[1\]"):
        check_finite(3, torch.tensor(0.5), torch.tensor([0.1, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="objective is not finite"):
        check_finite(3, torch.tensor(float("inf")), torch.tensor([0.1, 0.2, 0.0]))
    with pytest.raises(ValueError, match="expected 3 values"):
        check_finite(3, None, torch.tensor([0.1, 0.2]))
