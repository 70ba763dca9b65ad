"""A small stochastic problem with a known solution, for testing algorithms.

    min_x  F(x) = E[ 1/2 ||x - a||^2 + xi^T x ]          xi ~ N(0, sigma^2 I)
    s.t.   C(x) = E[ (A + Z) x - b + e ] <= 0             Z, e ~ N(0, sigma^2)

F is strongly convex and C linear, so the KKT point (x*, y*) is unique; it is found exactly by
enumerating active sets. The noise in the Jacobian (Z) makes E[J^T c] differ from
E[J]^T E[c] by E[Z^T Z] x: an algorithm that uses one constraint sample where two independent
ones are specified converges to a visibly different point.
"""
from __future__ import annotations

import io
import itertools
from typing import Any

import torch
from torch import Tensor, nn

from .problem import Batch, StochasticProblem


class Point(nn.Module):
    """A model whose output is its parameter vector x, whatever the input."""

    def __init__(self, x0: Tensor):
        super().__init__()
        self.x = nn.Parameter(x0.clone())

    def forward(self, inputs: Tensor) -> Tensor:
        return self.x


class GaussianNoise:
    """Batches whose rows hold fresh noise [xi (n), Z (m*n), e (m)], from a seeded generator."""

    def __init__(self, n: int, m: int, sigma: float, batch_size: int, seed: int):
        self.width = n + m * n + m
        self.sigma, self.batch_size = sigma, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._zeros = torch.zeros(batch_size)
        self._groups = torch.zeros(batch_size, dtype=torch.long)

    def __call__(self) -> Batch:
        noise = self.sigma * torch.randn(self.batch_size, self.width, generator=self.generator,
                                         dtype=torch.float64)
        return Batch(noise, self._zeros, self._groups)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class NoisyQuadratic:
    """The problem above with its exact solution ``x_star`` and multipliers ``y_star``."""

    def __init__(self, a: Tensor, A: Tensor, b: Tensor, sigma: float = 0.3):
        self.a, self.A, self.b = a.double(), A.double(), b.double()
        self.m, self.n = self.A.shape
        self.sigma = sigma
        self.x_star, self.y_star = solve_projection_qp(self.a, self.A, self.b)

    @classmethod
    def example(cls, sigma: float = 0.3) -> "NoisyQuadratic":
        """n = 3, m = 2, both constraints active at the solution, multipliers of order 1."""
        a = torch.tensor([2.0, 1.0, -1.0])
        A = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
        b = torch.tensor([0.5, -2.0])
        return cls(a, A, b, sigma)

    def objective_value(self, x: Tensor) -> Tensor:
        return 0.5 * ((x - self.a) ** 2).sum()

    def constraint_value(self, x: Tensor) -> Tensor:
        return self.A @ x - self.b

    def _split(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        noise = batch.x.mean(0)
        n, m = self.n, self.m
        return noise[:n], noise[n:n + m * n].view(m, n), noise[n + m * n:]

    def loss(self, x: Tensor, batch: Batch) -> Tensor:
        xi, _, _ = self._split(batch)
        return 0.5 * ((x - self.a) ** 2).sum() + xi @ x

    def constraints(self, x: Tensor, batch: Batch) -> Tensor:
        _, Z, e = self._split(batch)
        return (self.A + Z) @ x - self.b + e

    def problem(self, seed: int = 0, batch_size: int = 1, x0: Tensor | None = None,
                separate_constraint_sampler: bool = False) -> StochasticProblem:
        """A :class:`StochasticProblem` starting at ``x0`` (default 0) with seeded noise."""
        x0 = torch.zeros(self.n, dtype=torch.float64) if x0 is None else x0.double()
        sampler = GaussianNoise(self.n, self.m, self.sigma, batch_size, seed)
        other = GaussianNoise(self.n, self.m, self.sigma, batch_size, seed + 10_000) if separate_constraint_sampler else None
        return StochasticProblem(Point(x0), self.loss, self.constraints, self.m, sampler, other)


def solve_projection_qp(a: Tensor, A: Tensor, b: Tensor, tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Exact KKT point of min 1/2||x - a||^2 s.t. A x <= b, by enumerating active sets (small m).

    For an active set S: x = a - A_S^T y_S with A_S A_S^T y_S = A_S a - b_S; the KKT point is the
    one with y_S >= 0 and A x <= b.
    """
    m = A.shape[0]
    for size in range(m + 1):
        for active in itertools.combinations(range(m), size):
            y = torch.zeros(m, dtype=a.dtype)
            if active:
                S = list(active)
                AS = A[S]
                try:
                    yS = torch.linalg.solve(AS @ AS.T, AS @ a - b[S])
                except RuntimeError:
                    continue
                y[S] = yS
            x = a - A.T @ y
            if (y >= -tol).all() and (A @ x - b <= tol).all():
                return x, y
    raise ValueError("no KKT point found: the constraints A x <= b may be infeasible")


def checkpoint(problem: StochasticProblem, algorithm: Any) -> dict[str, Any]:
    """Everything a resumed run needs (algorithm, model weights, samplers), passed through
    ``torch.save``/``torch.load`` as a checkpoint file would be: shares no tensor with the run."""
    buffer = io.BytesIO()
    torch.save({"algo": algorithm.state_dict(), "model": problem.model.state_dict(),
                "problem": problem.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def restore(saved: dict[str, Any], problem: StochasticProblem, algorithm: Any) -> None:
    """Load a :func:`checkpoint` into a fresh ``problem`` and ``algorithm``."""
    problem.model.load_state_dict(saved["model"])
    algorithm.load_state_dict(saved["algo"])
    problem.load_state_dict(saved["problem"])
