"""Constraint values against a hand computation and against fairret's own statistic."""
import pytest
import torch
import torch.nn.functional as F
from fairret.statistic import PositiveRate, TruePositiveRate

from hctrain.fairness import GroupFairnessConstraints


def test_one_vs_overall_by_hand() -> None:
    # groups: a = {0.9, 0.7}, b = {0.2, 0.4, 0.0}; PR_a = 0.8, PR_b = 0.2, PR = 2.2 / 5 = 0.44
    probs = torch.tensor([0.9, 0.7, 0.2, 0.4, 0.0])
    sens = F.one_hot(torch.tensor([0, 0, 1, 1, 1]), 2).float()
    c = GroupFairnessConstraints(["a", "b"], bound=0.05)(probs, sens)
    assert torch.allclose(c, torch.tensor([0.8 - 0.44 - 0.05, 0.44 - 0.2 - 0.05]))


def test_pairwise_by_hand() -> None:
    probs = torch.tensor([0.9, 0.7, 0.2, 0.4, 0.0, 0.5])
    sens = F.one_hot(torch.tensor([0, 0, 1, 1, 1, 2]), 3).float()
    constraints = GroupFairnessConstraints(["a", "b", "c"], bound=0.1, kind="pairwise")
    c = constraints(probs, sens)
    pr = {"a": 0.8, "b": 0.2, "c": 0.5}
    expected = [pr[g] - pr[h] - 0.1 for g in "abc" for h in "abc" if g != h]
    assert constraints.m == 6
    assert constraints.names[:2] == ["a - b", "a - c"]
    assert torch.allclose(c, torch.tensor(expected))


@pytest.mark.parametrize("statistic", [PositiveRate(), TruePositiveRate()])
def test_equals_fairret_statistic(statistic) -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(200, generator=gen)
    labels = (torch.rand(200, generator=gen) > 0.4).float().unsqueeze(-1)
    sens = F.one_hot(torch.randint(0, 4, (200,), generator=gen), 4).float()
    args = (labels,) if isinstance(statistic, TruePositiveRate) else ()
    ours = GroupFairnessConstraints(list("abcd"), 0.05, statistic=statistic)(probs, sens, *args)
    theirs = (statistic(probs[:, None], sens, *args) - statistic.overall_statistic(probs[:, None], *args)).abs() - 0.05
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_gradient_flows() -> None:
    logits = torch.zeros(4, requires_grad=True)
    sens = F.one_hot(torch.tensor([0, 0, 1, 1]), 2).float()
    c = GroupFairnessConstraints(["a", "b"], 0.0, kind="pairwise")(torch.sigmoid(logits), sens)
    (g,) = torch.autograd.grad(c[0], logits)
    assert torch.allclose(g, torch.tensor([0.125, 0.125, -0.125, -0.125]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(group_names=["a"]), "at least 2 groups"),
    (dict(group_names=["a", "b"], bound=-0.1), "bound"),
    (dict(group_names=["a", "b"], bound=float("nan")), "bound"),
    (dict(group_names=["a", "b"], kind="ratio"), "ratio"),
])
def test_bad_input(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GroupFairnessConstraints(**kwargs)
