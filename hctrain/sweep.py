"""Sweeps: grids of independent runs on Dask, with every finished cell on disk at once.

A sweep is a list of *cells*, each a plain dict of parameters that describes one seeded run:
the method, its hyperparameters, the data (state, year, protected attribute), the constraint,
the seed and the budget. :func:`grid` builds the cartesian product of lists of values
(scikit-learn's ``ParameterGrid``). :func:`run_sweep` runs the cells on a Dask cluster:

* by default a ``LocalCluster`` started for the sweep, listening on the loopback only, with one
  worker process per core and one thread each, closed at the end;
* given ``scheduler="tcp://host:8786"`` (or ``$HCTRAIN_DASK_SCHEDULER``), an existing Dask
  cluster, unchanged; its workers need ``hctrain`` installed and the data (the offline cache or
  the internet).

Nothing is lost and nothing is done twice: as each cell finishes, its records are written to
``results_dir`` as one parquet file named after the cell (``<method>_<state>_seed<k>_<hash>
.parquet``, the hash being that of all its parameters, which are also columns of the file), so
that ``pandas.read_parquet(results_dir)`` reads the whole sweep; cells whose file exists are
skipped when the sweep runs again; a cell that raises is recorded with its error (in the
returned table and in ``<name>.failed.json``) and the others go on. A worker that dies has its
cell re-run on another worker by Dask. Records have the columns of :func:`hctrain.runner.run`
(``run`` is the cell's seed) followed by the cell's parameters.

:func:`run_notebook_sweep` executes a chapter with papermill over a grid of its parameters, one
output notebook per cell, on the same engine.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import signal
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
from tqdm import tqdm

from .checks import check_bool, check_integer, check_path

SCHEDULER_ENV = "HCTRAIN_DASK_SCHEDULER"
"""Environment variable with the address of an existing Dask scheduler to run sweeps on."""

METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "Adam": ("Adam", "Adam", {}),
    "fairret": ("Adam + fairret (w={weight})", "FairretRegularized", {"weight": 0.3}),
    "GDA": ("GDA", "GDA", {}),
    "LinearizedALM": ("LinearizedALM", "LinearizedALM", {}),
    "SSL-ALM": ("SSL-ALM", "SSLALM", {}),
    "SSw": ("SSw", "SwitchingSubgradient", {}),
    "Ghost": ("Stochastic Ghost", "StochasticGhost", {"gamma0": 0.05, "zeta": 0.05}),  # the paper's
    "SPBM": ("SPBM", "SPBM", {}),
}
"""Method name -> (label in the records, class in ``hctrain.algorithms``, the book's
hyperparameters where they differ from the class defaults), as in chapter 7."""

CELL_DEFAULTS: dict[str, Any] = {
    "state": "VA", "year": 2018, "protected": "MAR", "bound": 0.05, "constraint": "one_vs_overall",
    "batch_per_group": 32, "data_seed": 0, "seed": 0, "budget_s": None, "max_steps": None,
    "eval_every_s": None, "eval_every_steps": None, "separate_constraint_sampler": False,
    "estimate": "population", "download": False, "hyper": {},
}
"""Every cell parameter but ``method``, with its default: the book's protocol (the data split of
``data_seed``, run seed ``seed``). ``download=False`` reads the offline cache; with True each
worker tries folktables' census download first. Give ``budget_s`` or ``max_steps`` (with
neither, the runner's 60 s apply)."""


def grid(**axes: Any) -> list[dict[str, Any]]:
    """The cells of every combination of the values given, e.g.
    ``grid(method=["SSL-ALM", "SSw"], state=["VA", "CA"], seed=range(5), budget_s=10.0)``;
    a scalar is one value. ``hyper`` takes a list of dicts (or one dict)."""
    from sklearn.model_selection import ParameterGrid

    lists = {}
    for name, values in axes.items():
        if isinstance(values, (str, dict)) or not isinstance(values, Iterable):
            values = [values]
        lists[name] = list(values)
        if not lists[name]:
            raise ValueError(f"grid axis {name!r} has no values")
    return [dict(cell) for cell in ParameterGrid(lists)]


def normalize(cell: Mapping[str, Any]) -> dict[str, Any]:
    """The cell with every default filled in and checked; raises ValueError naming what is wrong."""
    if not isinstance(cell, Mapping):
        raise ValueError(f"a cell must be a dict of parameters, got {cell!r}")
    unknown = sorted(set(cell) - set(CELL_DEFAULTS) - {"method"})
    if unknown:
        raise ValueError(f"unknown cell parameters {unknown}; known: method, {', '.join(CELL_DEFAULTS)}")
    if cell.get("method") not in METHODS:
        raise ValueError(f"unknown method {cell.get('method')!r}; choose from {list(METHODS)}")
    full = {"method": cell["method"], **CELL_DEFAULTS, **cell}
    if not isinstance(full["hyper"], Mapping):
        raise ValueError(f"hyper must be a dict of hyperparameters, got {full['hyper']!r}")
    full["hyper"] = dict(sorted(full["hyper"].items()))
    try:
        json.dumps(full, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cell parameters must be plain JSON values (str, numbers, bool, None, dict): {e}") from None
    return full


def cell_key(cell: Mapping[str, Any]) -> str:
    """A file-name-safe key: method, state and seed, and a hash of all the parameters."""
    full = normalize(cell)
    digest = hashlib.sha1(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]
    readable = f"{full['method']}_{full['state']}_seed{full['seed']}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in readable) + f"_{digest}"


@functools.lru_cache(maxsize=8)
def _data(state: str, year: int, protected: str, data_seed: int, download: bool):
    from .data import load_acsincome

    return load_acsincome(state, year, protected, seed=data_seed, download=download, verbose=False)


def run_cell(cell: Mapping[str, Any]) -> pd.DataFrame:
    """One cell's records (in the calling process): the data loaded (once per process), the task
    built, one seeded run of :func:`hctrain.runner.single_run` with one thread."""
    from . import algorithms
    from .runner import COLUMNS, _budgets, single_run
    from .task import FairnessTask

    full = normalize(cell)
    data = _data(full["state"], full["year"], full["protected"], full["data_seed"], full["download"])
    task = FairnessTask(data, bound=full["bound"], constraint=full["constraint"],
                        batch_per_group=full["batch_per_group"], estimate=full["estimate"])
    label, class_name, book = METHODS[full["method"]]
    hyper = {**book, **full["hyper"]}
    cls = getattr(algorithms, class_name)
    label = label.format(**hyper)
    settings = _budgets(full["budget_s"], full["max_steps"], full["eval_every_s"], full["eval_every_steps"])
    records = single_run(task, lambda problem: cls.from_problem(problem, **hyper), label,
                         full["seed"], full["seed"], threads=1,
                         separate_constraint_sampler=full["separate_constraint_sampler"], **settings)
    for name in CELL_DEFAULTS:
        if name not in ("seed", "hyper"):
            records[name] = full[name]
    # typed even when None, so that the files of one sweep share a schema (one parquet dataset)
    records = records.astype({"budget_s": "Float64", "eval_every_s": "Float64", "bound": "float64",
                              "max_steps": "Int64", "eval_every_steps": "Int64"})
    records["method"] = full["method"]
    records["hyper"] = json.dumps(full["hyper"], sort_keys=True)
    records["cell"] = cell_key(full)
    return records[COLUMNS + [c for c in records.columns if c not in COLUMNS]]


# --- the engine ---------------------------------------------------------------------------------

@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: on the scheduler at ``scheduler`` (or ``$HCTRAIN_DASK_SCHEDULER``)
    if given, else on a ``LocalCluster`` of ``n_workers`` processes (default: one per core) with
    one thread each, on the loopback, closed on exit. Worker processes of a LocalCluster exit
    when this process dies."""
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if address is not None:
        client = Client(address)
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = check_integer("n_workers", n_workers, low=1) if n_workers is not None else (os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.CRITICAL)
    client = Client(cluster)
    try:
        yield client
    except BaseException:
        # Interrupted (Ctrl-C, an error, the caller closing early): a worker in the middle of a
        # run would only stop at the end of its budget, so it is killed, not asked to close.
        _kill_workers(cluster)
        raise
    finally:
        client.close()
        cluster.close()


def _kill_workers(cluster: Any) -> None:
    """Kill the worker processes of a LocalCluster of this process (best effort)."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        process = getattr(getattr(nanny, "process", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@dataclass
class SweepResult:
    """``records``: the tidy records of every finished cell (this run's and earlier ones);
    ``cells``: one row per cell -- key, status (``ran``, ``done before``, ``failed``), error,
    seconds, file -- followed by the cell's parameters."""

    records: pd.DataFrame
    cells: pd.DataFrame

    @property
    def failed(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "failed"]


def run_sweep(cells: Iterable[Mapping[str, Any]], results_dir: str | os.PathLike = "results/sweep", *,
              scheduler: str | None = None, n_workers: int | None = None, client: Any = None,
              progress: bool = True) -> SweepResult:
    """Run every cell not already in ``results_dir`` on Dask; see the module docstring.

    ``client``: an existing ``distributed.Client`` to use as it is (else one is made by
    :func:`dask_client` from ``scheduler`` and ``n_workers``).
    """
    results = check_path("results_dir", results_dir)
    progress = check_bool("progress", progress)
    cells = [normalize(c) for c in cells]  # every cell checked before any starts
    keys = [cell_key(c) for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("the sweep lists the same cell twice")
    results.mkdir(parents=True, exist_ok=True)
    status = {k: {"status": "done before", "error": None, "seconds": None} for k in keys}
    todo = [(k, c) for k, c in zip(keys, cells) if not (results / f"{k}.parquet").is_file()]
    _run_pending(client, scheduler, n_workers, run_cell, todo, results, status, progress, _record_cell)
    table = pd.DataFrame([{"cell": k, **status[k], "file": str(results / f"{k}.parquet"), **c}
                          for k, c in zip(keys, cells)])
    table["hyper"] = [json.dumps(h, sort_keys=True) for h in table["hyper"]]
    done = [results / f"{k}.parquet" for k in keys if (results / f"{k}.parquet").is_file()]
    records = (pd.concat([pd.read_parquet(p) for p in done], ignore_index=True) if done
               else pd.DataFrame())
    return SweepResult(records, table)


def _timed(function, *args) -> dict[str, Any]:
    """``function(*args)`` with its wall time; an exception is returned (with its traceback
    text) rather than raised, so that a failing cell is a result of the sweep, not a worker error."""
    start = time.perf_counter()
    try:
        out = function(*args)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(error))}
    return {"out": out, "seconds": time.perf_counter() - start}


def _run_pending(client, scheduler, n_workers, function, todo, results, status, progress, record) -> None:
    """:func:`_run_cells` on ``client``, or on a cluster made for it, if anything is to do."""
    if todo:
        with nullcontext(client) if client is not None else dask_client(scheduler, n_workers) as dask:
            _run_cells(dask, function, todo, results, status, progress, record)


def _run_cells(client, function, todo, results: Path, status: dict, progress: bool, record) -> None:
    """Submit ``function(cell)`` for every (key, cell) of ``todo``; as each finishes, ``record``
    its output (if given) and its status; a failure is recorded in ``<key>.failed.json``."""
    from distributed import as_completed

    futures = {client.submit(_timed, function, cell, pure=False,
                             key=f"hctrain-{key}-{os.getpid()}-{time.time_ns()}"): (key, cell)
               for key, cell in todo}
    bar = tqdm(total=len(futures), desc="cells", unit="cell", disable=not progress)
    try:
        for future in as_completed(futures):
            key, cell = futures[future]
            failed_file = results / f"{key}.failed.json"
            if future.status == "error":  # e.g. the cell's arguments could not be sent
                error = future.exception()
                result = {"error": f"{type(error).__name__}: {error}",
                          "traceback": "".join(traceback.format_exception(type(error), error, future.traceback()))}
            else:
                result = future.result()
            if "error" in result:
                status[key] = {"status": "failed", "error": result["error"], "seconds": None}
                failed_file.write_text(json.dumps({"cell": cell, **result}, indent=1))
            else:
                if record is not None:
                    record(result["out"], results, key)
                failed_file.unlink(missing_ok=True)
                status[key] = {"status": "ran", "error": None, "seconds": round(result["seconds"], 3)}
            bar.update(1)
    finally:
        bar.close()
        for future in futures:
            future.cancel()


def _record_cell(records: pd.DataFrame, results: Path, key: str) -> None:
    from .runner import _write_atomically

    _write_atomically(records, results / f"{key}.parquet")


# --- papermill sweeps ---------------------------------------------------------------------------

def notebook_name(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> str:
    """``<chapter>__<name>=<value>__...ipynb``: the injected parameters in the file name."""
    parts = [Path(notebook).stem] + [f"{k}={v}" for k, v in sorted(parameters.items())]
    return "".join(ch if ch.isalnum() or ch in "-_.=," else "-" for ch in "__".join(parts)) + ".ipynb"


def _execute_notebook(job: Mapping[str, Any]) -> dict[str, Any]:
    import nbformat
    import papermill

    output = Path(job["output"])
    tmp = output.with_name(f".{output.name}.running")
    try:
        papermill.execute_notebook(job["notebook"], str(tmp), parameters=dict(job["parameters"]),
                                   cwd=job["cwd"], kernel_name=job["kernel"], progress_bar=False)
    except BaseException:
        if tmp.exists():  # kept for reading where it failed, under a name that is not "done"
            os.replace(tmp, output.with_name(output.stem + ".failed.ipynb"))
        raise
    output.with_name(output.stem + ".failed.ipynb").unlink(missing_ok=True)
    nb = nbformat.read(tmp, as_version=4)
    nb.metadata["hctrain"] = {"sweep_parameters": dict(job["parameters"])}
    nbformat.write(nb, tmp)
    os.replace(tmp, output)
    return {"output": str(output)}


def run_notebook_sweep(notebook: str | os.PathLike, parameter_grid: Iterable[Mapping[str, Any]],
                       results_dir: str | os.PathLike = "results/notebooks", *, kernel: str = "python3",
                       scheduler: str | None = None, n_workers: int | None = None, client: Any = None,
                       progress: bool = True) -> pd.DataFrame:
    """Execute ``notebook`` with papermill once per parameter dict, on the sweep engine.

    Each output goes to ``results_dir/<chapter>__<name>=<value>...ipynb`` with the parameters in
    its ``metadata.papermill.parameters`` (and ``metadata.hctrain``); an existing output is not
    executed again; a failing execution is recorded (its notebook kept as ``<name>.failed.ipynb``)
    and the others go on. Returns one row per
    cell: parameters, status (``ran``, ``done before``, ``failed``), error, seconds, output.
    """
    notebook = check_path("notebook", notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    results = check_path("results_dir", results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    jobs = []
    for parameters in parameter_grid:
        if not isinstance(parameters, Mapping):
            raise ValueError(f"each cell of a notebook sweep is a dict of parameters, got {parameters!r}")
        output = results / notebook_name(notebook, parameters)
        jobs.append({"notebook": str(notebook), "output": str(output), "parameters": dict(parameters),
                     "cwd": str(notebook.parent), "kernel": kernel})
    names = [Path(j["output"]).stem for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("the notebook sweep lists the same parameters twice")
    status = {n: {"status": "done before", "error": None, "seconds": None} for n in names}
    todo = [(n, j) for n, j in zip(names, jobs) if not Path(j["output"]).is_file()]
    _run_pending(client, scheduler, n_workers, _execute_notebook, todo, results, status, progress, None)
    return pd.DataFrame([{**j["parameters"], **status[n], "output": j["output"]} for n, j in zip(names, jobs)])
