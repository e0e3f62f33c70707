"""Should this device train now? The checks a phone makes before it trains (on charger, on
Wi-Fi, idle), for a Raspberry Pi: load, temperature, free memory, a time window.

``check`` is pure (conditions and readings in, reasons out); ``read_device`` reads Linux's
/proc and /sys, with the root configurable so tests use a fake tree. A reading that cannot be
taken does not block training: a board without a thermal zone is not too hot.

The load is the 1-minute load average per online CPU, and it includes the agent's own
training of the previous round: a limit should leave room for that (one busy core of a
four-core Pi is 0.25 per CPU).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from fedge.timewindow import in_window, parse_window

__all__ = ["Conditions", "Readings", "check", "in_window", "parse_window", "read_device"]

PLAUSIBLE_C = (-40.0, 200.0)  # a zone reading outside this is a broken sensor, not a hot CPU


@dataclass(frozen=True)
class Conditions:
    max_load: float = 0.0  # 1-minute load average per CPU; 0 = no limit
    max_temp_c: float = 0.0  # hottest thermal zone, degrees Celsius; 0 = no limit
    min_free_mb: int = 0  # MemAvailable, MiB; 0 = no limit
    window: str = ""  # local time "HH:MM-HH:MM" (may wrap midnight); "" = any time

    def __post_init__(self) -> None:
        if self.window:
            parse_window(self.window)  # ValueError early, at config time

    @property
    def any(self) -> bool:
        """Whether any condition is set (none: nothing is read, the device always trains)."""
        return bool(self.max_load or self.max_temp_c or self.min_free_mb or self.window)


@dataclass(frozen=True)
class Readings:
    load_per_cpu: float | None
    temp_c: float | None
    free_mb: float | None
    now: dt.time


def check(conditions: Conditions, readings: Readings) -> list[str]:
    """Why the device should not train now (empty: it may)."""
    reasons = []
    c, r = conditions, readings
    if c.max_load and r.load_per_cpu is not None and r.load_per_cpu > c.max_load:
        reasons.append(f"load {r.load_per_cpu:.2f} per CPU > {c.max_load:.2f}")
    if c.max_temp_c and r.temp_c is not None and r.temp_c > c.max_temp_c:
        reasons.append(f"temperature {r.temp_c:.1f} C > {c.max_temp_c:.1f} C")
    if c.min_free_mb and r.free_mb is not None and r.free_mb < c.min_free_mb:
        reasons.append(f"free memory {r.free_mb:.0f} MiB < {c.min_free_mb} MiB")
    if c.window and not in_window(r.now, c.window):
        reasons.append(f"outside the training window {c.window}")
    return reasons


def read_device(root: str | Path = "/", now: dt.datetime | None = None) -> Readings:
    """Readings from /proc and /sys under ``root`` (None where a file is missing)."""
    root = Path(root)
    clock = (now or dt.datetime.now()).time()
    return Readings(_load(root), _max_temp(root), _free_mb(root), clock)


def _load(root: Path) -> float | None:
    try:
        first = (root / "proc/loadavg").read_text().split()[0]
        return float(first) / _cpus(root)
    except (OSError, ValueError, IndexError):
        return None


def _cpus(root: Path) -> int:
    """Online CPUs from /sys (e.g. '0-3'), as the load average counts them; else Python's."""
    try:
        count = 0
        for part in (root / "sys/devices/system/cpu/online").read_text().strip().split(","):
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
        return max(count, 1)
    except (OSError, ValueError):
        return os.cpu_count() or 1


def _max_temp(root: Path) -> float | None:
    temps = []
    for zone in (root / "sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            celsius = int(zone.read_text().strip()) / 1000.0  # millidegrees
        except (OSError, ValueError):
            continue  # some zones refuse reads (EINVAL, ENODATA) when their sensor is off
        if PLAUSIBLE_C[0] <= celsius <= PLAUSIBLE_C[1]:
            temps.append(celsius)
    return max(temps) if temps else None


def _free_mb(root: Path) -> float | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
