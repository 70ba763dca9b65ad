"""Time per training step of every hctrain algorithm and every peer library, relative to a plain
``torch.optim.Adam`` loop on the same batches, in one run.

    python benchmarks/step_time.py            # full run (about 5 minutes; run it on an idle machine)
    python benchmarks/step_time.py --smoke    # about 20 seconds: checks that everything runs

One process, one thread (torch, and the BLAS behind Stochastic Ghost's subproblems), pinned to
one CPU. The contestants, the timing protocol (interleaved rounds of short blocks, the ratio
of medians taken within each round) and the problems are those of ``hctrain.benchmark``; this
script picks the cases, prints and writes the report, and checks the targets:

* GDA, LinearizedALM, SSw and SPBM <= 1.2x the plain Adam loop, SSL-ALM <= 1.5x;
* LinearizedALM, SPBM and GDA >= 1.25x faster than humancompatible-train's ALM and PBM and
  Cooper's GDA; SSw no slower than humancompatible-train's SSG.

The peers run when the optional ``peers`` extra is installed (``pip install "hctrain[peers]"``)
and are skipped with a note otherwise. Outputs: ``benchmarks/results/step_time.md`` (the
report), ``step_time.csv`` (one row per case and contestant), ``step_time_targets.csv`` and
``step_time_rounds.csv`` (``--smoke`` writes ``step_time_smoke.*``). See benchmarks/README.md.
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
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set
    pass
try:
    from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

    _THREADPOOL_LIMIT = threadpool_limits(limits=1)
except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
    threadpool_info = None

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hctrain import benchmark as bench  # noqa: E402
from hctrain import peers  # noqa: E402
from hctrain.data import load_acsincome  # noqa: E402
from hctrain.task import FairnessTask  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
POBP_STATES = ("CA", "TX", "NY", "FL")
CASES = {"m5": None, "pobp10": 10, "pobp30": 30, "pobp100": 100}
"""m5: Virginia, marital status, one-vs-overall (m = 5); pobpK: the K most common places of
birth of the first state in --states where each has >= batch_per_group training rows,
pairwise (m = K (K - 1))."""


def build_cases(keys: list[str], args: argparse.Namespace) -> tuple[list[bench.ProblemFactory], str | None]:
    out, state = [], None
    if "m5" in keys:
        # estimate="batch": the batch's mean loss, as in the plain torch.optim.Adam loop timed beside it
        task = FairnessTask(load_acsincome("VA", download=args.download, verbose=False), bound=0.05,
                            batch_per_group=args.batch_per_group, estimate="batch")
        out.append(bench.task_problem(task, args.pool, name="m5: VA, MAR, one-vs-overall"))
    ks = sorted((CASES[k] for k in keys if CASES[k]), reverse=True)
    if ks:
        reasons = []
        for candidate in args.states.split(","):
            try:
                problems = bench.fairness_problems(
                    lambda k: load_acsincome(candidate, protected="POBP", max_groups=k,
                                             download=args.download, verbose=False),
                    ks, batch_per_group=args.batch_per_group, pool_size=args.pool)
            except ValueError as e:  # a group smaller than batch_per_group
                reasons.append(f"{candidate}: {e}")
                continue
            state = candidate
            for k, p in zip(ks, problems):
                p.name = f"pobp{k}: {candidate}, POBP top {k}, pairwise"
            out += sorted(problems, key=lambda p: p.m)
            break
        else:
            raise SystemExit("no state works for the POBP cases: " + "; ".join(reasons))
    return out, state


def machine_lines(args: argparse.Namespace, load_before: tuple[float, ...] | None) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
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
    installed = peers.available()
    versions = []
    for name in ("torch", "cooper-optim", "humancompatible-train"):
        try:
            from importlib.metadata import version
            versions.append(f"{name} {version(name)}")
        except Exception:
            versions.append(f"{name} not installed")
    return [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}; CPU: {cpu}; os.cpu_count() = {os.cpu_count()}"
        + (f", pinned to CPU {args.pinned_cpu}" if args.pinned_cpu is not None else ", not pinned"),
        f"- load average (1/5/15 min) before / after: {fmt(load_before)} ; {fmt(load_after)}",
        f"- Python {platform.python_version()}, {', '.join(versions)}; threads = {torch.get_num_threads()}"
        + (f", BLAS thread pools: {blas}" if blas else ""),
        f"- mode: {'SMOKE (a functional check, not a measurement)' if args.smoke else 'full'}; "
        f"{args.rounds} rounds x {args.steps} steps per contestant (warm-up {args.warmup}); "
        f"pool of {args.pool} batches; {args.batch_per_group} rows per group per batch",
        f"- Stochastic Ghost: {args.ghost_steps} step(s) per round, at most ~{args.ghost_budget:g} s "
        f"per case, skipped for m > {args.skip_ghost_above}",
        "- peers: " + ", ".join(f"{k} {'installed' if v else 'not installed (skipped)'}" for k, v in installed.items()),
    ]


METHOD = (
    f"Method: one process, one thread. Per case, a pool of batches is drawn once and every "
    f"contestant (fresh model, same initialisation, its library's documented loop and default "
    f"hyperparameters) cycles through that same pool, so sampling is excluded and identical. After "
    f"a warm-up, the contestants run interleaved in rounds (a block of steps each, the first one "
    f"rotating); each step is timed alone. Per round: each contestant's median step time and its "
    f"ratio to the median of the reference ({bench.REFERENCE}: zero_grad, forward, loss, "
    f"backward, step) in the same round. Reported: the median over rounds of both.")


def cell(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "skipped" if row["status"].startswith("skipped") else "failed"
    text = f"{row['ratio']:.2f}" if row["ratio"] < 100 else f"{row['ratio']:.0f}"
    if row["contestant"] == "Ghost":
        text = f"{text} ({row['median_ms']:.0f} ms)"
    return text


def markdown(rows: list[dict], targets: list[dict], who: list[bench.Contestant], header: list[str],
             notes: list[str]) -> str:
    cols = [c.name for c in who if c.name != bench.REFERENCE]
    lines = ["# Step time relative to a plain torch.optim.Adam loop", "", *header, "", METHOD, "",
             f"Each cell: median time per step / the {bench.REFERENCE} loop's, same run.", "",
             f"| case | m | {bench.REFERENCE} ms/step | " + " | ".join(cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    for name in dict.fromkeys(r["problem"] for r in rows):
        by = {r["contestant"]: r for r in rows if r["problem"] == name}
        ref = by[bench.REFERENCE]
        lines.append(f"| {name} | {ref['m']:,} | {ref['median_ms']:.3f} | "
                     + " | ".join(cell(by[c]) if c in by else "" for c in cols) + " |")
    lines += ["", "Targets (a benchmark, not a test):", "", "| case | m | contestant | target | measured | met |",
              "|---|---:|---|---|---:|---|"]
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['problem'].split(':')[0]} | {t['m']:,} | {t['contestant']} | {t['target']} | {value} | {met} |")
    lines += ["", "Detail: median ms/step, ratio [inter-quartile range over rounds], mean ms/step, timed steps.", "",
              "| case | contestant | ms/step | ratio [IQR] | mean ms/step | steps | status |", "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        case = r["problem"].split(":")[0]
        if r["median_ms"] is None:
            lines.append(f"| {case} | {r['contestant']} | | | | | {r['status']} |")
            continue
        iqr = f" [{r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}]" if r["ratio_q25"] is not None else ""
        lines.append(f"| {case} | {r['contestant']} | {r['median_ms']:.3f} | {r['ratio']:.2f}{iqr} | "
                     f"{r['mean_ms']:.3f} | {r['timed_steps']} | {r['status']} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    if rows:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


FULL = dict(rounds=60, steps=10, warmup=20, pool=64, ghost_steps=2, ghost_budget=60.0,
            skip_ghost_above=90, cases="m5,pobp10,pobp30,pobp100")
SMOKE = dict(rounds=2, steps=5, warmup=2, pool=8, ghost_steps=1, ghost_budget=5.0,
             skip_ghost_above=5, cases="m5,pobp10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="m = 5 and 90 only, 2 rounds of 5 steps (checks, does not measure)")
    p.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)} (default: {FULL['cases']}; "
                                   f"smoke: {SMOKE['cases']})")
    p.add_argument("--contestants", help="comma-separated subset of " + ",".join(bench.NAMES)
                   + f" (the reference, {bench.REFERENCE}, always runs)")
    for key, kind, text in (("rounds", int, "interleaved rounds"), ("steps", int, "timed steps per contestant per round"),
                            ("warmup", int, "untimed warm-up steps"), ("pool", int, "pre-drawn batches per case"),
                            ("ghost-steps", int, "Stochastic Ghost steps per round"),
                            ("ghost-budget", float, "seconds of Ghost stepping per case"),
                            ("skip-ghost-above", int, "skip Stochastic Ghost for m above this")):
        default = FULL[key.replace("-", "_")]
        p.add_argument(f"--{key}", type=kind, help=f"{text} (default {default:g})")
    p.add_argument("--batch-per-group", type=int, default=16, help="rows per group in a batch (default 16)")
    p.add_argument("--states", default=",".join(POBP_STATES), help="states tried in order for the POBP cases")
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    p.add_argument("--download", action="store_true", help="allow folktables' census download (default: offline cache)")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("rounds", "steps", "pool", "ghost_steps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def pin_to_one_cpu() -> int | None:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.pinned_cpu = None if args.no_pin else pin_to_one_cpu()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; use {list(CASES)}")
    try:
        who = bench.contestants(None if not args.contestants else [c.strip() for c in args.contestants.split(",")])
    except ValueError as e:
        raise SystemExit(str(e))
    print("loading data ...", flush=True)
    problems, state = build_cases(keys, args)
    notes = []
    if state:
        notes.append(f"POBP cases use state {state} (the first of --states whose kept groups all have "
                     f">= {args.batch_per_group} training rows)")
    for c in who:
        why = bench.missing_package(c)
        if why:
            notes.append(f"{c.name}: {why}")
    rows, targets, per_round = [], [], []
    for problem in problems:
        t0 = time.perf_counter()
        print(f"[{problem.name}] m = {problem.m:,}, {problem.info['batch_rows']} rows per batch", flush=True)
        runners = bench.measure(problem, who, rounds=args.rounds, steps=args.steps, warmup=args.warmup,
                                slow_steps=args.ghost_steps, slow_budget_s=args.ghost_budget,
                                skip_slow_above=args.skip_ghost_above)
        case_rows = bench.summarise(problem, runners)
        rows += case_rows
        targets += bench.check_targets(case_rows)
        reference = [statistics.median(t) for t in runners[0].rounds]
        for runner in runners:
            for i, times in enumerate(runner.rounds):
                if times:
                    per_round.append(dict(problem=problem.name, m=problem.m, contestant=runner.contestant.name,
                                          round=i, steps=len(times), median_ms=1e3 * statistics.median(times),
                                          reference_ms=1e3 * reference[i],
                                          ratio=statistics.median(times) / reference[i]))
        for r in case_rows:
            text = (f"{r['median_ms']:10.3f} ms/step {r['ratio']:8.2f}x" if r["median_ms"] is not None else r["status"])
            print(f"    {r['contestant']:12s} {text}", flush=True)
        print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)
    notes.append(f"total wall time of the benchmark: {time.perf_counter() - start:.0f} s")
    if args.smoke:
        notes.append("SMOKE RUN: too few steps; the numbers check that the benchmark runs, they are not measurements.")
    text = markdown(rows, targets, who, machine_lines(args, load_before), notes)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "step_time_smoke" if args.smoke else "step_time"
    (args.out / f"{stem}.md").write_text(text)
    write_csv(args.out / f"{stem}.csv", rows)
    write_csv(args.out / f"{stem}_targets.csv", targets)
    write_csv(args.out / f"{stem}_rounds.csv", per_round)
    print(f"written: {args.out / (stem + '.md')} and {stem}.csv, {stem}_targets.csv, {stem}_rounds.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
