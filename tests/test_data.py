"""Tests of hctrain.data: the ACSIncome and Dutch census loaders (offline) and BalancedGroupSampler."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hctrain import data as hd
from hctrain.data import (
    BalancedGroupSampler,
    DataUnavailableError,
    FairnessData,
    YearUnavailableError,
    load_acsincome,
    load_dutch_census,
)

VA_ROWS = 21_301
MAR_COUNTS = [12_070, 409, 2_097, 428, 6_297]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and no folktables CSVs: the census probe fails and the CSV root is empty."""
    def unreachable(url: str, timeout: float = 0.0) -> bool:
        return False

    monkeypatch.setattr(hd, "_census_reachable", unreachable)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HCTRAIN_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def va() -> FairnessData:
    return load_acsincome("VA", 2018, "MAR", download=False, verbose=False)


@pytest.fixture(scope="module")
def dutch() -> FairnessData:
    return load_dutch_census(verbose=False)


def test_acsincome_features_and_groups(va: FairnessData) -> None:
    assert va.name == "ACSIncome VA 2018"
    assert va.protected == "MAR"
    assert va.feature_names == ["AGEP", "COW", "SCHL", "OCCP", "POBP", "RELP", "WKHP", "SEX", "RAC1P"]
    assert va.n_features == 9 and va.X_train.shape[1] == 9
    assert va.group_names == ["Married", "Widowed", "Divorced", "Separated", "Never married"]
    assert va.n_groups == 5
    assert va.X_train.dtype == torch.float32 and va.y_train.dtype == torch.float32
    assert va.group_train.dtype == torch.int64
    assert set(va.y_train.unique().tolist()) == {0.0, 1.0}


def test_acsincome_split_sizes(va: FairnessData) -> None:
    assert len(va.X_train) == len(va.y_train) == len(va.group_train) == 17_040
    assert len(va.X_test) == len(va.y_test) == len(va.group_test) == 4_261
    counts = torch.bincount(va.group_train, minlength=5) + torch.bincount(va.group_test, minlength=5)
    assert counts.tolist() == MAR_COUNTS
    positive = float(torch.cat([va.y_train, va.y_test]).mean())
    assert positive == pytest.approx(0.4365, abs=1e-4)


def test_acsincome_split_is_seeded(va: FairnessData) -> None:
    again = load_acsincome(download=False, verbose=False, seed=0)
    assert torch.equal(again.X_train, va.X_train) and torch.equal(again.group_test, va.group_test)
    other = load_acsincome(download=False, verbose=False, seed=1)
    assert not torch.equal(other.y_train, va.y_train)


def test_acsincome_scaler_fit_on_train(va: FairnessData) -> None:
    assert va.X_train.mean(0).abs().max() < 1e-5
    assert (va.X_train.std(0) - 1).abs().max() < 1e-3
    assert va.X_test.mean(0).abs().max() > 1e-4
    assert va.scaler.n_features_in_ == 9 and va.scaler.n_samples_seen_ == 17_040
    raw = va.scaler.inverse_transform(va.X_train[:5].numpy())
    assert np.allclose(raw, np.round(raw), atol=1e-2)


def test_acsincome_source_names_the_cache(capsys: pytest.CaptureFixture[str]) -> None:
    data = load_acsincome(download=False)
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert line.strip() == data.source
    assert "21,301 rows from the offline cache" in data.source
    assert "46% offline subsample" in data.source
    assert "acsincome_2018_subsample.parquet" in data.source


def test_acsincome_download_falls_back_to_cache_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    data = load_acsincome(download=True, verbose=False, data_dir=tmp_path)
    assert time.perf_counter() - start < 5
    assert "offline cache" in data.source
    assert len(data.y_train) + len(data.y_test) == VA_ROWS
    assert not any(tmp_path.iterdir())


def test_acsincome_failed_download_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refused(url: str, **kwargs: object) -> None:
        raise ConnectionError(f"refused: {url}")

    monkeypatch.setattr(hd, "_census_reachable", lambda url, timeout=0.0: True)
    monkeypatch.setattr(hd._RequestsWithTimeout, "get", staticmethod(refused))
    data = load_acsincome(download=True, verbose=False, data_dir=tmp_path)
    assert "offline cache" in data.source
    failed = r"download of https://www2.census.gov/\S*csv_pva.zip failed: refused"
    with pytest.raises(DataUnavailableError, match=failed):
        load_acsincome(year=2019, download=True, verbose=False, data_dir=tmp_path)
    assert not list(tmp_path.rglob("*.zip"))


def test_acsincome_reads_folktables_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    raw = pd.DataFrame(
        {
            "RT": "P", "SERIALNO": [f"2018HU{i:07d}" for i in range(n)], "ST": 51,
            "AGEP": rng.integers(10, 80, n), "COW": rng.integers(1, 9, n),
            "SCHL": rng.integers(1, 24, n), "MAR": rng.integers(1, 6, n),
            "OCCP": rng.integers(10, 9000, n), "POBP": rng.integers(1, 60, n),
            "RELP": rng.integers(0, 17, n), "WKHP": rng.integers(0, 60, n), "SEX": rng.integers(1, 3, n),
            "RAC1P": rng.integers(1, 10, n), "PINCP": rng.integers(-1000, 120_000, n),
            "PWGTP": rng.integers(0, 50, n),
        }
    )
    folder = tmp_path / "2018" / "1-Year"
    folder.mkdir(parents=True)
    raw.to_csv(folder / "psam_p51.csv", index=False)
    kept = raw[(raw.AGEP > 16) & (raw.PINCP > 100) & (raw.WKHP > 0) & (raw.PWGTP >= 1)]

    data = load_acsincome(download=True, verbose=False, data_dir=tmp_path)
    assert "folktables census download" in data.source and "offline" not in data.source
    assert f"{len(kept):,} rows" in data.source
    y = torch.cat([data.y_train, data.y_test])
    assert len(y) == len(kept) and int(y.sum()) == int((kept.PINCP > 50_000).sum())


def test_acsincome_other_state_and_protected() -> None:
    ca = load_acsincome("ca", protected="SEX", download=False, verbose=False)
    assert ca.name == "ACSIncome CA 2018"
    assert ca.group_names == ["Male", "Female"]
    assert "SEX" not in ca.feature_names and "MAR" in ca.feature_names
    assert len(ca.y_train) + len(ca.y_test) == 89_958


def test_acsincome_max_groups() -> None:
    data = load_acsincome(protected="POBP", max_groups=10, download=False, verbose=False)
    assert data.n_groups == 10
    assert all(name.startswith("POBP=") for name in data.group_names)
    codes = [int(name.split("=")[1]) for name in data.group_names]
    assert codes == sorted(codes) and 51 in codes
    assert "10 most common POBP groups" in data.source
    full = load_acsincome(protected="POBP", download=False, verbose=False)
    sizes = full.group_table().set_index("group")[["n_train", "n_test"]].sum(axis=1)
    assert set(sizes.nlargest(10).index) == set(data.group_names)
    assert len(data.y_train) + len(data.y_test) == int(sizes.nlargest(10).sum())


def test_group_table(va: FairnessData) -> None:
    table = va.group_table()
    assert list(table.columns) == ["group", "n_train", "n_test", "share", "positive_rate"]
    assert table["group"].tolist() == va.group_names
    assert (table["n_train"] + table["n_test"]).tolist() == MAR_COUNTS
    assert table["share"].sum() == pytest.approx(1.0)
    married = va.y_train[va.group_train == 0].mean().item()
    assert table.loc[0, "positive_rate"] == pytest.approx(married)
    assert table.equals(va.group_table())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"state": "XX"}, r"unknown state 'XX'.*VA"),
        ({"protected": "AGEP"}, r"unknown protected attribute 'AGEP'.*MAR"),
        ({"test_size": 0.0}, r"test_size.*\(0, 1\).*0\.0"),
        ({"test_size": 1.5}, r"test_size.*1\.5"),
        ({"max_groups": 1}, r"max_groups must be an integer >= 2, got 1"),
        ({"year": 2010}, r"2010"),
    ],
)
def test_acsincome_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_acsincome(download=False, verbose=False, **kwargs)


def test_acsincome_year_not_offline() -> None:
    with pytest.raises(YearUnavailableError, match=r"2019.*only 2018") as info:
        load_acsincome(year=2019, verbose=False)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DataUnavailableError)


def test_acsincome_no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hd, "SHARED_DATA_DIR", None)
    monkeypatch.setenv("HCTRAIN_DATA_DIR", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="HCTRAIN_DATA_DIR") as info:
        load_acsincome(verbose=False)
    message = str(info.value)
    assert str(tmp_path / "acsincome_2018_subsample.parquet") in message
    assert "unreachable" in message


def test_acsincome_state_missing_from_cache() -> None:
    with pytest.raises(DataUnavailableError, match=r"no rows of DC \(FIPS 11\)"):
        load_acsincome("DC", verbose=False)


def test_dutch_census(dutch: FairnessData) -> None:
    assert dutch.name == "Dutch census 2001"
    assert dutch.group_names == ["Male", "Female"]
    assert len(dutch.y_train) + len(dutch.y_test) == 60_420
    assert len(dutch.y_test) == 12_084
    assert 0.4 < float(dutch.y_train.mean()) < 0.6
    assert not any(f.startswith("sex_") or f.startswith("occupation") for f in dutch.feature_names)
    assert dutch.n_features == len(dutch.feature_names) == 59
    assert dutch.X_train.mean(0).abs().max() < 1e-5
    assert "dutch_census_2001.parquet" in dutch.source


def test_dutch_census_other_protected() -> None:
    data = load_dutch_census("age", verbose=False)
    assert data.group_names[:2] == ["age=4", "age=5"] and data.n_groups == 12
    assert not any(f.startswith("age_") for f in data.feature_names)
    assert any(f.startswith("sex_") for f in data.feature_names)
    with pytest.raises(ValueError, match=r"unknown protected attribute 'income'.*sex"):
        load_dutch_census("income", verbose=False)


def test_dutch_census_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hd, "SHARED_DATA_DIR", None)
    with pytest.raises(DataUnavailableError, match="dutch_census_2001.parquet"):
        load_dutch_census(path=tmp_path, verbose=False)


def _groups() -> torch.Tensor:
    return torch.tensor([2, 0, 1, 2, 0, 2, 1, 2, 0, 1, 1, 2, 2, 0])


def test_sampler_balanced_blocks() -> None:
    group = _groups()
    sampler = BalancedGroupSampler(group, 4, seed=0)
    assert (sampler.n_groups, sampler.batch_per_group, sampler.batch_size) == (3, 4, 12)
    for _ in range(20):
        idx = sampler.sample()
        assert idx.dtype == torch.int64 and idx.shape == (12,)
        assert torch.equal(group[idx], torch.arange(3).repeat_interleave(4))


def test_sampler_covers_group_uniformly() -> None:
    group = torch.tensor([1] * 10 + [0] * 5)
    sampler = BalancedGroupSampler(group, 5, seed=0)
    drawn = torch.cat([sampler.sample()[:5] for _ in range(2000)]) - 10
    counts = torch.bincount(drawn, minlength=5)
    assert counts.sum() == 10_000 and counts.min() > 1_800 and counts.max() < 2_200


def test_sampler_many_groups() -> None:
    group = torch.arange(100).repeat(7)[torch.randperm(700, generator=torch.Generator().manual_seed(0))]
    idx = BalancedGroupSampler(group, 3, seed=1).sample()
    assert torch.equal(group[idx], torch.arange(100).repeat_interleave(3))


def test_sampler_seeded() -> None:
    a = BalancedGroupSampler(_groups(), 3, seed=7)
    b = BalancedGroupSampler(_groups(), 3, seed=7)
    c = BalancedGroupSampler(_groups(), 3, seed=8)
    first = [a.sample() for _ in range(5)]
    assert all(torch.equal(x, b.sample()) for x in first)
    assert not all(torch.equal(x, c.sample()) for x in first)


def test_sampler_state_dict_round_trip() -> None:
    sampler = BalancedGroupSampler(_groups(), 3, seed=3)
    sampler.sample()
    state = sampler.state_dict()
    expected = [sampler.sample() for _ in range(5)]
    resumed = BalancedGroupSampler(_groups(), 3, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, resumed.sample()) for x in expected)
    with pytest.raises(ValueError, match="groups"):
        BalancedGroupSampler(_groups(), 2, seed=0).load_state_dict(state)


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match=r"'Widowed'.*only 3 rows.*batch_per_group=4.*max_groups"):
        BalancedGroupSampler(torch.tensor([0] * 5 + [1] * 3), 4, group_names=["Married", "Widowed"])
    with pytest.raises(ValueError, match=r"group 1 has only 3 rows"):
        BalancedGroupSampler(torch.tensor([0] * 5 + [1] * 3), 4)
    with pytest.raises(ValueError, match="batch_per_group"):
        BalancedGroupSampler(_groups(), 0)
    with pytest.raises(ValueError, match=r"group 1 .*no rows"):
        BalancedGroupSampler(torch.tensor([0, 0, 2, 2]), 1)
    with pytest.raises(ValueError, match="no rows"):
        BalancedGroupSampler(torch.tensor([0, 1]), 1, group_names=["a", "b", "c"])


def test_sampler_on_loaded_data(va: FairnessData) -> None:
    sampler = BalancedGroupSampler(va.group_train, 64, seed=0, group_names=va.group_names)
    idx = sampler.sample()
    assert torch.equal(va.group_train[idx], torch.arange(5).repeat_interleave(64))
    with pytest.raises(ValueError, match=r"'Widowed'.*327 rows"):
        BalancedGroupSampler(va.group_train, 330, group_names=va.group_names)
