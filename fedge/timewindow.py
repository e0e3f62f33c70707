"""A daily window of local time, "HH:MM-HH:MM", that may wrap midnight ("22:00-06:00").

Shared by the agent's config validation and its eligibility check, so both read the text
the same way.
"""

from __future__ import annotations

import datetime as dt
import re

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_window(text: str) -> tuple[dt.time, dt.time]:
    """'22:00-06:30' -> (22:00, 06:30); start == end is refused as ambiguous.

    Strictly HH:MM: ``time.fromisoformat`` would also take '22:00+01:00', an aware time that
    cannot be compared with the naive local clock.
    """
    parts = text.split("-")
    matches = [_TIME.match(p.strip()) for p in parts]
    if len(parts) != 2 or not all(matches):
        raise ValueError(f"time window {text!r} is not HH:MM-HH:MM (24-hour local time)")
    start, end = (dt.time(int(m.group(1)), int(m.group(2))) for m in matches if m)
    if start == end:
        raise ValueError(f"time window {text!r} is empty or the whole day; leave it unset")
    return start, end


def in_window(now: dt.time, window: str) -> bool:
    """Whether ``now`` is inside the window (its start included, its end not)."""
    start, end = parse_window(window)
    return start <= now < end if start < end else now >= start or now < end
