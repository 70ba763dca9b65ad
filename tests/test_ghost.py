"""Stochastic Ghost (hctrain.algorithms.ghost).

1. The subproblems against reference solvers on random instances: the direction QP against
   Clarabel (through qpsolvers), the kappa LP against HiGHS; objective and constraint values
   to 1e-6. The level law P(N = n) and its sampler.
2. Convergence on NoisyQuadratic.example() (x* = (1, -0.5, -1.5)) within stated tolerances, and
   three mutations of the MLMC combination that must fail the same check: no correction, the
   correction's sign flipped, the weight 1/P(N) left out.
3. state_dict() / load_state_dict(): resuming mid-run gives the identical trajectory.
4. Bad hyperparameters and bad values raise clear ValueErrors before any state changes.
5. The batched Jacobian equals the row-by-row one and plain autograd.

About 25 s of CPU on one core; the four 400-step convergence runs take most of it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hctrain.algorithms.ghost import (StochasticGhost, _interior_point, box_qp, ghost_kappa,
                                      level_probability, linearized_violation, sample_level,
                                      solve_direction)
from hctrain.problem import Batch, StochasticProblem
from hctrain.testing import NoisyQuadratic, Point, checkpoint, restore

torch.set_num_threads(1)


# --- helpers ----------------------------------------------------------------------------------

def random_instance(rng: np.random.Generator, n: int, m: int):
    """(g, c, J, tau, beta, rho): mixed-sign constraint values, some duplicate or zero columns."""
    g = rng.standard_normal(n) * rng.choice([0.1, 1.0])
    J = rng.standard_normal((m, n)) * rng.choice([0.1, 1.0])
    if m > 1 and rng.random() < 0.3:
        J[1] = J[0]  # a duplicate constraint (singular dual Hessian)
    if rng.random() < 0.2:
        J[:, : n // 2] = 0.0
    c = rng.standard_normal(m) * rng.choice([0.1, 1.0, 3.0])
    tau = float(rng.uniform(0.3, 3.0))
    beta = float(rng.uniform(0.05, 3.0))
    rho = float(rng.uniform(0.02, 1.0)) * beta
    return g, c, J, tau, beta, rho


def qp_objective(g, tau, d):
    return float(g @ d + 0.5 * tau * d @ d)


class CountingSampler:
    """Gaussian-noise batches (NoisyQuadratic's layout) that count their draws."""

    def __init__(self, inner):
        self.inner, self.draws = inner, 0

    def __call__(self) -> Batch:
        self.draws += 1
        return self.inner()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class FakeSampler:
    def __call__(self) -> Batch:
        return Batch(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, dtype=torch.long))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fake_problem(m=2, mode=None):
    """x in R^3; f = 1/2|x|^2, c = x[:m] - 1; ``mode`` (a dict, changeable later) breaks them:
    mode["loss"] / mode["constraint"] replace the values, mode["length"] changes len(c)."""
    mode = {} if mode is None else mode
    model = Point(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))

    def loss(x, batch):
        f = 0.5 * (x ** 2).sum()
        return f if "loss" not in mode else f * 0 + mode["loss"]

    def constraints(x, batch):
        c = x[: mode.get("length", m)] - 1.0
        return c if "constraint" not in mode else c * 0 + mode["constraint"]

    return StochasticProblem(model, loss, constraints, m, FakeSampler())


# --- level law ---------------------------------------------------------------------------------

@pytest.mark.parametrize("max_level", [6, 2, None])
def test_level_law(max_level):
    p = 0.4
    top = 30 if max_level is None else max_level
    probs = np.array([level_probability(p, n, max_level) for n in range(top + 1)])
    if max_level is not None:
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    else:
        assert probs[0] == pytest.approx(p) and probs[3] == pytest.approx(p * 0.6 ** 3)
    gen = torch.Generator().manual_seed(1)
    draws = np.array([sample_level(gen, p, max_level) for _ in range(20_000)])
    assert draws.min() >= 0 and (max_level is None or draws.max() <= max_level)
    freq = np.bincount(draws, minlength=top + 1)[: top + 1] / draws.size
    # 20,000 draws: binomial standard error <= 0.0035, tolerance ~3 sigma
    assert np.max(np.abs(freq - probs)) < 0.011


# --- subproblems against the reference solvers -----------------------------------------------

def test_kappa_lp_against_highs_and_closed_form():
    rng = np.random.default_rng(0)
    worst = 0.0
    shapes = [(int(rng.integers(1, 25)), int(rng.integers(1, 8))) for _ in range(60)]
    shapes += [(3, 9), (40, 60), (70, 55)]  # m > n, and the m > 50 interior-point LP
    for n, m in shapes:
        _, c, J, _, _, rho = random_instance(rng, n, m)
        t, d = linearized_violation(c, J, rho)
        t_ref, _ = linearized_violation(c, J, rho, method="highs")
        # d attains t and lies in the rho-box
        assert np.max(np.abs(d)) <= rho + 1e-15
        assert t == pytest.approx(max(np.max(c + J @ d), 0.0), abs=1e-15)
        worst = max(worst, abs(t - t_ref))
        # kappa with rho and lam in their places
        kappa = ghost_kappa(c, J, rho, 0.3)
        assert kappa == pytest.approx(0.7 * max(c.max(), 0.0) + 0.3 * t, abs=1e-15)
    assert worst < 1e-7, worst
    # m = 1: t* = (c - rho ||a||_1)_+
    for _ in range(20):
        n = int(rng.integers(1, 30))
        a, c, rho = rng.standard_normal((1, n)), rng.standard_normal(1) * 3, float(rng.uniform(0.01, 1))
        t, _ = linearized_violation(c, a, rho)
        assert t == pytest.approx(max(c[0] - rho * np.abs(a).sum(), 0.0), abs=1e-8)


def test_direction_qp_against_clarabel():
    """Dual Newton (m <= 50) and interior point + polish (m > 50) vs Clarabel on the primal QP."""
    rng = np.random.default_rng(1)
    shapes = [(int(rng.integers(1, 30)), int(rng.integers(1, 10))) for _ in range(50)]
    shapes += [(3, 7), (2, 12), (1, 5), (60, 55), (40, 70)]  # m > n, and the m > 50 path
    worst_obj = worst_con = 0.0
    active = at_box = 0
    for n, m in shapes:
        g, c, J, tau, beta, rho = random_instance(rng, n, m)
        kappa = ghost_kappa(c, J, rho, 0.5)
        d, u = solve_direction(g, c, J, kappa, tau, beta)
        d_ref, _ = solve_direction(g, c, J, kappa, tau, beta, solver="clarabel")
        assert np.max(np.abs(d)) <= beta
        assert np.max(c + J @ d - kappa) <= 1e-8 * (1 + abs(kappa))  # feasible
        # objective and constraint values c + J d against the reference
        worst_obj = max(worst_obj, abs(qp_objective(g, tau, d) - qp_objective(g, tau, d_ref)))
        worst_con = max(worst_con, np.max(np.abs((c + J @ d) - (c + J @ d_ref))))
        active += bool(np.any(u > 0))
        at_box += bool(np.any(np.abs(d) == beta))
    assert worst_obj < 1e-6 and worst_con < 1e-6, (worst_obj, worst_con)
    # the instances exercise both kinds of constraint: linearized rows and the trust region
    assert active >= 15 and at_box >= 15, (active, at_box)


def test_interior_point_alone_against_clarabel():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 10))
        g, c, J, tau, beta, rho = random_instance(rng, n, m)
        kappa = ghost_kappa(c, J, rho, 0.5)
        z, _, ok = _interior_point(g, tau, J, kappa - c, np.full(n, -beta), np.full(n, beta))
        d_ref, _ = solve_direction(g, c, J, kappa, tau, beta, solver="clarabel")
        assert ok
        assert abs(qp_objective(g, tau, z) - qp_objective(g, tau, d_ref)) < 1e-6
        assert np.max(np.abs(J @ z - J @ d_ref)) < 1e-6


def test_box_qp_reports_exactness_and_uses_warm_start():
    rng = np.random.default_rng(3)
    g, c, J, tau, beta, rho = random_instance(rng, 20, 4)
    h = ghost_kappa(c, J, rho, 0.5) - c
    lb, ub = np.full(20, -beta), np.full(20, beta)
    z, u, exact = box_qp(g, tau, J, h, lb, ub)
    z2, u2, exact2 = box_qp(g, tau, J, h, lb, ub, u0=u)  # already optimal: no iteration
    assert exact and exact2 and np.array_equal(z, z2) and np.array_equal(u, u2)


# --- the step -------------------------------------------------------------------------------

def test_step_draws_and_info():
    """One step draws 1 + 2^(N+1) samples (2 draws each without shared samples); info fields."""
    q = NoisyQuadratic.example()
    for separate in (False, True):
        prob = q.problem(seed=0, separate_constraint_sampler=separate)
        prob.objective_sampler = CountingSampler(prob.objective_sampler)
        if separate:
            prob.constraint_sampler = CountingSampler(prob.constraint_sampler)
        else:
            prob.constraint_sampler = prob.objective_sampler
        algo = StochasticGhost.from_problem(prob, gamma0=0.3, zeta=0.5, max_level=3)
        total = 0
        for k in range(5):
            info = algo.step(prob)
            N = int(info["N"])
            total += 1 + 2 ** (N + 1)
            assert prob.objective_sampler.draws == total
            if separate:
                assert prob.constraint_sampler.draws == total
            assert float(info["gamma"]) == pytest.approx(0.3 / (k + 1) ** 0.5)
            assert float(info["weight"]) == pytest.approx(1 / level_probability(0.4, N, 3))
            assert info["loss"].shape == () and info["constraints"].shape == (2,)
            assert all(not v.requires_grad for v in info.values())
        assert algo.iteration == 5


def test_correction_vanishes_when_direction_is_linear_in_the_data():
    """With no active constraint and no clipping, d(S) = -grad f(S)/tau is linear in the sample
    average, so d_full = (d_odd + d_even)/2 and the step is gamma * d_0 exactly.

    tau = 10 keeps the step short: far inside the constraints (x0 = -5 (1,1,1), C(x0) = (-10.5, -8)),
    a step -grad f / tau ~ (0.7, 0.6, -0.4) does not reach them, whereas with tau = 1 the step
    ~ a - x0 = (7, 6, -4) would cross the first one. The spy checks that premise: every subproblem
    has zero multipliers (no active row) and no coordinate at the trust region."""
    q = NoisyQuadratic.example()
    prob = q.problem(seed=3, x0=torch.tensor([-5.0, -5.0, -5.0]))
    seen = {"multipliers": [], "directions": []}

    class Spy(StochasticGhost):
        def subproblem_direction(self, g, c, J, u0=None):
            d, u, kappa = super().subproblem_direction(g, c, J, u0)
            seen["multipliers"].append(u)
            seen["directions"].append(d)
            return d, u, kappa

        def combine(self, d0, d_full, d_odd, d_even, prob):
            seen["correction"] = d_full - 0.5 * (d_odd + d_even)
            seen["d0"] = d0
            return super().combine(d0, d_full, d_odd, d_even, prob)

    algo = Spy.from_problem(prob, tau=10.0)
    x0 = prob.params[0].detach().clone()
    info = algo.step(prob)
    assert len(seen["multipliers"]) == 4
    assert all(np.all(u == 0.0) for u in seen["multipliers"])           # no active constraint
    assert all(np.max(np.abs(d)) < 10.0 for d in seen["directions"])    # no clipping (beta = 10)
    assert np.max(np.abs(seen["correction"])) < 1e-12
    step = (prob.params[0].detach() - x0).numpy()
    assert np.allclose(step, float(info["gamma"]) * seen["d0"], atol=1e-12)


def small_mlp_problem(m_groups=3, seed=5):
    """The paper's MLP (float32) on random rows, 3 groups, constraints PR_g - PR - 0.02."""
    from hctrain.models import paper_mlp
    torch.manual_seed(0)
    X, y = torch.randn(64, 8), (torch.rand(64) > 0.5).float()
    group = torch.arange(64) % m_groups

    class Rows:
        def __init__(self, seed):
            self.generator = torch.Generator().manual_seed(seed)

        def __call__(self):
            idx = torch.randint(0, 64, (16,), generator=self.generator)
            return Batch(X[idx], y[idx], group[idx])

        def state_dict(self):
            return {"g": self.generator.get_state()}

        def load_state_dict(self, s):
            self.generator.set_state(s["g"])

    def constraints(logits, batch):
        p = torch.sigmoid(logits)
        onehot = torch.nn.functional.one_hot(batch.group, m_groups).to(p.dtype)
        rate = (onehot.T @ p) / onehot.sum(0).clamp(min=1)
        return rate - p.mean() - 0.02

    torch.manual_seed(1)
    model = paper_mlp(8)
    loss = lambda logits, b: torch.nn.functional.binary_cross_entropy_with_logits(logits, b.y)
    return StochasticProblem(model, loss, constraints, m_groups, Rows(seed))


def test_batched_jacobian_equals_loop_and_autograd():
    """The one batched backward (is_grads_batched) gives the Jacobian that one backward pass per
    row gives, and each row is the gradient of that output alone (plain autograd)."""
    prob = small_mlp_problem()
    batch_a, batch_b = prob.sample_objective(), prob.sample_objective()

    def outputs():  # f, c on batch a, then their average over batches a and b (a fresh graph)
        fa, ca = prob.objective_and_constraints(batch_a)
        fb, cb = prob.objective_and_constraints(batch_b)
        return torch.cat([fa.reshape(1), ca, (0.5 * (fa + fb)).reshape(1), 0.5 * (ca + cb)])

    jacs = {jacobian: StochasticGhost.from_problem(prob, jacobian=jacobian)._jacobian(outputs(), prob.params)
            for jacobian in ("batched", "loop")}
    rows = outputs().numel()
    assert jacs["batched"].shape == (rows, sum(p.numel() for p in prob.params))
    assert torch.allclose(jacs["batched"], jacs["loop"], atol=1e-6, rtol=1e-5)
    for i in range(rows):
        row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(outputs()[i], prob.params)])
        assert torch.allclose(jacs["batched"][i], row, atol=1e-6, rtol=1e-5), i
    assert not torch.allclose(jacs["batched"][1], jacs["batched"][5])  # rows differ: a real test


def test_batched_and_loop_jacobians_give_the_same_steps():
    results = []
    for jacobian in ("batched", "loop"):
        prob = small_mlp_problem()
        algo = StochasticGhost.from_problem(prob, jacobian=jacobian)
        for _ in range(3):
            algo.step(prob)
        results.append(torch.cat([p.detach().reshape(-1) for p in prob.params]))
    assert torch.allclose(results[0], results[1], atol=1e-5, rtol=0)


# --- convergence and its mutations -------------------------------------------------------------
#
# NoisyQuadratic.example(): x* = (1, -0.5, -1.5), both constraints active, sigma = 0.3, one noise
# row per sample. The single-sample SQP direction d_0 is biased: kappa >= (1 - lam) max_i (c_i)_+
# is positive whenever a noisy c_i is, so the one-sample QP lets the step into the infeasible side;
# the plain method (d = d_0) settles about 0.33 from x*, 0.4 outside the constraints. The MLMC
# correction with weight 1/P(N) makes E[d] the direction of the QP on the 2^(L+1)-sample average
# (L = max_level), which keeps a smaller bias: (c)_+ of an average of 2^(L+1) samples shrinks like
# 1/sqrt(2^(L+1)), which predicts ~0.33/sqrt(32) = 0.06 at L = 4, as measured. The paper's
# gamma0 = 0.05, zeta = 0.05 barely move in a few hundred steps; gamma_k = 1/(k+1)^0.75
# (sum gamma = inf, sum gamma^2 < inf) converges.
#
# Measured with these settings (average of x_k over the second half of 400 steps):
#   correct, seeds 0-4: ||x_avg - x*|| 0.055 0.047 0.118 0.100 0.047, max_i C_i(x_avg) <= 0.143
#   seed 0, the one tested:                          0.055 and 0.073
#   no correction (d = d_0):                         0.341 and 0.472
#   correction with the sign flipped:                0.588 and 0.825
#   correction without the weight 1/P(N) (weight 1): 0.264 and 0.363
# (seeds 1 and 2, measured at 300-600 steps: the same picture)

STEPS = 400
HYPER = dict(gamma0=1.0, zeta=0.75, max_level=4)
DIST_TOL = 0.15   # ||mean of x_k over k > STEPS/2  -  x*||
FEAS_TOL = 0.2    # max_i C_i(mean iterate)


def run_noisy_quadratic(cls, seed=0):
    """(||x_avg - x*||, max_i C_i(x_avg)), x_avg the mean iterate over the second half."""
    q = NoisyQuadratic.example()
    prob = q.problem(seed=seed)
    algo = cls.from_problem(prob, **HYPER)
    total = torch.zeros(q.n, dtype=torch.float64)
    for k in range(STEPS):
        algo.step(prob)
        if k >= STEPS // 2:
            total += prob.params[0].detach()
    x_avg = total / (STEPS - STEPS // 2)
    return float((x_avg - q.x_star).norm()), float(q.constraint_value(x_avg).max())


def test_convergence_on_noisy_quadratic():
    dist, violation = run_noisy_quadratic(StochasticGhost)
    assert dist <= DIST_TOL, f"distance of the mean iterate to x*: {dist:.3f} > {DIST_TOL}"
    assert violation <= FEAS_TOL, f"max constraint at the mean iterate: {violation:.3f} > {FEAS_TOL}"


class WithoutCorrection(StochasticGhost):
    """The plain single-sample SQP direction d_0: the bias that the MLMC term removes."""

    def combine(self, d0, d_full, d_odd, d_even, prob):
        return d0


class FlippedCorrection(StochasticGhost):
    """A sign error: d_0 - (d_full - (d_odd + d_even)/2) / P(N)."""

    def combine(self, d0, d_full, d_odd, d_even, prob):
        return d0 - (d_full - 0.5 * (d_odd + d_even)) / prob


class UnweightedCorrection(StochasticGhost):
    """The weight 1/P(N) forgotten: d_0 + d_full - (d_odd + d_even)/2."""

    def combine(self, d0, d_full, d_odd, d_even, prob):
        return d0 + (d_full - 0.5 * (d_odd + d_even))


@pytest.mark.parametrize("mutant", [WithoutCorrection, FlippedCorrection, UnweightedCorrection])
def test_mutations_fail_the_convergence_check(mutant):
    dist, violation = run_noisy_quadratic(mutant)
    assert not (dist <= DIST_TOL and violation <= FEAS_TOL), (dist, violation)
    assert dist > 1.5 * DIST_TOL and violation > 1.5 * FEAS_TOL, (dist, violation)  # not a near miss


def test_combine_is_the_mlmc_formula():
    """The combination itself, on numbers: d_0 + (d_full - (d_odd + d_even)/2) / P(N)."""
    algo = StochasticGhost([torch.nn.Parameter(torch.zeros(2))], m=1)
    d = algo.combine(np.array([1.0, 2.0]), np.array([3.0, 5.0]), np.array([1.0, 1.0]), np.array([2.0, 4.0]), 0.25)
    assert np.allclose(d, [1.0 + 4 * 1.5, 2.0 + 4 * 2.5])


def test_clarabel_solver_gives_the_same_steps():
    """solver="clarabel" (primal QP by Clarabel, kappa LP by HiGHS) and the default dual solver
    take the same steps, to solver accuracy."""
    q = NoisyQuadratic.example()
    xs = []
    for solver in ("dual", "clarabel"):
        prob = q.problem(seed=5)
        algo = StochasticGhost.from_problem(prob, solver=solver, gamma0=0.5, max_level=2)
        for _ in range(5):
            algo.step(prob)
        xs.append(prob.params[0].detach().clone())
    assert torch.allclose(xs[0], xs[1], atol=1e-6, rtol=0), xs


# --- state round trip ---------------------------------------------------------------------------

@pytest.mark.parametrize("separate", [False, True])
def test_state_dict_round_trip(separate):
    """k steps, save (through bytes), resume in objects built with OTHER settings (default
    hyperparameters, another problem seed), k more steps: the same iterate, bit for bit, as 2k
    uninterrupted steps; the hyperparameters and the level generator come back with the state."""
    q = NoisyQuadratic.example()
    hyper = dict(seed=7, gamma0=0.3, zeta=0.7, max_level=3, tau=2.0)
    k = 8

    prob = q.problem(seed=4, separate_constraint_sampler=separate)
    algo = StochasticGhost.from_problem(prob, **hyper)
    levels_full = [int(algo.step(prob)["N"]) for _ in range(2 * k)]
    x_full, state_full = prob.params[0].detach().clone(), algo.state_dict()

    prob = q.problem(seed=4, separate_constraint_sampler=separate)
    algo = StochasticGhost.from_problem(prob, **hyper)
    levels = [int(algo.step(prob)["N"]) for _ in range(k)]
    saved = checkpoint(prob, algo)
    prob = q.problem(seed=99, separate_constraint_sampler=separate)
    algo = StochasticGhost.from_problem(prob)  # defaults: seed 0, gamma0 0.5, zeta 0.6, ...
    restore(saved, prob, algo)
    group = algo.param_groups[0]
    assert (group["seed"], group["lr"], group["zeta"], group["max_level"], group["tau"]) == (7, 0.3, 0.7, 3, 2.0)
    levels += [int(algo.step(prob)["N"]) for _ in range(k)]
    assert levels == levels_full and len(set(levels)) > 1
    assert torch.equal(prob.params[0].detach(), x_full)
    assert algo.algorithm_state["step"] == state_full["state"]["algorithm"]["step"] == 2 * k
    assert torch.equal(algo.algorithm_state["generator"], state_full["state"]["algorithm"]["generator"])


def test_loaded_state_is_not_shared():
    """Stepping a loaded optimizer leaves the dict it was loaded from unchanged."""
    q = NoisyQuadratic.example()
    prob = q.problem(seed=1)
    algo = StochasticGhost.from_problem(prob)
    algo.step(prob)
    saved = algo.state_dict()
    generator_before = saved["state"]["algorithm"]["generator"].clone()
    other = StochasticGhost.from_problem(prob)
    other.load_state_dict(saved)
    other.step(prob)
    assert torch.equal(saved["state"]["algorithm"]["generator"], generator_before)
    assert saved["state"]["algorithm"]["step"] == 1


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    dict(p=0.0), dict(p=1.5), dict(p=float("nan")), dict(tau=0.0), dict(tau=-1.0),
    dict(beta=0.0), dict(rho=0.0), dict(rho=2.0, beta=1.0), dict(lam=-0.1), dict(lam=1.5),
    dict(gamma0=0.0), dict(zeta=-0.5), dict(seed=1.5), dict(seed=True), dict(max_level=-1),
    dict(max_level=2.0), dict(max_level=40), dict(solver="osqp"), dict(jacobian="forward"),
    dict(tau=float("inf")), dict(lam=float("nan")), dict(p=True), dict(gamma0="0.05"),
])
def test_bad_hyperparameters(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        StochasticGhost([torch.nn.Parameter(torch.zeros(2))], m=1, **bad)


@pytest.mark.parametrize("edge", [
    dict(p=1.0), dict(lam=0.0), dict(lam=1.0), dict(rho=10.0, beta=10.0), dict(zeta=0.0),
    dict(max_level=0), dict(max_level=None), dict(seed=2**40),
])
def test_boundary_hyperparameters_are_accepted_and_step(edge):
    prob = NoisyQuadratic.example().problem(seed=2)
    algo = StochasticGhost.from_problem(prob, **edge)
    info = algo.step(prob)
    assert torch.isfinite(prob.params[0]).all() and algo.iteration == 1
    if edge.get("p") == 1.0 or edge.get("max_level") == 0:
        assert int(info["N"]) == 0 and float(info["weight"]) == 1.0


def test_level_seed_follows_the_problem_seed():
    """from_problem seeds the level generator with problem.seed (set by FairnessTask.problem), so
    the runs of runner.run draw different levels; an explicit seed wins; no problem seed: 0."""
    q = NoisyQuadratic.example()
    levels = {}
    for problem_seed in (None, 3, 4):
        prob = q.problem(seed=0)
        prob.seed = problem_seed
        algo = StochasticGhost.from_problem(prob)
        assert algo.param_groups[0]["seed"] == (0 if problem_seed is None else problem_seed)
        gen = torch.Generator()
        gen.set_state(algo.algorithm_state["generator"])
        levels[problem_seed] = [sample_level(gen, 0.4, 6) for _ in range(30)]
    assert levels[3] != levels[4]
    prob = q.problem(seed=0)
    prob.seed = 3
    assert StochasticGhost.from_problem(prob, seed=11).param_groups[0]["seed"] == 11


def test_needs_m_and_one_group():
    with pytest.raises(ValueError, match="m"):
        StochasticGhost([torch.nn.Parameter(torch.zeros(2))], m=None)
    with pytest.raises(ValueError, match="one parameter group"):
        StochasticGhost([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                         {"params": [torch.nn.Parameter(torch.zeros(2))]}], m=1)


@pytest.mark.parametrize("kind", ["wrong_length", "nan_loss", "inf_constraint", "nan_constraint", "wrong_m"])
def test_bad_values_raise_before_any_change(kind):
    mode = {}
    prob = fake_problem(m=2, mode=mode)
    algo = StochasticGhost.from_problem(prob)
    algo.step(prob)  # a good step first: the state is not the initial one
    bad, match = {
        "wrong_length": ({"length": 3}, "expected 2 values"),
        "nan_loss": ({"loss": float("nan")}, "objective is not finite"),
        "inf_constraint": ({"constraint": float("inf")}, "not finite"),
        "nan_constraint": ({"constraint": float("nan")}, "not finite"),
        "wrong_m": ({}, "m=3"),
    }[kind]
    mode.update(bad)
    if kind == "wrong_m":
        prob = fake_problem(m=3)
    x_before = algo.params[0].detach().clone()
    state_before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in algo.algorithm_state.items()}
    with pytest.raises(ValueError, match=match):
        algo.step(prob)
    assert torch.equal(algo.params[0].detach(), x_before)
    assert algo.algorithm_state["step"] == state_before["step"] == 1
    assert torch.equal(algo.algorithm_state["generator"], state_before["generator"])


def test_fake_problem_steps_when_values_are_fine():
    prob = fake_problem(m=2)
    algo = StochasticGhost.from_problem(prob)
    info = algo.step(prob)
    assert math.isfinite(float(info["loss"])) and algo.iteration == 1
