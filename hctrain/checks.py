"""Argument checks shared by the public API: each names the argument, the value and the fix.

Every public function and class of hctrain checks its arguments with these before it does any
work, so a bad value fails at once with a message such as ``batch_per_group must be an integer
>= 1, got 8.7 (float)`` instead of deep inside torch, scikit-learn or pandas, or not at all.

Numbers are ``int``/``float`` (or NumPy scalars); ``bool`` is never a number; strings are never
converted (``'0.05'`` is refused, naming the string). Integers must be integers: ``8.7`` and
``8.0`` are refused rather than truncated.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable

SEED_MAX = 2**32 - 1
"""Largest seed accepted: NumPy's and scikit-learn's random states take seeds in [0, 2^32 - 1]."""


def _shown(value: Any) -> str:
    kind = type(value).__name__
    return f"{value!r} ({kind})" if not isinstance(value, (int, float)) or isinstance(value, bool) else repr(value)


def _hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f"; pass the number itself, {value.strip()}, not the string {value!r}"
    return ""


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool (ints, floats and NumPy scalars)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, fix: str = "") -> float:
    """``value`` as a float, if it is a finite number in the interval given; else ValueError."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            what = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            what = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            what = "a finite number"
        raise ValueError(f"{name} must be {what}, got {_shown(value)}{_hint(value)}{fix}")
    return float(value)


def check_integer(name: str, value: Any, *, low: int | None = None, high: int | None = None,
                  fix: str = "") -> int:
    """``value`` as an int, if it is an integer (not a bool or a float) within [low, high]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = (f" in [{low}, {high}]" if low is not None and high is not None
                  else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
        extra = ""
        if isinstance(value, float) and math.isfinite(value) and not isinstance(value, bool):
            extra = f"; {value!r} is a float: pass a whole number (it is not rounded for you)"
        raise ValueError(f"{name} must be an integer{bounds}, got {_shown(value)}{extra or _hint(value)}{fix}")
    return int(value)


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer in [0, 2^32 - 1]."""
    return check_integer(name, value, low=0, high=SEED_MAX)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_shown(value)}")
    return value


def check_string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r} ({type(value).__name__})")
    return value


def check_path(name: str, value: Any) -> Path:
    """A path given as ``str`` or ``os.PathLike`` (not checked for existence)."""
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} must be a path (str or pathlib.Path), got {_shown(value)}")
    return Path(value).expanduser()


def check_existing_dir(name: str, value: Any) -> Path:
    """A folder that exists."""
    path = check_path(name, value)
    if not path.exists():
        raise FileNotFoundError(f"{name}: the folder {path} does not exist; create it, or give a "
                                "folder that does (an explicit path is never replaced by another)")
    if not path.is_dir():
        raise NotADirectoryError(f"{name}: {path} is a file, not a folder; give the folder that holds it")
    return path


def check_output_file(name: str, value: Any) -> Path:
    """A file that can be written: not a folder, its folder creatable and writable.

    Creates the missing folders (as a later save would) and writes, then removes, a probe file,
    so that a bad path fails now rather than after work was done.
    """
    path = check_path(name, value)
    if path.is_dir():
        raise IsADirectoryError(f"{name}: {path} is a folder; give a file name inside it, e.g. "
                                f"{path / 'records.parquet'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{name}: {parent} is a file, so {path} cannot be created "
                                         "under it; choose another folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{name}: cannot create the folder {path.parent} ({e.strerror or e}); "
                              "choose a folder you can write to") from None
    probe = path.with_name(f".{path.name}.write-test-{os.getpid()}")
    try:
        probe.write_bytes(b"")
    except OSError as e:
        raise PermissionError(f"{name}: cannot write in {path.parent} ({e.strerror or e}); choose a "
                              "folder you can write to") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{name}: {path} exists and is read-only; choose another file or "
                              "make it writable")
    return path


# --- chapter parameters (papermill) ------------------------------------------------------------

def _positive(name: str, value: Any) -> Any:
    return check_number(name, value, low=0.0, low_open=True)


def _count(name: str, value: Any) -> Any:
    return check_integer(name, value, low=1)


def _optional_positive(name: str, value: Any) -> Any:
    return None if value is None else _positive(name, value)


def _names(name: str, value: Any) -> Any:
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{name} must be a non-empty list of names, got {_shown(value)}")
    return list(value)


def _list_of(what: str, check: Any) -> Any:
    """The rule for a non-empty list whose items each pass ``check(name[i], item)``."""
    def rule(name: str, value: Any) -> Any:
        if not (isinstance(value, (list, tuple)) and value):
            raise ValueError(f"{name} must be a non-empty list of {what}, got {_shown(value)}")
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return rule


_positive_list = _list_of("positive numbers", _positive)
_margins = _list_of("numbers >= 0", lambda n, v: check_number(n, v, low=0.0))
_counts = _list_of("integers", _count)


CHAPTER_PARAMETERS = {
    "state": check_string, "protected": check_string,
    "year": lambda n, v: check_integer(n, v, low=2014, fix="; e.g. 2018"),
    "bound": lambda n, v: check_number(n, v, low=0.0),
    "weight": lambda n, v: check_number(n, v, low=0.0),
    "seed": check_seed,
    "batch_per_group": _count, "n_runs": _count, "n_jobs": _count, "n_draws": _count,
    "trace_steps": _count, "n_show": _count, "n_fairness_runs": _count,
    "budget_s": _positive, "probe_s": _positive, "trace_s": _positive, "eps_sqrt": _positive,
    "eval_every_s": _optional_positive,
    "quick": check_bool,
    "results_dir": check_path,
    "algorithms": _names, "methods": _names, "states": _names,
    "n_workers": _count,
    # chapter 9 (scaling): timing protocol and the sizes swept
    "rounds": _count, "steps": _count, "pool_size": _count, "memory_steps": _count,
    "per_sample_batch": _count,
    "warmup": lambda n, v: check_integer(n, v, low=0),
    "ghost_budget_s": _positive, "per_sample_epsilon": _positive,
    "group_counts": _counts, "ghost_group_counts": _counts, "per_sample_ms": _counts,
    "contestants": _names,
    # chapter 10 (your own constraints)
    "eval_every_steps": _count,
    # what a training batch estimates (FairnessTask's estimate), and the batches that show it
    "estimate": lambda n, v: check_choice(n, v, ("population", "batch")),
    "n_batches": _count,
    # short side runs of a chapter (a sweep, an ablation, an exercise's solution)
    "sweep_budget_s": _positive, "ablation_budget_s": _positive, "weights": _positive_list,
    # chapter 11 (fair on new data): held-out splits, decisions, certificates, the peers
    "validation_size": lambda n, v: check_number(n, v, low=0.0, high=1.0, low_open=True, high_open=True,
                                                 fix="; e.g. 0.2"),
    "constraint_on": lambda n, v: check_choice(n, v, ("probabilities", "decisions")),
    "group_inputs": check_bool,
    "alpha": lambda n, v: check_number(n, v, low=0.0, high=1.0, low_open=True, high_open=True, fix="; e.g. 0.05"),
    "peers": _names, "n_fairlearn_runs": _count, "evals_per_run": _count, "ablation_methods": _names,
    "constraint": lambda n, v: check_choice(n, v, ("one_vs_overall", "signed_one_vs_overall", "pairwise")),
    # chapter 11: the margin below the bound, fixed or chosen on training rows carved as a test set
    "margin": lambda n, v: None if v is None else check_number(n, v, low=0.0, fix="; or None to calibrate it"),
    "calibration_margins": _margins, "calibration_methods": _names,
    "calibration_share": lambda n, v: check_number(n, v, low=0.0, high=1.0, low_open=True, high_open=True,
                                                   fix="; e.g. 0.2"),
}
"""How a chapter's protocol parameters are checked, by name (each chapter's algorithm
hyperparameters are checked by the algorithm itself, before its first run)."""


def check_parameters(**values: Any) -> None:
    """Check a chapter's parameters, as papermill left them, before the chapter does any work.

    Each chapter calls this right after its ``parameters`` cell (and papermill's injected one),
    so that ``papermill ... -p budget_s -1`` fails at once, naming the parameter, instead of
    running something else. Quick mode only changes the defaults: a value passed with ``-p``
    always wins.
    """
    for name, value in values.items():
        rule = CHAPTER_PARAMETERS.get(name)
        if rule is None:
            raise TypeError(f"check_parameters knows no parameter {name!r}; known: {sorted(CHAPTER_PARAMETERS)}")
        try:
            rule(name, value)
        except ValueError as e:
            raise ValueError(f"chapter parameter {e} (set it with papermill: -p {name} VALUE)") from None
