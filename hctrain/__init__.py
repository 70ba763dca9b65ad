"""hctrain: training neural networks under stochastic constraints, min E f s.t. E c <= 0."""
__version__ = "0.1.0"
