"""Bring your own problem: a model, DataLoaders, loss(model, batch) and constraints(model, batch),
every algorithm in the caller's own loop (issue 9)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hctrain.algorithms import (GDA, SPBM, SSLALM, Adam, FairretRegularized, LinearizedALM,
                                StochasticGhost, SwitchingSubgradient)
from hctrain.data import BalancedGroupSampler
from hctrain.problem import Problem
from hctrain.runner import run
from hctrain.sources import LoaderSource
from hctrain.task import ProblemTask, Task

CONSTRAINED = [GDA, LinearizedALM, SSLALM, SwitchingSubgradient, SPBM, StochasticGhost]
EVERY = CONSTRAINED + [Adam]
GHOST_FAST = dict(max_level=1)


def regression_data(n: int = 256, seed: int = 0, dtype=torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=dtype)
    in_a = torch.rand(n, generator=g) < 0.3
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.5 * in_a + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    return TensorDataset(x, y, in_a)


def loss(model, batch):
    x, y, in_a = batch
    return F.mse_loss(model(x).squeeze(-1), y)


def constraints(model, batch):
    """A subgroup's mean prediction <= 0.1 and a squared weight norm <= 4 (reads the parameters)."""
    x, y, in_a = batch
    mean_a = model(x[in_a]).mean()
    norm = sum(p.pow(2).sum() for p in model.parameters())
    return torch.stack([mean_a - 0.1, norm - 4.0])


def make_model(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def make_problem(seed: int = 0, *, shuffle: bool = True, separate: bool = False, batch_size: int = 32,
                 dtype=torch.float32, model=None) -> Problem:
    data = regression_data(dtype=dtype)
    model = make_model(seed, dtype) if model is None else model
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    other = DataLoader(data, batch_size=batch_size, shuffle=shuffle) if separate else None
    return Problem(model, loss, constraints, data=loader, constraint_data=other, seed=seed)


def build(cls, problem, **hyper):
    if cls is StochasticGhost:
        hyper = {**GHOST_FAST, **hyper}
    return cls(problem.model.parameters(), problem=problem, **hyper)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --- problems from ordinary pieces ----------------------------------------------------------

def test_m_is_found_and_nothing_moves_while_probing():
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    problem = make_problem(model=model)
    assert problem.m == 2 and problem.constraint_names == ["c0", "c1"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng)  # the loader's shuffle never touches the global stream
    assert problem.objective_sampler.position == 0  # rewound after the probe


def test_batches_of_any_form_and_a_model_with_two_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 1), nn.Linear(1, 1)

        def forward(self, left, right):
            return (self.a(left) + self.b(right)).squeeze(-1)

    class Dicts(Dataset):
        def __init__(self, n=64):
            self.left, self.right, self.y = torch.randn(n, 2), torch.randn(n, 1), torch.randn(n)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"left": self.left[i], "right": self.right[i], "y": self.y[i]}

    def dict_loss(model, batch):
        return F.mse_loss(model(batch["left"], batch["right"]), batch["y"])

    def one_constraint(model, batch):  # 0-dim for m = 1 is accepted
        return model(batch["left"], batch["right"]).mean() - 0.5

    torch.manual_seed(0)
    model = TwoInputs()
    problem = Problem(model, dict_loss, one_constraint, data=Dicts(), batch_size=16)  # a Dataset
    assert problem.m == 1
    opt = GDA(model.parameters(), problem=problem)
    info = opt.step()
    assert info["constraints"].shape == (1,)


def test_loaders_cycle_through_epochs_seeing_every_row_once_per_epoch():
    data = TensorDataset(torch.arange(20.0))
    source = LoaderSource(DataLoader(data, batch_size=5, shuffle=True), seed=3)
    epochs = [torch.cat([source()[0] for _ in range(4)]) for _ in range(3)]
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(20))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert source.epoch == 2 and source.position == 4


@pytest.mark.parametrize("cls", EVERY)
@pytest.mark.parametrize("separate", [False, True])
def test_resume_is_exact_with_shuffled_loaders(cls, separate):
    """k steps, save (problem and optimizer), k more; a fresh process-like copy restored from the
    save takes the same k steps bit for bit (epoch positions and shuffles restored)."""
    k = 11  # 8 batches per epoch: the save falls inside the second epoch
    problem = make_problem(seed=1, separate=separate)
    opt = build(cls, problem)
    for _ in range(k):
        opt.step()
    saved = copy.deepcopy({"problem": problem.state_dict(), "opt": opt.state_dict(),
                           "model": problem.model.state_dict()})
    for _ in range(k):
        opt.step()

    torch.manual_seed(12345)  # another global stream: it must not matter
    problem2 = make_problem(seed=1, separate=separate)
    opt2 = build(cls, problem2)
    problem2.model.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    problem2.load_state_dict(saved["problem"])
    for _ in range(k):
        opt2.step()
    assert torch.equal(flat(problem.model), flat(problem2.model))


class Counting:
    """A batch source that counts its draws (and hands out distinct batches)."""

    def __init__(self, problem_source):
        self.inner, self.calls = problem_source, 0

    def __call__(self):
        self.calls += 1
        return self.inner()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


@pytest.mark.parametrize("cls,draws", [(GDA, 1), (LinearizedALM, 1), (SPBM, 1), (SSLALM, 2),
                                       (SwitchingSubgradient, 2)])
def test_each_algorithm_draws_the_samples_its_mathematics_needs(cls, draws):
    problem = make_problem()
    counter = Counting(problem.objective_sampler)
    problem.objective_sampler = problem.constraint_sampler = counter
    opt = build(cls, problem)
    for _ in range(5):
        opt.step()
    assert counter.calls == 5 * draws


def test_ghost_draws_its_geometric_batch():
    problem = make_problem()
    counter = Counting(problem.objective_sampler)
    problem.objective_sampler = problem.constraint_sampler = counter
    opt = build(StochasticGhost, problem)
    info = opt.step()
    assert counter.calls == 1 + 2 ** (int(info["N"]) + 1)


def test_sslalm_second_sample_is_a_different_batch():
    problem = make_problem()
    seen = []
    inner = problem.objective_sampler

    def recording():
        batch = inner()
        seen.append(batch[0])
        return batch

    recording.state_dict, recording.load_state_dict = inner.state_dict, inner.load_state_dict
    problem.objective_sampler = problem.constraint_sampler = recording
    SSLALM(problem.model.parameters(), problem=problem).step()
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])


# --- torch.optim conventions ---------------------------------------------------------------

@pytest.mark.parametrize("cls", EVERY)
def test_schedulers_drive_lr(cls):
    problem = make_problem()
    opt = build(cls, problem)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 2)
    # lr = 0 from a scheduler: the weights stand still, so the step reads lr from the group
    zero = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 0.0)
    assert opt.param_groups[0]["lr"] == 0.0 and zero.get_last_lr() == [0.0]
    before = flat(problem.model)
    opt.step()
    assert torch.equal(flat(problem.model), before)


@pytest.mark.parametrize("cls,alias", [(GDA, "tau"), (SSLALM, "tau"), (LinearizedALM, "tau"),
                                       (SwitchingSubgradient, "eta_f"), (StochasticGhost, "gamma0")])
def test_the_papers_names_are_aliases_of_lr(cls, alias):
    problem = make_problem()
    params = list(problem.model.parameters())
    assert build(cls, problem, **{alias: 0.123}).param_groups[0]["lr"] == 0.123
    assert build(cls, problem, lr=0.123).param_groups[0]["lr"] == 0.123
    groups = ([{"params": params, alias: 0.2}] if cls is StochasticGhost  # one group: its QP couples all
              else [{"params": params[:2], alias: 0.2}, {"params": params[2:]}])
    grouped = cls(groups, problem=problem)
    assert grouped.param_groups[0]["lr"] == 0.2 and alias not in grouped.param_groups[0]
    with pytest.raises(ValueError, match=f"lr and {alias} are the same hyperparameter"):
        build(cls, problem, **{alias: 0.1, "lr": 0.2})


@pytest.mark.parametrize("cls", [GDA, LinearizedALM, SSLALM, SwitchingSubgradient, StochasticGhost])
def test_grad_holds_the_direction_of_the_update(cls):
    """x_{k+1} = x_k - lr_k * x.grad for the gradient methods (Ghost: gamma_k; SSw: eta_f or eta_c)."""
    problem = make_problem(dtype=torch.float64)
    opt = build(cls, problem, **({"eta_c": 0.01} if cls is SwitchingSubgradient else {}))
    for _ in range(3):
        before = flat(problem.model)
        info = opt.step()
        grad = torch.cat([p.grad.reshape(-1) for p in problem.model.parameters()])
        if cls is StochasticGhost:
            rate = float(info["gamma"])
        elif cls is SwitchingSubgradient:
            rate = opt.param_groups[0]["lr"] if bool(info["objective_step"]) else opt.param_groups[0]["eta_c"]
        else:
            rate = opt.param_groups[0]["lr"]
        assert torch.allclose(flat(problem.model), before - rate * grad, atol=1e-12)


def test_gda_follows_each_groups_lr():
    problem = make_problem(dtype=torch.float64)
    params = list(problem.model.parameters())
    opt = GDA([{"params": params[:2], "lr": 0.0}, {"params": params[2:]}], problem=problem)
    first = [p.detach().clone() for p in params[:2]]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(first, params[:2]))


def test_step_needs_a_problem_or_values():
    model = make_model()
    with pytest.raises(TypeError, match=r"needs a problem: build the optimizer with GDA\(params, problem=problem\)"):
        GDA(model.parameters(), m=2).step()
    with pytest.raises(TypeError, match="takes no closure"):
        GDA(model.parameters(), m=2).step(lambda: 0.0)


# --- loss and constraints in ---------------------------------------------------------------

@pytest.mark.parametrize("cls", [GDA, LinearizedALM, SPBM])
def test_own_loop_values_give_the_same_update_as_the_problem(cls):
    """step(loss=f, constraints=c) on the batch the problem would draw equals step(): the
    one-sample methods take values computed in the caller's loop."""
    problem = make_problem(shuffle=False)
    own_model = copy.deepcopy(problem.model)
    opt = build(cls, problem)
    own = cls(own_model.parameters(), m=2)
    batches = DataLoader(regression_data(), batch_size=32, shuffle=False)
    for batch, _ in zip(batches, range(6)):
        opt.step()
        own.step(loss=loss(own_model, batch), constraints=constraints(own_model, batch))
    assert torch.equal(flat(problem.model), flat(own_model))


def test_adam_takes_a_loss_or_the_grad_a_backward_pass_left():
    problem = make_problem(shuffle=False)
    a, b = copy.deepcopy(problem.model), copy.deepcopy(problem.model)
    opt_a, opt_b = Adam(a.parameters(), lr=0.01), Adam(b.parameters(), lr=0.01)
    reference = torch.optim.Adam(problem.model.parameters(), lr=0.01)
    for batch, _ in zip(DataLoader(regression_data(), batch_size=32), range(4)):
        opt_a.step(loss=loss(a, batch), constraints=constraints(a, batch))
        opt_b.zero_grad()
        loss(b, batch).backward()
        opt_b.step()
        reference.zero_grad()
        loss(problem.model, batch).backward()
        reference.step()
    assert torch.equal(flat(a), flat(problem.model)) and torch.equal(flat(b), flat(problem.model))


def test_fairret_regularizer_in_an_own_loop():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = FairretRegularized(model.parameters(), n_groups=2, weight=1.0)
    x, y, group = torch.randn(64, 3), (torch.rand(64) < 0.5).float(), torch.arange(64) % 2
    logits = model(x).squeeze(-1)
    info = opt.step(loss=F.binary_cross_entropy_with_logits(logits, y) + opt.regularizer(logits, group))
    assert torch.isfinite(info["loss"])


@pytest.mark.parametrize("cls,needs", [(SSLALM, "zeta_2"), (SwitchingSubgradient, "switching sample"),
                                       (StochasticGhost, r"1 \+ 2\^\(N\+1\) independent samples")])
def test_methods_that_need_independent_samples_refuse_values(cls, needs):
    problem = make_problem()
    opt = cls(problem.model.parameters(), m=2)
    batch = next(iter(DataLoader(regression_data(), batch_size=32)))
    with pytest.raises(ValueError, match=needs) as error:
        opt.step(loss=loss(problem.model, batch), constraints=constraints(problem.model, batch))
    assert "problem=hctrain.Problem(model, loss, constraints, data=loader)" in str(error.value)
    assert opt.iteration == 0


def test_sslalm_one_sample_form_is_accepted():
    problem = make_problem()
    opt = SSLALM(problem.model.parameters(), m=2, two_samples=False)
    batch = next(iter(DataLoader(regression_data(), batch_size=32)))
    opt.step(loss=loss(problem.model, batch), constraints=constraints(problem.model, batch))
    assert opt.iteration == 1


# --- mistakes, each with the fix in the message --------------------------------------------

def _batchwise(fn):
    return lambda model, batch: fn(model, *batch)


@pytest.mark.parametrize("bad_constraints,error,match", [
    (_batchwise(lambda m, x, y, a: (m(x[a]).detach().mean() - 0.1)), ValueError, "no gradient path"),
    (_batchwise(lambda m, x, y, a: [m(x).mean(), m(x).sum()]), TypeError, r"torch.stack\(\[...\]\)"),
    (_batchwise(lambda m, x, y, a: 0.3), TypeError, "a Python number has no gradient"),
    (_batchwise(lambda m, x, y, a: m(x)), ValueError, r"shape \(256, 1\)|shape \(32, 1\)"),
])
def test_bad_constraints_are_named(bad_constraints, error, match):
    with pytest.raises(error, match=match):
        Problem(make_model(), loss, bad_constraints, data=DataLoader(regression_data(), batch_size=32))


def test_a_thresholded_constraint_next_to_a_differentiable_one_is_warned_about():
    def thresholded(model, batch):
        x, y, in_a = batch
        return torch.stack([(model(x[in_a]) > 0).float().mean() - 0.1, model(x).mean()])

    with pytest.warns(UserWarning, match="constraint 0 .*zero gradient.*thresholded predictions"):
        Problem(make_model(), loss, thresholded, data=DataLoader(regression_data(), batch_size=32))


def test_a_loss_that_is_not_a_scalar_is_named():
    def per_row(model, batch):
        x, y, _ = batch
        return (model(x).squeeze(-1) - y) ** 2

    with pytest.raises(ValueError, match=r"shape \(32,\); it must be a scalar: reduce it, e.g. .mean\(\)"):
        Problem(make_model(), per_row, constraints, data=DataLoader(regression_data(), batch_size=32))


def test_dtype_mismatch_names_both():
    data = regression_data(dtype=torch.float64)
    with pytest.raises(TypeError, match=r"torch.float64 tensors and the model's parameters are torch.float32"):
        Problem(make_model(), loss, constraints, data=DataLoader(data, batch_size=32))


def test_an_index_sampler_is_not_a_batch_source():
    sampler = BalancedGroupSampler(torch.arange(40) % 2, 4, seed=0)
    with pytest.raises(TypeError, match=r"index sampler .*TensorSampler"):
        Problem(make_model(), loss, constraints, data=sampler)
    with pytest.raises(TypeError, match="TensorDataset"):
        Problem(make_model(), loss, constraints, data=regression_data().tensors)
    with pytest.raises(ValueError, match="give batch_size="):
        Problem(make_model(), loss, constraints, data=regression_data())


@pytest.mark.parametrize("cls", CONSTRAINED)
def test_parameters_that_are_not_the_problems_are_refused(cls):
    problem = make_problem()
    stranger = make_model(seed=5)  # e.g. the model rebuilt after the optimizer
    with pytest.raises(ValueError, match="not the problem's model's"):
        cls(stranger.parameters(), problem=problem)
    opt = cls(stranger.parameters(), m=2)
    with pytest.raises(ValueError, match="not the problem's model's"):
        opt.step(problem)


@pytest.mark.parametrize("make", [
    lambda p: GDA(p.model.parameters(), problem=p, lr="1e-3"),
    lambda p: SSLALM(p.model.parameters(), problem=p, tau="0.05"),
    lambda p: SPBM(p.model.parameters(), problem=p, lr="1e-3"),
])
def test_string_hyperparameters_are_refused(make):
    with pytest.raises(ValueError, match=r"'[0-9.e-]+' \(str\)"):
        make(make_problem())


def test_m_given_and_found_must_agree():
    problem = make_problem()
    with pytest.raises(ValueError, match="GDA was given m=3 but the problem has m=2; leave m out"):
        GDA(problem.model.parameters(), m=3, problem=problem)


def test_run_on_a_bare_problem_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"run takes a task, not a problem .*ProblemTask"):
        run(make_problem(), GDA, max_steps=2, n_runs=1, progress=False)


# --- device and dtype follow the parameters ------------------------------------------------

@pytest.mark.parametrize("cls", CONSTRAINED)
def test_state_follows_float64_parameters(cls):
    problem = make_problem(dtype=torch.float64)
    opt = build(cls, problem)
    opt.step()
    for value in opt.algorithm_state.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 1:
            assert value.dtype == torch.float64
    assert all(p.grad.dtype == torch.float64 for p in problem.model.parameters())


# --- the runner takes any task ---------------------------------------------------------------

def test_runner_runs_a_problem_task_with_a_validation_split():
    data = regression_data()
    x, y, in_a = data.tensors
    splits = {"train": (x[:160], y[:160], in_a[:160]), "validation": (x[160:208], y[160:208], in_a[160:208]),
              "test": (x[208:], y[208:], in_a[208:])}

    def build_problem(seed):
        train = TensorDataset(*splits["train"])
        return Problem(make_model(seed), loss, constraints, data=DataLoader(train, batch_size=32, shuffle=True),
                       seed=seed)

    task = ProblemTask(build_problem, splits, metrics={"mae": lambda m, b: (m(b[0]).squeeze(-1) - b[1]).abs().mean()})
    assert isinstance(task, Task)
    records = run(task, SSLALM, max_steps=20, eval_every_steps=10, n_runs=2, progress=False)
    assert set(records["split"]) == {"train", "validation", "test"}
    assert {"loss", "c[c0]", "c[c1]", "mae"} <= set(records["metric"])
    again = run(task, SSLALM, max_steps=20, eval_every_steps=10, n_runs=2, progress=False)
    assert records["value"].tolist() == again["value"].tolist()  # seeded: reproducible


def test_fairret_regularizer_follows_a_scheduler():
    from hctrain.data import load_acsincome
    from hctrain.task import FairnessTask

    task = FairnessTask(load_acsincome("VA", download=False, verbose=False))
    problem = task.problem(0)
    opt = FairretRegularized.from_problem(problem)
    zero = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 0.0)
    before = flat(problem.model)
    opt.step(problem)
    assert zero.get_last_lr() == [0.0] and torch.equal(flat(problem.model), before)


# --- the review's cases: seeds, frozen and unused parameters, groups added later, samplers ------

def test_default_seed_is_in_range_whatever_the_global_seed():
    torch.seed()  # a 64-bit global seed, as in a fresh process
    problem = Problem(make_model(), loss, constraints, data=DataLoader(regression_data(), batch_size=32),
                      constraint_data=DataLoader(regression_data(), batch_size=32))
    assert 0 <= problem.seed < 2**32
    Problem(make_model(), loss, constraints, data=DataLoader(regression_data(), batch_size=32),
            constraint_data=DataLoader(regression_data(), batch_size=32), seed=2**32 - 1)


@pytest.mark.parametrize("cls", EVERY)
def test_frozen_and_unused_parameters(cls):
    """A frozen first layer is left out; a layer that neither f nor c reads gets a zero update."""
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.spare = make_model(), nn.Linear(2, 2)

        def forward(self, x):
            return self.body(x)

    model = WithSpare()
    model.body[0].requires_grad_(False)
    frozen = model.body[0].weight.detach().clone()
    spare = model.spare.weight.detach().clone()

    def body_constraints(m, batch):
        return constraints(m.body, batch)

    problem = Problem(model, loss, body_constraints, data=DataLoader(regression_data(), batch_size=32),
                      check_gradients=False)
    opt = build(cls, problem, **({"m": 2} if cls is Adam else {}))
    for _ in range(3):
        opt.step()
    assert torch.equal(model.body[0].weight, frozen) and model.body[0].weight.grad is None
    assert torch.equal(model.spare.weight, spare)


def test_a_group_of_frozen_parameters_only_is_refused():
    model = make_model()
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        GDA([{"params": model[0].parameters()}, {"params": model[2].parameters()}], m=2)


def test_sslalm_group_added_later_is_anchored_and_checked():
    problem = make_problem()
    params = list(problem.model.parameters())
    opt = SSLALM(params[:2], problem=problem)
    opt.add_param_group({"params": params[2:], "tau": 0.01})
    opt.step()
    assert all("anchor" in opt.state[p] for p in params)
    with pytest.raises(ValueError, match="beta"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "beta": 0.0})
    assert len(opt.param_groups) == 2


def test_resume_with_a_sampler_of_its_own_generator():
    data = TensorDataset(torch.arange(40.0))

    def source():
        sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator())
        return LoaderSource(DataLoader(data, batch_size=5, sampler=sampler), seed=7)

    first = source()
    [first() for _ in range(9)]  # into the second epoch
    saved = first.state_dict()
    expected = [first()[0].tolist() for _ in range(12)]
    second = source()
    second.load_state_dict(saved)
    assert [second()[0].tolist() for _ in range(12)] == expected


def test_probe_restores_the_buffers_when_a_check_fails():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match=r"expected 3 values \(m=3\)"):
        Problem(model, loss, constraints, data=DataLoader(regression_data(), batch_size=32), m=3)
    assert torch.equal(model[1].running_mean, before)


def test_a_loss_on_its_own_loader_is_checked_too():
    def per_row(model, batch):
        x, y, _ = batch
        return (model(x).squeeze(-1) - y) ** 2

    with pytest.raises(ValueError, match="it must be a scalar"):
        Problem(make_model(), per_row, constraints, data=DataLoader(regression_data(), batch_size=32),
                constraint_data=DataLoader(regression_data(), batch_size=32))


def test_an_inactive_hinge_is_accepted_with_a_warning():
    def hinge(model, batch):
        x, y, in_a = batch
        return torch.relu(model(x).mean() - 10.0)  # inactive: zero gradient at the start

    with pytest.warns(UserWarning, match="zero gradient in every parameter"):
        problem = Problem(make_model(), loss, hinge, data=DataLoader(regression_data(), batch_size=32))
    assert problem.m == 1
