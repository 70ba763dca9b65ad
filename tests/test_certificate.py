"""Held-out certificates (hctrain.certificate): exact binomial intervals, simultaneous coverage,
and the gap bounds of a fixed model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hctrain.certificate import certify, clopper_pearson, gap_upper_bounds


def test_clopper_pearson_known_values():
    # k = 0 of n: the upper end solves (1 - p)^n = alpha / 2; k = n mirrors it
    low, high = clopper_pearson(np.array([0, 10]), np.array([10, 10]), 0.05)
    assert low[0] == 0.0 and high[1] == 1.0
    assert high[0] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    assert low[1] == pytest.approx(0.025 ** (1 / 10), rel=1e-10)
    # a textbook value: 5 of 20 -> (0.0866, 0.4910)
    low, high = clopper_pearson(np.array([5]), np.array([20]), 0.05)
    assert (round(float(low[0]), 4), round(float(high[0]), 4)) == (0.0866, 0.491)


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_bounds_cover_every_true_gap_at_once(kind):
    """2,000 held-out samples of five groups of unequal size and rate: the true gaps all lie under
    their bounds in at least 95% of the samples. With the Bonferroni step left out (each interval
    at 1 - alpha) the same bounds cover less often, and the check can tell."""
    rng = np.random.default_rng(0)
    sizes = np.array([400, 40, 90, 35, 250])
    rates = np.array([0.45, 0.20, 0.30, 0.15, 0.10])
    group = np.repeat(np.arange(5), sizes)
    w = sizes / sizes.sum()
    truth = np.abs(rates - w @ rates)
    covered = []
    for _ in range(2000):
        if kind == "labels":
            values = (rng.random(group.size) < rates[group]).astype(float)
        else:  # probabilities with mean rates[g]: a Beta with that mean
            values = rng.beta(4 * rates[group], 4 * (1 - rates[group]))
        table = gap_upper_bounds(values, group, list("abcde"), alpha=0.05, kind=kind)
        covered.append(bool((truth <= table["upper bound"].to_numpy() + 1e-12).all()))
    assert np.mean(covered) >= 0.95, np.mean(covered)


def test_without_bonferroni_the_bounds_undercover():
    """The mutant check: per-group intervals at level 1 - alpha instead of 1 - alpha/G cover all
    five gaps at once in fewer than 95% of the samples on this design."""
    rng = np.random.default_rng(1)
    sizes = np.array([400, 40, 90, 35, 250])
    rates = np.array([0.45, 0.20, 0.30, 0.15, 0.10])
    group = np.repeat(np.arange(5), sizes)
    hits = []
    for _ in range(2000):
        values = (rng.random(group.size) < rates[group]).astype(float)
        k = np.bincount(group, weights=values, minlength=5)
        low, high = clopper_pearson(np.round(k), sizes, 0.05)  # no Bonferroni
        inside = (low <= rates) & (rates <= high)
        hits.append(bool(inside.all()))
    assert np.mean(hits) < 0.95


def test_bound_formula_and_errors():
    values = np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=float)
    group = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    table = gap_upper_bounds(values, group, ["a", "b"], alpha=0.1)
    low, high = clopper_pearson(np.array([2, 1]), np.array([4, 4]), 0.05)
    assert table["upper bound"].tolist() == pytest.approx(
        [max(0.5 * high[0] - 0.5 * low[1], 0.5 * high[1] - 0.5 * low[0]),
         max(0.5 * high[1] - 0.5 * low[0], 0.5 * high[0] - 0.5 * low[1])])
    assert table["gap"].tolist() == pytest.approx([0.125, 0.125])
    with pytest.raises(ValueError, match="labels"):
        gap_upper_bounds(values * 0.5, group, ["a", "b"])
    with pytest.raises(ValueError, match="no held-out row"):
        gap_upper_bounds(values, np.zeros(8, dtype=int), ["a", "b"])
    with pytest.raises(ValueError, match="alpha"):
        gap_upper_bounds(values, group, ["a", "b"], alpha=1.5)
    with pytest.raises(ValueError, match="shares"):
        gap_upper_bounds(values, group, ["a", "b"], shares=[0.7, 0.7])
    with pytest.raises(ValueError, match="kind"):
        gap_upper_bounds(values, group, ["a", "b"], kind="soft")


def test_certify_a_model_on_a_task():
    from test_metrics import tiny_data

    from hctrain.task import FairnessTask

    task = FairnessTask(tiny_data(n_per_group=40), bound=0.05, batch_per_group=4)
    constant = torch.nn.Linear(3, 1)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.fill_(-5.0)  # nobody positive: every gap is 0, but the bound is not
    out = certify(constant, task, split="test")
    assert out["table"]["gap"].max() == 0.0
    assert 0.0 < out["largest upper bound"] and out["certified"] == (out["largest upper bound"] <= 0.05)
    # 20 test rows per group: even a zero gap cannot be certified within 0.05 at 95%
    assert not out["certified"]
    loose = certify(constant, task, split="test", bound=1.0)
    assert loose["certified"]
    soft = certify(constant, task, split="test", kind="probabilities")
    half = math.sqrt(math.log(4 * 3 / 0.05) / (2 * 20))  # Hoeffding at alpha / (2G) per side, 20 rows
    table = soft["table"]
    assert (table["high"] - table["rate"]).to_numpy() == pytest.approx([half] * 3)


def _exact_two_groups(n1, n2, p1, p2, bound):
    """P(max_g |r_g - w1 r1 - w2 r2| <= bound) for two groups by enumeration: the largest gap is
    max(w1, w2) |r1 - r2| with w the sample's shares."""
    from scipy.stats import binom

    k1, k2 = np.arange(n1 + 1), np.arange(n2 + 1)
    pmf = np.outer(binom.pmf(k1, n1, p1), binom.pmf(k2, n2, p2))
    w_max = max(n1, n2) / (n1 + n2)
    gap = w_max * np.abs(k1[:, None] / n1 - k2[None, :] / n2)
    return float(pmf[gap <= bound + 1e-12].sum())


@pytest.mark.parametrize("n, p", [((80, 80), (0.4, 0.4)), ((30, 90), (0.3, 0.45)), ((200, 50), (0.5, 0.42))])
def test_within_bound_probability_matches_enumeration(n, p):
    """Two groups of unequal size and rate: the Monte Carlo value is the enumerated one within four
    standard errors. Weighting the overall rate equally (not by the shares) moves the answer by
    more than that on the unequal designs, so a wrong weight fails."""
    from hctrain.certificate import within_bound_probability

    exact = _exact_two_groups(*n, *p, 0.05)
    estimate = within_bound_probability(n, p, 0.05, draws=400_000, seed=3)
    assert abs(estimate - exact) < 4 * math.sqrt(exact * (1 - exact) / 400_000), (estimate, exact)
    if n[0] != n[1]:
        equal = within_bound_probability(n, p, 0.05, shares=[0.5, 0.5], draws=400_000, seed=3)
        assert abs(equal - exact) > 4 * math.sqrt(exact * (1 - exact) / 400_000), (equal, exact)


def test_within_bound_probability_limits_and_errors():
    from hctrain.certificate import within_bound_probability

    # a large sample resolves the bound: zero gaps pass, gaps of 0.1 fail
    assert within_bound_probability([100_000] * 3, [0.4] * 3, 0.05, draws=2_000) == 1.0
    assert within_bound_probability([100_000] * 2, [0.3, 0.5], 0.05, draws=2_000) == 0.0
    # two groups of 80 rows: the gap is half the rates' difference, SD about 0.039
    assert 0.78 < within_bound_probability([80, 80], [0.4, 0.4], 0.05, draws=20_000) < 0.88
    # Virginia's test split (about 20% of the offline rows per marital-status group): a model with
    # no gap at all lands inside 0.05 in well under half the samples (SD of a small group's gap 0.055)
    virginia = [2414, 82, 419, 86, 1259]
    assert 0.3 < within_bound_probability(virginia, [0.43] * 5, 0.05, draws=20_000) < 0.5
    with pytest.raises(ValueError, match="integer row counts"):
        within_bound_probability([80.5, 80], [0.4, 0.4], 0.05)
    with pytest.raises(ValueError, match="probabilities in"):
        within_bound_probability([80, 80], [0.4, 1.4], 0.05)
    with pytest.raises(ValueError, match="one entry per group"):
        within_bound_probability([80, 80, 10], [0.4, 0.4], 0.05)
    with pytest.raises(ValueError, match="shares must be"):
        within_bound_probability([80, 80], [0.4, 0.4], 0.05, shares=[0.7, 0.7])
