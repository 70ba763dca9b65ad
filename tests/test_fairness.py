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


# --- the fast paths: integer codes (index_add_) and PositiveRate's closed form -----------------

class GeneralPositiveRate(PositiveRate):
    """PositiveRate through the general canonical-form path (the fast path takes PositiveRate only)."""


def _case(n: int = 300, groups: int = 5, seed: int = 0, absent: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=gen, dtype=torch.float64).float()
    codes = torch.randint(0, groups, (n,), generator=gen)
    if absent is not None:
        codes[codes == absent] = (absent + 1) % groups
    labels = (torch.rand(n, generator=gen) > 0.4).float()
    return logits, codes, labels


def _fairret(statistic, probs, sens, kind, bound, *args):
    stats = statistic(probs[:, None], sens, *args)
    if kind == "one_vs_overall":
        return (stats - statistic.overall_statistic(probs[:, None], *args)).abs() - bound
    first, second = torch.where(~torch.eye(sens.shape[1], dtype=torch.bool))
    return stats[first] - stats[second] - bound


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise"])
@pytest.mark.parametrize("statistic", ["PositiveRate", "TruePositiveRate"])
def test_codes_and_one_hot_agree_with_general_path_and_fairret(kind, statistic) -> None:
    logits, codes, labels = _case()
    G = 5
    onehot = F.one_hot(codes, G).float()
    if statistic == "PositiveRate":
        fast, general, args = PositiveRate(), GeneralPositiveRate(), ()
    else:  # no closed form: the general path, with codes (index_add_) and one-hot (matmul)
        fast, general, args = TruePositiveRate(), TruePositiveRate(), (labels[:, None],)
    names = list("abcde")
    values, grads = {}, {}
    for path, stat in (("fast", fast), ("general", general)):
        constraints = GroupFairnessConstraints(names, 0.05, kind=kind, statistic=stat)
        if path == "fast" and statistic == "PositiveRate":  # the closed form, no per-row terms
            constraints._terms = lambda *a: pytest.fail("PositiveRate took the general path")
        for form, sens in (("codes", codes), ("one-hot", onehot)):
            x = logits.clone().requires_grad_()
            c = constraints(torch.sigmoid(x), sens, *args)
            assert c.shape == (constraints.m,) and c.dtype == torch.float32
            values[path, form] = c.detach()
            (grads[path, form],) = torch.autograd.grad((c * torch.linspace(-1, 1, c.numel())).sum(), x)
    theirs = _fairret(fast, torch.sigmoid(logits), onehot, kind, 0.05, *args)
    reference = values["general", "one-hot"]  # the original formula: one-hot matrix product
    for key, value in values.items():
        assert torch.allclose(value, reference, atol=1e-6, rtol=0), key
        assert torch.allclose(value, theirs, atol=1e-6, rtol=0), key
        assert torch.allclose(grads[key], grads["general", "one-hot"], atol=1e-6, rtol=0), key


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise"])
def test_codes_path_overall_rate_is_the_general_formula(kind) -> None:
    # the overall rate is sum p / N in every path (bitwise), and so are the group sizes
    logits, codes, _ = _case(n=1000, groups=7, seed=3)
    probs = torch.sigmoid(logits)
    names = [str(i) for i in range(7)]
    fast = GroupFairnessConstraints(names, 0.1, kind)
    general = GroupFairnessConstraints(names, 0.1, kind, statistic=GeneralPositiveRate())
    stats_fast, overall_fast = fast.group_statistics(probs, codes)
    stats_general, overall_general = general.group_statistics(probs, F.one_hot(codes, 7).float())
    assert torch.equal(overall_fast, overall_general)
    assert torch.allclose(stats_fast, stats_general, atol=1e-6, rtol=0)  # float32 sums in another order: a few ulps of 0.5
    assert torch.equal(fast.gaps(probs, codes) - 0.1, fast(probs, codes))


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise"])
def test_absent_group_is_nan_in_every_path(kind) -> None:
    # 0 / 0: the plain formula gives NaN for a group with no rows (fairret's safe_div gives 0)
    logits, codes, _ = _case(n=200, groups=4, seed=1, absent=2)
    probs = torch.sigmoid(logits)
    onehot = F.one_hot(codes, 4).float()
    names = list("abcd")
    reference = GroupFairnessConstraints(names, 0.05, kind, statistic=GeneralPositiveRate())(probs, onehot)
    constraints = GroupFairnessConstraints(names, 0.05, kind)
    if kind == "one_vs_overall":
        expected_nan = torch.tensor([False, False, True, False])
    else:
        expected_nan = torch.tensor(["c" in name for name in constraints.names])
    assert torch.equal(reference.isnan(), expected_nan)
    for sens in (codes, onehot):
        c = constraints(probs, sens)
        assert torch.equal(c.isnan(), expected_nan)
        assert torch.allclose(c[~expected_nan], reference[~expected_nan], atol=1e-6, rtol=0)
    theirs = _fairret(PositiveRate(), probs, onehot, kind, 0.05)
    assert torch.allclose(c[~expected_nan], theirs[~expected_nan], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise"])
def test_float64_and_bound_as_the_python_float(kind) -> None:
    logits, codes, _ = _case(n=100, groups=3, seed=2)
    probs = torch.sigmoid(logits.double())
    constraints = GroupFairnessConstraints(list("abc"), 0.05, kind)
    c = constraints(probs, codes)
    assert c.dtype == torch.float64
    assert torch.equal(c, constraints.gaps(probs, codes) - 0.05)
    constraints.bound = 0.2  # the cached bound follows the attribute
    assert torch.equal(constraints(probs, codes), constraints.gaps(probs, codes) - 0.2)
    c32 = constraints(probs.float(), codes)
    assert c32.dtype == torch.float32 and torch.equal(c32, constraints.gaps(probs.float(), codes) - 0.2)


def test_batched_jacobian_through_codes_path() -> None:
    # Stochastic Ghost takes the Jacobian with is_grads_batched (a vmap over the backward pass)
    logits, codes, _ = _case(n=60, groups=3, seed=4)
    x = logits.clone().requires_grad_()
    c = GroupFairnessConstraints(list("abc"), 0.0, "pairwise")(torch.sigmoid(x), codes)
    (jac,) = torch.autograd.grad(c, x, grad_outputs=torch.eye(c.numel()), is_grads_batched=True,
                                 retain_graph=True)
    rows = torch.stack([torch.autograd.grad(c[i], x, retain_graph=True)[0] for i in range(c.numel())])
    assert torch.allclose(jac, rows, atol=1e-7, rtol=0)


@pytest.mark.parametrize("sens, message", [
    (torch.tensor([0, 1, 3, 1]), "0..2"),
    (torch.tensor([0, -1, 2, 1]), "0..2"),
    (torch.tensor([0, 1, 2]), "0..2"),
    (torch.tensor([0.0, 1.0, 2.0, 1.0]), "integer group codes"),
])
def test_bad_group_codes(sens, message) -> None:
    constraints = GroupFairnessConstraints(list("abc"), 0.05)
    with pytest.raises(ValueError, match=message):
        constraints(torch.full((4,), 0.5), sens)


# --- the training path: autograd's own operations (the one-node path only with population shares)

def _former_pairwise(stats):
    """The pairs as the former code gathered them: the G x G matrix's off-diagonal entries as a
    strided view of the flattened matrix (its autograd gradient was the former node's, tested)."""
    G = stats.shape[0]
    return (stats.unsqueeze(1) - stats.unsqueeze(0)).reshape(-1)[1:].view(G - 1, G + 1)[:, :G].reshape(-1)


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise", "signed_one_vs_overall"])
@pytest.mark.parametrize("G", [2, 5, 30])
# bfloat16: the group sizes stay integer counts there (a sum of ones in bfloat16 stops at 256)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_unweighted_constraints_take_autograds_operations_with_the_former_numbers(kind, G, dtype) -> None:
    torch.manual_seed(G)
    constraints = GroupFairnessConstraints([str(g) for g in range(G)], 0.05, kind)
    sens = torch.cat([torch.arange(G), torch.randint(G, (20 * G,))])
    logits = torch.randn(sens.shape[0], dtype=dtype, requires_grad=True)
    weights = torch.randn(constraints.m, dtype=dtype)

    def gradient(c):
        # the logits also feed a second term, as they feed the loss in training
        return torch.autograd.grad((weights * c).sum() + logits.square().sum(), logits)[0]

    used = constraints.from_logits(logits, sens)
    assert type(used.grad_fn).__name__ != "_PositiveRateConstraintsBackward"
    probs = torch.sigmoid(logits)
    stats = constraints._group_sums(probs, sens) / constraints._group_sizes(sens, probs)
    if kind == "pairwise":  # the former strided gather: the same values and gradient bit for bit
        former = _former_pairwise(stats) - constraints._bound_like(probs)
        assert torch.equal(used, former) and torch.equal(gradient(used), gradient(former))
    assert torch.equal(constraints(torch.sigmoid(logits), sens), used)
    # an independent formula: group means by masks
    p64 = torch.sigmoid(logits.detach().double())
    rates = torch.stack([p64[sens == g].mean() for g in range(G)])
    if kind == "pairwise":
        expected = (rates.unsqueeze(1) - rates)[~torch.eye(G, dtype=torch.bool)] - 0.05
    elif kind == "one_vs_overall":
        expected = (rates - p64.mean()).abs() - 0.05
    else:
        expected = torch.cat((rates - p64.mean(), p64.mean() - rates)) - 0.05
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(used.detach().double(), expected, atol=tol)


def test_pairwise_gradient_by_hand() -> None:
    # c_(g,h) = S_g - S_h - b: dL/dS_g = sum_h w_(g,h) - sum_h w_(h,g); S_g = mean of p over g
    constraints = GroupFairnessConstraints(["a", "b", "c"], 0.0, "pairwise")
    probs = torch.tensor([0.9, 0.7, 0.2, 0.4, 0.0, 0.5], requires_grad=True)
    sens = torch.tensor([0, 0, 1, 1, 1, 2])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # pairs ab, ac, ba, bc, ca, cb
    grad, = torch.autograd.grad(constraints(probs, sens), probs, grad_outputs=w)
    d_s = torch.tensor([(1 + 2) - (3 + 5), (3 + 4) - (1 + 6), (5 + 6) - (2 + 4)], dtype=torch.float32)
    assert torch.allclose(grad, (d_s / torch.tensor([2.0, 3.0, 1.0]))[sens])


def test_fused_constraints_without_gradient() -> None:
    constraints = GroupFairnessConstraints(["a", "b"], 0.05)
    with torch.no_grad():
        c = constraints.from_logits(torch.randn(10), torch.tensor([0, 1] * 5))
    assert c.shape == (2,) and c.grad_fn is None


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise", "signed_one_vs_overall"])
@pytest.mark.parametrize("shares", [None, [0.2, 0.3, 0.1, 0.4]])
def test_values_without_gradient_are_those_of_the_training_path(kind, shares) -> None:
    """Without a gradient to track the constraints are the same values bit for bit as with one
    (for the one-node path, its forward runs as a plain function: ``_fused_constraints``)."""
    from hctrain.fairness import _PositiveRateConstraints

    torch.manual_seed(3)
    constraints = GroupFairnessConstraints(list("abcd"), 0.05, kind, population_shares=shares)
    sens = torch.cat([torch.arange(4), torch.randint(4, (60,))])
    node_path = shares is not None and kind != "pairwise"
    for dtype in (torch.float32, torch.float64):
        logits = torch.randn(sens.shape[0], dtype=dtype)
        tracked = constraints.from_logits(logits.clone().requires_grad_(), sens)
        assert node_path == (type(tracked.grad_fn).__name__ == "_PositiveRateConstraintsBackward")
        if node_path:
            node = _PositiveRateConstraints.apply(logits.clone().requires_grad_(), sens, constraints, True)
            assert torch.equal(tracked, node)
        with torch.no_grad():
            values = constraints.from_logits(logits.clone().requires_grad_(), sens)
        plain = constraints.from_logits(logits, sens)  # grad enabled, logits without grad
        probs = constraints(torch.sigmoid(logits), sens)
        for c in (values, plain, probs):
            assert c.grad_fn is None and not c.requires_grad
            assert torch.equal(c, tracked.detach()), (kind, dtype)


# --- population-weighted estimates on balanced batches (issue 10, item 1) ---------------------

def _balanced_draws(group: torch.Tensor, per_group: int, n: int, seed: int = 0):
    from hctrain.data import BalancedGroupSampler

    sampler = BalancedGroupSampler(group, per_group, seed=seed)
    return [sampler.sample() for _ in range(n)]


def test_population_weighted_overall_rate_is_unbiased_on_balanced_batches() -> None:
    """Labels as predictions (p = y) on groups of very different sizes and rates: the mean over
    many balanced batches of S_g - S equals the full data's with the population shares, and
    misses it with the batch's own (equal-weight) overall rate."""
    g = torch.Generator().manual_seed(0)
    sizes, rates = [6000, 300, 1500, 2200], [0.55, 0.1, 0.25, 0.8]
    group = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    y = torch.cat([(torch.rand(n, generator=g) < r).double() for n, r in zip(sizes, rates)])
    shares = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    names = list("abcd")
    weighted = GroupFairnessConstraints(names, 0.0, population_shares=shares)
    plain = GroupFairnessConstraints(names, 0.0)
    stats, overall = plain.group_statistics(y, group)  # the full data: S = mean of y
    full = stats - overall
    draws = _balanced_draws(group, 32, 2000)
    for constraints, unbiased in ((weighted, True), (plain, False)):
        mean = torch.stack([torch.sub(*constraints.group_statistics(y[i], group[i])) for i in draws]).mean(0)
        error = (mean - full).abs().max()
        assert (error < 0.01) == unbiased, f"error {error:.4f}"


@pytest.mark.parametrize("kind", ["one_vs_overall", "pairwise"])
def test_population_weighted_fused_path_values_and_gradient(kind) -> None:
    """The fused positive-rate node with population shares: values as the general formula,
    gradient as autograd's of that formula."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, generator=g, dtype=torch.float64, requires_grad=True)
    codes = torch.arange(40) % 4
    shares = torch.tensor([0.5, 0.1, 0.15, 0.25], dtype=torch.float64)
    constraints = GroupFairnessConstraints(list("abcd"), 0.05, kind, population_shares=shares)
    c = constraints.from_logits(logits, codes)
    probs = torch.sigmoid(logits)
    stats = torch.stack([probs[codes == i].mean() for i in range(4)])
    if kind == "one_vs_overall":
        expected = (stats - (shares * stats).sum()).abs() - 0.05
    else:
        expected = constraints.gaps_from_statistics(stats) - 0.05
    assert torch.allclose(c, expected, atol=1e-14)
    v = torch.randn(c.shape[0], generator=g, dtype=torch.float64)
    (ours,) = torch.autograd.grad(c, logits, v)
    (theirs,) = torch.autograd.grad(expected, logits, v)
    assert torch.allclose(ours, theirs, atol=1e-14)


def test_population_shares_are_checked() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        GroupFairnessConstraints(list("ab"), 0.05, population_shares=[0.5, 0.6])
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        GroupFairnessConstraints(list("ab"), 0.05, population_shares=[1.0])


@pytest.mark.parametrize("shares", [None, [0.5, 0.3, 0.2]])
def test_signed_constraints_values_and_gradient(shares):
    """c = (S_g - S - b, S - S_g - b): the fused node's values and gradient equal autograd's of
    the formula, and its largest value is the one-vs-overall form's."""
    from hctrain.fairness import GroupFairnessConstraints

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(60, dtype=torch.float64, generator=g, requires_grad=True)
    group = torch.arange(3).repeat(20)
    signed = GroupFairnessConstraints(["a", "b", "c"], 0.05, "signed_one_vs_overall", population_shares=shares)
    plain = GroupFairnessConstraints(["a", "b", "c"], 0.05, "one_vs_overall", population_shares=shares)
    assert signed.names == ["a above", "b above", "c above", "a below", "b below", "c below"] and signed.m == 6
    c = signed.from_logits(logits, group)
    p = torch.sigmoid(logits)
    rates = torch.stack([p[group == k].mean() for k in range(3)])
    overall = rates.mean() if shares is None else (torch.tensor(shares, dtype=torch.float64) * rates).sum()
    if shares is None:
        overall = p.mean()
    expected = torch.cat((rates - overall, overall - rates)) - 0.05
    assert torch.allclose(c, expected, atol=1e-12)
    assert float(c.detach().max()) == pytest.approx(float(plain.from_logits(logits, group).detach().max()), abs=1e-12)
    weights = torch.randn(6, dtype=torch.float64, generator=g)
    (mine,) = torch.autograd.grad(c, logits, weights)
    (reference,) = torch.autograd.grad(expected, logits, weights)
    assert torch.allclose(mine, reference, atol=1e-12)
    slow = signed(p.detach().requires_grad_(), torch.nn.functional.one_hot(group, 3).double())  # unfused path
    assert torch.allclose(slow, expected.detach(), atol=1e-12)


def test_signed_batch_values_are_unbiased_where_the_absolute_gap_is_not():
    """On balanced batches of 8 rows per group, the mean of the signed constraints is the full
    data's value; the mean of |S_g - S| - b overestimates it (E|X| >= |E X|)."""
    from hctrain.data import BalancedGroupSampler
    from hctrain.fairness import GroupFairnessConstraints

    g = torch.Generator().manual_seed(2)
    group = torch.cat([torch.zeros(300), torch.ones(200), torch.full((100,), 2)]).long()
    p = torch.rand(600, generator=g) * 0.2 + 0.4  # rates near 0.5 in every group: gaps near 0
    shares = torch.bincount(group).double() / 600
    signed = GroupFairnessConstraints(["a", "b", "c"], 0.05, "signed_one_vs_overall", population_shares=shares)
    absolute = GroupFairnessConstraints(["a", "b", "c"], 0.05, "one_vs_overall", population_shares=shares)
    full_signed, full_abs = signed(p.double(), group), absolute(p.double(), group)
    sampler = BalancedGroupSampler(group, 8, seed=0)
    draws = [sampler.sample() for _ in range(4000)]
    mean_signed = torch.stack([signed(p[i].double(), group[i]) for i in draws]).mean(0)
    mean_abs = torch.stack([absolute(p[i].double(), group[i]) for i in draws]).mean(0)
    assert torch.allclose(mean_signed, full_signed, atol=0.004)
    assert bool((mean_abs - full_abs > 0.005).all())  # biased upwards, by about the noise of a batch
