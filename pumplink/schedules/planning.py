"""Schedules without actors or I/O: validation, what to do with a due run, the due-time heap and
its one alarm. Rules themselves (bounded expansion) are in recurrence.py.

Everything here takes its time from arguments or an injected clock, so it is tested without
sleeping (tests/schedules/test_schedules.py). The SchedulerActor (scheduler.py) wires it to
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

from pumplink.clock import Clock, iso
from pumplink.errors import BadRequest, Conflict, NotFound, PumpLinkError, TooManyRequests, Unavailable, Unprocessable
from pumplink.schedules.recurrence import HORIZON, Position, Recurrence, check_rule, normalize_rule, out_of_range

__all__ = ["DueQueue", "Plan", "Position", "Recurrence", "check_new", "normalize_rule", "outcome_of",
           "parse_start", "plan"]

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
# A start time this little in the past is taken as "now": clocks of phones and servers differ.
PAST_TOLERANCE_S = 5.0
# A run this many occurrences late is reported with "or more": a frequent rule after a long
# outage is skipped in bounded steps, never walked run by run without end.
SKIP_LIMIT = 1000


# --- start times and rules ------------------------------------------------------------------
def parse_start(text: str, tz: ZoneInfo) -> dt.datetime:
    """An ISO 8601 time; without a zone it is local time in ``tz``. Returns aware UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            f"start_time: {text[:80]!r} is not an ISO 8601 time such as 2026-11-29T06:00:00+01:00.",
            "invalid_start_time", field="start_time",
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
        raise out_of_range(text.strip()[:64]) from None


def check_new(rec: Recurrence, duration_s: float, now: dt.datetime, *, min_gap_s: float = 0.0,
              min_run_s: float = 0.0) -> dt.datetime:
    """Validate a new schedule; returns its first run."""
    if duration_s < min_run_s:
        raise Unprocessable(
            f"A scheduled run must last at least {min_run_s:g} s (asked: {duration_s:g} s); "
            "shorter runs only wear the motor.", "duration_below_min_run", min_run_s=min_run_s,
        )
    if rec.start < now - dt.timedelta(seconds=PAST_TOLERANCE_S):
        raise Unprocessable(
            f"start_time {iso(rec.start)} is in the past (it is now {iso(now)}).", "start_in_past",
            field="start_time",
        )
    if rec.start > now + HORIZON:
        raise out_of_range(f"{iso(rec.start)} (more than 100 years ahead)")
    if not rec.recurring:
        return rec.start
    return check_rule(rec, duration_s, min_gap_s)


# --- what to do with a due run ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    fire: bool  # start an activation now (on time, or late within the grace window)
    next_run: dt.datetime | None  # what becomes the schedule's next_run_at
    skipped: int = 0  # later runs that were also too late (recorded with the missed one)
    next_index: int = 0  # the next run's place in the rule (what a COUNT rule counts from)
    more: bool = False  # more than ``skipped`` runs were skipped (or are still to skip)


def plan(rec: Recurrence, due: dt.datetime, now: dt.datetime, grace_s: float, index: int = 0) -> Plan:
    """Fire a due run (index ``index`` in its rule), or call it missed when it is later than
    the grace window.

    A missed run's successors that are also past the window are skipped in one go, so a
    frequent rule after a long outage makes one ``missed`` record, not thousands. The skip walks
    at most SKIP_LIMIT runs: then a rule without COUNT jumps straight to now, and a COUNT rule
    (which must count every run) goes on from there at its next turn.
    """
    nxt = rec.next_after(due, index)
    if (now - due).total_seconds() <= grace_s:
        return Plan(True, nxt.at, next_index=nxt.index)
    target = now - dt.timedelta(seconds=grace_s)
    skipped, more = 0, False
    runs = rec.runs(nxt.at, True, nxt.at, nxt.index) if nxt.at is not None else iter(())
    for pos in runs:
        nxt = pos
        if pos.at >= target:
            break
        if skipped >= SKIP_LIMIT or not pos.reached:
            more = True
            if not rec.counted:
                nxt = rec.at_or_after(target)
            break
        skipped += 1
    else:
        nxt = Position(None, nxt.index + 1)
    return Plan(False, nxt.at, skipped, nxt.index, more)


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

