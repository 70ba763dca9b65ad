"""The paper's network: an MLP with hidden layers 64 and 32, ReLU, one logit."""
from __future__ import annotations

from torch import nn


def paper_mlp(n_features: int, hidden: tuple[int, ...] = (64, 32)) -> nn.Sequential:
    """MLP ``n_features -> 64 -> 32 -> 1`` with ReLU activations, returning logits.

    With the 9 ACSIncome inputs left after removing MAR it has 2,753 parameters (the paper
    states 194; a network of these widths cannot have so few).
    """
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
