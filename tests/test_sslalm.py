"""SSL-ALM and the stochastic linearized ALM (hctrain.algorithms.sslalm).

Convergence is measured on a variant of NoisyQuadratic (n = 3, m = 2, both constraints active,
noisy objective AND noisy constraint Jacobian Z, sigma = 0.3, batch 1) whose solution x* has a
component along the null space d = (1, -1, 1) of the active constraints. (In
NoisyQuadratic.example() x* is orthogonal to d, so the bias of a reused constraint sample only
moves the multipliers, not x.) Reusing one constraint sample adds the biased term
kappa * x = (rho + eta) E[Z^T Z] x = (rho + eta) m sigma^2 x to E[G], so the one-sample method
converges to proj_{Ax<=b}(a / (1 + kappa)) instead of x* = proj(a): 0.38 away with the paper's
hyperparameters. With two samples only eta * m sigma^2 remains (the dual step uses zeta_1 too):
0.04 away.

Theory of SSL-ALM (constant steps) is about a randomly chosen / averaged iterate, not the last
one; the tests check the average of the iterates over the second half of the run (deterministic
given the seeds).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from hctrain.algorithms.sslalm import LinearizedALM, SSLALM
from hctrain.problem import Batch, StochasticProblem
from hctrain.testing import NoisyQuadratic, Point, checkpoint, restore, solve_projection_qp

SIGMA = 0.3
BATCH = 1
N = 2000                 # steps of a convergence run (about 2 s)
TOL_X = 0.15             # || mean of x_k over k > N/2  -  x* ||
TOL_C = 0.05             # max_i C_i(mean iterate) <= TOL_C
TOL_Y = 0.25             # || mean of y_k over k > N/2  -  y* ||


def quadratic(sigma: float = SIGMA) -> NoisyQuadratic:
    a = torch.tensor([3.0, 0.0, 1.0])
    A = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    b = torch.tensor([0.5, -2.0])
    return NoisyQuadratic(a, A, b, sigma)


Q = quadratic()


def run(cls=SSLALM, n_steps: int = N, seed: int = 0, separate: bool = False, **hyper):
    """n_steps steps; returns (algo, problem, mean x over k > n/2, mean y over k > n/2)."""
    problem = Q.problem(seed=seed, batch_size=BATCH, separate_constraint_sampler=separate)
    algo = cls.from_problem(problem, **hyper)
    x = problem.params[0]
    sum_x, sum_y = torch.zeros_like(x.detach()), torch.zeros_like(algo.dual)
    for k in range(1, n_steps + 1):
        algo.step(problem)
        if k > n_steps // 2:
            sum_x += x.detach()
            sum_y += algo.dual
    count = n_steps - n_steps // 2
    return algo, problem, sum_x / count, sum_y / count


def distances(x: Tensor, y: Tensor) -> tuple[float, float, float]:
    return ((x - Q.x_star).norm().item(), Q.constraint_value(x).max().item(),
            (y - Q.y_star).norm().item())


def solved(x: Tensor, y: Tensor) -> bool:
    dx, viol, dy = distances(x, y)
    return dx <= TOL_X and viol <= TOL_C and dy <= TOL_Y


def test_problem_is_the_intended_one():
    assert (Q.y_star > 0.5).all()                                      # both constraints active
    d = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(Q.A @ d, torch.zeros(2, dtype=torch.float64))
    assert abs(float(Q.x_star @ d)) > 0.5                              # x* not orthogonal to d


# --- 1. convergence ---------------------------------------------------------------------------

@pytest.mark.parametrize("separate", [False, True])
def test_converges_to_kkt_point(separate):
    # Measured over seeds 0-7 (shared sampler): ||x - x*|| in [0.034, 0.070], max_i C_i <= 0.022,
    # ||y - y*|| <= 0.106; seed 0 here. The residual distance is the predicted eta m sigma^2 bias
    # (0.041 at the limit) plus noise of the average.
    algo, _, x, y = run(separate=separate)
    dx, viol, dy = distances(x, y)
    assert dx <= TOL_X, f"distance to x* {dx:.4f} > {TOL_X}"
    assert viol <= TOL_C, f"max constraint {viol:.4f} > {TOL_C}"
    assert dy <= TOL_Y, f"distance to y* {dy:.4f} > {TOL_Y}"
    assert (algo.slack >= 0).all()
    assert algo.iteration == N
    assert int(algo.algorithm_state["dual_resets"]) == 0


# --- 2. mutations: the convergence check has teeth --------------------------------------------

def biased_limit(kappa: float) -> Tensor:
    """Limit point when E[G] carries the extra term kappa * x: proj_{Ax <= b}(a / (1 + kappa))."""
    return solve_projection_qp(Q.a / (1 + kappa), Q.A, Q.b)[0]


def test_one_constraint_sample_is_biased_and_fails():
    # one sample reused: kappa = (rho + eta) m sigma^2 / batch = 0.198, the predicted limit is
    # 0.382 from x*; measured (seeds 0-7) 0.352-0.392 from x*.
    algo, _, x, y = run(two_samples=False)
    dx, _, _ = distances(x, y)
    assert not solved(x, y)
    assert dx > 2 * TOL_X
    kappa = (1.0 + 0.1) * Q.m * SIGMA ** 2 / BATCH
    predicted = biased_limit(kappa)
    assert (predicted - Q.x_star).norm() > 2 * TOL_X
    assert (x - predicted).norm() < 0.06, "the one-sample run should land at the biased point"


def test_dual_sign_flip_fails():
    # dual *descent* (eta -> -eta, bypassing validation): y runs away and is reset again and again
    problem = Q.problem(seed=0, batch_size=BATCH)
    algo = SSLALM.from_problem(problem)
    algo.param_groups[0]["eta"] = -0.1
    sum_x, sum_y = 0, 0
    for k in range(1, N + 1):
        algo.step(problem)
        if k > N // 2:
            sum_x = sum_x + problem.params[0].detach()
            sum_y = sum_y + algo.dual
    x, y = sum_x / (N - N // 2), sum_y / (N - N // 2)
    assert not solved(x, y)
    assert distances(x, y)[0] > 5 * TOL_X
    assert int(algo.algorithm_state["dual_resets"]) > 10


# --- the update, term by term, on a deterministic problem --------------------------------------

class Cycle:
    """Deterministic sampler: returns the given rows of noise in turn (round-trips its position)."""

    def __init__(self, rows: list[Tensor]):
        self.rows, self.position = rows, 0
        self.draws = 0

    def __call__(self) -> Batch:
        row = self.rows[self.position % len(self.rows)]
        self.position += 1
        self.draws += 1
        return Batch(row.view(1, -1), torch.zeros(1), torch.zeros(1, dtype=torch.long))

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def noise_row(q: NoisyQuadratic, xi, Z, e) -> Tensor:
    return torch.cat([torch.as_tensor(xi, dtype=torch.float64).flatten(),
                      torch.as_tensor(Z, dtype=torch.float64).flatten(),
                      torch.as_tensor(e, dtype=torch.float64).flatten()])


def fixed_problem(q: NoisyQuadratic, objective_rows, constraint_rows=None, x0=None,
                  constraint_fn=None, loss_fn=None) -> StochasticProblem:
    x0 = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64) if x0 is None else x0
    obj = Cycle(objective_rows)
    con = Cycle(constraint_rows) if constraint_rows is not None else None
    return StochasticProblem(Point(x0), loss_fn or q.loss, constraint_fn or q.constraints, q.m, obj, con)


def draws(m, n, k):
    g = torch.Generator().manual_seed(k)
    return (torch.randn(n, generator=g, dtype=torch.float64),
            torch.randn(m, n, generator=g, dtype=torch.float64),
            torch.randn(m, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("shares", [True, False])
@pytest.mark.parametrize("two_samples", [True, False])
def test_update_equations(shares, two_samples):
    """Two steps from a non-trivial state equal the spec's equations computed by hand."""
    q = quadratic()
    m, n = q.m, q.n
    s_xi, s_z1, s_z2 = draws(m, n, 1), draws(m, n, 2), draws(m, n, 3)
    if shares:   # draw A = (xi, zeta_1) carries all three noises; draw B = zeta_2
        A_row = noise_row(q, s_xi[0], s_z1[1], s_z1[2])
        B_row = noise_row(q, s_xi[0] * 0 + 7.0, s_z2[1], s_z2[2])   # its xi must not be used
        problem = fixed_problem(q, [A_row, B_row])
    else:
        xi_row = noise_row(q, s_xi[0], s_xi[1] * 0 + 9.0, s_xi[2] * 0 + 9.0)   # its Z, e unused
        problem = fixed_problem(q, [xi_row], [noise_row(q, s_z1[0] * 0 + 5.0, s_z1[1], s_z1[2]),
                                              noise_row(q, s_z2[0] * 0 + 5.0, s_z2[1], s_z2[2])])
    mu, rho, tau, eta, beta = 1.5, 0.7, 0.1, 0.3, 0.4
    algo = SSLALM.from_problem(problem, mu=mu, rho=rho, tau=tau, eta=eta, beta=beta,
                               two_samples=two_samples, dual_safeguard="clip")
    x = problem.params[0]
    # non-trivial state: y, s, anchors
    algo.dual.copy_(torch.tensor([0.4, -0.3]))
    algo.slack.copy_(torch.tensor([0.05, 0.6]))
    algo.slack_anchor.copy_(torch.tensor([0.2, 0.1]))
    algo.anchor[0].copy_(torch.tensor([-0.1, 0.4, 0.2]))

    xk, yk, sk = x.detach().clone(), algo.dual.clone(), algo.slack.clone()
    zk, zsk = algo.anchor[0].clone(), algo.slack_anchor.clone()
    A, a, b = q.A, q.a, q.b
    for _ in range(2):
        J1 = A + s_z1[1]
        c1 = J1 @ xk - b + s_z1[2]
        c2 = (A + s_z2[1]) @ xk - b + s_z2[2] if two_samples else c1
        y1 = (yk + eta * (c1 + sk)).clamp(-100, 100)
        bracket = y1 + rho * (c2 + sk)
        Gx = (xk - a + s_xi[0]) + J1.T @ bracket + mu * (xk - zk)
        Gs = bracket + mu * (sk - zsk)
        x1, s1 = xk - tau * Gx, (sk - tau * Gs).clamp(min=0)
        z1, zs1 = zk + beta * (xk - zk), zsk + beta * (sk - zsk)

        out = algo.step(problem)
        torch.testing.assert_close(out["constraints"], c1)
        torch.testing.assert_close(algo.dual, y1)
        torch.testing.assert_close(x.detach(), x1)
        torch.testing.assert_close(algo.slack, s1)
        torch.testing.assert_close(algo.anchor[0], z1)
        torch.testing.assert_close(algo.slack_anchor, zs1)
        xk, yk, sk, zk, zsk = x1, y1, s1, z1, zs1
        # the fixed samplers repeat: rewind them so that the next step sees the same draws
        problem.objective_sampler.position = 0
        problem.constraint_sampler.position = 0
    assert (algo.slack >= 0).all() and algo.iteration == 2


def test_samples_forwards_and_backwards_per_step():
    """shares_samples: 2 draws, 1 forward with graph + 1 without, 1 backward; separate: 3 draws."""
    q = quadratic()
    grad_modes: list[bool] = []

    def constraint_fn(x, batch):
        grad_modes.append(torch.is_grad_enabled())
        return q.constraints(x, batch)

    rows = [noise_row(q, *draws(q.m, q.n, k)) for k in range(4)]
    for shares, two, want_obj, want_con, want_modes in [
        (True, True, 2, 2, [True, False]), (True, False, 1, 1, [True]),
        (False, True, 1, 2, [True, False]), (False, False, 1, 1, [True]),
    ]:
        grad_modes.clear()
        problem = fixed_problem(q, rows, None if shares else rows, constraint_fn=constraint_fn)
        algo = SSLALM.from_problem(problem, two_samples=two)
        backwards = []
        problem.params[0].register_hook(lambda g: backwards.append(1))
        algo.step(problem)
        obj, con = problem.objective_sampler, problem.constraint_sampler
        if shares:   # one sampler: draw A is xi and zeta_1, draw B is zeta_2
            assert obj is con and obj.draws == want_obj
        else:
            assert (obj.draws, con.draws) == (want_obj, want_con)
        assert grad_modes == want_modes
        assert len(backwards) == 1


def test_one_backward_for_many_constraints():
    """m = 50 constraints: still one backward pass (J^T [bracket] as one vector-Jacobian product)."""
    q = NoisyQuadratic(torch.zeros(3), torch.randn(50, 3, generator=torch.Generator().manual_seed(0)),
                       torch.ones(50), sigma=0.1)
    problem = q.problem(seed=0)
    algo = SSLALM.from_problem(problem)
    backwards = []
    problem.params[0].register_hook(lambda g: backwards.append(1))
    algo.step(problem)
    assert len(backwards) == 1 and algo.dual.shape == (50,)


# --- dual safeguard, projection ---------------------------------------------------------------

def constant_problem(values, m=2):
    """f = 0.5 ||x||^2, c(x) = values + 0 * x (constant, with a graph to x)."""
    values = torch.tensor(values, dtype=torch.float64)

    def constraint_fn(x, batch):
        return values + 0.0 * x[:m]

    return fixed_problem(quadratic(), [torch.zeros(3 + 6 + 2, dtype=torch.float64)],
                         loss_fn=lambda x, batch: 0.5 * (x ** 2).sum(), constraint_fn=constraint_fn)


def test_dual_reset_and_clip():
    # c = (3, 4) constant and s stays at 0 (G_s > 0, clamped): y grows by eta (3, 4) = (0.3, 0.4)
    # per step, ||y|| by 0.5
    reset_problem, clip_problem = constant_problem([3.0, 4.0]), constant_problem([3.0, 4.0])
    reset = SSLALM.from_problem(reset_problem, dual_bound=1.0)
    clip = SSLALM.from_problem(clip_problem, dual_bound=0.35, dual_safeguard="clip")
    reset.step(reset_problem)
    torch.testing.assert_close(reset.dual, torch.tensor([0.3, 0.4], dtype=torch.float64))
    reset.step(reset_problem)       # ||(0.6, 0.8)|| = 1.0 >= M_y: reset to 0
    assert torch.equal(reset.dual, torch.zeros(2, dtype=torch.float64))
    assert int(reset.algorithm_state["dual_resets"]) == 1
    reset.step(reset_problem)
    torch.testing.assert_close(reset.dual, torch.tensor([0.3, 0.4], dtype=torch.float64))
    clip.step(clip_problem)
    torch.testing.assert_close(clip.dual, torch.tensor([0.3, 0.35], dtype=torch.float64))
    clip.step(clip_problem)
    torch.testing.assert_close(clip.dual, torch.tensor([0.35, 0.35], dtype=torch.float64))
    assert (reset.slack == 0).all() and (clip.slack == 0).all()   # projected onto s >= 0


def test_inactive_constraint_fills_the_slack():
    # c = (-1, -1) constant: the slack grows towards 1 and the dual stays near 0 (C + s -> 0)
    problem = constant_problem([-1.0, -1.0])
    algo = SSLALM.from_problem(problem)
    for _ in range(600):
        algo.step(problem)
    torch.testing.assert_close(algo.slack, torch.ones(2, dtype=torch.float64), atol=1e-3, rtol=0)
    assert algo.dual.abs().max() < 1e-3


# --- LinearizedALM ----------------------------------------------------------------------------

def test_linearized_alm_is_sslalm_without_smoothing():
    problem = Q.problem(seed=3)
    lin = LinearizedALM.from_problem(problem)
    group = lin.param_groups[0]
    assert (group["mu"], group["beta"], group["two_samples"]) == (0.0, 1.0, False)
    twin_problem = Q.problem(seed=3)
    twin = SSLALM.from_problem(twin_problem, mu=0.0, beta=1.0, two_samples=False)
    anchor0 = lin.anchor[0].clone()
    for _ in range(50):
        lin.step(problem)
        twin.step(twin_problem)
    assert torch.equal(problem.params[0], twin_problem.params[0])
    assert torch.equal(lin.dual, twin.dual) and torch.equal(lin.slack, twin.slack)
    assert torch.equal(lin.anchor[0], anchor0)   # mu = 0: the anchor is never used nor updated


# --- 3. state_dict round trip -----------------------------------------------------------------

@pytest.mark.parametrize("cls, hyper", [
    (SSLALM, dict(mu=1.5, eta=0.2, dual_bound=1.0, beta=0.3)),                # resets happen
    (SSLALM, dict(dual_safeguard="clip", dual_bound=0.8, two_samples=False, tau=0.03)),
    (LinearizedALM, dict(rho=2.0)),
])
def test_state_dict_round_trip(cls, hyper):
    k = 40

    def fresh():
        problem = Q.problem(seed=5, batch_size=2, separate_constraint_sampler=True)
        return problem, cls.from_problem(problem)       # default hyperparameters

    problem, _ = fresh()
    algo = cls.from_problem(problem, **hyper)
    for _ in range(k):
        algo.step(problem)
    saved = checkpoint(problem, algo)
    for _ in range(k):
        algo.step(problem)

    problem2, algo2 = fresh()
    restore(saved, problem2, algo2)
    for key, value in hyper.items():
        assert algo2.param_groups[0]["lr" if key == "tau" else key] == value  # lr is tau
    assert algo2.iteration == k
    for _ in range(k):
        algo2.step(problem2)

    assert torch.equal(problem.params[0], problem2.params[0])
    for key in ("dual", "slack", "slack_anchor", "dual_resets"):
        assert torch.equal(algo.algorithm_state[key], algo2.algorithm_state[key]), key
    assert algo.iteration == algo2.iteration == 2 * k
    assert torch.equal(algo.anchor[0], algo2.anchor[0])
    assert algo.param_groups[0] | {"params": None} == algo2.param_groups[0] | {"params": None}
    if hyper.get("dual_bound") == 1.0:
        assert int(algo.algorithm_state["dual_resets"]) > 0   # the reset counter was exercised
    # the loaded optimizer shares no tensor with the dict it came from
    assert algo2.dual.data_ptr() != saved["algo"]["state"]["algorithm"]["dual"].data_ptr()


# --- 4. clear errors --------------------------------------------------------------------------

def params():
    return [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]


@pytest.mark.parametrize("cls, kwargs, name", [
    (SSLALM, dict(mu=-1.0), "mu"), (SSLALM, dict(mu=math.nan), "mu"),
    (SSLALM, dict(rho=-0.5), "rho"), (SSLALM, dict(rho=math.inf), "rho"),
    (SSLALM, dict(tau=0.0), "tau"), (SSLALM, dict(tau=-0.1), "tau"),
    (SSLALM, dict(eta=0.0), "eta"), (SSLALM, dict(eta="0.1"), "eta"),
    (SSLALM, dict(beta=0.0), "beta"), (SSLALM, dict(beta=1.5), "beta"),
    (SSLALM, dict(dual_bound=0.0), "dual_bound"), (SSLALM, dict(dual_bound=-1.0), "dual_bound"),
    (SSLALM, dict(dual_safeguard="zero"), "dual_safeguard"),
    (SSLALM, dict(two_samples="yes"), "two_samples"),
    (SSLALM, dict(m=0), "m"), (SSLALM, dict(m=None), "m"), (SSLALM, dict(m=2.0), "m"),
    (LinearizedALM, dict(tau=0.0), "tau"), (LinearizedALM, dict(eta=-1.0), "eta"),
    (LinearizedALM, dict(dual_safeguard="none"), "dual_safeguard"),
])
def test_bad_hyperparameters(cls, kwargs, name):
    kwargs = {"m": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        cls(params(), **kwargs)


MARKER = 123.0   # a xi value that makes the constraint function misbehave (wrong length)


def bad_value_problem(kind: str) -> StochasticProblem:
    """Shared sampler: 3 good steps (6 draws), then the 4th step draws (A, B) with a bad value."""
    q = quadratic()
    rows = [noise_row(q, *draws(q.m, q.n, k)) for k in range(8)]
    column = {"nan loss": (6, 0, math.nan),          # xi of draw A
              "nan c1": (6, -1, math.nan),           # e of draw A = zeta_1
              "inf c2": (7, -1, math.inf),           # e of draw B = zeta_2 only
              "wrong length": (6, 0, MARKER)}[kind]
    rows[column[0]][column[1]] = column[2]

    def constraint_fn(x, batch):
        c = q.constraints(x, batch)
        return torch.cat([c, x[:1]]) if bool((batch.x[:, 0] == MARKER).any()) else c

    return fixed_problem(q, rows, constraint_fn=constraint_fn)


@pytest.mark.parametrize("kind, match", [
    ("nan loss", "objective is not finite"), ("nan c1", "not finite"),
    ("inf c2", "not finite"), ("wrong length", "expected 2 values"),
])
def test_bad_values_raise_before_any_change(kind, match):
    problem = bad_value_problem(kind)
    algo = SSLALM.from_problem(problem, dual_bound=50.0)
    for _ in range(3):
        algo.step(problem)
    before = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in algo.algorithm_state.items()}
    x_before, z_before = problem.params[0].detach().clone(), algo.anchor[0].clone()
    assert before["dual"].abs().sum() > 0 and before["slack_anchor"].abs().sum() > 0
    with pytest.raises(ValueError, match=match):
        algo.step(problem)
    assert torch.equal(problem.params[0], x_before)
    assert torch.equal(algo.anchor[0], z_before)
    for key, value in before.items():
        now = algo.algorithm_state[key]
        assert (torch.equal(now, value) if isinstance(value, Tensor) else now == value), key


def test_wrong_number_of_constraints_in_problem():
    algo = SSLALM(params(), m=3)
    with pytest.raises(ValueError, match="m=3"):
        algo.step(Q.problem(seed=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reset_host_branch_matches_masked_fill(dtype):
    """The CPU host branch of the reset safeguard decides as the tensor comparison ||y|| >= M_y
    does (M_y rounded to y's dtype), also at the edges of float32 rounding and range."""
    from hctrain.algorithms.base import HOST_ROUNDING
    bound = 0.1  # not representable: float32 rounds it up, float64 keeps it
    for y in ([0.06, 0.08], [0.0600000001, 0.08], [0.059999, 0.08], [3e38, 3e38]):
        norm = torch.linalg.vector_norm(torch.tensor(y, dtype=dtype))
        assert (float(norm) >= HOST_ROUNDING[dtype](bound)) == bool(norm >= bound), (y, dtype)
    assert HOST_ROUNDING[torch.float32](1e300) == float("inf")


def test_reset_host_branch_same_run_as_masked_path(monkeypatch):
    """40 steps with resets: the CPU host branch and the device-side masked fill give the same
    iterates, duals, slacks and reset counts bit for bit."""
    import hctrain.algorithms.sslalm as sslalm
    hyper = dict(mu=1.5, eta=0.2, dual_bound=1.0, beta=0.3)

    def run():
        problem = Q.problem(seed=5, batch_size=2, separate_constraint_sampler=True)
        algo = SSLALM.from_problem(problem, **hyper)
        for _ in range(40):
            algo.step(problem)
        return problem, algo

    host_problem, host = run()
    monkeypatch.setattr(sslalm, "HOST_ROUNDING", {})  # every dtype takes the masked path
    masked_problem, masked = run()
    assert int(host.algorithm_state["dual_resets"]) > 0
    assert torch.equal(host_problem.params[0], masked_problem.params[0])
    for key in ("dual", "slack", "slack_anchor", "dual_resets"):
        assert torch.equal(host.algorithm_state[key], masked.algorithm_state[key]), key
