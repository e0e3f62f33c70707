"""Eligibility: the pure decision, and readings from a fake /proc and /sys tree."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.eligibility import Conditions, Readings, check, in_window, parse_window, read_device


def fake_device(
    root: Path,
    *,
    load: str = "0.50 0.40 0.30 1/100 4242",
    temps: tuple[str, ...] = ("45000",),
    cpus: str = "0-3",
    available_kb: int = 512 * 1024,
) -> Path:
    """A /proc and /sys as a four-core Raspberry Pi shows them."""
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/loadavg").write_text(load + "\n")
    (root / "proc/meminfo").write_text(
        f"MemTotal:        3884328 kB\nMemFree:          100000 kB\n"
        f"MemAvailable:    {available_kb} kB\nBuffers:           1000 kB\n"
    )
    (root / "sys/devices/system/cpu").mkdir(parents=True, exist_ok=True)
    (root / "sys/devices/system/cpu/online").write_text(cpus + "\n")
    for i, temp in enumerate(temps):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "temp").write_text(temp + "\n")
    return root


NOON = dt.time(12, 0)


def readings(**values: object) -> Readings:
    base: dict[str, object] = {"load_per_cpu": 0.1, "temp_c": 40.0, "free_mb": 900.0, "now": NOON}
    return Readings(**{**base, **values})  # type: ignore[arg-type]


def test_each_condition_declines_with_its_own_reason() -> None:
    limits = Conditions(max_load=0.5, max_temp_c=70, min_free_mb=200, window="22:00-06:00")
    reasons = check(limits, readings(load_per_cpu=0.9, temp_c=81.5, free_mb=150.0))
    assert reasons == [
        "load 0.90 per CPU > 0.50",
        "temperature 81.5 C > 70.0 C",
        "free memory 150 MiB < 200 MiB",
        "outside the training window 22:00-06:00",
    ]
    night = readings(now=dt.time(23, 30))
    assert check(limits, night) == []


def test_no_limits_or_missing_readings_never_decline() -> None:
    assert check(Conditions(), readings(load_per_cpu=50.0, temp_c=99.0, free_mb=1.0)) == []
    assert not Conditions().any
    limits = Conditions(max_load=0.5, max_temp_c=70, min_free_mb=200)
    assert check(limits, readings(load_per_cpu=None, temp_c=None, free_mb=None)) == []


def test_time_windows_wrap_midnight_and_exclude_their_end() -> None:
    assert in_window(dt.time(9, 0), "09:00-17:00")
    assert not in_window(dt.time(17, 0), "09:00-17:00")
    assert in_window(dt.time(23, 59), "22:00-06:00") and in_window(dt.time(0, 0), "22:00-06:00")
    assert not in_window(dt.time(6, 0), "22:00-06:00")
    assert parse_window(" 22:00 - 06:30 ") == (dt.time(22, 0), dt.time(6, 30))


@pytest.mark.parametrize(
    "bad", ["22:00", "22:00-22:00", "25:00-06:00", "9:00-17:00", "22:00+01:00-06:00", "a-b", ""]
)
def test_malformed_windows_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(bad)
    if bad:
        with pytest.raises(ValueError):
            Conditions(window=bad)


def test_readings_come_from_proc_and_sys_under_the_root(tmp_path: Path) -> None:
    root = fake_device(tmp_path, load="3.00 1.0 1.0 2/200 7", temps=("52000", "61250"))
    got = read_device(root, now=dt.datetime(2024, 5, 1, 23, 15))
    assert got.load_per_cpu == pytest.approx(0.75)  # 3.0 over CPUs 0-3
    assert got.temp_c == pytest.approx(61.25)  # the hottest zone
    assert got.free_mb == pytest.approx(512.0)
    assert got.now == dt.time(23, 15)


def test_a_broken_sensor_or_missing_files_do_not_block_training(tmp_path: Path) -> None:
    root = fake_device(tmp_path, temps=("-273150", "garbage", "48000"), cpus="0,2-3")
    got = read_device(root)
    assert got.temp_c == 48.0  # the implausible and unreadable zones are skipped
    assert got.load_per_cpu == pytest.approx(0.5 / 3)
    empty = read_device(tmp_path / "nothing-here")
    assert (empty.load_per_cpu, empty.temp_c, empty.free_mb) == (None, None, None)


def test_a_fake_hot_thermal_zone_declines_and_cooling_down_allows(tmp_path: Path) -> None:
    root = fake_device(tmp_path, temps=("85000",))
    limits = Conditions(max_temp_c=80)
    assert check(limits, read_device(root)) == ["temperature 85.0 C > 80.0 C"]
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("60000\n")
    assert check(limits, read_device(root)) == []
