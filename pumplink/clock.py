"""Injectable time. Everything that reads the time takes a clock, so timing logic is testable."""

from __future__ import annotations

import datetime as dt
import time

UTC = dt.timezone.utc


class Clock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    """A clock that only moves when told to; for unit tests."""

    def __init__(self, start: dt.datetime):
        self._now = start
        self._mono = 1000.0

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, when: dt.datetime) -> None:
        self._mono += (when - self._now).total_seconds()
        self._now = when


def to_db(value: dt.datetime | None) -> dt.datetime | None:
    """Times are stored as naive UTC so SQLite and PostgreSQL agree."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def from_db(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``."""
    value = from_db(value)
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
