"""Algorithms for min E f s.t. E c <= 0, all driven by ``step(problem)``."""
from .base import ConstrainedOptimizer
from .baselines import Adam, FairretRegularized
from .gda import GDA
from .ghost import StochasticGhost
from .spbm import SPBM
from .sslalm import SSLALM, LinearizedALM
from .switching import SwitchingSubgradient

__all__ = ["ConstrainedOptimizer", "Adam", "FairretRegularized", "GDA", "SSLALM", "LinearizedALM",
           "SwitchingSubgradient", "StochasticGhost", "SPBM"]
