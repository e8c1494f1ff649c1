"""Recurrence rules whose every search has a known worst case (issue 10, findings 2 and 3).

dateutil's rrule checks UNTIL and COUNT only on candidates it emits, so a rule that matches
nothing (``FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30``) is scanned period by period up to year
9999, and nothing can interrupt it from outside. Three things bound every search here:

* structure: combinations whose cost per period or whose emptiness has no cheap bound are
  refused (422 ``rule_too_costly``) before dateutil expands anything;
* a frame: every search runs on the rule moved by a multiple of 400 years (the Gregorian
  calendar, weekdays and week numbers included, repeats exactly every 400 years) so that its
  starting point lands in the years 9500-9899; dateutil's own stop after year 9999 then ends
  any scan after at most 500 years of periods, however empty the rule is;
* restarts: a search starts at the rule's period that holds the search point (worked out from
  FREQ and INTERVAL), not at the rule's start, so its cost does not grow with the rule's age.
  COUNT is counted here, from a stored position, never by dateutil from the first run.

Wall times are naive local times in the schedule's zone (06:00 stays 06:00 across daylight-saving
changes); answers are aware UTC. As in RFC 5545 3.3.5, a wall time in a spring-forward gap takes
the offset before it (02:30 runs at 03:30), a repeated one its first instant, but the start (an
instant) is its own; runs on one instant are one run. See docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from typing import Iterator
from zoneinfo import ZoneInfo

from dateutil import rrule as du

from pumplink.clock import from_db
from pumplink.errors import Unprocessable

UTC = dt.timezone.utc
CYCLE_YEARS = 400  # the Gregorian calendar repeats exactly after this many years
FRAME_LOW, FRAME_HIGH = 9500, 9899  # where a search's start lands; dateutil stops after 9999
# How far after a search point a run is still looked for; a rule with nothing in this window
# counts as finished (FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30 ends here instead of at year 9999).
HORIZON = dt.timedelta(days=100 * 366)
DST_SLACK = dt.timedelta(hours=3)  # wall times and UTC disagree by at most this around a change
WALK_LIMIT = 2000  # occurrences one call may walk (COUNT rules catching up); ~5 ms here
MAX_TIMES_PER_DAY = 1440  # BYHOUR x BYMINUTE x BYSECOND: dateutil builds this list per rule
MAX_SETPOS = 4  # BYSETPOS values: each costs a pass over the period's days
# CPU time (this thread's, so a busy machine does not count) validating one rule may take;
# a rule over it would cost as much again at every run and in every listing.
RULE_BUDGET_S = 0.05
GAP_SAMPLE = 48  # runs whose gaps are checked against duration and minimum gap

SUBDAILY = {du.HOURLY: 3600, du.MINUTELY: 60, du.SECONDLY: 1}
FREQ_NAMES = {du.YEARLY: "YEARLY", du.MONTHLY: "MONTHLY", du.WEEKLY: "WEEKLY", du.DAILY: "DAILY",
              du.HOURLY: "HOURLY", du.MINUTELY: "MINUTELY", du.SECONDLY: "SECONDLY"}
RFC_PARTS = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "WKST", "BYSETPOS", "BYMONTH", "BYMONTHDAY",
             "BYYEARDAY", "BYWEEKNO", "BYDAY", "BYHOUR", "BYMINUTE", "BYSECOND"}
# RFC 5545 section 3.3.10: parts that MUST NOT appear with some frequencies.
RFC_NOT_WITH = {"BYWEEKNO": {du.MONTHLY, du.WEEKLY, du.DAILY, du.HOURLY, du.MINUTELY, du.SECONDLY},
                "BYYEARDAY": {du.MONTHLY, du.WEEKLY, du.DAILY},
                "BYMONTHDAY": {du.WEEKLY}}
# Our own limits: day filters on sub-daily rules skip day after day with a full scan of each.
COSTLY_WITH = {"BYMONTH": set(SUBDAILY), "BYMONTHDAY": {du.DAILY, *SUBDAILY}, "BYYEARDAY": set(SUBDAILY),
               "BYSETPOS": set(SUBDAILY)}


def invalid(message: str) -> Unprocessable:
    return Unprocessable(f"rrule: {message}", "invalid_rrule", field="rrule")


def too_costly(message: str) -> Unprocessable:
    return Unprocessable(f"rrule: {message}", "rule_too_costly", field="rrule")


def never_fires(text: str, start: dt.datetime) -> Unprocessable:
    return Unprocessable(f"rrule {text!r} never fires after start_time {_iso(start)}.", "rule_never_fires",
                         field="rrule")


def out_of_range(what: str) -> Unprocessable:
    return Unprocessable(f"start_time: {what} is outside the times this server schedules.", "start_out_of_range",
                         field="start_time")


def _iso(value: dt.datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def normalize_rule(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if text.upper().startswith("RRULE:"):
        text = text[6:].strip()
    if not text:
        return None
    if any(c in text for c in "\r\n:"):
        raise invalid("give one RRULE (such as FREQ=DAILY) without DTSTART or other lines; start_time is its start.")
    return text


@dataclasses.dataclass(frozen=True)
class Position:
    """A run and its place in the rule (0 for the first run); ``reached`` is False when a walk
    stopped at its limit before the time asked for (the caller carries on from ``at``)."""
    at: dt.datetime | None
    index: int = 0
    reached: bool = True


class Recurrence:
    """When a schedule runs: its start alone, or an RFC 5545 rule read in local time."""

    def __init__(self, start: dt.datetime, rule_text: str | None, tz: ZoneInfo):
        self.start = start.astimezone(UTC)
        self.text = normalize_rule(rule_text)
        self.tz = tz
        self.count: int | None = None
        self.freq: int | None = None
        self._until: dt.datetime | None = None
        self._kwargs: dict = {}
        if self.text is not None:
            # dateutil drops a DTSTART's microseconds; the start must be its first occurrence.
            self.start = self.start.replace(microsecond=0)
            self._build(self.text)

    # --- reading and checking the rule ---------------------------------------------------------
    def _build(self, text: str) -> None:
        parts = [p.strip() for p in text.split(";") if p.strip()]
        keys = [p.split("=", 1)[0].strip().upper() for p in parts]
        unknown = [k for k in keys if k not in RFC_PARTS]
        if unknown:
            raise invalid(f"not a valid RFC 5545 rule: {unknown[0][:40]!r} is not one of its parts.")
        if len(set(keys)) != len(keys):
            raise invalid("each part (FREQ, BYDAY, ...) may appear once.")
        try:
            local = self.start.astimezone(self.tz)
        except OverflowError:
            raise out_of_range(_iso(self.start)) from None
        try:
            rule = du.rrulestr(text, dtstart=local)
        except Exception as exc:  # dateutil reports bad rules with several exception types
            reason = str(exc)[:200] or type(exc).__name__
            raise invalid(f"not a valid RFC 5545 rule: {reason}") from None
        if not isinstance(rule, du.rrule):
            raise invalid("give a single RRULE.")
        self.freq = rule._freq
        self._check_structure(rule, set(keys))
        self.count = rule._count
        self._until = rule._until.astimezone(UTC) if rule._until is not None else None
        self._wall0 = local.replace(tzinfo=None)
        # Every part dateutil would derive from DTSTART (BYMONTHDAY of a MONTHLY rule, the hour
        # of a DAILY one...) is pinned, so the rule can restart anywhere on its grid.
        days = [du.weekday(d) for d in rule._byweekday or ()] + [du.weekday(d, n) for d, n in rule._bynweekday or ()]
        self._kwargs = dict(
            freq=rule._freq, interval=rule._interval, wkst=rule._wkst, bysetpos=rule._bysetpos,
            bymonth=rule._bymonth, bymonthday=tuple(rule._bymonthday) + tuple(rule._bynmonthday) or None,
            byyearday=rule._byyearday, byweekno=rule._byweekno, byweekday=days or None,
            byhour=rule._byhour, byminute=rule._byminute, bysecond=rule._bysecond, cache=False,
        )

    def _check_structure(self, rule: du.rrule, keys: set[str]) -> None:
        freq, interval, name = rule._freq, rule._interval, FREQ_NAMES[rule._freq]
        if not isinstance(interval, int) or interval < 1:
            raise invalid("INTERVAL must be a whole number of at least 1.")
        if rule._count is not None and rule._count < 0:
            raise invalid("COUNT must not be negative.")
        for key in sorted(keys):
            if freq in RFC_NOT_WITH.get(key, ()):
                raise invalid(f"RFC 5545 does not allow {key} with FREQ={name}.")
            if freq in COSTLY_WITH.get(key, ()):
                hint = ("use FREQ=DAILY with BYHOUR/BYMINUTE for runs on some days" if freq in SUBDAILY
                        else "use FREQ=MONTHLY for days of the month")
                raise too_costly(f"{key} with FREQ={name} makes every search scan day by day; {hint}.")
        if "BYEASTER" in keys:  # dateutil's extension; not 400-year periodic
            raise invalid("BYEASTER is not part of RFC 5545.")
        if freq in SUBDAILY:
            stride = interval * SUBDAILY[freq]
            filtered = keys & {"BYDAY", "BYHOUR", "BYMINUTE", "BYSECOND"}
            if filtered and 86400 % stride:
                raise too_costly(f"with {', '.join(sorted(filtered))}, INTERVAL={interval} of FREQ={name} must divide "
                                 "a day evenly (so each day has the same run times); use FREQ=DAILY;INTERVAL=n for "
                                 "runs days apart.")
            if freq == du.SECONDLY and keys & {"BYHOUR", "BYMINUTE"} and 86400 // stride > MAX_TIMES_PER_DAY:
                raise too_costly("FREQ=SECONDLY with BYHOUR or BYMINUTE steps second by second; use FREQ=MINUTELY.")
        else:
            times = len(rule._byhour or (0,)) * len(rule._byminute or (0,)) * len(rule._bysecond or (0,))
            if times > MAX_TIMES_PER_DAY:
                raise too_costly(f"BYHOUR x BYMINUTE x BYSECOND give {times} times a day; at most "
                                 f"{MAX_TIMES_PER_DAY} are allowed.")
        if rule._bysetpos and len(rule._bysetpos) > MAX_SETPOS:
            raise too_costly(f"at most {MAX_SETPOS} BYSETPOS values are allowed.")

    def static_never(self) -> bool:
        """Rules known to be empty without expanding them (dateutil would scan them to the end)."""
        if self.freq is None:
            return False
        kw = self._kwargs
        if self.count == 0:
            return True
        times = len(kw["byhour"] or (0,)) * len(kw["byminute"] or (0,)) * len(kw["bysecond"] or (0,))
        if kw["bysetpos"] and self.freq not in SUBDAILY:
            days = {du.YEARLY: 366, du.MONTHLY: 31, du.WEEKLY: 7, du.DAILY: 1}[self.freq]
            if self.freq == du.WEEKLY and kw["byweekday"]:
                days = len(kw["byweekday"])
            if all(abs(p) > days * times for p in kw["bysetpos"]):
                return True
        if self.freq == du.DAILY and kw["interval"] % 7 == 0 and kw["byweekday"]:
            # Every visited day has the start's weekday.
            return all(d.weekday != self._wall0.weekday() for d in kw["byweekday"])
        return False

    @classmethod
    def of(cls, schedule, tz: ZoneInfo) -> "Recurrence":
        return cls(from_db(schedule.start_time), schedule.rrule, tz)

    @property
    def recurring(self) -> bool:
        return self.freq is not None

    @property
    def counted(self) -> bool:
        return self.count is not None

    # --- bounded searches ------------------------------------------------------------------
    def _restart(self, w: dt.datetime) -> dt.datetime:
        """A wall time to restart the rule at so it gives the same runs from ``w`` on: ``w``
        itself when it lies in one of the rule's periods (FREQ x INTERVAL from the start), or
        the start of the period that holds or follows it."""
        s, kw = self._wall0, self._kwargs
        freq, n = kw["freq"], kw["interval"]
        if w <= s:
            return s
        if freq == du.YEARLY:
            y = s.year + (w.year - s.year) // n * n
            return w if w.year == y else dt.datetime(y + n, 1, 1)
        if freq == du.MONTHLY:
            m0, mw = s.year * 12 + s.month - 1, w.year * 12 + w.month - 1
            mk = m0 + (mw - m0) // n * n
            if mk == mw:
                return w
            mk += n
            return dt.datetime(mk // 12, mk % 12 + 1, 1)
        if freq == du.WEEKLY:
            week0 = dt.datetime.combine(s.date() - dt.timedelta(days=(s.weekday() - kw["wkst"]) % 7), dt.time())
            k = (w - week0).days // (7 * n)
            period = week0 + dt.timedelta(days=7 * n * k)
            if (w - period).days >= 7:
                return period + dt.timedelta(days=7 * n)
            # BYSETPOS counts within the whole week: a week cannot be entered half-way.
            return max(s, period) if kw["bysetpos"] else w
        if freq == du.DAILY:
            k = (w.date() - s.date()).days // n
            day = s.date() + dt.timedelta(days=k * n)
            return w if day == w.date() else dt.datetime.combine(day + dt.timedelta(days=n), dt.time())
        unit = SUBDAILY[freq]
        zero = {du.HOURLY: s.replace(minute=0, second=0), du.MINUTELY: s.replace(second=0)}.get(freq, s)
        k = int((w - zero).total_seconds()) // (n * unit)
        return max(s, zero + dt.timedelta(seconds=k * n * unit))

    def _walls(self, begin: dt.datetime) -> Iterator[dt.datetime]:
        """The rule's wall times from ``begin`` on, through one frame (see the module docstring)."""
        shift = (FRAME_HIGH - begin.year) // CYCLE_YEARS * CYCLE_YEARS
        try:
            rule = du.rrule(dtstart=begin.replace(year=begin.year + shift), **self._kwargs)
            for wall in rule:
                yield wall.replace(year=wall.year - shift)
        except (ValueError, OverflowError, TypeError):
            # The frame's end (dateutil building year 10000; some filter sets make it fail with a
            # TypeError there instead), or dateutil finding that no time of day fits the rule's
            # filters: no further runs either way.
            return

    def _slack(self, when: dt.datetime) -> dt.timedelta:
        # Around a daylight-saving change a run's wall time may lie before the wall time of
        # its UTC instant (a run at 02:30 in a spring-forward gap is 03:30): look back then.
        offset = when.astimezone(self.tz).utcoffset()
        for hours in (-3, 3):
            if (when + dt.timedelta(hours=hours)).astimezone(self.tz).utcoffset() != offset:
                return DST_SLACK
        return dt.timedelta(0)

    def _aware(self, wall: dt.datetime) -> dt.datetime:
        # fold=0 (see the module docstring); the start may be a repeated time's second instant.
        return self.start if wall == self._wall0 else wall.replace(tzinfo=self.tz).astimezone(UTC)

    def _wall(self, when: dt.datetime) -> dt.datetime:
        return when.astimezone(self.tz).replace(tzinfo=None)

    def runs(self, since: dt.datetime, inclusive: bool = True, anchor: dt.datetime | None = None,
             index: int = 0) -> Iterator[Position]:
        """Runs at (or after) ``since``, in order, each with its index.

        ``anchor`` is a known run with index ``index`` at or before ``since`` (a COUNT rule
        counts from it; without it, from the start). Each step costs at most one frame.
        """
        if self.freq is None:
            if self.start > since or (inclusive and self.start == since):
                yield Position(self.start, 0)
            return
        try:
            since = since.astimezone(UTC)
            if self.count is not None:
                if anchor is None or anchor < self.start:
                    anchor, index = self.start, 0
                from_wall = self._wall(anchor) - self._slack(anchor)
            else:
                anchor, index = None, 0
                from_wall = self._wall(since) - self._slack(since)
            begin = self._restart(from_wall)
        except (OverflowError, ValueError):
            return
        limit = since + HORIZON if since.year < 9899 else None
        last, i, walked = None, index - 1, 0
        for wall in self._walls(begin):
            try:
                when = self._aware(wall)
            except (OverflowError, ValueError):
                return
            if last is not None and when <= last:
                continue  # a wall time in a spring-forward gap is the same instant as another
            if anchor is not None and when < anchor:
                continue
            last, i = when, i + (anchor is not None)  # only a COUNT rule (with an anchor) counts
            if self.count is not None and i >= self.count:
                return
            if (self._until is not None and when > self._until) or (limit is not None and when > limit):
                return
            if when < since or (not inclusive and when == since):
                walked += 1
                # Only a COUNT rule walks far (from its stored position); others restart within
                # one period of ``since``, so their walk is bounded by the rule's structure.
                if anchor is not None and walked > WALK_LIMIT:
                    yield Position(when, max(i, 0), reached=False)
                    return
                continue
            yield Position(when, max(i, 0))

    def first(self) -> dt.datetime | None:
        """The first run: the start itself, or the rule's first occurrence at or after it."""
        return next(self.runs(self.start), Position(None)).at

    def next_after(self, occurrence: dt.datetime, index: int = 0) -> Position:
        """The run after ``occurrence`` (a run of this schedule with index ``index``)."""
        return next(self.runs(occurrence, False, occurrence, index), Position(None, index + 1))

    def after(self, occurrence: dt.datetime, index: int = 0) -> dt.datetime | None:
        return self.next_after(occurrence, index).at

    def at_or_after(self, when: dt.datetime, anchor: dt.datetime | None = None, index: int = 0) -> Position:
        """The first run at or after ``when``; ``anchor`` is a known earlier run with ``index``."""
        if anchor is not None and anchor > when:
            anchor, index = None, 0
        return next(self.runs(when, True, anchor, index), Position(None, index))

    def upcoming(self, occurrence: dt.datetime | None, count: int = 5, index: int = 0) -> list[dt.datetime]:
        """``occurrence`` (the next run, with ``index``) and the runs after it, ``count`` in all."""
        if occurrence is None:
            return []
        if self.freq is None:
            return [occurrence]
        return [p.at for p in itertools.islice(self.runs(occurrence, True, occurrence, index), count) if p.reached]

    def min_gap_s(self, sample: int = GAP_SAMPLE) -> float | None:
        """The smallest gap between the first ``sample`` runs (None with fewer than two)."""
        if self.freq is None:
            return None
        runs = [p.at for p in itertools.islice(self.runs(self.start), sample)]
        gaps = [(b - a).total_seconds() for a, b in zip(runs, runs[1:])]
        return min(gaps) if gaps else None


def check_rule(rec: Recurrence, duration_s: float, min_gap_s: float = 0.0) -> dt.datetime:
    """The first run of a new rule, once it is known to be affordable and its runs far enough
    apart; raises 422 otherwise."""
    if rec.static_never():
        raise never_fires(rec.text, rec.start)
    began = time.thread_time()
    first = rec.first()
    if first is None:
        raise never_fires(rec.text or "", rec.start)
    gap = rec.min_gap_s()
    spent = time.thread_time() - began
    if spent > RULE_BUDGET_S:
        raise too_costly(f"working out its runs took {spent * 1000:.0f} ms of CPU; the limit is "
                         f"{RULE_BUDGET_S * 1000:.0f} ms, because it would cost that at every run.")
    if gap is not None and gap < duration_s:
        raise Unprocessable(
            f"rrule {rec.text!r} starts runs {gap:g} s apart, but each runs {duration_s:g} s: "
            "runs of one schedule must not overlap.", "runs_overlap", field="rrule",
        )
    if gap is not None and gap < min_gap_s:
        raise Unprocessable(
            f"rrule {rec.text!r} starts runs {gap:g} s apart; runs of a schedule must start at least "
            f"{min_gap_s:g} s apart (each start wears the motor).", "runs_too_close", field="rrule",
            min_gap_s=min_gap_s,
        )
    return first


__all__ = ["HORIZON", "WALK_LIMIT", "Position", "Recurrence", "check_rule", "normalize_rule", "out_of_range"]
