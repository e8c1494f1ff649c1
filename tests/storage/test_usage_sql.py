"""Today's ON time summed by the database agrees with the quota arithmetic in Python
(``quota.rules.used_seconds``), on SQLite and PostgreSQL: runs across midnight, open runs,
runs outside the day, the 25-hour day of a DST change, and a device with a thousand runs."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest

from pumplink.clock import UTC, from_db, to_db
from pumplink.quota import usage
from pumplink.quota.rules import day_bounds, used_seconds
from pumplink.storage import migrations
from pumplink.storage import models as m

BERLIN = ZoneInfo("Europe/Berlin")
SQLITE_SLACK_S = 0.002  # SQLite's julianday counts milliseconds: at most a millisecond off at each end


def _sessions(rng: random.Random, device_id: int, user_id: int, now: dt.datetime, count: int, span_h: float):
    """A device's runs one after another over the ``span_h`` hours before now; the last one open."""
    rows, end = [], None
    cursor = now - dt.timedelta(microseconds=rng.randrange(10**6))
    for i in range(count):
        length = dt.timedelta(seconds=rng.uniform(0.001, span_h * 3600 / count), microseconds=rng.randrange(10**6))
        start = cursor - length
        rows.append({"device": device_id, "user": user_id, "started_at": to_db(start), "ended_at": to_db(end),
                     "intended_s": 60, "start_cause": "command"})
        end = start - dt.timedelta(seconds=rng.uniform(0, span_h * 3600 / count))
        cursor = end
    return rows


def _python_sum(now: dt.datetime, tz: ZoneInfo, where) -> float:
    start, end = day_bounds(now, tz)
    rows = m.Session.select(m.Session.started_at, m.Session.ended_at).where(where).tuples()
    return used_seconds(((from_db(a), from_db(b)) for a, b in rows), start, end, now)


@pytest.mark.parametrize("now, tz", [
    (dt.datetime(2026, 3, 29, 10, 0, 0, 123456, tzinfo=UTC), ZoneInfo("UTC")),
    (dt.datetime(2026, 10, 25, 21, 30, tzinfo=UTC), BERLIN),  # a 25-hour local day
    (dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC), BERLIN),  # a 23-hour local day, just after midnight
])
def test_the_database_sums_today_as_the_quota_rules_do(db, now, tz):
    migrations.migrate(db)
    rng = random.Random(7)
    with db.connection_context():
        user = m.User.create(email="u@example.org", password_hash="x", created_at=to_db(now))
        other = m.Device.create(name="Other", site=1, created_at=to_db(now))
        with db.atomic():
            m.Session.insert_many(_sessions(rng, 1, user.id, now, 1000, 60)).execute()
            m.Session.insert_many(_sessions(rng, other.id, user.id, now, 200, 30)).execute()
        slack = 1200 * SQLITE_SLACK_S if not db.for_update else 1e-6
        for device_id in (1, other.id):
            expected = _python_sum(now, tz, m.Session.device == device_id)
            assert expected > 0
            assert usage.used_today(now, tz, device_id=device_id) == pytest.approx(expected, abs=slack)
        expected_user = _python_sum(now, tz, m.Session.user == user.id)
        assert usage.used_today(now, tz, user_id=user.id) == pytest.approx(expected_user, abs=slack)
        pages = usage.by_device(now, tz, [1, other.id])
        assert pages[1][0] == pytest.approx(_python_sum(now, tz, m.Session.device == 1), abs=slack)
        assert set(usage.by_device(now, tz)) == {1, other.id}


def test_the_quota_reads_give_the_quotas_and_the_devices_use(db):
    """One round trip on PostgreSQL: the user's quota, their member quota at the device's site
    and the device's use today."""
    migrations.migrate(db)
    now = dt.datetime(2026, 3, 29, 10, 0, tzinfo=UTC)
    tz = ZoneInfo("UTC")
    with db.connection_context():
        user = m.User.create(email="u@example.org", password_hash="x", daily_quota_minutes=30,
                             created_at=to_db(now))
        m.Session.create(device=1, user=user.id, started_at=to_db(now - dt.timedelta(minutes=10)),
                         ended_at=to_db(now - dt.timedelta(minutes=4)), intended_s=600, start_cause="command")
        with db.atomic():
            assert usage.quota_reads(db, now, tz, user.id, 1) == (30, None, pytest.approx(360, abs=0.01))
        m.Membership.create(user=user.id, site=1, role="operator", daily_quota_minutes=12, created_at=to_db(now))
        with db.atomic():
            quota_minutes, member_minutes, used = usage.quota_reads(db, now, tz, user.id, 1)
        assert (quota_minutes, member_minutes) == (30, 12)
        limit = usage.member_limit(now, tz, user.id, 1, member_minutes)
        assert (limit.quota_s, limit.used_s) == (720, pytest.approx(360, abs=0.01))
        assert usage.member_limit(now, tz, user.id, 1, None) is None
