"""Quota arithmetic: the local day, real ON time within it, and what a new request may take."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Iterable
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc


def day_bounds(now: dt.datetime, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """Start and end (UTC) of the local day containing ``now``; 23 or 25 hours on DST days."""
    local_day = now.astimezone(tz).date()
    start = dt.datetime.combine(local_day, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(local_day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def used_seconds(
    intervals: Iterable[tuple[dt.datetime, dt.datetime | None]],
    day_start: dt.datetime,
    day_end: dt.datetime,
    now: dt.datetime,
) -> float:
    """ON time inside [day_start, day_end); an open interval counts up to ``now``."""
    total = 0.0
    day_start, day_end = day_start.astimezone(UTC), day_end.astimezone(UTC)
    for start, end in intervals:
        # In UTC: same-zone subtraction is wall-clock time and would lose the repeated DST hour.
        start = start.astimezone(UTC)
        end = (now if end is None else end).astimezone(UTC)
        lo, hi = max(start, day_start), min(end, day_end)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return total


def seconds_until_reset(now: dt.datetime, tz: ZoneInfo) -> int:
    _, end = day_bounds(now, tz)
    return max(1, math.ceil((end - now).total_seconds()))


def fits(quota_s: float, used_s: float, reserved_s: float, requested_s: float) -> tuple[bool, float]:
    """Whether the request fits, and the seconds still free once reservations are counted."""
    free = max(0.0, quota_s - used_s - reserved_s)
    return requested_s <= free + 1e-6, free


@dataclasses.dataclass(frozen=True)
class Limit:
    """One daily allowance that applies to a request: the device's, the member's at the device's
    site, or the user's own; with what is used of it today and promised to open runs."""

    kind: str  # device | member | user
    quota_s: float
    used_s: float
    reserved_s: float

    @property
    def free_s(self) -> float:
        return max(0.0, self.quota_s - self.used_s - self.reserved_s)


def strictest(limits: Iterable[Limit], requested_s: float) -> tuple[bool, Limit | None]:
    """Every limit must hold, so the one with the least time free decides (the first named wins a
    tie): whether the request fits it, and that limit (None when there is none)."""
    tightest = None
    for limit in limits:
        if tightest is None or limit.free_s < tightest.free_s - 1e-9:
            tightest = limit
    if tightest is None:
        return True, None
    return requested_s <= tightest.free_s + 1e-6, tightest
