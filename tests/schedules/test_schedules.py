"""The scheduler's pure parts with a FakeClock: heap order, the one alarm, lazy cancel, rules across DST."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule as du

from pumplink.clock import FakeClock
from pumplink.errors import BadRequest, Conflict, TooManyRequests, Unavailable, Unprocessable
from pumplink.schedules.planning import DueQueue, Recurrence, check_new, outcome_of, parse_start, plan
from tests.schedules.test_rule_budget import expected_runs

UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class FakeAlarms:
    """Stands in for threading.Timer: records what was armed and what was cancelled."""

    def __init__(self):
        self.armed: list[tuple[float, int]] = []
        self.cancelled: list[int] = []

    def __call__(self, delay: float, token: int):
        self.armed.append((delay, token))
        alarms = self

        class Handle:
            def cancel(self):
                alarms.cancelled.append(token)

        return Handle()

    @property
    def live(self) -> list[tuple[float, int]]:
        return [(d, t) for d, t in self.armed if t not in self.cancelled]


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def alarms():
    return FakeAlarms()


@pytest.fixture
def queue(clock, alarms):
    return DueQueue(clock, alarms)


# --- the heap ---------------------------------------------------------------------------------
def test_due_entries_come_out_in_time_order_and_ties_in_insertion_order(queue, clock):
    for sid, seconds in [(1, 30), (2, 10), (3, 20), (4, 10), (5, 40)]:
        queue.put(sid, at(seconds))
    clock.set(at(25))
    assert queue.take_due(queue.armed_token) == [(2, at(10)), (4, at(10)), (3, at(20))]
    clock.set(at(100))
    assert queue.take_due(queue.armed_token) == [(1, at(30)), (5, at(40))]
    assert len(queue) == 0


def test_nothing_is_due_before_its_time(queue, clock):
    queue.put(1, at(10))
    clock.set(at(9.999))
    assert queue.take_due(queue.armed_token) == []
    assert 1 in queue


def test_exactly_one_alarm_is_armed_for_the_earliest_entry(queue, alarms, clock):
    queue.put(1, at(30))
    assert alarms.live == [(30.0, queue.armed_token)]
    queue.put(2, at(60))  # later: the alarm stays as it is
    assert len(alarms.armed) == 1 and len(alarms.live) == 1
    assert queue.armed_for == at(30)


def test_inserting_an_earlier_entry_re_arms_the_alarm(queue, alarms):
    queue.put(1, at(30))
    first_token = queue.armed_token
    queue.put(2, at(5))
    assert first_token in alarms.cancelled
    assert alarms.live == [(5.0, queue.armed_token)]
    assert queue.armed_for == at(5)


def test_after_firing_the_alarm_is_armed_for_the_next_entry(queue, alarms, clock):
    queue.put(1, at(10))
    queue.put(2, at(25))
    clock.set(at(10.02))  # timers fire a little late
    assert queue.take_due(queue.armed_token) == [(1, at(10))]
    delay, token = alarms.live[-1]
    assert token == queue.armed_token and delay == pytest.approx(14.98)


def test_a_stale_alarm_does_nothing(queue, clock):
    queue.put(1, at(30))
    stale = queue.armed_token
    queue.put(2, at(5))
    clock.set(at(40))
    assert queue.take_due(stale) == []  # the replaced timer's message, already in the mailbox
    assert queue.take_due(queue.armed_token) == [(2, at(5)), (1, at(30))]


def test_cancelling_is_lazy_and_the_cancelled_entry_never_comes_out(queue, clock, alarms):
    queue.put(1, at(10))
    queue.put(2, at(20))
    queue.discard(1)
    assert 1 not in queue and len(queue) == 1
    assert not alarms.cancelled  # no re-arm on cancel: the alarm fires once for nothing
    clock.set(at(10))
    assert queue.take_due(queue.armed_token) == []
    assert queue.armed_for == at(20)
    clock.set(at(20))
    assert queue.take_due(queue.armed_token) == [(2, at(20))]


def test_putting_a_schedule_again_replaces_its_entry(queue, clock):
    queue.put(1, at(10))
    queue.put(1, at(50))
    assert queue.due_of(1) == at(50)
    clock.set(at(20))
    assert queue.take_due(queue.armed_token) == []
    clock.set(at(50))
    assert queue.take_due(queue.armed_token) == [(1, at(50))]


def test_an_overdue_entry_arms_with_no_delay(queue, alarms):
    queue.put(1, at(-100))
    assert alarms.live == [(0.0, queue.armed_token)]


def test_a_far_entry_arms_at_most_the_maximum_sleep_and_re_arms_on_waking(clock, alarms):
    queue = DueQueue(clock, alarms, max_sleep_s=900)
    queue.put(1, at(86400))
    assert alarms.live[-1][0] == 900
    clock.advance(900)
    assert queue.take_due(queue.armed_token) == []
    assert alarms.live[-1][0] == 900  # still far: capped again
    assert 1 in queue and queue.armed_for == at(86400)


def test_bulk_load_arms_once(queue, alarms, clock):
    queue.load((sid, at(10000 - sid)) for sid in range(1, 10001))
    assert len(alarms.armed) == 1 and queue.armed_for == at(0)
    clock.set(at(2))
    assert [sid for sid, _ in queue.take_due(queue.armed_token)] == [10000, 9999, 9998]


def test_stale_entries_are_compacted_away(queue):
    for n in range(5000):
        queue.put(1, at(n))
    assert len(queue) == 1
    assert len(queue._heap) <= 2 * len(queue) + 1025


# --- rules --------------------------------------------------------------------------------------
def test_daily_06_00_berlin_stays_06_00_local_across_the_march_change():
    start = dt.datetime(2026, 3, 27, 6, 0, tzinfo=BERLIN)
    rec = Recurrence(start.astimezone(UTC), "FREQ=DAILY", BERLIN)
    runs = rec.upcoming(rec.first(), 4)
    assert [r.astimezone(BERLIN).strftime("%m-%d %H:%M") for r in runs] == [
        "03-27 06:00", "03-28 06:00", "03-29 06:00", "03-30 06:00"]
    assert [r.strftime("%H:%M") for r in runs] == ["05:00", "05:00", "04:00", "04:00"]  # UTC moves, local does not


def test_daily_06_00_berlin_stays_06_00_local_across_the_october_change():
    start = dt.datetime(2026, 10, 23, 6, 0, tzinfo=BERLIN)
    rec = Recurrence(start.astimezone(UTC), "FREQ=DAILY", BERLIN)
    runs, run = [], rec.first()
    for _ in range(4):  # step by step, as the scheduler does after each run
        runs.append(run)
        run = rec.after(run)
    assert [r.astimezone(BERLIN).strftime("%m-%d %H:%M") for r in runs] == [
        "10-23 06:00", "10-24 06:00", "10-25 06:00", "10-26 06:00"]
    assert [r.strftime("%H:%M") for r in runs] == ["04:00", "04:00", "05:00", "05:00"]
    assert (runs[2] - runs[1]) == dt.timedelta(hours=25)  # the 25-hour day


def test_a_start_time_without_a_zone_is_local_and_with_a_zone_exact():
    assert parse_start("2026-03-29T06:00:00", BERLIN) == dt.datetime(2026, 3, 29, 4, 0, tzinfo=UTC)
    assert parse_start("2025-08-25T18:00:00+05:00", BERLIN) == dt.datetime(2025, 8, 25, 13, 0, tzinfo=UTC)
    assert parse_start("2025-08-25T13:00:00Z", BERLIN) == dt.datetime(2025, 8, 25, 13, 0, tzinfo=UTC)
    with pytest.raises(BadRequest):
        parse_start("tomorrow at six", BERLIN)


def test_weekly_by_day_runs_on_those_days_from_the_first_one_after_the_start():
    start = dt.datetime(2026, 4, 1, 6, 0, tzinfo=BERLIN)  # a Wednesday
    rec = Recurrence(start.astimezone(UTC), "RRULE:FREQ=WEEKLY;BYDAY=MO,TH", BERLIN)
    runs = rec.upcoming(rec.first(), 5)
    assert [r.astimezone(BERLIN).strftime("%a %d %H:%M") for r in runs] == [
        "Thu 02 06:00", "Mon 06 06:00", "Thu 09 06:00", "Mon 13 06:00", "Thu 16 06:00"]


def test_stepping_run_by_run_matches_expanding_the_rule_from_its_start():
    # The scheduler restarts the rule at each run (O(1) per step); it must give the same runs.
    rules = ["FREQ=DAILY", "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,SA", "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=-1",
             "FREQ=MONTHLY;BYMONTHDAY=31", "FREQ=DAILY;BYHOUR=6,18", "FREQ=HOURLY;INTERVAL=5",
             "FREQ=DAILY;COUNT=30", "FREQ=MINUTELY;INTERVAL=97", "FREQ=YEARLY;BYWEEKNO=1,20;BYDAY=MO"]
    for start in (dt.datetime(2026, 1, 31, 2, 30, tzinfo=BERLIN), dt.datetime(2026, 10, 24, 6, 0, tzinfo=BERLIN)):
        for text in rules:
            rec = Recurrence(start.astimezone(UTC), text, BERLIN)
            expected = [x.astimezone(UTC) for x in itertools.islice(du.rrulestr(text, dtstart=start), 150)]
            stepped, run, index = [], rec.first(), 0
            while run is not None and len(stepped) <= len(expected):
                stepped.append(run)
                run, index = rec.next_after(run, index).at, index + 1
            if "COUNT" in text:
                assert len(stepped) == len(expected), text  # and not one more
            stepped = stepped[:len(expected)]
            assert stepped == expected, text


def test_a_recurring_start_with_fractions_of_a_second_still_runs_on_its_first_day():
    start = dt.datetime(2026, 4, 2, 6, 0, 0, 360000, tzinfo=BERLIN)  # a Thursday
    rec = Recurrence(start.astimezone(UTC), "FREQ=WEEKLY;BYDAY=TH", BERLIN)
    assert rec.first().astimezone(BERLIN).date() == dt.date(2026, 4, 2)


# --- daylight-saving changes (docs/decisions.md, "Daylight-saving changes") --------------------------
NEW_YORK = ZoneInfo("America/New_York")


def local(runs, tz) -> list[str]:
    return [r.astimezone(tz).strftime("%m-%d %H:%M%z") for r in runs]


def every_way(rec: Recurrence, n: int) -> list[list[dt.datetime]]:
    """The first ``n`` runs as the scheduler steps (by stored index), as it steps without an
    index, as a listing shows them, as searches from just after each run find them, and as
    dateutil expands the rule (read as docs/decisions.md says)."""
    by_index, pos = [], rec.next_after(rec.start - dt.timedelta(days=1), -1)
    while pos.at is not None and len(by_index) < n + 1:
        by_index.append(pos.at)
        pos = rec.next_after(pos.at, pos.index)
    plain = [rec.first()]
    while plain[-1] is not None and len(plain) < n:
        plain.append(rec.after(plain[-1]))
    searched = [rec.first()] + [rec.at_or_after(r + dt.timedelta(seconds=1), r, i).at for i, r in enumerate(plain[:-1])]
    expanded = expected_runs(rec.text.split(";COUNT=")[0], rec.start, rec.tz)  # dateutil, from the start
    return [by_index[:n + 1], plain, rec.upcoming(rec.first(), n), searched, expanded]


@pytest.mark.parametrize("tz, day", [(BERLIN, dt.date(2026, 3, 29)), (NEW_YORK, dt.date(2026, 3, 8))])
@pytest.mark.parametrize("text, wall", [("FREQ=HOURLY;INTERVAL=1;BYHOUR=2", "03:00"), ("FREQ=DAILY;BYHOUR=2", "03:00"),
                                        ("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", "03:30"),
                                        ("FREQ=MINUTELY;INTERVAL=30;BYHOUR=2,3", None)])
@pytest.mark.parametrize("count", ["", ";COUNT=3"])
def test_a_run_in_the_spring_forward_gap_runs_once_just_after_it_whichever_way_it_is_found(tz, day, text, wall,
                                                                                           count):
    start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(1, 0), tz)
    rec = Recurrence(start.astimezone(UTC), text + count, tz)
    n = 3 if count else 6
    ways = every_way(rec, n)
    if count:
        assert len(ways[0]) == 3  # and not one more
    assert all(way[:n] == ways[0][:n] and len(way) >= len(ways[0][:n]) for way in ways), [local(w, tz) for w in ways]
    runs = local(ways[0], tz)
    if wall is None:  # 02:00 and 02:30 are 03:00 and 03:30, the same instants as the 03:xx runs: once each
        expected = [f"{day - dt.timedelta(days=1):%m-%d} {t}" for t in ("02:00", "02:30", "03:00", "03:30")]
        assert [r[:11] for r in runs[:n]] == (expected + [f"{day:%m-%d} 03:00", f"{day:%m-%d} 03:30"])[:n]
        assert len(set(ways[0])) == len(ways[0])
    else:
        assert runs[1].startswith(f"{day:%m-%d} {wall}") and runs[0][6:11] == runs[2][6:11] == wall.replace("3:", "2:")


@pytest.mark.parametrize("tz, day, text", [(BERLIN, dt.date(2026, 10, 25), "FREQ=DAILY;BYHOUR=2;BYMINUTE=30"),
                                           (NEW_YORK, dt.date(2026, 11, 1), "FREQ=DAILY;BYHOUR=1;BYMINUTE=30"),
                                           (NEW_YORK, dt.date(2026, 11, 1), "FREQ=HOURLY;BYHOUR=1;COUNT=3")])
def test_a_run_at_a_repeated_time_runs_once_at_its_first_occurrence(tz, day, text):
    start = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(0, 0), tz)
    rec = Recurrence(start.astimezone(UTC), text, tz)
    ways = every_way(rec, 3)
    assert all(way[:3] == ways[0][:3] for way in ways), [local(w, tz) for w in ways]
    first, repeated, after = ways[0][:3]
    assert repeated.astimezone(tz).date() == day
    assert repeated.astimezone(tz).utcoffset() == first.astimezone(tz).utcoffset()  # summer time: the first
    assert after - repeated == dt.timedelta(hours=25)  # the second occurrence does not run


def test_an_hourly_rule_runs_the_repeated_hour_once_and_the_missing_hour_not_at_all():
    fall = Recurrence(dt.datetime(2026, 10, 24, 22, 0, tzinfo=UTC), "FREQ=HOURLY", BERLIN)  # 00:00 CEST
    assert local(fall.upcoming(fall.first(), 4), BERLIN) == [
        "10-25 00:00+0200", "10-25 01:00+0200", "10-25 02:00+0200", "10-25 03:00+0100"]
    spring = Recurrence(dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC), "FREQ=HOURLY;COUNT=4", BERLIN)  # 00:00 CET
    assert local(every_way(spring, 4)[0], BERLIN) == [
        "03-29 00:00+0100", "03-29 01:00+0100", "03-29 03:00+0200", "03-29 04:00+0200"]


@pytest.mark.parametrize("count", ["", ";COUNT=3"])
def test_a_start_at_the_second_occurrence_of_a_repeated_time_is_the_first_run(count):
    start = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET, the second 02:30 in Berlin
    rec = Recurrence(start, "FREQ=DAILY" + count, BERLIN)
    ways = every_way(rec, 3)
    assert all(way[:3] == ways[0][:3] for way in ways), [local(w, BERLIN) for w in ways]
    assert local(ways[0][:3], BERLIN) == ["10-25 02:30+0100", "10-26 02:30+0100", "10-27 02:30+0100"]
    assert check_new(rec, 60, start) == start


def test_a_local_start_in_the_gap_is_the_instant_after_it_and_the_rule_counts_from_there():
    start = parse_start("2026-03-29T02:30", BERLIN)
    assert local([start], BERLIN) == ["03-29 03:30+0200"]
    daily = Recurrence(start, "FREQ=DAILY", BERLIN)  # the time of day comes from the start: 03:30
    assert local(daily.upcoming(daily.first(), 2), BERLIN) == ["03-29 03:30+0200", "03-30 03:30+0200"]
    # BYHOUR=2's 02:30 that day is before the start's 03:30 on the wall clock: its first run is the next day.
    rec = Recurrence(start, "FREQ=HOURLY;INTERVAL=1;BYHOUR=2;COUNT=2", BERLIN)
    assert local(every_way(rec, 2)[0], BERLIN) == ["03-30 02:30+0200", "03-31 02:30+0200"]


def test_a_rule_whose_interval_never_reaches_its_hours_is_422_not_500():
    # From an even hour, INTERVAL=2 only reaches even hours: dateutil's "byxxx generates an empty set".
    with pytest.raises(Unprocessable) as err:
        Recurrence(dt.datetime(2026, 3, 28, 1, 0, tzinfo=UTC), "FREQ=HOURLY;INTERVAL=2;BYHOUR=3", BERLIN)
    assert err.value.status == 422 and err.value.code == "invalid_rrule" and "empty set" in err.value.message
    # From 03:30 (a local 02:30 in the gap) it does reach 03:00, 05:00...: accepted.
    rec = Recurrence(parse_start("2026-03-29T02:30", BERLIN), "FREQ=HOURLY;INTERVAL=2;BYHOUR=3", BERLIN)
    assert local([rec.first()], BERLIN) == ["03-29 03:30+0200"]


@pytest.mark.parametrize("text, reason", [
    ("FREQ=FOO", "invalid 'FREQ'"),
    ("FREQ=DAILY;BYHOUR=25", "hour must be in 0..23"),
    ("garbage", "not a valid RFC 5545 rule"),
    ("DTSTART:20200101T000000\nRRULE:FREQ=DAILY", "without DTSTART"),
])
def test_a_bad_rule_is_422_with_the_parsers_reason(text, reason):
    with pytest.raises(Unprocessable) as err:
        Recurrence(at(60), text, BERLIN)
    assert err.value.code == "invalid_rrule" and reason in err.value.message


@pytest.mark.parametrize("text", ["FREQ=DAILY;UNTIL=20200101T000000Z", "FREQ=DAILY;COUNT=0",
                                  "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"])
def test_a_rule_that_never_fires_is_refused(text):
    with pytest.raises(Unprocessable) as err:
        check_new(Recurrence(at(60), text, BERLIN), 60, T0)
    assert err.value.code == "rule_never_fires"


def test_a_start_in_the_past_is_refused_but_a_few_seconds_of_clock_skew_are_not():
    with pytest.raises(Unprocessable) as err:
        check_new(Recurrence(at(-60), None, BERLIN), 60, T0)
    assert err.value.code == "start_in_past"
    assert check_new(Recurrence(at(-2), None, BERLIN), 60, T0) == at(-2)


def test_runs_of_one_schedule_must_not_overlap():
    with pytest.raises(Unprocessable) as err:
        check_new(Recurrence(at(60), "FREQ=MINUTELY", BERLIN), 120, T0)
    assert err.value.code == "runs_overlap"
    assert check_new(Recurrence(at(60), "FREQ=MINUTELY", BERLIN), 60, T0) == at(60)


# --- due runs: on time, late within grace, missed ---------------------------------------------
def test_a_run_within_the_grace_window_fires_late():
    rec = Recurrence(at(0), None, BERLIN)
    assert plan(rec, at(0), at(299), grace_s=300).fire is True


def test_a_run_past_the_grace_window_is_missed_and_a_one_off_is_then_finished():
    decision = plan(Recurrence(at(0), None, BERLIN), at(0), at(301), grace_s=300)
    assert decision.fire is False and decision.next_run is None


def test_after_a_long_outage_a_frequent_rule_skips_to_its_next_reachable_run():
    rec = Recurrence(at(0), "FREQ=HOURLY", BERLIN)
    decision = plan(rec, at(0), at(10 * 3600 + 60), grace_s=300)  # down for ten hours
    assert decision.fire is False
    assert decision.skipped == 9  # runs at 1 h .. 9 h; the one at 10 h is within grace
    assert decision.next_run == at(10 * 3600)


def test_the_device_answer_becomes_the_runs_outcome():
    assert outcome_of({"id": 3, "state": "starting"}, None) == ("started", None)
    assert outcome_of({"id": 3, "state": "queued"}, None) == ("queued", None)
    quota = TooManyRequests("5 minutes left", "quota_exhausted")
    assert outcome_of(None, quota) == ("rejected: quota", "5 minutes left")
    assert outcome_of(None, Conflict("offline", "device_offline"))[0] == "rejected: offline"
    assert outcome_of(None, TooManyRequests("full", "queue_full"))[0] == "rejected: queue_full"
    assert outcome_of(None, Unavailable("restarting", "device_restarting"))[0] == "failed: unavailable"
    assert all(len(outcome_of(None, e)[0]) <= 32 for e in (quota, RuntimeError("x")))
