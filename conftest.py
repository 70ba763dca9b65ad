"""Test-session setup for every pytest run from this repository: the library tests in tests/
and the chapter notebooks in notebooks/ (nbval), also when only notebooks are collected.

The environment is set at import, before nbval starts any kernel, so every chapter kernel
inherits it:

* ``HCTRAIN_QUICK=1``: each chapter's ``parameters`` cell reads
  ``quick = os.environ.get("HCTRAIN_QUICK") == "1"`` and shrinks its protocol (CI, minutes).
  An explicit value in the caller's environment wins (``HCTRAIN_QUICK=0 pytest notebooks``).
* Matplotlib never needs a display: this pytest process plots with Agg, and chapter kernels
  use the inline backend -- ipykernel's own default, the one papermill runs use too -- so a
  re-run cell produces the same kind of outputs as the stored ones. (``MPLBACKEND=Agg`` in a
  kernel would silently drop every figure output.)
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HCTRAIN_QUICK", "1")
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # inherited by kernels

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # this process only

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # pytest.ini names the sanitize file relative to the repository root; make it work from
    # any working directory.
    opt = getattr(config.option, "nbval_sanitize_with", None)
    if opt and not Path(opt).is_absolute() and not Path(opt).exists():
        config.option.nbval_sanitize_with = str(REPO / opt)
