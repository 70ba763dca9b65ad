"""Fairness data sets (ACSIncome, Dutch census 2001) and a sampler of group-balanced batches.

ACSIncome comes from folktables' census download when it is reachable, else from the offline
cache ``acsincome_2018_subsample.parquet`` (a 46% subsample of the 2018 task, see
``shared/data/README.md``); every load says which one it used.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import io
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from .checks import (check_bool, check_existing_dir, check_integer, check_number, check_path,
                     check_seed, check_string)

__all__ = [
    "ACS_CACHE_FILE",
    "ACS_CATEGORICAL",
    "ACS_FEATURES",
    "BalancedGroupSampler",
    "DUTCH_FILE",
    "DataPathError",
    "DataUnavailableError",
    "MissingValuesError",
    "FairnessData",
    "STATE_FIPS",
    "YearUnavailableError",
    "load_acsincome",
    "load_dutch_census",
]

ACS_CACHE_FILE = "acsincome_2018_subsample.parquet"
DUTCH_FILE = "dutch_census_2001.parquet"
ACS_CACHE_YEAR = 2018
ACS_FEATURES = ["AGEP", "COW", "SCHL", "MAR", "OCCP", "POBP", "RELP", "WKHP", "SEX", "RAC1P"]
ACS_CATEGORICAL = ["COW", "SCHL", "MAR", "OCCP", "POBP", "RELP", "SEX", "RAC1P"]

STATE_FIPS: dict[str, int] = {
    "AL": 1, "AK": 2, "AZ": 4, "AR": 5, "CA": 6, "CO": 8, "CT": 9, "DE": 10, "DC": 11, "FL": 12,
    "GA": 13, "HI": 15, "ID": 16, "IL": 17, "IN": 18, "IA": 19, "KS": 20, "KY": 21, "LA": 22,
    "ME": 23, "MD": 24, "MA": 25, "MI": 26, "MN": 27, "MS": 28, "MO": 29, "MT": 30, "NE": 31,
    "NV": 32, "NH": 33, "NJ": 34, "NM": 35, "NY": 36, "NC": 37, "ND": 38, "OH": 39, "OK": 40,
    "OR": 41, "PA": 42, "RI": 44, "SC": 45, "SD": 46, "TN": 47, "TX": 48, "UT": 49, "VT": 50,
    "VA": 51, "WA": 53, "WV": 54, "WI": 55, "WY": 56, "PR": 72,
}
"""State postal code -> FIPS code: the 50 states, DC and Puerto Rico."""

GROUP_NAMES: dict[str, dict[int, str]] = {
    "MAR": {1: "Married", 2: "Widowed", 3: "Divorced", 4: "Separated", 5: "Never married"},
    "SEX": {1: "Male", 2: "Female"},
    "RAC1P": {
        1: "White", 2: "Black", 3: "American Indian", 4: "Alaska Native",
        5: "American Indian & Alaska Native", 6: "Asian", 7: "Pacific Islander",
        8: "Other race", 9: "Two or more races",
    },
}
"""Readable names of census codes, per ACS attribute; codes not listed are named ``"ATTR=code"``."""

DUTCH_TARGET = "occupation"
DUTCH_POSITIVE, DUTCH_NEGATIVE = "5_4_9", "2_1"
DUTCH_GROUP_NAMES: dict[str, dict[str, str]] = {"sex": {"1": "Male", "2": "Female"}}

ACS_CACHE_FIX = ("Restore the file from a fresh copy of the offline data (shared/data/README.md "
                 "says how it was built), or load with download=True on a machine with internet.")
CENSUS_HOST = "www2.census.gov"
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = (10.0, 120.0)
"""Connect and read timeouts of the census download (folktables itself sets none)."""

SHARED_DATA_DIR: Path | None = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
"""Last folder searched for the offline files, ``<repo root>/../shared/data``; None skips it."""


class DataUnavailableError(RuntimeError):
    """No source of the requested data could be read."""


class YearUnavailableError(DataUnavailableError, ValueError):
    """The census download failed and the offline cache does not hold the requested year."""


class DataPathError(DataUnavailableError, FileNotFoundError):
    """An explicit data path (argument or ``$HCTRAIN_DATA_DIR``) names nothing usable."""


def _existing_dir(name: str, value: Any) -> Path:
    try:
        return check_existing_dir(name, value)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise DataPathError(str(e)) from None


class MissingValuesError(ValueError):
    """Features or labels hold NaN or infinite values (``drop_missing=True`` drops those rows)."""


ACS_FIRST_YEAR = 2014
ACS_NO_STANDARD_YEAR = 2020
"""No standard 1-Year PUMS were released for 2020 (the Census Bureau's experimental estimates
only, after the pandemic disrupted collection); folktables cannot download them."""


def _check_year(year: Any) -> int:
    year = check_integer("year", year, fix="; e.g. year=2018")
    last = datetime.date.today().year - 1  # a survey year's 1-Year files appear the year after
    if year < ACS_FIRST_YEAR:
        raise ValueError(f"year {year} is not supported: folktables' ACS data starts in {ACS_FIRST_YEAR}")
    if year > last:
        raise ValueError(f"year {year} does not exist yet: ACS 1-Year PUMS of a year are published the "
                         f"year after, so the latest possible is {last}; use a year in "
                         f"{ACS_FIRST_YEAR}..{last} (the offline cache holds {ACS_CACHE_YEAR})")
    if year == ACS_NO_STANDARD_YEAR:
        raise ValueError(f"year {year} has no standard ACS 1-Year PUMS (only experimental estimates "
                         "were released); use 2019 or 2021")
    return year


def _env_data_dir() -> Path | None:
    """``$HCTRAIN_DATA_DIR`` as a folder that exists, None if unset; an error if it names nothing."""
    value = os.environ.get("HCTRAIN_DATA_DIR") or None
    if value is None:
        return None
    return _existing_dir("HCTRAIN_DATA_DIR (environment variable)", value)


def _check_finite(frame: pd.DataFrame, columns: list[str], where: str, drop: bool,
                  notes: list[str]) -> pd.DataFrame:
    """``frame`` with every value of ``columns`` finite; else an error naming the columns and
    the counts of bad rows, or (``drop``) those rows dropped and a note saying how many."""
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return frame
    per_column = {c: int(n) for c, n in zip(columns, bad.sum(0)) if n}
    rows = bad.any(1)
    listing = ", ".join(f"{c}: {n:,}" for c, n in per_column.items())
    if not drop:
        raise MissingValuesError(
            f"{where}: {int(rows.sum()):,} of {len(frame):,} rows have missing or infinite values "
            f"({listing}); repair or re-download the data, or pass drop_missing=True to drop those rows")
    notes.append(f"{int(rows.sum()):,} rows with missing or infinite values dropped ({listing})")
    return frame[~rows].reset_index(drop=True)


def held_out_rows(group: torch.Tensor, group_names: Sequence[str], share: float, seed: int,
                  name: str) -> torch.Tensor:
    """A boolean mask over the rows: ``share`` of each group's rows (at least one), drawn with
    ``seed``, group by group in code order. ``name`` is the caller's parameter, for the error
    raised when the share would leave a group with no row."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for g, group_name in enumerate(group_names):
        members = torch.nonzero(group == g).reshape(-1)
        count = max(1, round(share * members.numel()))
        if count >= members.numel():
            raise ValueError(f"{name}={share} leaves no training row of group {group_name!r} "
                             f"({members.numel()} rows): lower it")
        held.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    mask = torch.zeros(group.shape[0], dtype=torch.bool)
    mask[torch.cat(held)] = True
    return mask


@dataclass
class FairnessData:
    """A binary classification data set with a protected group attribute, split and standardized.

    ``X_*`` are float32 standardized features (the protected attribute is not among them),
    ``y_*`` float32 0/1 labels, ``group_*`` int64 group codes ``0..G-1`` indexing ``group_names``.
    ``scaler`` is the StandardScaler fit on the training rows; ``source`` says where the rows came from.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    group_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    group_test: torch.Tensor
    feature_names: list[str]
    group_names: list[str]
    protected: str
    source: str
    scaler: StandardScaler

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return len(self.group_names)

    @property
    def n_features(self) -> int:
        """Number of model inputs."""
        return int(self.X_train.shape[1])

    def with_group_inputs(self) -> "FairnessData":
        """A copy whose inputs also hold the group, one-hot (G columns ``<protected>=<name>``
        appended to ``X_*``); labels, groups and splits unchanged. A model that sees the group
        can meet a positive-rate constraint by shifting each group's scores, as per-group
        thresholds do, at a smaller cost in accuracy; using the protected attribute at decision
        time is *disparate treatment*, which some settings forbid: the choice is the user's."""
        import dataclasses

        def joined(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, torch.nn.functional.one_hot(group, self.n_groups).to(x.dtype)], dim=1)

        return dataclasses.replace(
            self, X_train=joined(self.X_train, self.group_train), X_test=joined(self.X_test, self.group_test),
            feature_names=[*self.feature_names, *(f"{self.protected}={name}" for name in self.group_names)],
            name=f"{self.name} (group among the inputs)")

    def with_test_from_train(self, share: float = 0.2, seed: int = 0) -> "FairnessData":
        """A copy for choosing a protocol without the test set: ``share`` of each group's
        training rows (drawn with ``seed``) become its test rows, the rest its training rows, and
        the real test rows are dropped. Whatever is tuned on it (a margin, a step size) never
        read the test rows, so the real test set still measures new data. The scaler is the
        original one, fit on all the training rows, the carved ones included."""
        import dataclasses
        share = check_number("share", share, low=0.0, high=1.0, low_open=True, high_open=True, fix="; e.g. 0.2")
        held = held_out_rows(self.group_train, self.group_names, share, check_seed("seed", seed), "share")
        return dataclasses.replace(
            self, X_train=self.X_train[~held], y_train=self.y_train[~held], group_train=self.group_train[~held],
            X_test=self.X_train[held], y_test=self.y_train[held], group_test=self.group_train[held],
            name=f"{self.name} (test rows carved from the training rows)")

    def group_table(self) -> pd.DataFrame:
        """One row per group (index: group code): name, train/test counts, share of the training
        rows, and positive (base) rate of the label in the training rows."""
        g = self.n_groups
        n_train = torch.bincount(self.group_train, minlength=g).numpy()
        n_test = torch.bincount(self.group_test, minlength=g).numpy()
        positives = torch.bincount(self.group_train, weights=self.y_train.double(), minlength=g).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = positives / n_train
        table = pd.DataFrame(
            {
                "group": self.group_names,
                "n_train": n_train.astype(np.int64),
                "n_test": n_test.astype(np.int64),
                "share": n_train / max(int(n_train.sum()), 1),
                "positive_rate": rate,
            }
        )
        table.index.name = "code"
        return table


def _search_dirs(first: str | os.PathLike | None) -> list[Path]:
    """Folders searched for offline files: ``first``, ``$HCTRAIN_DATA_DIR``, ``SHARED_DATA_DIR``."""
    candidates = [first, _env_data_dir(), SHARED_DATA_DIR]
    dirs: list[Path] = []
    for c in candidates:
        if c is not None and Path(c) not in dirs:
            dirs.append(Path(c))
    return dirs


def _find_file(file_name: str, first: str | os.PathLike | None) -> tuple[Path | None, list[Path]]:
    """The first existing ``<dir>/file_name`` (``first`` may name the file itself) and the paths tried."""
    tried: list[Path] = []
    for d in _search_dirs(first):
        path = d if d.suffix == ".parquet" else d / file_name
        tried.append(path)
        if path.is_dir():
            raise DataUnavailableError(f"{path} is a folder, not the data file {file_name}: remove or "
                                       "rename it, or put the file there")
        if path.is_file():
            return path, tried
    return None, tried


def _read_checked(path: Path, columns: list[str], fix: str) -> pd.DataFrame:
    """The parquet file at ``path`` with ``columns`` present; a damaged or incomplete file is an
    error that names it and ``fix`` (how to rebuild or re-download it)."""
    try:
        table = _read_table(path, path.stat().st_mtime_ns)
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise DataUnavailableError(f"cannot read {path}: it is damaged or not a parquet file "
                                   f"({type(e).__name__}: {' '.join(str(e).split())}). {fix}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataUnavailableError(f"{path} is incomplete: it has no column {', '.join(missing)} "
                                   f"(columns found: {', '.join(map(str, table.columns))}). {fix}")
    return table


@functools.lru_cache(maxsize=2)
def _read_table(path: Path, mtime_ns: int) -> pd.DataFrame:
    """A parquet file, kept for repeated loads while it is unchanged; callers must not modify it."""
    return pd.read_parquet(path)


def _census_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the census server (or the proxy configured for ``url``) opens
    within ``timeout`` seconds, name resolution included."""
    import requests.utils

    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    target = urlparse(proxy if "//" in (proxy or "") else f"http://{proxy}") if proxy else urlparse(url)
    host, port = target.hostname or CENSUS_HOST, target.port or (443 if target.scheme == "https" else 80)
    ok: list[bool] = []

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            ok.append(True)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


class _RequestsWithTimeout:
    """Stands in for ``requests`` inside folktables: ``get`` with timeouts, raising on HTTP errors."""

    @staticmethod
    def get(url: str, **kwargs: Any) -> Any:
        import requests

        response = requests.get(url, timeout=DOWNLOAD_TIMEOUT_S, **kwargs)
        response.raise_for_status()
        return response


def _census_frame(
    state: str, year: int, root: Path, notes: list[str]
) -> tuple[pd.DataFrame, str] | None:
    """ACSIncome rows of one state from folktables' census CSVs under ``root`` (downloaded if
    needed and reachable), as columns ``ACS_FEATURES + ["label"]``, and where they came from;
    None (with a note why) if that fails."""
    import folktables

    load_acs_module = importlib.import_module("folktables.load_acs")
    if state not in load_acs_module.state_list:
        notes.append(f"folktables census download: folktables has no data for {state}")
        return None
    fips = f"{STATE_FIPS[state]:02d}"
    csv = root / str(year) / "1-Year" / f"psam_p{fips}.csv"
    url = f"https://{CENSUS_HOST}/programs-surveys/acs/data/pums/{year}/1-Year/csv_p{state.lower()}.zip"
    have_csv = csv.is_file()
    if not have_csv and not _census_reachable(url):
        notes.append(f"folktables census download: no {csv}, and {CENSUS_HOST} is unreachable")
        return None
    source = folktables.ACSDataSource(
        survey_year=str(year), horizon="1-Year", survey="person", root_dir=str(root)
    )
    timeouts = mock.patch.object(load_acs_module, "requests", _RequestsWithTimeout)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), timeouts:
            raw = source.get_data(states=[state], download=not have_csv)
    except Exception as e:
        what = f"CSV {csv}" if have_csv else f"download of {url}"
        printed = " ".join(log.getvalue().split())
        cause = printed.split("Exception:", 1)[1].strip() if "Exception:" in printed else repr(e)
        notes.append(f"folktables census {what} failed: {cause}")
        if not have_csv:
            with contextlib.suppress(OSError):
                (csv.parent / url.rsplit("/", 1)[1]).unlink()
        return None
    features, label, _ = folktables.ACSIncome.df_to_pandas(raw)
    frame = features[ACS_FEATURES].astype(np.float32)
    frame["label"] = label.iloc[:, 0].to_numpy().astype(np.int8)
    how = "read from the earlier download" if have_csv else "downloaded now"
    return frame, f"the folktables census download (full ACS PUMS {year} 1-Year, {how}: {csv})"


def _cache_frame(
    state: str, data_dir: str | os.PathLike | None, notes: list[str]
) -> tuple[pd.DataFrame, str] | None:
    """ACSIncome 2018 rows of one state from the offline cache, and where they came from; None
    (with a note why) if the cache is not found."""
    path, tried = _find_file(ACS_CACHE_FILE, data_dir)
    if path is None:
        notes.append("offline cache: no " + ", ".join(map(str, tried)))
        return None
    columns = ["ST", *ACS_FEATURES, "label"]
    table = _read_checked(path, columns, ACS_CACHE_FIX)
    text = [c for c in columns if not (pd.api.types.is_numeric_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c]))]
    if text:
        raise DataUnavailableError(f"{path}: column {', '.join(text)} holds text where census codes "
                                   f"(numbers) are expected. {ACS_CACHE_FIX}")
    frame = table.loc[table["ST"] == STATE_FIPS[state], ACS_FEATURES + ["label"]].reset_index(drop=True)
    if frame.empty:
        notes.append(f"offline cache {path}: no rows of {state} (FIPS {STATE_FIPS[state]})")
        return None
    return frame, f"the offline cache {path} (the 46% offline subsample, not the full census download)"


def _group_name(attr: str, code: int) -> str:
    return GROUP_NAMES.get(attr, {}).get(code, f"{attr}={code}")


def _split_scale(
    X: np.ndarray, y: np.ndarray, group: np.ndarray, test_size: float, seed: int
) -> tuple[dict[str, torch.Tensor], StandardScaler]:
    """Seeded train/test split of the rows, and a StandardScaler fit on the training rows only."""
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed)
    scaler = StandardScaler().fit(X[train])
    out = {}
    for part, idx in (("train", train), ("test", test)):
        out[f"X_{part}"] = torch.from_numpy(scaler.transform(X[idx]).astype(np.float32))
        out[f"y_{part}"] = torch.from_numpy(y[idx].astype(np.float32))
        out[f"group_{part}"] = torch.from_numpy(group[idx].astype(np.int64))
    return out, scaler


def _check_test_size(test_size: float) -> float:
    return check_number("test_size (a fraction)", test_size, low=0.0, high=1.0, low_open=True, high_open=True)


def load_acsincome(
    state: str = "VA",
    year: int = 2018,
    protected: str = "MAR",
    *,
    test_size: float = 0.2,
    seed: int = 0,
    max_groups: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verbose: bool = True,
    drop_missing: bool = False,
) -> FairnessData:
    """Folktables ACSIncome (income > $50,000) for one state and year, protected attribute removed
    from the inputs and used as the group.

    Sources, in order: if ``download``, folktables' census CSVs under ``data_dir`` (else
    ``$HCTRAIN_DATA_DIR``, else ``~/.cache/hctrain``), downloaded first if missing and the census
    server answers; then the offline cache ``acsincome_2018_subsample.parquet`` (2018 only) in
    ``data_dir``, ``$HCTRAIN_DATA_DIR`` or ``<repo>/../shared/data``. The 9 other features keep
    their census codes (no one-hot). ``max_groups=k`` keeps the rows of the k most common groups.

    An explicit ``data_dir`` (or ``$HCTRAIN_DATA_DIR``) must be an existing folder: it is never
    silently replaced by another. Rows with a missing or infinite feature or label are an error
    (:class:`MissingValuesError`, naming the columns and counts) unless ``drop_missing=True``,
    which drops them and says how many in ``source``. A damaged or incomplete cache is a
    DataUnavailableError naming the file. Raises ValueError for bad arguments and
    DataUnavailableError when no source can be read.
    """
    state = check_string("state", state).strip().upper()
    if state not in STATE_FIPS:
        raise ValueError(f"unknown state {state!r}; valid: {', '.join(sorted(STATE_FIPS))}")
    if not isinstance(protected, str) or protected not in ACS_CATEGORICAL:
        raise ValueError(
            f"unknown protected attribute {protected!r}; valid (categorical ACSIncome features): "
            f"{', '.join(ACS_CATEGORICAL)}"
        )
    year = _check_year(year)
    test_size = _check_test_size(test_size)
    seed = check_seed("seed", seed)
    if max_groups is not None:
        max_groups = check_integer("max_groups", max_groups, low=2, fix="; or None for every group")
    if data_dir is not None:
        data_dir = _existing_dir("data_dir", data_dir)
    download = check_bool("download", download)
    verbose = check_bool("verbose", verbose)
    drop_missing = check_bool("drop_missing", drop_missing)
    env_dir = _env_data_dir()

    notes: list[str] = []
    found = None
    if download:
        root = Path(data_dir or env_dir or Path.home() / ".cache" / "hctrain")
        found = _census_frame(state, year, root, notes)
    else:
        notes.append("folktables census download: skipped (download=False)")
    if found is None and year != ACS_CACHE_YEAR:
        raise YearUnavailableError(
            f"ACSIncome {year} is not available offline: the offline cache holds only {ACS_CACHE_YEAR}. "
            f"Tried: {'; '.join(notes)}. Connect to the internet (download=True) or use "
            f"year={ACS_CACHE_YEAR}."
        )
    if found is None:
        found = _cache_frame(state, data_dir, notes)
    if found is None:
        raise DataUnavailableError(
            f"no ACSIncome data for {state} {year}. Tried: {'; '.join(notes)}. Connect to the internet "
            f"(download=True), or set HCTRAIN_DATA_DIR to a folder holding {ACS_CACHE_FILE} or "
            f"folktables' CSVs (<dir>/{year}/1-Year/psam_pXX.csv)."
        )
    frame, where = found
    name = f"ACSIncome {state} {year}"
    n_read, dropped = len(frame), []
    frame = _check_finite(frame, ACS_FEATURES + ["label"], f"ACSIncome {state} {year} from {where}",
                          drop_missing, dropped)
    labels = set(np.unique(frame["label"].to_numpy()).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"ACSIncome {state} {year} from {where}: labels must be 0 or 1, found "
                         f"{sorted(labels - {0, 1})[:5]}. {ACS_CACHE_FIX}")
    source = f"{name}: {n_read:,} rows from {where}" + "".join(f", {d}" for d in dropped)

    codes = frame[protected].to_numpy().astype(np.int64)
    counts = pd.Series(codes).value_counts()
    if max_groups is not None and max_groups < len(counts):
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep_codes = np.array([c for c, _ in ranked[:max_groups]])
        keep = np.isin(codes, keep_codes)
        frame, codes = frame[keep], codes[keep]
        source += f", {len(frame):,} of them in the {max_groups} most common {protected} groups"
    levels = np.unique(codes)
    feature_names = [f for f in ACS_FEATURES if f != protected]
    parts, scaler = _split_scale(
        frame[feature_names].to_numpy(np.float64),
        frame["label"].to_numpy(),
        np.searchsorted(levels, codes),
        test_size,
        seed,
    )
    if verbose:
        print(source)
    return FairnessData(
        name=name,
        **parts,
        feature_names=feature_names,
        group_names=[_group_name(protected, int(c)) for c in levels],
        protected=protected,
        source=source,
        scaler=scaler,
    )


def _code_order(value: str) -> tuple[int, Any]:
    """Sort key putting numeric codes in numeric order, before any other strings."""
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def load_dutch_census(
    protected: str = "sex",
    *,
    path: str | os.PathLike | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    verbose: bool = True,
    drop_missing: bool = False,
) -> FairnessData:
    """Dutch census 2001: predict occupation ``5_4_9`` (label 1) vs ``2_1`` (label 0), with
    ``protected`` (a column, default ``sex``) as the group and the other columns one-hot encoded.

    ``dutch_census_2001.parquet`` is read from ``path`` (the file, or the folder holding it) when
    given -- an explicit path that does not hold it is an error, never a fallback -- else from
    ``$HCTRAIN_DATA_DIR``, then ``<repo>/../shared/data``. Rows with a missing value are an error
    (:class:`MissingValuesError`) unless ``drop_missing=True``.
    """
    test_size = _check_test_size(test_size)
    seed = check_seed("seed", seed)
    verbose = check_bool("verbose", verbose)
    drop_missing = check_bool("drop_missing", drop_missing)
    if path is not None:
        given = check_path("path", path)
        file = given if given.suffix == ".parquet" else given / DUTCH_FILE
        if given.suffix != ".parquet":
            _existing_dir("path", given)
        if file.is_dir():
            raise DataUnavailableError(f"{file} is a folder, not the data file {DUTCH_FILE}")
        if not file.is_file():
            raise DataPathError(f"path: {file} does not exist; give the file {DUTCH_FILE} or the "
                                    "folder holding it (an explicit path is never replaced by another)")
    else:
        file, tried = _find_file(DUTCH_FILE, None)
        if file is None:
            raise DataUnavailableError(
                f"{DUTCH_FILE} not found; tried {', '.join(map(str, tried))}. Pass path= or set "
                "HCTRAIN_DATA_DIR to the folder holding it."
            )
    fix = ("Restore it from a fresh copy of the offline data (shared/data/README.md describes it) "
           "or download the Dutch census 2001 again.")
    raw = _read_checked(file, [DUTCH_TARGET], fix)
    if not isinstance(protected, str):
        raise ValueError(f"protected must be a column name (str), got {protected!r}")
    missing = raw.isna()
    if missing.any(axis=None):
        per_column = {c: int(n) for c, n in missing.sum().items() if n}
        listing = ", ".join(f"{c}: {n:,}" for c, n in per_column.items())
        rows = int(missing.any(axis=1).sum())
        if not drop_missing:
            raise MissingValuesError(f"{file}: {rows:,} of {len(raw):,} rows have missing values ({listing}); "
                                     f"pass drop_missing=True to drop them. {fix}")
        raw = raw[~missing.any(axis=1)].reset_index(drop=True)
    table = raw.astype(str)
    columns = [c for c in table.columns if c != DUTCH_TARGET]
    if protected not in columns:
        raise ValueError(f"unknown protected attribute {protected!r}; valid: {', '.join(columns)}")
    n_all = len(table)
    table = table[table[DUTCH_TARGET].isin([DUTCH_POSITIVE, DUTCH_NEGATIVE])].reset_index(drop=True)
    name = "Dutch census 2001"
    dropped = f", {n_all - len(table):,} rows of other occupations dropped" if n_all > len(table) else ""
    if missing.any(axis=None):
        dropped += f", {rows:,} rows with missing values dropped ({listing})"
    source = f"{name}: {len(table):,} rows from {file} (occupation {DUTCH_POSITIVE} vs {DUTCH_NEGATIVE}{dropped})"

    levels = sorted(table[protected].unique(), key=_code_order)
    group = table[protected].map({v: i for i, v in enumerate(levels)}).to_numpy()
    inputs = [c for c in columns if c != protected]
    categories = {c: pd.CategoricalDtype(sorted(table[c].unique(), key=_code_order)) for c in inputs}
    onehot = pd.get_dummies(table[inputs].astype(categories), dtype=np.float64)
    parts, scaler = _split_scale(
        onehot.to_numpy(), (table[DUTCH_TARGET] == DUTCH_POSITIVE).to_numpy(), group, test_size, seed
    )
    if verbose:
        print(source)
    names = DUTCH_GROUP_NAMES.get(protected, {})
    return FairnessData(
        name=name,
        **parts,
        feature_names=list(onehot.columns),
        group_names=[names.get(v, f"{protected}={v}") for v in levels],
        protected=protected,
        source=source,
        scaler=scaler,
    )


class BalancedGroupSampler:
    """Draws batches of row indices holding exactly ``batch_per_group`` rows of every group.

    Rows are drawn i.i.d. uniformly with replacement within each group; a batch is grouped in
    blocks: rows ``[g*b:(g+1)*b]`` come from group g. ``state_dict`` carries the RNG state, so a
    resumed run draws the same batches.
    """

    def __init__(
        self,
        group: torch.Tensor,
        batch_per_group: int,
        *,
        seed: int | None = None,
        group_names: Sequence[str] | None = None,
    ) -> None:
        batch_per_group = check_integer("batch_per_group", batch_per_group, low=1)
        if seed is not None:
            seed = check_integer("seed", seed, low=0, high=2**63 - 1)
        group = torch.as_tensor(group).reshape(-1)
        if group.is_floating_point() or group.dtype == torch.bool:
            raise ValueError(f"group must hold integer group codes 0..G-1, got dtype {group.dtype}")
        group = group.long()
        if group.numel() == 0:
            raise ValueError("group is empty: no rows to sample from")
        if int(group.min()) < 0:
            raise ValueError(f"group codes must be 0..G-1, found {int(group.min())}")
        n_groups = int(group.max()) + 1 if group_names is None else len(group_names)
        if int(group.max()) >= n_groups:
            raise ValueError(f"group code {int(group.max())} has no name: {n_groups} group_names given")
        sizes = torch.bincount(group, minlength=n_groups)

        def label(g: int) -> str:
            return f"group {g} ({group_names[g]!r})" if group_names is not None else f"group {g}"

        for g in range(n_groups):
            size = int(sizes[g])
            if size == 0:
                raise ValueError(f"{label(g)} has no rows; codes must be 0..G-1 with every group present")
            if size < batch_per_group:
                raise ValueError(
                    f"{label(g)} has only {size} rows, fewer than batch_per_group={batch_per_group}: "
                    "lower batch_per_group or drop the group (e.g. max_groups)"
                )
        self._order = torch.argsort(group, stable=True)
        self._sizes = sizes
        self._starts = torch.cumsum(sizes, 0) - sizes
        self._b = int(batch_per_group)
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return int(self._sizes.numel())

    @property
    def batch_per_group(self) -> int:
        """Rows per group in a batch."""
        return self._b

    @property
    def batch_size(self) -> int:
        """Rows in a batch: G * batch_per_group."""
        return self.n_groups * self._b

    @property
    def group_sizes(self) -> torch.Tensor:
        """Number of rows of each group (int64, length G)."""
        return self._sizes.clone()

    def sample(self) -> torch.Tensor:
        """int64 indices of one batch, ``batch_per_group`` of each group, in group blocks."""
        u = torch.rand(self.n_groups, self._b, generator=self._generator, dtype=torch.float64)
        offset = torch.minimum((u * self._sizes[:, None]).long(), self._sizes[:, None] - 1)
        return self._order[self._starts[:, None] + offset].reshape(-1)

    def state_dict(self) -> dict[str, Any]:
        """RNG state and batch shape."""
        return {
            "generator": self._generator.get_state(),
            "n_groups": self.n_groups,
            "batch_per_group": self._b,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the RNG state of a sampler over the same groups and batch shape."""
        shape = (state["n_groups"], state["batch_per_group"])
        if shape != (self.n_groups, self._b):
            raise ValueError(
                f"state is for {shape[0]} groups x {shape[1]} rows, this sampler draws "
                f"{self.n_groups} x {self._b}"
            )
        self._generator.set_state(state["generator"])
