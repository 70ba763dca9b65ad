"""Fairness constraints built on fairret's statistics.

For a statistic S (by default fairret's ``PositiveRate``: S_g = mean predicted probability of a
positive on group g) and a bound b, two families of constraints c(x, zeta) <= 0:

- one-vs-overall (the paper's, eq. 5):  c_g = |S_g - S| - b,        m = G
- pairwise:                             c_(g,h) = S_g - S_h - b,    m = G (G - 1), g != h
- signed one-vs-overall:                c_g+ = S_g - S - b and c_g- = S - S_g - b,   m = 2 G

The signed form is the same feasible set as the one-vs-overall form, written as constraints that
are linear in the rates. That matters for a stochastic method: a batch's |S_g - S| overestimates
the population's on average (the absolute value of a noisy estimate, E|X| >= |E X|), by about
the estimate's standard deviation when the gap is small, so a method driven by batch values sees
violations that the population does not have; the signed values, weighted by the population
shares, are unbiased.

Both are computed from one forward pass as a tensor of m values. A linear-fractional statistic
is S_g = sum_{n in g} (a_n + b_n p_n) / sum_{n in g} (c_n + d_n p_n), with the coefficients
(a, b, c, d) given by fairret's canonical form (calling the statistic itself gives the same
values, see the tests, but checks its arguments and synchronises on every call, which costs more
than a training step).

Groups come either as integer codes (N,) in 0..G-1, the form batches carry and the training hot
path uses, or as a membership matrix (N, G) (one-hot, the form fairret's statistics take). With
codes the group sums are one ``index_add_`` (no one-hot matrix is built); with a matrix they are
one matrix product. For ``PositiveRate`` (a = d = 0, b = c = 1) the canonical form reduces to
group sums of p over group sizes, and the overall rate to the mean of p: that path skips the
per-row coefficient tensors, and the sizes (``bincount`` of the codes, or the column sums of the
matrix) carry no gradient. Every path gives the same values up to float rounding; a group with
no rows in the batch (or, for a statistic such as TruePositiveRate, with a zero denominator)
gets S_g = 0/0 = NaN, as the plain formula does.
"""
from __future__ import annotations

import inspect
from typing import Literal, Sequence

import torch
from fairret.statistic import LinearFractionalStatistic, PositiveRate
from torch import Tensor

from .checks import check_number

ConstraintKind = Literal["one_vs_overall", "pairwise", "signed_one_vs_overall"]
KINDS: tuple[str, ...] = ("one_vs_overall", "pairwise", "signed_one_vs_overall")
_EXACT_COUNT_DTYPES = (torch.float32, torch.float64)  # a sum of ones counts exactly to 2^24 (2^53)


def _cached(store: dict, key, make):
    """``store[key]``, made by ``make()`` on first use; a store that reaches 64 entries starts
    afresh (the keys are batch sizes and the like: few, but not to grow without bound)."""
    value = store.get(key)
    if value is None:
        if len(store) >= 64:
            store.clear()
        value = store[key] = make()
    return value


class GroupFairnessConstraints:
    """m fairness constraint values from predicted probabilities and group membership.

    ``sens`` is either integer group codes (N,) in 0..G-1 or a membership matrix (N, G), e.g.
    one-hot (the form fairret takes; rows may also be soft or multiple memberships).

    ``population_shares`` (pi_g, the groups' shares of the population, summing to 1) changes how
    the overall statistic S of the one-vs-overall constraints is formed on a batch: without it
    S is the batch's own statistic (sum of numerators over sum of denominators), which on a batch
    with the same number of rows per group weights every group equally; with it S is the
    population-weighted ratio of the groups' batch means of the numerator and denominator terms,

        S = sum_g pi_g mean_g(num) / sum_g pi_g mean_g(den)        (= sum_g pi_g S_g for rates
                                                                    with den = 1, e.g. PositiveRate),

    which estimates the population's S from any batch that holds every group, balanced or not.
    """

    def __init__(
        self,
        group_names: list[str],
        bound: float = 0.05,
        kind: ConstraintKind = "one_vs_overall",
        statistic: LinearFractionalStatistic | None = None,
        population_shares: Sequence[float] | Tensor | None = None,
    ):
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"unknown constraint kind {kind!r}; use one of {KINDS}")
        if len(group_names) < 2:
            raise ValueError(f"fairness constraints need at least 2 groups, got {len(group_names)}")
        bound = check_number("bound", bound, low=0.0, fix="; e.g. bound=0.05")
        self.group_names = list(group_names)
        self.bound = float(bound)
        self.kind = kind
        self.statistic = statistic if statistic is not None else PositiveRate()
        G = len(group_names)
        if kind == "one_vs_overall":
            self.names = [f"{g}" for g in group_names]
        elif kind == "signed_one_vs_overall":
            self.names = [f"{g} above" for g in group_names] + [f"{g} below" for g in group_names]
        else:
            first, second = torch.where(~torch.eye(G, dtype=torch.bool))
            self.names = [f"{group_names[i]} - {group_names[j]}" for i, j in zip(first.tolist(), second.tolist())]
        self._pair_index: dict[tuple[int, torch.device], Tensor] = {}  # see gaps_from_statistics
        self.m = len(self.names)
        self.population_shares = None
        if population_shares is not None:
            shares = torch.as_tensor(population_shares, dtype=torch.float64).reshape(-1)
            if shares.numel() != G or not bool(torch.isfinite(shares).all()) or bool((shares < 0).any()):
                raise ValueError(f"population_shares must be {G} non-negative numbers, one per group, got "
                                 f"{population_shares!r}")
            if abs(float(shares.sum()) - 1.0) > 1e-6:
                raise ValueError(f"population_shares must sum to 1 (the groups' shares of the population), "
                                 f"they sum to {float(shares.sum()):.6g}")
            self.population_shares = shares
        self._shares: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        # Per-call constants as tensors: an op with a Python scalar operand pays for wrapping it.
        self._bounds: dict[tuple[torch.dtype, float], Tensor] = {}
        self._row_counts: dict[int, Tensor] = {}
        self._row_ones: dict[tuple, Tensor] = {}

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    # --- group statistics ----------------------------------------------------------------------

    def _terms(self, probs: Tensor, stat_args: tuple) -> tuple[Tensor, Tensor]:
        """Per-row numerator and denominator terms of the canonical form."""
        s = self.statistic

        def coefficient(value):
            return value.squeeze(-1) if isinstance(value, Tensor) and value.dim() == 2 else value

        num = coefficient(s.num_intercept(*stat_args)) + coefficient(s.num_slope(*stat_args)) * probs
        denom = coefficient(s.denom_intercept(*stat_args)) + coefficient(s.denom_slope(*stat_args)) * probs
        return num, denom.expand_as(num) if isinstance(denom, Tensor) else torch.full_like(num, denom)

    def _group_sums(self, values: Tensor, sens: Tensor) -> Tensor:
        """sum_i values_i * sens_ig: (G,) or (G, k) from values (N,) or (N, k)."""
        if sens.dim() == 2:
            return sens.T @ values
        if sens.dim() == 1 and not sens.is_floating_point() and not sens.is_complex():
            G = self.n_groups
            out = values.new_zeros((G,) + values.shape[1:])
            try:
                return out.index_add_(0, sens, values)
            except (IndexError, RuntimeError) as e:
                raise ValueError(f"group codes must be integers in 0..{G - 1}, one per row of the "
                                 f"{values.shape[0]} predictions; got shape {tuple(sens.shape)} ({e})") from None
        raise ValueError("sens must be integer group codes (N,) or a membership matrix (N, G); "
                         f"got shape {tuple(sens.shape)} and dtype {sens.dtype}")

    def _group_sizes(self, sens: Tensor, like: Tensor | None = None) -> Tensor:
        """sum_i sens_ig (no gradient through integer codes). With ``like`` (float32 or float64)
        and integer codes: the counts as a float sum of ones in ``like``'s dtype, the same values
        as the integer counts (exact below 2^24), without bincount's pass for its range and the
        int-to-float conversion that dividing by them costs."""
        if sens.dim() == 2:
            return sens.sum(0)
        if like is not None and like.dtype in _EXACT_COUNT_DTYPES:
            return like.new_zeros(self.n_groups).index_add_(0, sens, self._ones(like))
        if sens.is_cpu:
            return torch.bincount(sens, minlength=self.n_groups)
        # bincount would wait for the device to learn the largest code; counting stays on it
        return torch.zeros(self.n_groups, dtype=torch.int64, device=sens.device).index_add_(
            0, sens, torch.ones_like(sens))

    def _row_count(self, probs: Tensor) -> Tensor:
        """N as a 0-dim int64 tensor (the value ``x / N`` would wrap; cached by N)."""
        n = probs.shape[0]
        return _cached(self._row_counts, n, lambda: torch.tensor(n))

    def _ones(self, probs: Tensor) -> Tensor:
        """N ones of the probabilities' dtype and device (cached by N, dtype and device)."""
        key = (probs.shape[0], probs.dtype, probs.device)
        return _cached(self._row_ones, key, lambda: torch.ones(key[0], dtype=probs.dtype, device=probs.device))

    def shares_like(self, x: Tensor) -> Tensor:
        """pi as a tensor of x's dtype and device (cached)."""
        key = (x.dtype, x.device)
        shares = self._shares.get(key)
        if shares is None:
            shares = self._shares[key] = self.population_shares.to(dtype=x.dtype, device=x.device)
        return shares

    def group_statistics(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> tuple[Tensor, Tensor]:
        """(S_g for every group, overall S) from probabilities (N,) and groups: integer codes (N,)
        or a membership matrix (N, G). With ``population_shares`` the overall S is the
        population-weighted estimate (see the class docstring)."""
        if self.population_shares is not None:
            num, denom = self._terms(probs, stat_args)
            sums = self._group_sums(torch.stack((num, denom), dim=1), sens)
            sizes = self._group_sizes(sens, probs).to(sums.dtype)
            shares = self.shares_like(sums)
            means = sums / sizes.unsqueeze(1)
            return sums[:, 0] / sums[:, 1], (shares * means[:, 0]).sum() / (shares * means[:, 1]).sum()
        if type(self.statistic) is PositiveRate and not stat_args and probs.dim() == 1:
            # canonical form (0 + 1 p) / (1 + 0 p): group means of p, overall mean of p (as
            # sum / N, which is what the general path computes and a little cheaper than mean)
            return self._group_sums(probs, sens) / self._group_sizes(sens, probs), probs.sum() / self._row_count(probs)
        num, denom = self._terms(probs, stat_args)
        per_group = self._group_sums(torch.stack((num, denom), dim=1), sens)
        return per_group[:, 0] / per_group[:, 1], num.sum() / denom.sum()

    def group_rates(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> Tensor:
        """S_g for every group, without the overall S (what pairwise constraints need): the first
        value of :meth:`group_statistics`, by the same operations."""
        if (self.population_shares is None and type(self.statistic) is PositiveRate and not stat_args
                and probs.dim() == 1):
            return self._group_sums(probs, sens) / self._group_sizes(sens, probs)
        return self.group_statistics(probs, sens, *stat_args)[0]

    # --- constraints ---------------------------------------------------------------------------

    def gaps(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> Tensor:
        """The constrained quantities before the bound: |S_g - S|, S_g - S_h, or S_g - S then
        S - S_g (signed)."""
        if self.kind == "pairwise":  # no overall rate needed
            return self.gaps_from_statistics(self.group_rates(probs, sens, *stat_args))
        stats, overall = self.group_statistics(probs, sens, *stat_args)
        if self.kind == "one_vs_overall":
            return (stats - overall).abs()
        if self.kind == "signed_one_vs_overall":
            diff = stats - overall
            return torch.cat((diff, -diff))
        return self.gaps_from_statistics(stats)

    def gaps_from_statistics(self, stats: Tensor) -> Tensor:
        """S_g - S_h for every pair (g, h), g != h, in row-major order (pairwise constraints).

        Computed as the G x G matrix of differences, of which the m off-diagonal entries are
        gathered by one ``index_select`` (a cached index of the flattened matrix): each entry is
        the same subtraction as ``stats[g] - stats[h]``, and autograd's backward pass is one
        scatter into the G x G matrix and its row and column sums. In a training step (forward,
        f and c, one backward pass to the weights) that measured 296 / 407 / 773 us at m = 90 /
        870 / 9,900, against 326 / 440 / 794 for the former one-node path (a hand-written
        ``autograd.Function``) and more for the matrix's off-diagonal entries taken as a strided
        view (Intel Xeon VM, 2026-12-05); the values and gradients of the three are identical
        bit for bit (``tests/test_fairness.py``)."""
        G = stats.shape[0]
        index = _cached(self._pair_index, (G, stats.device), lambda: _off_diagonal(G, stats.device))
        return (stats.unsqueeze(1) - stats.unsqueeze(0)).view(-1).index_select(0, index)

    def _bound_like(self, x: Tensor) -> Tensor:
        """The bound as a 0-dim tensor of x's dtype (the same value x - self.bound would use)."""
        key = (x.dtype, self.bound)
        b = self._bounds.get(key)
        if b is None:
            b = self._bounds[key] = torch.tensor(self.bound, dtype=x.dtype)
        return b

    def _fused(self, sens: Tensor, stat_args: tuple, x: Tensor) -> bool:
        """Whether :class:`_PositiveRateConstraints` computes these constraints: population-weighted
        one-vs-overall positive rates (absolute or signed) of probabilities (N,) over integer group
        codes (N,).

        Every other form takes autograd's own operations. The node gave the unweighted forms the
        same values and gradients bit for bit, but in a training step (forward, f and c, one
        backward pass to the weights) it measured slower: 270-279 against 252-260 us at m = 5
        (one-vs-overall), 287-288 against 274-276 (signed), on the 2-core Intel Xeon VM
        (2026-12-05); pairwise constraints see :meth:`gaps_from_statistics`. With population
        shares the node's overall S (sum_g pi_g S_g) is a formula of its own, so it stays."""
        return (self.population_shares is not None and self.kind != "pairwise"
                and type(self.statistic) is PositiveRate and not stat_args and x.dim() == 1
                and sens.dim() == 1 and not sens.is_floating_point() and not sens.is_complex())

    def __call__(self, probs: Tensor, sens: Tensor, *stat_args: Tensor) -> Tensor:
        """c(x, zeta): m values, feasible when <= 0. ``sens``: integer group codes (N,) or a
        membership matrix (N, G); ``stat_args`` go to the statistic (e.g. labels)."""
        if self._fused(sens, stat_args, probs):
            return _fused_constraints(probs, sens, self, False)
        gaps = self.gaps(probs, sens, *stat_args)
        return gaps - self._bound_like(gaps)

    def from_logits(self, logits: Tensor, sens: Tensor, *stat_args: Tensor) -> Tensor:
        """The constraints of the probabilities ``sigmoid(logits)`` (the same values as
        ``self(torch.sigmoid(logits), sens)``, with the sigmoid inside the fused path)."""
        if self._fused(sens, stat_args, logits):
            return _fused_constraints(logits, sens, self, True)
        return self(torch.sigmoid(logits), sens, *stat_args)


def _off_diagonal(G: int, device: torch.device) -> Tensor:
    """The flat indices g G + h of the pairs g != h of a G x G matrix, in row-major order."""
    first, second = torch.where(~torch.eye(G, dtype=torch.bool))
    return (first * G + second).to(device)


SHORT_NAMES = {"PositiveRate": "PR", "TruePositiveRate": "TPR", "FalsePositiveRate": "FPR",
               "PositivePredictiveValue": "PPV", "FalseOmissionRate": "FOR", "Accuracy": "accuracy"}


def needs_labels(statistic: LinearFractionalStatistic) -> bool:
    """Whether a fairret statistic takes the labels (TruePositiveRate, FalsePositiveRate,
    PositivePredictiveValue, Accuracy, ...: their coefficients are functions of the label) or
    not (PositiveRate)."""
    return len(inspect.signature(statistic.num_slope).parameters) > 0


def statistic_name(statistic: LinearFractionalStatistic) -> str:
    name = type(statistic).__name__
    return SHORT_NAMES.get(name, name)


class StackedFairnessConstraints:
    """The constraints of several statistics on the same groups, one block after the other
    (equalized odds: TruePositiveRate and FalsePositiveRate, m = 2G one-vs-overall). Each block
    is a :class:`GroupFairnessConstraints`; its constraints are named ``"<statistic> <name>"``."""

    def __init__(self, group_names: list[str], bound: float, kind: ConstraintKind,
                 statistics: Sequence[LinearFractionalStatistic],
                 population_shares: Sequence[float] | Tensor | None = None):
        self.parts = [GroupFairnessConstraints(group_names, bound, kind, s, population_shares)
                      for s in statistics]
        self._takes_labels = [needs_labels(s) for s in statistics]  # inspect, once, not per step
        self.group_names = list(group_names)
        self.kind = kind
        self.names = [f"{statistic_name(part.statistic)} {name}" for part in self.parts for name in part.names]
        self.m = len(self.names)

    @property
    def statistics(self) -> list[LinearFractionalStatistic]:
        return [part.statistic for part in self.parts]

    @property
    def bound(self) -> float:
        return self.parts[0].bound

    @bound.setter
    def bound(self, value: float) -> None:
        for part in self.parts:
            part.bound = value

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def from_logits(self, logits: Tensor, sens: Tensor, *labels: Tensor) -> Tensor:
        """Every block's constraints of ``sigmoid(logits)``, concatenated; ``labels`` go to the
        statistics that take them."""
        return torch.cat([part.from_logits(logits, sens, *(labels if takes else ()))
                          for part, takes in zip(self.parts, self._takes_labels)])

    def __call__(self, probs: Tensor, sens: Tensor, *labels: Tensor) -> Tensor:
        return torch.cat([part(probs, sens, *(labels if takes else ()))
                          for part, takes in zip(self.parts, self._takes_labels)])


_SIGMOID_BACKWARD = torch.ops.aten.sigmoid_backward.default  # autograd's own sigmoid backward


class _PositiveRateConstraints(torch.autograd.Function):
    r"""Population-weighted one-vs-overall positive-rate constraints of integer group codes as one
    autograd node (:meth:`GroupFairnessConstraints._fused` says why the other forms are left to
    autograd's own operations).

    The forward pass runs the same operations as :meth:`GroupFairnessConstraints.gaps` would
    for S = sum_g pi_g S_g without recording them, and the backward pass is written out. With p
    the probabilities (``sigmoid(x)`` when ``from_logits``), n_g the group sizes,
    S_g = sum_{n in g} p_n / n_g, diff_g = S_g - S and g the incoming gradient dL/dc:
    d_g = g_g sgn(diff_g) (``one_vs_overall``, c_g = |diff_g| - b) or g_g+ - g_g- (signed,
    c_g+ = diff_g - b, c_g- = -diff_g - b); then dL/dS_g = d_g - pi_g sum_h d_h and
    dL/dp_n = dL/dS_g(n) / n_g(n).
    """

    @staticmethod
    def forward(ctx, x: Tensor, sens: Tensor, owner: GroupFairnessConstraints, from_logits: bool) -> Tensor:
        probs = torch.sigmoid(x) if from_logits else x
        G = owner.n_groups
        sums = owner._group_sums(probs, sens)  # first: it names bad group codes
        sizes = owner._group_sizes(sens, probs)
        stats = sums.div_(sizes)
        shares = owner.shares_like(stats)
        diff = stats - (shares * stats).sum()
        signed = owner.kind == "signed_one_vs_overall"
        gaps = torch.cat((diff, -diff)) if signed else diff.abs()
        ctx.save_for_backward(sens, sizes, probs if from_logits else None, diff, shares)
        ctx.signed, ctx.n_groups = signed, G
        return gaps.sub_(owner._bound_like(gaps))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        G = ctx.n_groups
        sens, sizes, probs, diff, shares = ctx.saved_tensors
        grad_stats = grad[:G] - grad[G:] if ctx.signed else grad * diff.sgn()
        per_group = (grad_stats - shares * grad_stats.sum()) / sizes
        grad_probs = per_group.index_select(0, sens)
        if probs is not None:
            grad_probs = _SIGMOID_BACKWARD(grad_probs, probs)
        return grad_probs, None, None, None


class _ValuesOnly:
    """The context :meth:`_PositiveRateConstraints.forward` gets when no gradient is wanted: it
    keeps nothing for a backward pass that will not come."""

    def save_for_backward(self, *tensors: Tensor) -> None:
        pass


def _fused_constraints(x: Tensor, sens: Tensor, owner: "GroupFairnessConstraints", from_logits: bool) -> Tensor:
    """:class:`_PositiveRateConstraints` of ``x``; without a gradient to track (``torch.no_grad()``
    or an ``x`` that does not require grad) its forward pass is run as a plain function, the same
    operations (the same values) without ``autograd.Function.apply``'s cost, tens of microseconds
    on the CPU (a switching test, a second constraint sample, an evaluation)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _PositiveRateConstraints.apply(x, sens, owner, from_logits)
    return _PositiveRateConstraints.forward(_ValuesOnly(), x, sens, owner, from_logits)
