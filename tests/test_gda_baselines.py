"""GDA on the Lagrangian, and the ports of the Adam and fairret baselines (hctrain.algorithms).

GDA (hctrain/algorithms/gda.py):

    x_{k+1} = x_k - tau * ( grad f(x_k, xi) + J_c(x_k, xi)^T y_k )
    y_{k+1} = clip( y_k + eta * c(x_k, xi), 0, M_y )

y_k depends only on past samples, so J_c(x_k, xi)^T y_k is unbiased with one sample and GDA
converges (in average, with constant steps, to a noise ball) to the KKT point of the noisy
quadratic program of hctrain.testing.
"""
from __future__ import annotations

import math

import pytest
import torch

from hctrain.algorithms import GDA, Adam, FairretRegularized
from hctrain.testing import NoisyQuadratic, checkpoint, restore

Q = NoisyQuadratic.example()
N = 3000
TOL_X, TOL_C, TOL_Y = 0.1, 0.05, 0.25


def averaged_run(algo_factory, n_steps: int = N, seed: int = 0):
    problem = Q.problem(seed=seed, batch_size=4)
    algo = algo_factory(problem)
    x = problem.params[0]
    sum_x, sum_y = torch.zeros_like(x.detach()), torch.zeros(Q.m, dtype=torch.float64)
    for k in range(1, n_steps + 1):
        algo.step(problem)
        if k > n_steps // 2:
            sum_x += x.detach()
            sum_y += algo.dual.double()
    count = n_steps - n_steps // 2
    return sum_x / count, sum_y / count


def test_gda_converges_to_kkt_point():
    # measured (seeds 0-2): ||x - x*|| 0.007-0.014, max_i C_i <= 0.006, ||y - y*|| <= 0.02;
    # the sign-flipped mutant below ends 1.9 from x* with a violation of 2.5
    x, y = averaged_run(lambda p: GDA.from_problem(p))
    assert (x - Q.x_star).norm() <= TOL_X, f"||x - x*|| = {(x - Q.x_star).norm():.4f}"
    assert Q.constraint_value(x).max() <= TOL_C
    assert (y - Q.y_star).norm() <= TOL_Y, f"||y - y*|| = {(y - Q.y_star).norm():.4f}"


class DualDescentGDA(GDA):
    """A mutant: the dual step goes the wrong way (y <- y - eta c), i.e. one sign flipped."""

    def step(self, problem):
        out = super().step(problem)
        with torch.no_grad():
            c = out["constraints"].to(self.dual.dtype)
            eta = self.param_groups[0]["eta"]
            self.dual.add_(c, alpha=-2 * eta).clamp_(0.0, self.param_groups[0]["dual_bound"])
        return out


def test_gda_sign_flip_fails():
    x, y = averaged_run(lambda p: DualDescentGDA.from_problem(p))
    assert (x - Q.x_star).norm() > 3 * TOL_X or Q.constraint_value(x).max() > 3 * TOL_C


def test_unconstrained_adam_is_not_feasible_here():
    # the constraints bind at x*: ignoring them (Adam) lands at a = argmin F, which violates them
    x, _ = averaged_run(lambda p: _AdamWithDual(p.params, lr=0.05), n_steps=2000)
    assert (x - Q.a.double()).norm() < 0.1
    assert Q.constraint_value(x).max() > 0.5


class _AdamWithDual(Adam):
    dual = torch.zeros(Q.m)


@pytest.mark.parametrize("factory", [
    lambda p: GDA.from_problem(p, tau=0.03, eta=0.2, dual_bound=0.7),
    lambda p: Adam(p.params, lr=0.01),
])
def test_state_dict_round_trip(factory):
    k = 30

    def fresh():
        problem = Q.problem(seed=3, batch_size=2)
        return problem, factory(problem)

    problem, algo = fresh()
    for _ in range(k):
        algo.step(problem)
    saved = checkpoint(problem, algo)
    for _ in range(k):
        algo.step(problem)
    problem2, algo2 = fresh()
    restore(saved, problem2, algo2)
    for _ in range(k):
        algo2.step(problem2)
    assert torch.equal(problem.params[0], problem2.params[0])
    if isinstance(algo, GDA):
        assert torch.equal(algo.dual, algo2.dual)
        assert algo.iteration == algo2.iteration == 2 * k


@pytest.mark.parametrize("kwargs, name", [
    (dict(tau=0.0), "tau"), (dict(tau=-1.0), "tau"), (dict(eta=0.0), "eta"),
    (dict(eta=math.nan), "eta"), (dict(dual_bound=0.0), "dual_bound"), (dict(dual_bound=-2.0), "dual_bound"),
])
def test_gda_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GDA([torch.nn.Parameter(torch.zeros(3))], m=2, **kwargs)


def test_gda_bad_values_raise_before_any_change():
    problem = Q.problem(seed=0)
    algo = GDA.from_problem(problem)
    before = problem.params[0].detach().clone()
    problem.constraint_fn = lambda x, batch: torch.full((Q.m,), math.nan, dtype=torch.float64)
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        algo.step(problem)
    assert torch.equal(problem.params[0], before)
    assert torch.equal(algo.dual, torch.zeros(Q.m)) and algo.iteration == 0


@pytest.mark.parametrize("kwargs, name", [(dict(weight=-0.1), "weight"), (dict(n_groups=1), "n_groups")])
def test_fairret_regularized_bad_arguments(kwargs, name):
    args = {"n_groups": 5, "weight": 0.3, **kwargs}
    with pytest.raises(ValueError, match=name):
        FairretRegularized([torch.nn.Parameter(torch.zeros(3))], **args)


def test_gda_step_is_the_lagrangian_gradient_step_bit_for_bit():
    # one backward pass seeded with (1, y) is the gradient of f + y . c, to the last bit
    from hctrain.data import load_acsincome
    from hctrain.task import FairnessTask

    task = FairnessTask(load_acsincome("VA", download=False, verbose=False), bound=0.05, batch_per_group=8)
    problem, twin = task.problem(1), task.problem(1)
    algo = GDA.from_problem(problem, tau=0.05, eta=0.1)
    algo.dual.copy_(torch.tensor([0.3, 0.0, 1.7, 0.2, 2.5]))
    y = algo.dual.clone()
    algo.step(problem)
    batch = twin.sample_objective()
    loss, c = twin.objective_and_constraints(batch)
    grads = torch.autograd.grad(loss + (y * c).sum(), twin.params)
    with torch.no_grad():
        torch._foreach_add_(twin.params, grads, alpha=-0.05)  # x - tau * grad, GDA's update
    for p, q in zip(problem.params, twin.params):
        assert torch.equal(p, q)
    assert torch.equal(algo.dual, (y + 0.1 * c.detach()).clamp(0.0, 100.0))


def test_gda_draws_zeta_from_a_constraint_sampler_of_its_own():
    # with separate samplers, f comes from the objective draw and c from the constraint draw
    problem = NoisyQuadratic.example().problem(seed=0, batch_size=4, separate_constraint_sampler=True)
    twin = NoisyQuadratic.example().problem(seed=0, batch_size=4, separate_constraint_sampler=True)
    out = GDA.from_problem(problem).step(problem)
    xi, zeta = twin.sample_objective(), twin.sample_constraints()
    with torch.no_grad():
        on_zeta, on_xi = twin.constraints(zeta), twin.constraints(xi)
        loss = twin.objective(xi)
    assert torch.equal(out["constraints"], on_zeta) and not torch.equal(on_zeta, on_xi)
    assert torch.equal(out["loss"], loss)
