"""Quota arithmetic with explicit datetimes: local days (23 h and 25 h on DST days), used time, fits."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from pumplink.quota.rules import day_bounds, fits, seconds_until_reset, used_seconds

UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize("now, start, end, hours", [
    # An ordinary winter day: midnight in Berlin is 23:00 UTC the day before.
    (utc(2026, 1, 15, 12), utc(2026, 1, 14, 23), utc(2026, 1, 15, 23), 24),
    # 2026-03-29: clocks go 02:00 -> 03:00, the local day has 23 hours.
    (utc(2026, 3, 29, 12), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23),
    # 2026-10-25: clocks go 03:00 -> 02:00, the local day has 25 hours.
    (utc(2026, 10, 25, 12), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),
    # Inside the repeated hour (02:30 CEST and 02:30 CET): still the same local day.
    (dt.datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),
    (dt.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25),
    # Just before and at local midnight.
    (utc(2026, 3, 28, 22, 59, 59), utc(2026, 3, 27, 23), utc(2026, 3, 28, 23), 24),
    (utc(2026, 3, 28, 23), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23),
])
def test_day_bounds_in_berlin(now, start, end, hours):
    lo, hi = day_bounds(now, BERLIN)
    assert (lo, hi) == (start, end)
    assert lo.tzinfo is not None and lo.utcoffset() == dt.timedelta(0)
    assert hi - lo == dt.timedelta(hours=hours)
    assert lo <= now < hi


def test_day_bounds_in_utc_are_plain_midnights():
    assert day_bounds(utc(2026, 3, 29, 0, 30), ZoneInfo("UTC")) == (utc(2026, 3, 29), utc(2026, 3, 30))


def test_used_seconds_counts_only_the_part_inside_the_day():
    start, end = day_bounds(utc(2026, 3, 29, 12), BERLIN)  # 23 h day
    now = utc(2026, 3, 29, 12)
    intervals = [
        (utc(2026, 3, 28, 22, 50), utc(2026, 3, 28, 23, 10)),  # across midnight: 10 min today
        (utc(2026, 3, 29, 8), utc(2026, 3, 29, 8, 15)),  # 15 min
        (utc(2026, 3, 28, 20), utc(2026, 3, 28, 21)),  # yesterday: nothing
        (utc(2026, 3, 29, 11, 55), None),  # still running: 5 min up to now
    ]
    assert used_seconds(intervals, start, end, now) == (10 + 15 + 5) * 60


def test_used_seconds_across_the_next_midnight_and_on_the_long_day():
    start, end = day_bounds(utc(2026, 10, 25, 12), BERLIN)  # 25 h day, ends 23:00 UTC
    now = utc(2026, 10, 25, 23, 20)
    running = [(utc(2026, 10, 25, 22, 45), None)]  # started before midnight, still on after it
    assert used_seconds(running, start, end, now) == 15 * 60
    # The next day sees only its own part of the same run.
    next_start, next_end = day_bounds(now, BERLIN)
    assert next_start == end
    assert used_seconds(running, next_start, next_end, now) == 20 * 60
    # A run through the repeated hour (01:30 CEST to 02:30 CET) counts its real two hours.
    repeated = [(utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 1, 30))]
    assert used_seconds(repeated, start, end, now) == 2 * 3600


def test_used_seconds_with_local_zone_times_through_the_repeated_hour():
    start, end = day_bounds(utc(2026, 10, 25, 12), BERLIN)
    repeated = [(dt.datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN), dt.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN))]
    assert used_seconds(repeated, start, end, utc(2026, 10, 25, 23)) == 2 * 3600


def test_seconds_until_reset():
    assert seconds_until_reset(utc(2026, 3, 29, 21, 59, 30), BERLIN) == 30
    assert seconds_until_reset(utc(2026, 3, 28, 23), BERLIN) == 23 * 3600
    assert seconds_until_reset(utc(2026, 10, 25, 22, 59, 59, 500_000), BERLIN) == 1


@pytest.mark.parametrize("quota, used, reserved, requested, ok, free", [
    (3600, 0, 0, 3600, True, 3600),  # exactly the whole quota
    (3600, 0, 0, 3601, False, 3600),
    (3600, 1800, 600, 1200, True, 1200),  # reservations (queued, running) count
    (3600, 1800, 600, 1201, False, 1200),
    (3600, 3000, 1200, 1, False, 0),  # over-reserved: nothing free, never negative
    (3600, 3599.9999995, 0, 0.0000001, True, pytest.approx(0.0000005)),  # float noise does not refuse
])
def test_fits(quota, used, reserved, requested, ok, free):
    assert fits(quota, used, reserved, requested) == (ok, free)


# --- several limits: the strictest one wins --------------------------------------------------------
from pumplink.quota.rules import Limit, strictest  # noqa: E402


def test_no_limit_lets_anything_through():
    assert strictest([], 10_000) == (True, None)


def test_the_limit_with_least_time_free_decides_not_the_smallest_quota():
    device = Limit("device", quota_s=3600, used_s=3000, reserved_s=0)  # 600 s free
    member = Limit("member", quota_s=1200, used_s=0, reserved_s=0)  # 1200 s free
    user = Limit("user", quota_s=7200, used_s=0, reserved_s=6900)  # 300 s free
    ok, tightest = strictest([device, member, user], 300)
    assert ok and tightest is user
    ok, tightest = strictest([device, member, user], 301)
    assert not ok and tightest is user and tightest.free_s == 300


def test_every_limit_must_hold_whatever_the_order():
    limits = [Limit("member", 600, 100, 200), Limit("device", 3600, 0, 0), Limit("user", 900, 0, 0)]
    for order in (limits, limits[::-1]):
        ok, tightest = strictest(order, 301)
        assert not ok and tightest.kind == "member"
        assert strictest(order, 300) == (True, limits[0])


def test_a_tie_is_named_by_the_first_limit_and_overdrawn_limits_have_nothing_free():
    assert strictest([Limit("device", 600, 0, 0), Limit("member", 600, 0, 0)], 1)[1].kind == "device"
    overdrawn = Limit("member", 600, 500, 400)
    assert overdrawn.free_s == 0
    assert strictest([overdrawn], 0.5) == (False, overdrawn)
