"""The stochastic problem of the paper, eq. (1):

    min_x  F(x) = E_xi[ f(x, xi) ]   subject to   C(x) = E_zeta[ c(x, zeta) ] <= 0,   c: R^n -> R^m

x are a model's parameters; xi and zeta are minibatches drawn by two samplers (which may be the
same sampler). Algorithms receive a :class:`StochasticProblem` and draw what their update needs.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from .checks import check_seed
from .sources import as_source


@dataclass(frozen=True)
class Batch:
    """A minibatch of the book's tasks: inputs, labels and protected-group codes (0..G-1; None
    without groups). A :class:`Problem` takes whatever its data yields instead."""

    x: Tensor
    y: Tensor
    group: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]


class BatchSampler(Protocol):
    """Draws a :class:`Batch`; its random state round-trips through ``state_dict``."""

    def __call__(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IndexSampler(Protocol):
    def sample(self) -> Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorSampler:
    """Batches of rows of (x, y, group) tensors at the indices an index sampler draws."""

    def __init__(self, x: Tensor, y: Tensor, group: Tensor | None, index_sampler: IndexSampler):
        if not (x.shape[0] == y.shape[0] == (x.shape[0] if group is None else group.shape[0])):
            raise ValueError(
                f"x, y and group must have the same number of rows, got {x.shape[0]}, "
                f"{y.shape[0]} and {group.shape[0]}"  # type: ignore[union-attr]
            )
        self.x, self.y, self.group = x, y, group
        self.index_sampler = index_sampler

    def __call__(self) -> Batch:
        idx = self.index_sampler.sample()
        return Batch(self.x[idx], self.y[idx], None if self.group is None else self.group[idx])

    def state_dict(self) -> dict[str, Any]:
        return self.index_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index_sampler.load_state_dict(state)


LossFn = Callable[[Tensor, Batch], Tensor]
ConstraintFn = Callable[[Tensor, Batch], Tensor]


class _Sampled:
    """What both problem classes share: the draws of xi and zeta from their sources, and the
    sources' random states. ``objective``, ``constraints`` and ``objective_and_constraints`` are
    the subclass's."""

    objective_sampler: Any
    constraint_sampler: Any
    shares_samples: bool

    def sample_objective(self) -> Any:
        """Draw xi."""
        return self.objective_sampler()

    def sample_constraints(self) -> Any:
        """Draw zeta (a fresh batch, independent of every earlier draw)."""
        return self.constraint_sampler()

    def sample_objective_and_constraints(self) -> tuple[Tensor, Tensor]:
        """f(x, xi) and c(x, zeta), both with their graphs, for a one-sample method: with
        ``shares_samples`` one draw serves as xi and zeta; otherwise xi and zeta are drawn from
        their own sources."""
        if self.shares_samples:
            return self.objective_and_constraints(self.sample_objective())  # type: ignore[attr-defined]
        return (self.objective(self.sample_objective()),  # type: ignore[attr-defined]
                self.constraints(self.sample_constraints()))  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """The sources' positions and random states (the model's weights are the algorithm's
        business)."""
        state = {"objective_sampler": self.objective_sampler.state_dict()}
        if not self.shares_samples:
            state["constraint_sampler"] = self.constraint_sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective_sampler.load_state_dict(state["objective_sampler"])
        if not self.shares_samples:
            self.constraint_sampler.load_state_dict(state["constraint_sampler"])


class StochasticProblem(_Sampled):
    """A model, an objective f, m constraints c, and the samplers of xi and zeta.

    ``loss_fn(logits, batch)`` returns the scalar f on a batch; ``constraint_fn(logits, batch)``
    returns the m values c(x, zeta) (<= 0 is feasible). When ``constraint_sampler`` is None the
    objective and the constraints are sampled from the same distribution, and one draw may serve
    as both xi and a zeta (``shares_samples``): one forward pass then gives f and c.
    ``n_groups`` is the number of protected groups behind ``Batch.group`` (None without groups).
    For a model, data and functions of your own, :class:`Problem` is simpler.
    """

    supports_fused_forward = True  # one forward pass over concatenated batches is row-wise

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        constraint_fn: ConstraintFn,
        m: int,
        objective_sampler: BatchSampler,
        constraint_sampler: BatchSampler | None = None,
        constraint_names: list[str] | None = None,
        n_groups: int | None = None,
        epoch_length: int | None = None,
    ):
        if m < 1:
            raise ValueError(f"m (the number of constraints) must be >= 1, got {m}")
        self.model = model
        self.loss_fn = loss_fn
        self.constraint_fn = constraint_fn
        self.m = m
        self.objective_sampler = objective_sampler
        self.constraint_sampler = constraint_sampler or objective_sampler
        self.shares_samples = constraint_sampler is None
        self.constraint_names = constraint_names or [f"c{i}" for i in range(m)]
        self.n_groups = n_groups
        self.epoch_length = epoch_length  # draws per pass over the training data (None: unknown)
        self.seed: int | None = None  # set by whoever builds the problem from a seed
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]

    def forward(self, batch: Batch) -> Tensor:
        return self.model(batch.x).squeeze(-1)

    def objective(self, batch: Batch, logits: Tensor | None = None) -> Tensor:
        """f(x, xi) on ``batch``."""
        return self.loss_fn(self.forward(batch) if logits is None else logits, batch)

    def constraints(self, batch: Batch, logits: Tensor | None = None) -> Tensor:
        """c(x, zeta) on ``batch``: a tensor of m values."""
        return self.constraint_fn(self.forward(batch) if logits is None else logits, batch)

    def objective_and_constraints(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """f and c on the same batch with one forward pass."""
        logits = self.forward(batch)
        return self.loss_fn(logits, batch), self.constraint_fn(logits, batch)


# --- problems from ordinary PyTorch pieces -------------------------------------------------------

def _epoch_length(source: Any) -> int | None:
    """Batches per pass of a loader source (``len(loader)``); None when unknown."""
    loader = getattr(source, "loader", None)
    try:
        return len(loader) if loader is not None else None
    except TypeError:  # an iterable-style dataset has no length
        return None


UserLossFn = Callable[[nn.Module, Any], Tensor]
UserConstraintFn = Callable[[nn.Module, Any], Tensor]


def _tensors(batch: Any) -> list[Tensor]:
    """The tensors in a batch (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in _tensors(v)]
    if isinstance(batch, (tuple, list)):
        return [t for v in batch for t in _tensors(v)]
    return []


def check_loss(value: Any, who: str = "the loss") -> Tensor:
    """``value`` as a 0-dim tensor with a gradient path, or an error naming the fix."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{who} must be a scalar torch tensor, got {type(value).__name__} {value!r}: "
                        "compute it with torch operations on the model's outputs (a Python float has "
                        "no gradient)")
    if value.numel() != 1:
        raise ValueError(f"{who} is a tensor of shape {tuple(value.shape)}; it must be a scalar: "
                         "reduce it, e.g. .mean() over the batch")
    if torch.is_grad_enabled() and not value.requires_grad:
        raise ValueError(f"{who} has no gradient path to the model's parameters (computed under "
                         "torch.no_grad(), with .item()/.detach(), or from the data only): compute it "
                         "from the model's outputs")
    return value.reshape(())


def check_constraint_values(value: Any, m: int | None, who: str = "the constraints") -> Tensor:
    """``value`` as a 1-dim tensor of m values with a gradient path (a 0-dim tensor is accepted
    for m = 1), or an error naming the fix."""
    if isinstance(value, (list, tuple)):
        raise TypeError(
            f"{who} is a {type(value).__name__} of {len(value)} values; give one tensor of m values: "
            "torch.stack([...]) of 0-dim tensors (or torch.cat of 1-dim ones), each computed from the "
            "model so that it keeps its gradient")
    if not isinstance(value, Tensor):
        raise TypeError(f"{who} is {type(value).__name__} {value!r}; give a tensor of m values computed "
                        "with torch operations from the model (a Python number has no gradient)")
    if value.dim() == 0:
        value = value.reshape(1)
    if value.dim() != 1 or (m is not None and value.numel() != m):
        expected = f"{m} values (m={m})" if m is not None else "one value per constraint"
        raise ValueError(f"{who} is a tensor of shape {tuple(value.shape)}; expected {expected}: give a "
                         "1-dim tensor (torch.stack the values)")
    if not value.is_floating_point():
        raise TypeError(f"{who} has dtype {value.dtype}; constraint values must be floating point and "
                        "differentiable (a comparison or a count has no gradient: use a smooth surrogate "
                        "such as a probability)")
    if torch.is_grad_enabled() and not value.requires_grad:
        raise ValueError(
            f"{who} has no gradient path to the model's parameters (computed under torch.no_grad(), "
            "from thresholded predictions, with .item()/.detach(), or from the data only), so no "
            "algorithm could move them: compute the constraints from the model's differentiable "
            "outputs (probabilities, not predicted labels)")
    return value


class Problem(_Sampled):
    r"""min E f(model, xi) s.t. E c(model, zeta) <= 0, from a model, two functions and data.

    ``loss(model, batch)`` returns the scalar f on a batch and ``constraints(model, batch)`` the
    m values of c on a batch (feasible when <= 0; a 0-dim tensor for m = 1), where a batch is
    whatever the data yields: a tensor, a tuple, a dict. Both functions receive the model, so a
    constraint may read its parameters (a norm bound) and a model may take several inputs.

    ``data`` is the source of xi and ``constraint_data`` of zeta: a ``DataLoader``, a ``Dataset``
    (with ``batch_size``), or a callable batch source (:mod:`hctrain.sources`). Loaders cycle
    through epochs. With ``constraint_data=None`` one source serves both: every draw is still a
    fresh batch, and an algorithm that can use one batch for f and c (GDA, LinearizedALM, SPBM,
    Stochastic Ghost's pairs) does so. Each algorithm draws from the sources the independent
    samples its mathematics needs: SSL-ALM xi, zeta_1 and zeta_2; SSw a switching sample and a
    step sample; Stochastic Ghost its 1 + 2^(N+1) samples.

    At construction both functions are evaluated once on one batch (the sources are rewound, the
    model's buffers and the random generators restored), which finds m and turns the usual
    mistakes into errors that name the fix: a loss that is not a scalar, constraints given as a
    list or a float, a constraint with no gradient path to the parameters (and a warning for one
    whose gradient is zero in every parameter on that batch, as from thresholded predictions;
    ``check_gradients=False`` skips the check), data whose dtype or device is not the model's.

    ``state_dict()`` holds the sources' positions and random states, so that a resumed run draws
    the batches the uninterrupted run would have drawn.
    """

    supports_fused_forward = False  # see SwitchingSubgradient(fuse_switching_forward=...)

    def __init__(
        self,
        model: nn.Module,
        loss: UserLossFn,
        constraints: UserConstraintFn,
        data: Any,
        constraint_data: Any = None,
        *,
        m: int | None = None,
        batch_size: int | None = None,
        constraint_names: list[str] | None = None,
        seed: int | None = None,
        n_groups: int | None = None,
        check_gradients: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, fn in (("loss", loss), ("constraints", constraints)):
            if not callable(fn):
                raise TypeError(f"{name} must be a function of (model, batch), got {fn!r}")
        if m is not None and (not isinstance(m, numbers.Integral) or isinstance(m, bool) or m < 1):
            raise ValueError(f"m (the number of constraints) must be a positive integer, got {m!r}")
        self.model = model
        self.loss_fn = loss
        self.constraint_fn = constraints
        self.seed = torch.initial_seed() % 2**32 if seed is None else check_seed("seed", seed)
        self.objective_sampler = as_source(data, "data", batch_size, seed=self.seed)
        self.shares_samples = constraint_data is None
        self.constraint_sampler = (self.objective_sampler if constraint_data is None else
                                   as_source(constraint_data, "constraint_data", batch_size,
                                             seed=(self.seed + 1) % 2**32))
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no parameters that require grad: there is nothing to train")
        self.n_groups = n_groups
        self.epoch_length = _epoch_length(self.objective_sampler)
        self.m = None if m is None else int(m)
        self._check_gradients = bool(check_gradients)
        self.m = self._probe(m)
        if constraint_names is not None and len(constraint_names) != self.m:
            raise ValueError(f"{len(constraint_names)} constraint_names for m={self.m} constraints")
        self.constraint_names = list(constraint_names or [f"c{i}" for i in range(self.m)])

    # --- what the algorithms call ----------------------------------------------------------

    def objective(self, batch: Any) -> Tensor:
        """f(x, xi) on ``batch``: ``loss(model, batch)``, checked."""
        return self._checked_loss(self.loss_fn(self.model, batch))

    def constraints(self, batch: Any) -> Tensor:
        """c(x, zeta) on ``batch``: ``constraints(model, batch)`` as a tensor of m values."""
        return self._checked_constraints(self.constraint_fn(self.model, batch))

    def objective_and_constraints(self, batch: Any) -> tuple[Tensor, Tensor]:
        """f and c on the same batch (the two functions each run the model)."""
        return self.objective(batch), self.constraints(batch)

    # --- checks ------------------------------------------------------------------------------

    def _checked_loss(self, value: Any) -> Tensor:
        return check_loss(value, "loss(model, batch)")

    def _checked_constraints(self, value: Any) -> Tensor:
        return check_constraint_values(value, self.m, "constraints(model, batch)")

    def _explain(self, batch: Any, error: Exception) -> Exception | None:
        """A clearer error when a user function failed on data of another dtype or device."""
        like = self.params[0]
        floats = [t for t in _tensors(batch) if t.is_floating_point()]
        for t in floats:
            if t.dtype != like.dtype:
                return TypeError(
                    f"the data holds {t.dtype} tensors and the model's parameters are {like.dtype} "
                    f"({type(error).__name__}: {error}); convert one to the other: the data with "
                    f".to({like.dtype}) (for a TensorDataset, build it from converted tensors), or the "
                    f"model with model.to({t.dtype})")
        for t in _tensors(batch):
            if t.device != like.device:
                return TypeError(
                    f"the data is on {t.device} and the model's parameters on {like.device} "
                    f"({type(error).__name__}: {error}); move the batch in loss/constraints "
                    f"(batch.to({like.device!s})) or the model")
        return None

    def _probe(self, m: int | None) -> int:
        """Evaluate f and c once (on one batch, or on one batch of each source), check them, and
        return m. Nothing changes, also when a check fails: the sources are rewound and the
        model's buffers and the random generators (CPU, and the devices of the parameters)
        restored."""
        source_state = self.state_dict()
        buffers = [b.detach().clone() for b in self.model.buffers()]
        devices = sorted({p.device.index or 0 for p in self.params if p.device.type == "cuda"})
        try:
            with torch.random.fork_rng(devices=devices):
                batch = self.sample_constraints()
                f_batch = batch if self.shares_samples else self.sample_objective()
                try:
                    c = self.constraint_fn(self.model, batch)
                    f = self.loss_fn(self.model, f_batch)
                except Exception as error:  # noqa: BLE001 - re-raised, explained where we can
                    better = self._explain(batch, error) or self._explain(f_batch, error)
                    if better is not None:
                        raise better from error
                    raise
                self._checked_loss(f)
                c = self._checked_constraints(c)
                if self._check_gradients:
                    self._check_each_constraint_has_a_gradient(c)
        finally:
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), buffers):
                    b.copy_(saved)
            self.load_state_dict(source_state)
        if m is not None and c.numel() != m:
            raise ValueError(f"m={m} was given but constraints(model, batch) returns {c.numel()} values")
        return int(c.numel())

    def _check_each_constraint_has_a_gradient(self, c: Tensor, limit: int = 64) -> None:
        """Constraint i with no autograd path to any parameter would be ignored by every
        algorithm: an error. One whose gradient is zero in every parameter on the first batch
        (a hinge that is inactive there, or one entry computed from thresholded predictions next
        to differentiable ones) gets a warning. Checked for the first ``limit`` constraints;
        ``check_gradients=False`` skips the check."""
        for i in range(min(c.numel(), limit)):
            grads = torch.autograd.grad(c[i], self.params, retain_graph=True, allow_unused=True)
            if all(g is None for g in grads):
                raise ValueError(
                    f"constraint {i} (of {c.numel()}) does not depend on the model's parameters (no "
                    "gradient path: computed from the data only, or detached), so no algorithm could "
                    "satisfy it by training: compute it from the model's outputs or parameters")
            if all(g is None or not bool(g.any()) for g in grads):
                warnings.warn(
                    f"constraint {i} (of {c.numel()}) has a zero gradient in every parameter on the "
                    "first batch: fine for a hinge that is inactive there, but a constraint computed "
                    "from thresholded predictions (labels, counts) has a zero gradient everywhere and "
                    "cannot be trained; use probabilities. check_gradients=False silences this",
                    stacklevel=3)
