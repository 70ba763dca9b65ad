"""SPBM's one-pass CPU kernels (hctrain.algorithms.cpu_kernels) against its tensor operations:
the same numbers bit for bit for every option, both float dtypes and vector lengths that leave
a remainder to every vector width; a non-finite constraint still raises, naming it, before
anything is written."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from hctrain.algorithms import cpu_kernels
from hctrain.algorithms.spbm import SPBM

pytestmark = pytest.mark.skipif(cpu_kernels._kernels() is None, reason="numba is not installed")

OPTIONS = list(itertools.product(["quadratic_logarithmic", "quadratic_reciprocal"], ["stabilised", "diminishing"],
                                 [1.0, 1.7], ["c", "c/p"]))


def _run(kernels: bool, monkeypatch, dtype=torch.float32, m=37, steps=60, **hyper):
    monkeypatch.setenv(cpu_kernels.ENV, "1" if kernels else "0")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 17), nn.ReLU(), nn.Linear(17, 1)).to(dtype)
    A = torch.randn(m, 64, dtype=dtype) / 8
    algo = SPBM(model.parameters(), m=m, lr=0.02, epoch_length=9, **hyper)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(64, 5, generator=gen, dtype=dtype)
        out = model(x).squeeze(1)
        loss = (out - x[:, 0]).pow(2).mean()
        c = A @ torch.sigmoid(out) - 0.05 * torch.arange(m, dtype=dtype) / m  # some satisfied, some violated
        algo.step(loss=loss, constraints=c)
    return algo, model


def _assert_same_run(a, b):
    (algo_a, model_a), (algo_b, model_b) = a, b
    for key in ("dual", "penalty"):
        assert torch.equal(algo_a.algorithm_state[key], algo_b.algorithm_state[key]), key
    for za, zb in zip(algo_a.anchor, algo_b.anchor):
        assert torch.equal(za, zb)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(algo_a.state[p][key], algo_b.state[q][key]), key


@pytest.mark.parametrize("penalty,schedule,delta,psi_at", OPTIONS)
def test_kernels_give_the_tensor_operations_numbers(penalty, schedule, delta, psi_at, monkeypatch):
    hyper = dict(penalty=penalty, schedule=schedule, delta=delta, psi_at=psi_at, gamma=0.8)
    fast = _run(True, monkeypatch, **hyper)
    assert all(flat.kernels for flat in fast[0]._flat.values()) == cpu_kernels.fma_matches_torch()
    slow = _run(False, monkeypatch, **hyper)
    assert not any(flat.kernels for flat in slow[0]._flat.values())
    _assert_same_run(fast, slow)
    # the duals moved away from their bounds, so the comparison says something
    lam = fast[0].dual
    assert ((lam > 1e-4) & (lam < 100)).any()


@pytest.mark.parametrize("dtype,m", [(torch.float64, 37), (torch.float32, 1003), (torch.float64, 1)])
@pytest.mark.parametrize("mu", [1.0, 0.5])
def test_kernels_follow_the_dtype_and_any_length(dtype, m, mu, monkeypatch):
    fast = _run(True, monkeypatch, dtype=dtype, m=m, steps=30, mu=mu)
    slow = _run(False, monkeypatch, dtype=dtype, m=m, steps=30, mu=mu)
    assert fast[0].dual.dtype == dtype
    _assert_same_run(fast, slow)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_constraint_raises_before_anything_is_written(bad, monkeypatch):
    algo, model = _run(True, monkeypatch, steps=5)
    before = {k: algo.algorithm_state[k].clone() for k in ("dual", "penalty")}
    params = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(64, 5)
    out = model(x).squeeze(1)
    c = torch.sigmoid(out)[:37] * 0 + 0.1
    c = torch.cat([c[:11], torch.tensor([bad]), c[12:]])
    with pytest.raises(ValueError, match=r"constraint values are not finite at indices \[11\]"):
        algo.step(loss=out.mean(), constraints=c)
    with pytest.raises(ValueError, match="objective is not finite"):
        algo.step(loss=out.mean() * float("nan"), constraints=torch.sigmoid(out)[:37])
    for k, v in before.items():
        assert torch.equal(algo.algorithm_state[k], v)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert algo.iteration == 5


def test_the_switch_and_what_it_needs():
    assert cpu_kernels.applicable(torch.zeros(3)) == cpu_kernels.enabled()
    assert not cpu_kernels.applicable(torch.zeros(3, dtype=torch.float16))
    assert not cpu_kernels.applicable(torch.zeros(3, dtype=torch.int64))
