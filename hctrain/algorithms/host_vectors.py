"""A step's m-vector arithmetic on the host, through numpy.

On the CPU a torch elementwise op on a short vector costs a few microseconds, almost all of it
dispatch that does not depend on the length; a numpy ufunc costs under one. A constrained step
does one or two dozen such ops on m-vectors (the duals, penalties, phi') whatever the network,
so where those vectors are float32 or float64 CPU tensors an optimizer may run the same ops on
numpy views of the same memory (``Tensor.numpy()`` shares it: the tensors in
``algorithm_state`` change in place, ``state_dict()`` sees them). Each op is one IEEE operation
rounded once, done in the same order with the same scalars, so the results are the torch ops'
bit for bit (the optimizers' tests check it); other dtypes and devices keep the torch ops.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

HOST_DTYPES = (torch.float32, torch.float64)


def on_host(x: Tensor) -> bool:
    """Whether ``x`` is a CPU tensor of a dtype numpy computes the same way (float32, float64)."""
    return x.device.type == "cpu" and x.dtype in HOST_DTYPES


def host(x: Tensor) -> np.ndarray:
    """A numpy view of ``x``'s memory (``x`` detached, on the CPU; no copy)."""
    return x.detach().resolve_conj().resolve_neg().numpy()
