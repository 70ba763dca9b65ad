"""Time per training step of each hctrain algorithm, relative to plain Adam on the same batches.

    python benchmarks/step_time.py            # full run (about 4 minutes; run it on an idle machine)
    python benchmarks/step_time.py --smoke    # about 20 seconds: checks that everything runs

One process, one thread (torch, and the BLAS behind numpy/scipy that Stochastic Ghost's
subproblems use). For every case (a fairness task with m constraints) the benchmark

1. draws a pool of batches once from the task's own balanced sampler, and gives every algorithm
   a fresh model (the same initialisation) inside a problem whose sampler cycles through that
   same pool (``PoolSampler``): batch sampling is excluded from the timings and identical for all;
2. warms every algorithm up, then runs rounds: in each round every algorithm takes a block of
   steps (the starting algorithm rotates from round to round), each step timed on its own with
   ``time.perf_counter``; the median step time of a block is that algorithm's time in the round,
   and its ratio to Adam's median of the same round is its relative cost in the round. A change
   of machine load during the run therefore hits numerator and denominator alike -- as long as
   it is slower than a round: the blocks are short (10 steps, a round of all algorithms takes
   0.1-0.3 s), because on the shared 2-core machine this was written on the speed of the same
   code jumps between levels 1.6x apart for stretches of 0.1-1 s (medians of 50-step blocks of
   Adam alone at m = 9,900 ranged 1.6-3.4 ms); with 50-step blocks (the first protocol, kept in
   ``results/step_time_run*.md``) a round lasted 1-2 s and its ratios compared blocks taken at
   different speeds (inter-quartile ranges of +-0.15). The process is pinned to one CPU
   (``--no-pin`` to leave it free), so that no step pays for a move to the other core;
3. reports, per algorithm, the median over rounds of the per-round medians (ms/step) and the
   median over rounds of the per-round ratios (with the inter-quartile range in the CSV).

Stochastic Ghost is orders of magnitude slower and its step cost is random (a batch of
1 + 2^(N+1) samples, N drawn every step): it takes fewer steps per round, stops being timed in a
case once it has used ``--ghost-budget`` seconds there, and is skipped for m above
``--skip-ghost-above``. Its mean step time is reported too.

Outputs: a markdown table printed and written to ``benchmarks/results/step_time.md``, a summary
CSV ``step_time.csv`` and the per-round numbers ``step_time_rounds.csv`` (``--smoke`` writes
``step_time_smoke.*`` instead). See benchmarks/README.md.
"""
from __future__ import annotations

import os

# One thread everywhere, set before numpy / torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime as _dt  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set, or parallel work already ran
    pass

try:  # belt and braces for BLAS libraries that ignore the environment variables
    from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

    _THREADPOOL_LIMIT = threadpool_limits(limits=1)
except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
    threadpool_info = None

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hctrain.algorithms import GDA, SSLALM, Adam, LinearizedALM, SwitchingSubgradient  # noqa: E402
from hctrain.data import load_acsincome  # noqa: E402
from hctrain.problem import Batch, StochasticProblem  # noqa: E402
from hctrain.task import FairnessTask  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
POBP_STATES = ("CA", "TX", "NY", "FL")
"""States tried, in this order, for the POBP cases: the first whose every kept group has at
least ``batch_per_group`` training rows (Virginia's 100th most common birthplace has 11)."""


# --- the same batches for every algorithm ------------------------------------------------------

class PoolSampler:
    """A batch sampler that cycles through a fixed list of pre-drawn batches.

    Each algorithm gets its own instance (its own cursor) over the same list, so every algorithm
    trains on the same batches and no time is spent drawing them.
    """

    def __init__(self, pool: list[Batch]):
        if not pool:
            raise ValueError("the pool of batches is empty")
        self.pool = pool
        self.position = 0

    def __call__(self) -> Batch:
        batch = self.pool[self.position]
        self.position = (self.position + 1) % len(self.pool)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def draw_pool(task: FairnessTask, size: int, seed: int = 0) -> list[Batch]:
    """``size`` batches from the task's own balanced sampler (seeded)."""
    sampler = task.problem(seed).objective_sampler
    return [sampler() for _ in range(size)]


def pooled_problem(task: FairnessTask, pool: list[Batch], seed: int = 0) -> StochasticProblem:
    """The task's problem (fresh model initialised from ``seed``) drawing from ``pool``; one
    sampler serves the objective and the constraints, as in ``task.problem`` by default."""
    base = task.problem(seed)
    return StochasticProblem(
        base.model, task.loss, task.constraint_values, task.m,
        objective_sampler=PoolSampler(pool),
        constraint_names=task.constraint_names,
        n_groups=task.data.n_groups,
    )


# --- what is benchmarked -----------------------------------------------------------------------

@dataclass
class Algorithm:
    name: str                      # column label
    factory: Callable[[StochasticProblem], Any] | None
    target: float | None           # the ratio to Adam it should stay under (None: no target)
    slow: bool = False             # Stochastic Ghost: budgeted, fewer steps per round
    unavailable: str | None = None


def algorithms() -> list[Algorithm]:
    """Adam (the reference), the core algorithms, and SPBM / Stochastic Ghost if importable.
    Every algorithm runs with the library's default hyperparameters."""
    out = [
        Algorithm("Adam", Adam.from_problem, None),
        Algorithm("GDA", GDA.from_problem, 1.2),
        Algorithm("ALM", LinearizedALM.from_problem, 1.2),
        Algorithm("SSL-ALM", SSLALM.from_problem, 1.6),
        Algorithm("SSw", SwitchingSubgradient.from_problem, 1.2),
    ]
    for name, module, cls, target, slow in (("SPBM", "hctrain.algorithms.spbm", "SPBM", 1.2, False),
                                           ("Ghost", "hctrain.algorithms.ghost", "StochasticGhost", None, True)):
        try:
            algo_cls = getattr(__import__(module, fromlist=[cls]), cls)
            out.append(Algorithm(name, algo_cls.from_problem, target, slow))
        except Exception as e:  # being written: anything from ImportError to SyntaxError
            out.append(Algorithm(name, None, target, slow, unavailable=f"not importable ({type(e).__name__}: {e})"))
    return out


@dataclass
class Case:
    key: str
    title: str
    build: Callable[[str | None], FairnessTask]   # state (POBP cases) -> task
    pobp: bool = False
    state: str | None = None
    task: FairnessTask | None = None


def make_cases(batch_per_group: int, download: bool) -> dict[str, Case]:
    def mar_task(_state: str | None) -> FairnessTask:
        data = load_acsincome("VA", download=download, verbose=False)
        return FairnessTask(data, bound=0.05, batch_per_group=batch_per_group)

    def pobp_task(k: int) -> Callable[[str | None], FairnessTask]:
        def build(state: str | None) -> FairnessTask:
            data = load_acsincome(state, protected="POBP", max_groups=k, download=download, verbose=False)
            return FairnessTask(data, bound=0.05, constraint="pairwise", batch_per_group=batch_per_group)
        return build

    cases = {"m5": Case("m5", "ACSIncome VA, MAR, one-vs-overall", mar_task)}
    for k in (10, 30, 100):
        cases[f"pobp{k}"] = Case(f"pobp{k}", f"POBP top {k}, pairwise", pobp_task(k), pobp=True)
    return cases


def prepare_cases(cases: list[Case], states: list[str]) -> str | None:
    """Build every case's task; the POBP cases use the first state in ``states`` for which all
    of them can be built (every group has ``batch_per_group`` training rows). Returns the state."""
    for case in cases:
        if not case.pobp:
            case.task = case.build(None)
    pobp = [c for c in cases if c.pobp]
    if not pobp:
        return None
    reasons = []
    for state in states:
        try:
            tasks = [c.build(state) for c in sorted(pobp, key=lambda c: -int(c.key[4:]))]  # largest k first
        except ValueError as e:  # a group smaller than batch_per_group
            reasons.append(f"{state}: {e}")
            print(f"[POBP state] {state} does not work: {e}", flush=True)
            continue
        for case, task in zip(sorted(pobp, key=lambda c: -int(c.key[4:])), tasks):
            case.task, case.state = task, state
        return state
    raise SystemExit("no state works for the POBP cases: " + "; ".join(reasons))


# --- timing ------------------------------------------------------------------------------------

@dataclass
class Runner:
    algo: Algorithm
    problem: StochasticProblem | None = None
    optimizer: Any = None
    status: str = "ok"
    rounds: list[list[float]] = field(default_factory=list)   # seconds per step, per round
    warmup_s: list[float] = field(default_factory=list)
    spent_s: float = 0.0

    @property
    def active(self) -> bool:
        return self.status == "ok"


def timed_steps(runner: Runner, n: int) -> list[float]:
    """``n`` steps of one algorithm, each timed on its own; a failure stops the algorithm."""
    times = []
    step, problem = runner.optimizer.step, runner.problem
    perf = time.perf_counter
    try:
        for _ in range(n):
            t0 = perf()
            step(problem)
            times.append(perf() - t0)
    except Exception as e:
        runner.status = f"failed: {type(e).__name__}: {e}"
        print(f"    {runner.algo.name} failed: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc(limit=3)
    runner.spent_s += sum(times)
    return times


def benchmark_case(case: Case, algos: list[Algorithm], args: argparse.Namespace) -> list[Runner]:
    task = case.task
    m = task.m
    pool = draw_pool(task, args.pool)
    runners = []
    for algo in algos:
        runner = Runner(algo)
        if algo.unavailable:
            runner.status = algo.unavailable
        elif algo.slow and m > args.skip_ghost_above:
            runner.status = f"skipped (m > --skip-ghost-above {args.skip_ghost_above})"
        else:
            try:
                runner.problem = pooled_problem(task, pool, seed=0)
                runner.optimizer = algo.factory(runner.problem)
            except Exception as e:
                runner.status = f"failed to build: {type(e).__name__}: {e}"
        runners.append(runner)

    # warm-up (also the first call's one-off costs), then interleaved rounds
    for runner in runners:
        if runner.active:
            gc.collect()
            runner.warmup_s = timed_steps(runner, args.ghost_warmup if runner.algo.slow else args.warmup)
    adam = runners[0]
    if not adam.active:
        raise SystemExit(f"Adam, the reference, did not run on {case.key}: {adam.status}")
    for r in range(args.rounds):
        k = r % len(runners)
        # As timeit does: no garbage collection while timing. One collection per round (before
        # it) keeps memory flat; one per block would cost more than the blocks themselves.
        gc.collect()
        gc.disable()
        try:
            for runner in runners[k:] + runners[:k]:
                if not runner.active:
                    continue
                if runner.algo.slow:
                    if runner.spent_s >= args.ghost_budget:
                        runner.rounds.append([])
                        continue
                    n = args.ghost_steps
                else:
                    n = args.steps
                runner.rounds.append(timed_steps(runner, n))
        finally:
            gc.enable()
    return runners


def quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=4, method="inclusive")[{0.25: 0, 0.5: 1, 0.75: 2}[q]]


def summarise(case: Case, runners: list[Runner]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per algorithm: per-round medians and ratios to Adam's median of the same round."""
    adam_rounds = [statistics.median(t) for t in runners[0].rounds]
    task = case.task
    rows, per_round = [], []
    for runner in runners:
        algo = runner.algo
        row: dict[str, Any] = dict(
            case=case.key, description=case.title, state=case.state or "VA", m=task.m,
            groups=task.data.n_groups, batch_rows=task.data.n_groups * task.batch_per_group,
            algorithm=algo.name, target=algo.target, status=runner.status,
            median_ms=None, ratio=None, ratio_q25=None, ratio_q75=None, mean_ms=None,
            timed_rounds=0, timed_steps=0)
        medians, ratios = [], []
        for i, times in enumerate(runner.rounds):
            if times and i < len(adam_rounds):
                med = statistics.median(times)
                medians.append(med)
                ratios.append(med / adam_rounds[i])
                per_round.append(dict(case=case.key, m=task.m, algorithm=algo.name, round=i,
                                      steps=len(times), median_ms=1e3 * med,
                                      adam_median_ms=1e3 * adam_rounds[i], ratio=med / adam_rounds[i]))
        all_times = [t for times in runner.rounds for t in times]
        if medians:
            row.update(median_ms=1e3 * statistics.median(medians), ratio=statistics.median(ratios),
                       ratio_q25=quantile(ratios, 0.25), ratio_q75=quantile(ratios, 0.75),
                       mean_ms=1e3 * statistics.fmean(all_times), timed_rounds=len(medians),
                       timed_steps=len(all_times))
        elif runner.warmup_s and runner.active:  # budget spent in the warm-up: report that
            row.update(median_ms=1e3 * statistics.median(runner.warmup_s),
                       mean_ms=1e3 * statistics.fmean(runner.warmup_s),
                       ratio=statistics.median(runner.warmup_s) / statistics.median(adam_rounds),
                       status="warm-up steps only (budget spent)")
        if row["ratio"] is not None and algo.target is not None and runner.active:
            row["meets_target"] = row["ratio"] <= algo.target
        else:
            row["meets_target"] = None
        rows.append(row)
    return rows, per_round


# --- report ------------------------------------------------------------------------------------

def machine_lines(args: argparse.Namespace, load_before: tuple[float, ...] | None) -> list[str]:
    affinity = getattr(args, "usable_cpus", None)
    cpu = platform.processor() or platform.machine()
    try:  # a readable CPU model on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = ""
    if threadpool_info is not None:
        blas = ", ".join(sorted({f"{p.get('internal_api')}={p.get('num_threads')}" for p in threadpool_info()}))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    fmt = lambda la: "n/a" if la is None else " / ".join(f"{x:.2f}" for x in la)  # noqa: E731
    return [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}; CPU: {cpu}; os.cpu_count() = {os.cpu_count()}"
        + (f", usable by this process = {affinity}" if affinity is not None else "")
        + (f", pinned to CPU {args.pinned_cpu}" if getattr(args, "pinned_cpu", None) is not None else ", not pinned"),
        f"- load average (1/5/15 min) before / after: {fmt(load_before)} ; {fmt(load_after)}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"threads = {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})"
        + (f", BLAS thread pools: {blas}" if blas else ""),
        f"- mode: {'SMOKE (a functional check, not a measurement)' if args.smoke else 'full'}; "
        f"{args.rounds} rounds x {args.steps} steps per algorithm (warm-up {args.warmup}); "
        f"pool of {args.pool} batches; {args.batch_per_group} rows per group per batch",
        f"- Stochastic Ghost: {args.ghost_steps} step(s) per round after {args.ghost_warmup} warm-up, "
        f"at most ~{args.ghost_budget:g} s per case, skipped for m > {args.skip_ghost_above}",
    ]


METHOD = (
    "Method: one process, one thread. Per case, a pool of batches is drawn once from the task's "
    "balanced sampler and every algorithm (fresh model, same initialisation, library-default "
    "hyperparameters) cycles through that same pool, so sampling is excluded and identical. After "
    "a warm-up, the algorithms run interleaved in rounds (a block of steps each, starting "
    "algorithm rotating); each step is timed alone. Per round: median step time of each "
    "algorithm and its ratio to Adam's median in the same round. Reported: the median over "
    "rounds of both (ms/step, and the ratio x Adam). A target is met when the ratio is at "
    "most the target.")


def fmt_ratio(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        status = row["status"]
        if status.startswith("skipped"):
            return "skipped"
        if status.startswith("not importable"):
            return "n/a"
        return "failed"
    text = f"{row['ratio']:.2f}x" if row["ratio"] < 100 else f"{row['ratio']:.0f}x"
    if row["meets_target"] is True:
        text += " ok"
    elif row["meets_target"] is False:
        text += " **OVER**"
    if row["algorithm"] == "Ghost":
        text = f"{row['median_ms']:.0f} ms ({text})"
        if row["status"].startswith("warm-up"):
            text += " (1st steps)"
    return text


def markdown(rows: list[dict[str, Any]], algos: list[Algorithm], header: list[str],
             notes: list[str]) -> str:
    cols = [a for a in algos if a.name != "Adam"]

    def col_title(a: Algorithm) -> str:
        return f"{a.name} (<= {a.target:g}x)" if a.target is not None else f"{a.name} (ms/step, x Adam)"

    lines = ["# Step time of hctrain's algorithms relative to Adam", "", *header, "", METHOD, ""]
    lines.append("| case | m | batch rows | Adam ms/step | " + " | ".join(col_title(a) for a in cols) + " |")
    lines.append("|---|---:|---:|---:|" + "---:|" * len(cols))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for key in cases:
        by = {r["algorithm"]: r for r in rows if r["case"] == key}
        adam = by["Adam"]
        title = f"{adam['description']}" + (f" ({adam['state']})" if key != "m5" else "")
        cells = [title, f"{adam['m']:,}", f"{adam['batch_rows']:,}", f"{adam['median_ms']:.3f}"]
        cells += [fmt_ratio(by[a.name]) for a in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Detail: median ms/step (median over rounds), ratio x Adam [inter-quartile range over rounds], "
              "timed steps.", "", "| case | algorithm | ms/step | ratio [IQR] | mean ms/step | steps | status |",
              "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        if r["median_ms"] is None:
            lines.append(f"| {r['case']} | {r['algorithm']} | | | | | {r['status']} |")
            continue
        iqr = (f" [{r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}]" if r["ratio_q25"] is not None else "")
        lines.append(f"| {r['case']} | {r['algorithm']} | {r['median_ms']:.3f} | {r['ratio']:.2f}{iqr} | "
                     f"{r['mean_ms']:.3f} | {r['timed_steps']} | {r['status']} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# --- command line ------------------------------------------------------------------------------

FULL = dict(rounds=75, steps=10, warmup=20, pool=64, ghost_steps=2, ghost_warmup=1, ghost_budget=60.0,
            skip_ghost_above=90, cases="m5,pobp10,pobp30,pobp100")
SMOKE = dict(rounds=2, steps=5, warmup=2, pool=8, ghost_steps=1, ghost_warmup=1, ghost_budget=5.0,
             skip_ghost_above=5, cases="m5,pobp10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="about 20 s: m = 5 and 90 only, 2 rounds of 5 steps (checks, does not measure)")
    p.add_argument("--cases", help=f"comma-separated subset of m5,pobp10,pobp30,pobp100 (default: "
                                   f"{FULL['cases']}; smoke: {SMOKE['cases']})")
    p.add_argument("--algorithms", help="comma-separated subset of Adam,GDA,ALM,SSL-ALM,SSw,SPBM,Ghost "
                                        "(Adam is always run: it is the reference)")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL['rounds']})")
    p.add_argument("--steps", type=int, help=f"timed steps per algorithm per round (default {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed warm-up steps per algorithm (default {FULL['warmup']})")
    p.add_argument("--pool", type=int, help=f"pre-drawn batches per case (default {FULL['pool']})")
    p.add_argument("--ghost-steps", type=int, help=f"Stochastic Ghost steps per round (default {FULL['ghost_steps']})")
    p.add_argument("--ghost-warmup", type=int, help=f"Stochastic Ghost warm-up steps (default {FULL['ghost_warmup']})")
    p.add_argument("--ghost-budget", type=float,
                   help=f"seconds of Ghost stepping per case after which its rounds stop (default {FULL['ghost_budget']:g})")
    p.add_argument("--skip-ghost-above", type=int, metavar="M",
                   help=f"skip Stochastic Ghost for m > M (default {FULL['skip_ghost_above']}; see README)")
    p.add_argument("--batch-per-group", type=int, default=16, help="rows per group in a batch (default 16)")
    p.add_argument("--states", default=",".join(POBP_STATES),
                   help="states tried in order for the POBP cases (default CA,TX,NY,FL)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the process to one CPU (default: pinned to the first CPU it may use)")
    p.add_argument("--download", action="store_true",
                   help="allow folktables' census download (default: the offline cache only)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("rounds", "steps", "pool", "ghost_steps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    for key in ("warmup", "ghost_warmup"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')} must be >= 0")
    return args


def pin_to_one_cpu() -> int | None:
    """Pin this process to the first CPU it may run on (a migration to another core costs the
    step its warm caches); the CPU, or None where the OS does not support it."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.usable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    args.pinned_cpu = None if args.no_pin else pin_to_one_cpu()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    all_cases = make_cases(args.batch_per_group, args.download)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in all_cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; use {list(all_cases)}")
    cases = [all_cases[k] for k in keys]

    algos = algorithms()
    if args.algorithms:
        wanted = {a.strip() for a in args.algorithms.split(",")} | {"Adam"}
        unknown = wanted - {a.name for a in algos}
        if unknown:
            raise SystemExit(f"unknown algorithm(s) {sorted(unknown)}; use {[a.name for a in algos]}")
        algos = [a for a in algos if a.name in wanted]
    for a in algos:
        if a.unavailable:
            print(f"[skip] {a.name}: {a.unavailable}", flush=True)

    print("loading data ...", flush=True)
    states = [s.strip().upper() for s in args.states.split(",") if s.strip()]
    state = prepare_cases(cases, states)
    notes = []
    sources = {c.task.data.source for c in cases}
    notes += [f"data: {s}" for s in sorted(sources)]
    if state is not None:
        tried = states[:states.index(state)]
        notes.append(f"POBP cases use state {state}" + (f" ({', '.join(tried)} had a group with fewer than "
                                                        f"{args.batch_per_group} training rows)" if tried else
                                                        f" (every kept group has >= {args.batch_per_group} training rows)"))
    print(f"data ready in {time.perf_counter() - start:.1f} s" + (f"; POBP state {state}" if state else ""), flush=True)

    rows, per_round = [], []
    for case in cases:
        t0 = time.perf_counter()
        print(f"[{case.key}] {case.title}{' (' + case.state + ')' if case.state else ''}: m = {case.task.m:,}, "
              f"{case.task.data.n_groups} groups x {case.task.batch_per_group} rows", flush=True)
        runners = benchmark_case(case, algos, args)
        case_rows, case_rounds = summarise(case, runners)
        rows += case_rows
        per_round += case_rounds
        for r in case_rows:
            if r["median_ms"] is not None:
                target = f" (target <= {r['target']:g}x)" if r["target"] is not None else ""
                print(f"    {r['algorithm']:8s} {r['median_ms']:10.3f} ms/step  {r['ratio']:8.2f}x Adam{target}", flush=True)
            else:
                print(f"    {r['algorithm']:8s} {r['status']}", flush=True)
        print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)

    notes.append(f"total wall time of the benchmark: {time.perf_counter() - start:.0f} s")
    if args.smoke:
        notes.append("SMOKE RUN: too few steps, and possibly a loaded machine; the numbers check that "
                     "the benchmark runs, they are not measurements.")
    text = markdown(rows, algos, machine_lines(args, load_before), notes)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "step_time_smoke" if args.smoke else "step_time"
    (args.out / f"{stem}.md").write_text(text)
    write_csv(args.out / f"{stem}.csv", rows)
    write_csv(args.out / f"{stem}_rounds.csv", per_round)
    print(f"written: {args.out / (stem + '.md')}, {stem}.csv, {stem}_rounds.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
