"""One-pass CPU kernels for SPBM's per-step vector work (compiled with numba).

On the CPU, each elementwise tensor operation on a short vector costs a few microseconds
of fixed overhead. That is dispatch, type promotion and TensorIterator setup, whatever the
vector's length. SPBM's step does about fifteen such operations on its m-vectors (phi' at
t_k and at c_k, the weights, the duals, the penalties, the finiteness check), and five more
in the flat Adam step. The kernels below do the same IEEE operations in the same order, one
element at a time, in one pass each. The numbers are identical bit for bit to the tensor
operations' (``tests/test_cpu_kernels.py`` checks every option against the tensor path). The
loops have no branches that would stop LLVM from vectorising them: ``error_model="numpy"``
removes Python's division-by-zero test, and the clamps and maxima are selects.

What "the same operations" means, operation by operation, as measured against torch 2.13:

* ``clamp``, ``maximum``, ``mul``, ``add``, ``div`` and ``reciprocal`` are correctly rounded
  IEEE operations. Any implementation gives the same result, so the kernels use ``min``,
  ``max``, ``*``, ``+`` and ``/`` on the tensors' dtype. Every constant is first rounded to that
  dtype, as torch rounds a Python scalar or a 0-dim tensor.
* ``addcdiv(self, t1, t2, value=s)`` computes ``self + (s * t1) / t2``. ``addcmul(self, t1, t2,
  value=s)`` computes ``fma(s * t1, t2, self)`` on x86 CPUs with AVX2 or AVX-512 (its vector
  path uses a fused multiply-add). The Adam kernels therefore run only where torch reports one
  of those capabilities (:func:`fma_matches_torch`).
* ``sqrt`` is not always correctly rounded in torch: on the AVX-512 Xeon VM, 657 of 100,000
  float32 square roots differ by one ulp from the rounded float64 root. It therefore stays a
  torch operation between the two Adam kernels.

The kernels are used for float32 and float64 tensors on the CPU when numba can be imported.
Everything else (other devices and dtypes, ``HCTRAIN_CPU_KERNELS=0``, no numba) takes the
tensor operations, which compute the same numbers. Each dtype's kernels are compiled the
first time they are used (about 1.2 s in all on the Xeon VM), once per process.
"""
from __future__ import annotations

import os
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

ENV = "HCTRAIN_CPU_KERNELS"
_DTYPES = (torch.float32, torch.float64)


def enabled() -> bool:
    """Whether the kernels are switched on: numba importable, and ``HCTRAIN_CPU_KERNELS`` not "0"."""
    return os.environ.get(ENV, "1") != "0" and _kernels() is not None


def applicable(t: Tensor) -> bool:
    """Whether the kernels can compute on ``t``: a float32/float64 CPU tensor, kernels enabled."""
    return t.device.type == "cpu" and t.dtype in _DTYPES and enabled()


@lru_cache(maxsize=1)
def fma_matches_torch() -> bool:
    """Whether torch's ``addcmul`` is ``fma(value * t1, t2, self)`` here: its vector path on x86
    AVX2 / AVX-512 (the Adam kernels' condition)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def numpy_view(cache: dict, name: str, t: Tensor) -> np.ndarray:
    """``t.numpy()``, cached in ``cache`` under ``name`` while the tensor and its memory stay the
    same (a replaced tensor or storage, e.g. by ``load_state_dict`` or ``.data =``, is noticed)."""
    key = ("numpy", name)
    hit = cache.get(key)
    ptr = t.data_ptr()
    if hit is None or hit[0] is not t or hit[1] != ptr:
        hit = cache[key] = (t, ptr, t.numpy())
    return hit[2]


@lru_cache(maxsize=1)
def _kernels() -> SimpleNamespace | None:
    try:
        from numba import njit
        from numba.extending import intrinsic
    except ImportError:
        return None

    options = dict(nogil=True, boundscheck=False, error_model="numpy", cache=False)
    jit = njit(**options)

    @intrinsic
    def fma(typingctx, a, b, c):  # llvm.fma: one rounding, as the FMA instruction
        def codegen(context, builder, signature, args):
            return builder.fma(*args)
        return a(a, b, c), codegen

    @njit(inline="always", **options)
    def dphi(t, joint, coef, one, reciprocal):
        """phi'(t): max(t + 1, coef / min(t, joint)) for quadratic_logarithmic, max(t + 1,
        (1 / l^2) coef) with l = 1 - min(t, joint) for quadratic_reciprocal."""
        left = t if t < joint else joint
        if reciprocal:
            left = -left + one
            barrier = (one / (left * left)) * coef
        else:
            barrier = coef / left
        line = t + one
        return line if line >= barrier else barrier

    @jit
    def penalty_weights(c, pen, lam, dphi_t, dphi_c, weights, consts, reciprocal, at_c):
        """dphi_t = phi'(c / p), weights = lam * dphi_t and, when ``at_c``, dphi_c = phi'(c).
        consts = (joint, coefficient, 1) in the dtype: (-1/2, -1/4, 1) for quadratic_logarithmic,
        phi' = max(t + 1, -1/4 / min(t, -1/2)); (-1/3, 32/27, 1) for quadratic_reciprocal,
        phi' = max(t + 1, (1 / l^2) * 32/27), l = 1 - min(t, -1/3). Returns whether every c is
        finite (checked in the same pass: c - c is 0 exactly for a finite c)."""
        joint, coef, one = consts[0], consts[1], consts[2]
        finite = True
        for i in range(c.shape[0]):
            ci = c[i]
            finite &= (ci - ci) == 0
            d = dphi(ci / pen[i], joint, coef, one, reciprocal)
            dphi_t[i] = d
            weights[i] = lam[i] * d
        if at_c:
            for i in range(c.shape[0]):
                dphi_c[i] = dphi(c[i], joint, coef, one, reciprocal)
        return finite

    @jit
    def dual_penalty_update(lam, pen, dphi_t, psi, consts, stabilised, scale_psi):
        """lam <- clip(lam (dphi_t (1 - gamma) + gamma), lambda_min, lambda_max);
        p <- clip(K p + ((1 - K) p) / psi, p_min, p_max) (stabilised) or clip(K p, ...), psi times
        delta where psi >= 1 when ``scale_psi``. consts = (1 - gamma, gamma, lambda_min,
        lambda_max, K, 1 - K, p_min, p_max, delta, 1) in the dtype."""
        one_minus_gamma, gamma, lmin, lmax = consts[0], consts[1], consts[2], consts[3]
        K, one_minus_K, pmin, pmax, delta, one = consts[4], consts[5], consts[6], consts[7], consts[8], consts[9]
        for i in range(lam.shape[0]):
            x = lam[i] * (dphi_t[i] * one_minus_gamma + gamma)
            x = x if x > lmin else lmin
            lam[i] = x if x < lmax else lmax
        if stabilised:
            for i in range(pen.shape[0]):
                p = pen[i]
                s = psi[i]
                if scale_psi:
                    s = s if s < one else s * delta
                y = p * K + one_minus_K * p / s
                y = y if y > pmin else pmin
                pen[i] = y if y < pmax else pmax
        else:
            for i in range(pen.shape[0]):
                y = pen[i] * K
                y = y if y > pmin else pmin
                pen[i] = y if y < pmax else pmax

    @jit
    def adam_second_moment(v, g, beta2, one_minus_beta2):
        """v <- beta2 v, then addcmul(v, g, g, value=1 - beta2) = fma((1 - beta2) g, g, beta2 v)."""
        for i in range(v.shape[0]):
            gi = g[i]
            v[i] = fma(one_minus_beta2 * gi, gi, v[i] * beta2)

    @jit
    def adam_parameter_update(x, m, root_v, bias_correction2_sqrt, eps, minus_step_size):
        """x <- addcdiv(x, m, root_v / bc2 + eps, value=-step_size) = x + (-step_size m) / denom."""
        for i in range(x.shape[0]):
            x[i] = x[i] + minus_step_size * m[i] / (root_v[i] / bias_correction2_sqrt + eps)

    return SimpleNamespace(penalty_weights=penalty_weights, dual_penalty_update=dual_penalty_update,
                           adam_second_moment=adam_second_moment, adam_parameter_update=adam_parameter_update)


def kernels() -> SimpleNamespace:
    """The compiled kernels (call only where :func:`enabled`)."""
    found = _kernels()
    if found is None:
        raise RuntimeError("hctrain's CPU kernels need numba: pip install numba (or set HCTRAIN_CPU_KERNELS=0)")
    return found
