"""Adam over one contiguous vector: the primal update of SPBM without a per-tensor loop.

A parameter group's Adam state (``exp_avg``, ``exp_avg_sq``, ``step``) and its Moreau anchors z
are kept as views into a few contiguous buffers, so the step

    g     <- g + mu (x - z)
    m     <- m + (1 - beta1) (g - m)                      (lerp, as torch.optim.Adam)
    v     <- beta2 v + (1 - beta2) g * g
    x     <- x - lr / (1 - beta1^k) * m / (sqrt(v) / sqrt(1 - beta2^k) + eps)
    z     <- z + anchor_beta (x - z)

is a dozen tensor operations on one vector of all the group's parameters, instead of a dozen per
parameter tensor (``torch.optim.Adam``'s default CPU path) or a dozen ``torch._foreach_*`` calls
that still visit every tensor. The operations, their order and their scalars are those of
``torch.optim.Adam``'s single-tensor path; elementwise float operations do not depend on how the
elements are laid out, so the result is identical bit for bit (``tests/test_spbm.py``).

The parameters themselves (``shared``): where each parameter of the group is the only holder of
its memory (contiguous, not aliased by another parameter, no other tensor on its storage: no
``.data`` kept by the caller, no live graph that saved it), each is re-pointed at its view of
the vector (``p.data = view``, the same values), and the step updates them in place, without
copies; their version counters are bumped as any in-place update bumps them, so autograd still
refuses a backward pass through a graph that saved the old values. Seen from outside, a
parameter then lives at another address, inside a storage it shares with the group's other
parameters (``torch.save`` of one parameter alone writes the whole vector, as for any view).
Otherwise (a parameter aliased or held elsewhere, a ``channels_last`` layout) the parameters
keep their own memory and are copied into the vector and back (one ``_foreach_copy_`` each
way). A parameter given other memory later (``p.data = t``, ``model.to(...)``) is noticed and
the buffers are rebuilt. Same numbers either way; the shared form saves the two copies (about
0.03 of the plain Adam loop's step at m = 5 on the Xeon VM, ``benchmarks/README.md``).

The per-parameter views stay in the optimizer's ``state`` (so ``state_dict()`` and a fallback to
``torch.optim.Adam.step``, which updates them in place, keep working); :meth:`FlatAdamGroup.is_current`
checks that nobody replaced them.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch
from torch import Tensor

from . import cpu_kernels

_is = operator.is_
_get_exp_avg, _get_exp_avg_sq, _get_step = (operator.methodcaller("get", key)
                                            for key in ("exp_avg", "exp_avg_sq", "step"))


def _views(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Consecutive views of ``flat`` with the shapes of ``like``."""
    views, start = [], 0
    for t in like:
        views.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return views


def _exclusively_held(params: list[Tensor]) -> bool:
    """Whether every parameter can be re-pointed at a view of a new buffer without anything else
    losing sight of it: contiguous, no two overlapping, and each storage referenced by the
    group's parameters only (a storage handle counts one reference: ours, while it is counted)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    spans: dict[int, list[tuple[int, int]]] = {}
    counts: dict[int, int] = {}
    for p in params:
        if not p.is_contiguous():
            return False
        storage = p.untyped_storage()
        key = storage.data_ptr()
        if key not in counts:
            counts[key] = use_count(storage._cdata) - 1  # without this handle
        del storage
        spans.setdefault(key, []).append((p.storage_offset(), p.storage_offset() + p.numel()))
    for key, ranges in spans.items():
        if counts[key] != len(ranges):
            return False  # another tensor (a .data, a saved graph, a view, a tied copy) holds it
        ranges.sort()
        if any(end > start for (_, end), (start, _) in zip(ranges, ranges[1:])):
            return False  # two parameters overlap
    return True


def _flatten(tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A new contiguous buffer holding ``tensors`` and, for each, a view of it with its shape."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    return flat, _views(flat, tensors)


class FlatAdamGroup:
    """The flat buffers of one parameter group.

    Built from the group's parameters, their (initialised) Adam states and their anchors; the
    states' tensors and the anchors are replaced, in place, by views of the new buffers.
    """

    def __init__(self, params: list[Tensor], states: list[dict], anchors: list[Tensor], first_anchor: int):
        self.params = list(params)
        self.dtype, self.device = params[0].dtype, params[0].device
        self.shared = _exclusively_held(self.params)
        self.x, self.x_views = _flatten(self.params)
        if self.shared:  # the parameters become the views: the step updates them in place
            for p, view in zip(self.params, self.x_views):
                p.data = view
        self.x_pointers = list(map(Tensor.data_ptr, self.params))  # where each parameter's memory is
        self.grad = torch.empty_like(self.x)  # overwritten by every step
        self.diff = torch.empty_like(self.x)  # x - z (mu other than 0 and 1): reused, not allocated per step
        self.denom = torch.empty_like(self.x)  # sqrt(v), likewise
        self.kernels: tuple | bool | None = None  # cpu_kernels and NumPy views for them, or False (decided at the first step)
        self.grad_views = _views(self.grad, self.params)
        self.exp_avg, self.exp_avg_views = _flatten([s["exp_avg"] for s in states])
        self.exp_avg_sq, self.exp_avg_sq_views = _flatten([s["exp_avg_sq"] for s in states])
        span = slice(first_anchor, first_anchor + len(params))
        self.anchor, anchors[span] = _flatten(anchors[span])
        self.anchor_views = anchors[span]
        self.first_anchor = first_anchor
        self.steps = torch.stack([s["step"].detach() for s in states])
        self.step_views = list(self.steps.unbind())
        for s, ea, es, st in zip(states, self.exp_avg_views, self.exp_avg_sq_views, self.step_views):
            s["exp_avg"], s["exp_avg_sq"], s["step"] = ea, es, st

    @staticmethod
    def applicable(params: list[Tensor], states: list[dict]) -> bool:
        """One dtype and device, dense real tensors, and the same step count for every parameter."""
        ref = params[0]
        if not all(p.dtype == ref.dtype and p.device == ref.device and p.layout == torch.strided
                   and not p.is_complex() for p in params):
            return False
        steps = [s["step"] for s in states]
        return all(torch.is_tensor(k) and k.dim() == 0 for k in steps) and len({float(k) for k in steps}) == 1

    def is_current(self, params: list[Tensor], states: list[dict], anchors: list[Tensor]) -> bool:
        """Whether the buffers still back this group: the same parameters at the same memory
        (``p.data = t`` and ``model.to(...)`` give a parameter other memory; a copied parameter
        also keeps its dtype and device), and state tensors and anchors that are still the views
        (a loaded state_dict or a user's assignment replaces them). Identity checks in C
        (``map``), not a Python loop over the parameters: this runs every step."""
        if len(params) != len(self.params) or not all(map(_is, params, self.params)):
            return False
        if list(map(Tensor.data_ptr, params)) != self.x_pointers:
            return False
        if not self.shared and any(p.dtype != self.dtype or p.device != self.device for p in params):
            return False
        first = self.first_anchor
        return (all(map(_is, map(_get_exp_avg, states), self.exp_avg_views))
                and all(map(_is, map(_get_exp_avg_sq, states), self.exp_avg_sq_views))
                and all(map(_is, map(_get_step, states), self.step_views))
                and all(map(_is, anchors[first:first + len(params)], self.anchor_views)))

    def step(self, grads: list[Tensor], lr: float, betas: tuple[float, float], eps: float, mu: float,
             anchor_beta: float, const: Callable[[float, Tensor], Tensor], scratch: Tensor,
             anchor_at: str = "x_k") -> None:
        """One step (under ``torch.no_grad()``). ``const(value, like)`` gives ``value`` as a cached
        0-dim tensor (cheaper than a Python scalar for CPU ops); ``scratch`` is a 0-dim tensor of
        the parameters' dtype the bias correction is written into. The anchor moves towards x_k
        (``anchor_at="x_k"``, after the Moreau term has read z_k) or towards x_{k+1}
        (``"x_next"``, after the step)."""
        beta1, beta2 = betas
        x, g, z, exp_avg, exp_avg_sq = self.x, self.grad, self.anchor, self.exp_avg, self.exp_avg_sq
        if not self.shared:
            torch._foreach_copy_(self.x_views, self.params)
        if mu == 1.0:  # g = (x - z) + grad: the same sum as grad + 1 * (x - z), one operation fewer
            torch.sub(x, z, out=g)
            torch._foreach_add_(self.grad_views, grads)
        else:
            torch._foreach_copy_(self.grad_views, grads)
            if mu > 0:
                g.add_(torch.sub(x, z, out=self.diff), alpha=mu)
        if anchor_at == "x_k":
            z.lerp_(x, anchor_beta)
        self.steps.add_(const(1.0, self.steps))
        k = self.step_views[0].item()  # as torch.optim.Adam reads it (steps live on the CPU)
        exp_avg.lerp_(g, 1 - beta1)
        if self.kernels is None:
            self.kernels = (cpu_kernels.applicable(x) and cpu_kernels.fma_matches_torch()
                            and (cpu_kernels.kernels(), x.numpy(), exp_avg.numpy(), exp_avg_sq.numpy(),
                                 g.numpy(), self.denom.numpy()))
        if self.kernels:  # the same operations in two passes and a torch sqrt (cpu_kernels)
            kernels, x_np, m_np, v_np, g_np, root_np = self.kernels
            scalar = x_np.dtype.type
            kernels.adam_second_moment(v_np, g_np, scalar(beta2), scalar(1 - beta2))
            torch.sqrt(exp_avg_sq, out=self.denom)
            kernels.adam_parameter_update(x_np, m_np, root_np, scalar((1 - beta2 ** k) ** 0.5), scalar(eps),
                                          scalar(-(lr / (1 - beta1 ** k))))
        else:
            exp_avg_sq.mul_(const(beta2, x))
            exp_avg_sq.addcmul_(g, g, value=1 - beta2)
            denom = torch.sqrt(exp_avg_sq, out=self.denom)
            denom.div_(scratch.fill_((1 - beta2 ** k) ** 0.5))
            denom.add_(const(eps, x))
            x.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1 ** k)))
        if self.shared:
            torch.autograd.graph.increment_version(self.params)  # as an in-place update of each
        else:
            torch._foreach_copy_(self.params, self.x_views)
        if anchor_at != "x_k":
            z.lerp_(x, anchor_beta)
