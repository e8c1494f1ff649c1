"""Schedules without actors or I/O: recurrence expansion, the due-time heap and its one alarm.

Everything here takes its time from arguments or an injected clock, so it is tested without
sleeping (tests/unit/test_schedules.py). The SchedulerActor (actors/scheduler.py) wires it to
the database, timers and device actors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import itertools
import logging
from typing import Callable, Iterable, Protocol
from zoneinfo import ZoneInfo

from dateutil import rrule as du

from . import models as m
from .clock import Clock, from_db, iso
from .errors import BadRequest, Conflict, NotFound, PumpLinkError, TooManyRequests, Unavailable, Unprocessable

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
# A rule without COUNT or UNTIL is searched this far ahead, so an impossible rule
# (FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30) ends the search instead of scanning to year 9999.
HORIZON = dt.timedelta(days=100 * 366)
# Gaps between the first runs of a rule that are checked against its duration.
GAP_SAMPLE = 24
# A start time this little in the past is taken as "now": clocks of phones and servers differ.
PAST_TOLERANCE_S = 5.0


# --- start times and rules ------------------------------------------------------------------
def parse_start(text: str, tz: ZoneInfo) -> dt.datetime:
    """An ISO 8601 time; without a zone it is local time in ``tz``. Returns aware UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            f"start_time: {text!r} is not an ISO 8601 time such as 2026-11-29T06:00:00+01:00.",
            "invalid_start_time", field="start_time",
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def normalize_rule(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if text.upper().startswith("RRULE:"):
        text = text[6:].strip()
    if not text:
        return None
    if any(c in text for c in "\r\n:"):
        raise Unprocessable(
            "rrule: give one RRULE (such as FREQ=DAILY) without DTSTART or other lines; start_time is its start.",
            "invalid_rrule", field="rrule",
        )
    return text


class Recurrence:
    """When a schedule runs: its start alone, or an RFC 5545 rule read in local time.

    The rule's DTSTART is the start as local wall time in ``tz``, so dateutil keeps 06:00 at
    06:00 across daylight-saving changes; results are returned as aware UTC.
    """

    def __init__(self, start: dt.datetime, rule_text: str | None, tz: ZoneInfo):
        self.start = start.astimezone(UTC)
        self.text = normalize_rule(rule_text)
        self.tz = tz
        self._rule: du.rrule | None = None
        self._counted = False
        if self.text is not None:
            # dateutil drops a DTSTART's microseconds; the start must be its first occurrence.
            self.start = self.start.replace(microsecond=0)
            self._rule = self._build(self.text)

    @classmethod
    def of(cls, schedule: m.Schedule, tz: ZoneInfo) -> "Recurrence":
        return cls(from_db(schedule.start_time), schedule.rrule, tz)

    def _build(self, text: str) -> du.rrule:
        keys = {part.split("=", 1)[0].strip().upper() for part in text.split(";") if part.strip()}
        try:
            rule = du.rrulestr(text, dtstart=self.start.astimezone(self.tz))
        except Exception as exc:  # dateutil reports bad rules with several exception types
            reason = str(exc) or type(exc).__name__
            raise Unprocessable(f"rrule: not a valid RFC 5545 rule: {reason}", "invalid_rrule",
                                field="rrule") from None
        if not isinstance(rule, du.rrule):
            raise Unprocessable("rrule: give a single RRULE.", "invalid_rrule", field="rrule")
        self._counted = "COUNT" in keys
        if not self._counted and "UNTIL" not in keys:
            rule = rule.replace(until=self.start.astimezone(self.tz) + HORIZON)
        return rule

    @property
    def recurring(self) -> bool:
        return self._rule is not None

    def _local(self, value: dt.datetime) -> dt.datetime:
        return value.astimezone(self.tz)

    @staticmethod
    def _utc(value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None else value.astimezone(UTC)

    def _from(self, anchor: dt.datetime | None) -> du.rrule:
        """The rule restarted at ``anchor`` (one of its occurrences), so finding the next run
        costs O(1) instead of walking every run since the start. A COUNT rule must keep its
        start: its count runs from there."""
        if anchor is None or self._counted or self._near_offset_change(anchor):
            return self._rule
        try:
            return self._rule.replace(dtstart=self._local(anchor))
        except ValueError:  # dateutil refuses some restarted BYxxx combinations; walk from the start
            return self._rule

    def _near_offset_change(self, when: dt.datetime) -> bool:
        # A run in a DST gap (02:30 on a spring-forward day) has no wall time of its own: UTC and
        # back gives 03:30, which is not the rule's. Near a change, walk from the start instead.
        offset = when.astimezone(self.tz).utcoffset()
        return any((when + dt.timedelta(hours=h)).astimezone(self.tz).utcoffset() != offset for h in (-3, 3))

    def first(self) -> dt.datetime | None:
        """The first run: the start itself, or the rule's first occurrence at or after it."""
        if self._rule is None:
            return self.start
        return self._utc(self._rule.after(self._local(self.start), inc=True))

    def after(self, occurrence: dt.datetime) -> dt.datetime | None:
        """The run after ``occurrence`` (which must be one of this schedule's runs)."""
        if self._rule is None:
            return None
        return self._utc(self._from(occurrence).after(self._local(occurrence), inc=False))

    def at_or_after(self, when: dt.datetime, anchor: dt.datetime | None = None) -> dt.datetime | None:
        """The first run at or after ``when``; ``anchor`` is a known earlier run to start from."""
        if self._rule is None:
            return self.start if self.start >= when else None
        if anchor is not None and anchor > when:
            anchor = None
        return self._utc(self._from(anchor).after(self._local(when), inc=True))

    def upcoming(self, occurrence: dt.datetime | None, count: int = 5) -> list[dt.datetime]:
        """``occurrence`` (the next run) and the runs after it, ``count`` in all."""
        if occurrence is None:
            return []
        if self._rule is None:
            return [occurrence]
        rule = self._from(occurrence)
        return [self._utc(x) for x in itertools.islice(rule.xafter(self._local(occurrence), inc=True), count)]

    def min_gap_s(self, sample: int = GAP_SAMPLE) -> float | None:
        """The smallest gap between the first ``sample`` runs (None with fewer than two)."""
        if self._rule is None:
            return None
        runs = list(itertools.islice(self._rule.xafter(self._local(self.start), inc=True), sample))
        gaps = [(b - a).total_seconds() for a, b in zip(runs, runs[1:])]
        return min(gaps) if gaps else None


def check_new(rec: Recurrence, duration_s: int, now: dt.datetime) -> dt.datetime:
    """Validate a new schedule; returns its first run."""
    if rec.start < now - dt.timedelta(seconds=PAST_TOLERANCE_S):
        raise Unprocessable(
            f"start_time {iso(rec.start)} is in the past (it is now {iso(now)}).", "start_in_past",
            field="start_time",
        )
    first = rec.first()
    if first is None:
        raise Unprocessable(
            f"rrule {rec.text!r} never fires after start_time {iso(rec.start)}.", "rule_never_fires", field="rrule",
        )
    gap = rec.min_gap_s()
    if gap is not None and gap < duration_s:
        raise Unprocessable(
            f"rrule {rec.text!r} starts runs {gap:g} s apart, but each runs {duration_s} s: "
            "runs of one schedule must not overlap.", "runs_overlap", field="rrule",
        )
    return first


# --- what to do with a due run ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    fire: bool  # start an activation now (on time, or late within the grace window)
    next_run: dt.datetime | None  # what becomes the schedule's next_run_at
    skipped: int = 0  # later runs that were also too late (recorded with the missed one)


def plan(rec: Recurrence, due: dt.datetime, now: dt.datetime, grace_s: float) -> Plan:
    """Fire a due run, or call it missed when it is later than the grace window.

    A missed run's successors that are also past the window are skipped in one go, so a
    frequent rule after a long outage makes one ``missed`` record, not thousands.
    """
    nxt = rec.after(due)
    if (now - due).total_seconds() <= grace_s:
        return Plan(True, nxt)
    skipped = 0
    while nxt is not None and (now - nxt).total_seconds() > grace_s:
        skipped += 1
        nxt = rec.after(nxt)
    return Plan(False, nxt, skipped)


def outcome_of(activation: dict | None, error: BaseException | None) -> tuple[str, str | None]:
    """What a run's activation request came to, as ``(outcome, detail)``."""
    if error is None:
        state = (activation or {}).get("state")
        return ("queued" if state == "queued" else "started"), None
    detail = getattr(error, "message", None) or str(error) or type(error).__name__
    code = getattr(error, "code", "")
    if isinstance(error, TooManyRequests):
        return ("rejected: quota" if code == "quota_exhausted" else f"rejected: {code or 'busy'}"[:32]), detail
    if isinstance(error, Conflict) and code == "device_offline":
        return "rejected: offline", detail
    if isinstance(error, NotFound):
        return "rejected: no device", detail
    if isinstance(error, Unprocessable):
        return "rejected: invalid", detail
    if isinstance(error, Unavailable):
        return "failed: unavailable", detail
    if isinstance(error, PumpLinkError):
        return f"rejected: {code}"[:32], detail
    return "failed", detail


# --- the heap and its alarm -------------------------------------------------------------------
class Cancellable(Protocol):
    def cancel(self) -> None: ...


ArmFn = Callable[[float, int], Cancellable]


class DueQueue:
    """A min-heap of ``(due, seq, schedule_id)`` with exactly one alarm, for the earliest entry.

    ``arm(delay_s, token)`` starts the alarm (a timer that later hands ``token`` back to
    ``take_due``). A schedule has at most one live entry: putting it again or discarding it
    only forgets its seq, and the stale heap entry is skipped when it surfaces (lazy cancel).
    """

    def __init__(self, clock: Clock, arm: ArmFn, max_sleep_s: float = 900.0):
        self.clock = clock
        self._arm = arm
        # Wall-clock jumps and suspended machines make one very long timer wrong; waking
        # every few minutes to re-check costs nothing and corrects that.
        self.max_sleep_s = max_sleep_s
        self._heap: list[tuple[dt.datetime, int, int]] = []
        self._live: dict[int, tuple[int, dt.datetime]] = {}  # schedule_id -> (seq, due)
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._alarm: Cancellable | None = None
        self.armed_for: dt.datetime | None = None  # the due time the alarm serves
        self.armed_token: int | None = None

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, schedule_id: int) -> bool:
        return schedule_id in self._live

    def due_of(self, schedule_id: int) -> dt.datetime | None:
        entry = self._live.get(schedule_id)
        return entry[1] if entry else None

    def load(self, items: Iterable[tuple[int, dt.datetime]]) -> None:
        """Many entries at once (start-up): one heapify, one alarm."""
        for schedule_id, due in items:
            seq = next(self._seq)
            self._live[schedule_id] = (seq, due)
            self._heap.append((due, seq, schedule_id))
        heapq.heapify(self._heap)
        self._rearm()

    def put(self, schedule_id: int, due: dt.datetime) -> None:
        seq = next(self._seq)
        self._live[schedule_id] = (seq, due)
        heapq.heappush(self._heap, (due, seq, schedule_id))
        if self.armed_for is None or due < self.armed_for:
            self._rearm()
        self._compact()

    def discard(self, schedule_id: int) -> None:
        # Lazy: the heap entry stays until it surfaces; the alarm may fire for nothing once.
        self._live.pop(schedule_id, None)
        self._compact()

    def take_due(self, token: int | None = None) -> list[tuple[int, dt.datetime]]:
        """Pop every live entry due by now, in order, and arm the alarm for the next.

        With a ``token`` from an alarm that has since been replaced, nothing happens: the
        alarm that replaced it is still armed.
        """
        if token is not None and token != self.armed_token:
            return []
        self.armed_for = self.armed_token = None
        self._alarm = None
        now = self.clock.now()
        due_now = []
        while self._heap and self._heap[0][0] <= now:
            due, seq, schedule_id = heapq.heappop(self._heap)
            live = self._live.get(schedule_id)
            if live is not None and live[0] == seq:
                del self._live[schedule_id]
                due_now.append((schedule_id, due))
        self._rearm()
        return due_now

    def cancel_alarm(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm = None
        self.armed_for = self.armed_token = None

    def _earliest(self) -> dt.datetime | None:
        heap = self._heap
        while heap:
            due, seq, schedule_id = heap[0]
            live = self._live.get(schedule_id)
            if live is not None and live[0] == seq:
                return due
            heapq.heappop(heap)
        return None

    def _rearm(self) -> None:
        earliest = self._earliest()
        if earliest is not None and earliest == self.armed_for:
            return
        self.cancel_alarm()
        if earliest is None:
            return
        delay = max(0.0, (earliest - self.clock.now()).total_seconds())
        token = next(self._tokens)
        self._alarm = self._arm(min(delay, self.max_sleep_s), token)
        self.armed_for, self.armed_token = earliest, token

    def _compact(self) -> None:
        # Stale entries are cheap but not free: rebuild once they outnumber the live ones.
        if len(self._heap) > 2 * len(self._live) + 1024:
            self._heap = [(due, seq, sid) for sid, (seq, due) in self._live.items()]
            heapq.heapify(self._heap)


# --- how schedules look in answers and events -------------------------------------------------
def run_view(run: m.ScheduleRun) -> dict:
    return {
        "id": run.id,
        "due_at": iso(run.due_at),
        "fired_at": iso(run.fired_at),
        "late_s": round((from_db(run.fired_at) - from_db(run.due_at)).total_seconds(), 3),
        "outcome": run.outcome,
        "detail": run.detail,
        "activation_id": run.activation_id,
    }


def schedule_view(s: m.Schedule, tz: ZoneInfo, runs: list[m.ScheduleRun] | None = None,
                  run_count: int | None = None) -> dict:
    upcoming: list[dt.datetime] = []
    if s.enabled and s.next_run_at is not None:
        try:
            upcoming = Recurrence.of(s, tz).upcoming(from_db(s.next_run_at), 5)
        except PumpLinkError:  # a rule this dateutil no longer reads; the stored next run still holds
            upcoming = [from_db(s.next_run_at)]
    runs = runs or []
    status = "disabled" if not s.enabled else ("active" if s.next_run_at is not None else "finished")
    return {
        "id": s.id,
        "device_id": s.device_id,
        "user_id": s.user_id,
        "start_time": iso(s.start_time),
        "rrule": s.rrule,
        "timezone": tz.key,
        "duration_s": s.duration_s,
        "duration_minutes": round(s.duration_s / 60, 3),
        "enabled": s.enabled,
        "status": status,
        "next_run_at": iso(upcoming[0]) if upcoming else None,
        "next_runs": [iso(x) for x in upcoming],
        "runs": [run_view(r) for r in runs],
        "run_count": run_count if run_count is not None else len(runs),
        "created_at": iso(s.created_at),
    }
