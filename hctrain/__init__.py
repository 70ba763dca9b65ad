"""hctrain: training neural networks under stochastic constraints, min E f s.t. E c <= 0.

The names a user's own code needs are importable from here (loaded on first use)::

    import hctrain as ht
    problem = ht.Problem(model, loss, constraints, data=loader)
    opt = ht.SSLALM(model.parameters(), problem=problem)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Problem": "hctrain.problem", "StochasticProblem": "hctrain.problem",
    "LoaderSource": "hctrain.sources",
    "Adam": "hctrain.algorithms", "FairretRegularized": "hctrain.algorithms", "GDA": "hctrain.algorithms",
    "LinearizedALM": "hctrain.algorithms", "SSLALM": "hctrain.algorithms",
    "SwitchingSubgradient": "hctrain.algorithms", "StochasticGhost": "hctrain.algorithms",
    "SPBM": "hctrain.algorithms",
    "Task": "hctrain.task", "ProblemTask": "hctrain.task", "FairnessTask": "hctrain.task",
    "run": "hctrain.runner",
    "load_acsincome": "hctrain.data", "load_dutch_census": "hctrain.data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hctrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
