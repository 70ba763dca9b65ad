"""hctrain.benchmark and hctrain.peers: the contestants do what their libraries' loops do, the
timing protocol reports what it measured, memory counts known sizes, and the benchmark script
runs in smoke mode. (Speed itself is never asserted: that is the benchmark's job.)"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hctrain import benchmark as bench
from hctrain import peers
from hctrain.algorithms import GDA, SSLALM
from hctrain.data import load_acsincome
from hctrain.task import FairnessTask

REPO = Path(__file__).resolve().parents[1]
N_WEIGHTS = 2753  # the paper's network on 9 inputs
HAS_HCT = peers.available()["humancompatible-train"]
HAS_COOPER = peers.available()["cooper-optim"]


@pytest.fixture(scope="module")
def task() -> FairnessTask:
    # the batch mean loss, as the plain torch.optim.Adam loop it is compared with
    return FairnessTask(load_acsincome("VA", download=False, verbose=False), bound=0.05, batch_per_group=8,
                        estimate="batch")


@pytest.fixture(scope="module")
def factory(task) -> bench.ProblemFactory:
    return bench.task_problem(task, pool_size=4)


@pytest.fixture(scope="module")
def violated() -> bench.ProblemFactory:
    """Bound 0: every |PR_g - PR| - 0 > 0 at the start, so the duals must move."""
    data = load_acsincome("VA", download=False, verbose=False)
    return bench.task_problem(FairnessTask(data, bound=0.0, batch_per_group=8, estimate="batch"), pool_size=4)


def contestant(name: str) -> bench.Contestant:
    return next(c for c in bench.CONTESTANTS if c.name == name)


# --- the reference and the peers ---------------------------------------------------------------

def test_reference_is_the_plain_adam_loop(factory):
    problem = factory()
    model = copy.deepcopy(problem.model)
    reference = peers.TorchAdam(problem)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in factory.objective_pool * 2:
        reference.step(problem)
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(batch.x).squeeze(-1), batch.y).backward()
        optimizer.step()
    for p, q in zip(problem.model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_a_missing_peer_is_named_with_the_fix(factory, monkeypatch):
    monkeypatch.setattr(peers, "available", lambda: {"humancompatible-train": False, "cooper-optim": False})
    with pytest.raises(ImportError, match=r'pip install "hctrain\[peers\]"'):
        peers.build("HCT ALM", factory())
    with pytest.raises(ImportError, match="cooper-optim"):
        peers.build("Cooper GDA", factory())
    runners = bench.measure(factory, bench.contestants(["Cooper GDA"]), rounds=1, steps=1, warmup=0)
    assert runners[1].status.startswith("skipped") and "peers" in runners[1].status
    with pytest.raises(ValueError, match="unknown peer"):
        peers.build("Cooper ALM", factory())


@pytest.mark.skipif(not HAS_COOPER, reason="cooper-optim (the peers extra) is not installed")
def test_cooper_gda_takes_a_projected_dual_ascent_step(violated):
    factory = violated
    problem = factory()
    batch = factory.objective_pool[0]
    with torch.no_grad():
        c0 = problem.constraints(batch)
    gda = peers.build("Cooper GDA", problem)
    out = gda.step(problem)
    assert torch.allclose(out["constraints"], c0)
    # simultaneous updates: lambda_1 = max(0, 0 + 0.1 c(x_0)); the primal step used lambda_0 = 0
    assert torch.allclose(gda.multiplier.weight.detach(), (0.1 * c0).clamp(min=0), atol=1e-7)
    assert (c0 > 0).all() and (gda.multiplier.weight > 0).all()
    alone = factory()
    peers.TorchAdam(alone).step(alone)
    for p, q in zip(problem.params, alone.params):
        assert torch.allclose(p, q, atol=1e-7)


@pytest.mark.skipif(not HAS_HCT, reason="humancompatible-train (the peers extra) is not installed")
def test_humancompatible_train_alm_and_ssg(violated):
    factory = violated
    problem = factory()
    with torch.no_grad():
        c0 = problem.constraints(factory.objective_pool[0])
    alm = peers.build("HCT ALM", problem)
    alm.step(problem)
    # inequality ALM: the duals start at 0 and take a projected ascent step of 0.1 c(x_0)
    assert (c0 > 0).all() and torch.allclose(alm.dual.duals, (0.1 * c0).clamp(min=0), atol=1e-7)
    problem = factory()
    ssg = peers.build("HCT SSG", problem)
    ssg.step(problem)
    assert ssg.dual.last_switched_to_constraints == bool(c0.max() > 0)


# --- the timing protocol -------------------------------------------------------------------------

def test_measure_reports_every_contestant_against_the_reference(factory):
    who = bench.contestants(["GDA", "ALM", "SSL-ALM", "SSw", "SPBM", "HCT ALM", "HCT PBM", "HCT SSG",
                             "Cooper GDA"])
    assert who[0].name == bench.REFERENCE
    runners = bench.measure(factory, who, rounds=3, steps=2, warmup=1)
    rows = bench.summarise(factory, runners)
    by = {r["contestant"]: r for r in rows}
    assert by[bench.REFERENCE]["ratio"] == 1.0
    for c in who:
        row = by[c.name]
        if bench.missing_package(c):
            assert row["ratio"] is None and row["status"].startswith("skipped")
        else:
            assert row["status"] == "ok" and row["timed_steps"] == 6 and row["ratio"] > 0
            assert row["median_ms"] > 0 and row["ratio_q25"] <= row["ratio"] <= row["ratio_q75"]
    targets = bench.check_targets(rows)
    names = {(t["contestant"], t["target"]) for t in targets}
    assert ("ALM", "at most 1.2x the torch Adam loop") in names
    assert ("SSL-ALM", "at most 1.5x the torch Adam loop") in names
    assert ("SSw", "no slower than HCT SSG") in names and ("GDA", "at least 1.25x faster than Cooper GDA") in names
    for t in targets:
        if t["value"] is None:
            assert t["met"] is None
        else:
            assert t["met"] == (t["value"] <= t["threshold"] if t["kind"] == "ratio" else t["value"] >= t["threshold"])
    by_name = {(t["contestant"], t["kind"]): t for t in targets}
    alm = by_name[("ALM", "speed-up")]
    if alm["value"] is not None:
        assert alm["value"] == pytest.approx(by["HCT ALM"]["ratio"] / by["ALM"]["ratio"])


def test_measure_needs_the_reference_first_and_valid_counts(factory):
    with pytest.raises(ValueError, match="reference"):
        bench.measure(factory, [contestant("GDA")])
    with pytest.raises(ValueError, match="rounds"):
        bench.measure(factory, bench.contestants(["GDA"]), rounds=0)
    with pytest.raises(ValueError, match="unknown contestant"):
        bench.contestants(["SPBM2"])


def test_a_failing_contestant_is_reported_not_fatal(factory):
    class Broken:
        def __init__(self, problem):
            pass

        def step(self, problem):
            raise RuntimeError("boom")

    who = [contestant(bench.REFERENCE), bench.Contestant("broken", Broken, "hctrain")]
    rows = bench.summarise(factory, bench.measure(factory, who, rounds=2, steps=1, warmup=0))
    assert rows[1]["status"].startswith("failed: RuntimeError: boom") and rows[1]["ratio"] is None


def test_step_times_of_one_contestant(factory):
    out = bench.step_times(factory, contestant("GDA"), budget_s=0.05, max_steps=5)
    assert 1 <= out["steps"] <= 5 and out["mean_ms"] > 0 and out["median_ms"] <= out["p90_ms"] * 1.0000001


# --- memory ---------------------------------------------------------------------------------------

def test_step_memory_counts_the_state_each_method_keeps(factory):
    m = factory.m
    assert bench.step_memory(factory, contestant("GDA"))["state_bytes"] == 4 * m  # the duals
    # Adam: two moments per weight, one float32 step count per parameter tensor (6)
    assert bench.step_memory(factory, contestant(bench.REFERENCE))["state_bytes"] == 8 * N_WEIGHTS + 6 * 4
    # SSL-ALM: duals, slacks, slack anchors (float32 m-vectors), the reset count (int64) and the
    # weights' anchor
    assert bench.step_memory(factory, contestant("SSL-ALM"))["state_bytes"] == 12 * m + 8 + 4 * N_WEIGHTS
    graph = bench.step_memory(factory, contestant("GDA"))["graph_bytes"]
    plain = bench.step_memory(factory, contestant(bench.REFERENCE))["graph_bytes"]
    assert graph > plain > 0  # the constraints save tensors of their own for the backward pass


# --- the problem families ------------------------------------------------------------------------

def test_per_sample_constraints_are_each_examples_scaled_loss():
    data = load_acsincome("VA", download=False, verbose=False)
    factory = bench.per_sample_problems(data, [50], epsilon=0.6, batch_size=32, pool_size=2)[0]
    problem = factory()
    assert factory.m == 50 and not problem.shares_samples
    subsample = factory.constraint_pool[0]
    with torch.no_grad():
        c = problem.constraints(problem.sample_constraints())
        logits = problem.model(subsample.x).squeeze(-1)
    expected = (F.binary_cross_entropy_with_logits(logits, subsample.y, reduction="none") - 0.6) / 50
    assert c.shape == (50,) and torch.allclose(c, expected)
    # GDA evaluates them on the constraint draw (the subsample), not on the objective batch
    gda = GDA.from_problem(problem)
    out = gda.step(problem)
    assert torch.allclose(out["constraints"], expected) and torch.allclose(gda.dual, (0.1 * expected).clamp(0, 100))


def test_fairness_problems_have_k_k_minus_1_constraints():
    problems = bench.fairness_problems(
        lambda k: load_acsincome("CA", protected="POBP", max_groups=k, download=False, verbose=False),
        [3, 4], batch_per_group=4, pool_size=2)
    assert [p.m for p in problems] == [6, 12]
    assert [len(p.objective_pool[0]) for p in problems] == [12, 16]
    problem = problems[1]()
    assert SSLALM.from_problem(problem).step(problem)["constraints"].shape == (12,)


def test_problem_factory_to_device_keeps_the_problem(factory):
    moved = factory.to("cpu")
    assert moved.m == factory.m and moved.device == torch.device("cpu")
    assert torch.equal(moved.objective_pool[0].x, factory.objective_pool[0].x)


# --- the script -----------------------------------------------------------------------------------

def test_benchmark_script_smoke_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "step_time.py"), "--smoke", "--no-pin",
         "--cases", "m5", "--rounds", "1", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "step_time_smoke.md").read_text()
    assert "torch Adam ms/step" in report and "SMOKE RUN" in report
    for name in ("step_time_smoke.csv", "step_time_smoke_targets.csv", "step_time_smoke_rounds.csv"):
        assert (tmp_path / name).stat().st_size > 0
    if HAS_HCT and HAS_COOPER:
        assert "HCT ALM" in report and "Cooper GDA" in report
