"""Today's ON time and promised time, counted from the database (for one device, one user, or all).

ON time is summed by the database (one row back, however many runs a day holds: a flapping
pump makes thousands); the same arithmetic as ``quota.rules.used_seconds``.
"""

from __future__ import annotations

import collections
import datetime as dt
from zoneinfo import ZoneInfo

import peewee as pw

from pumplink.storage import models as m
from pumplink.quota import rules as quota
from pumplink.clock import from_db, to_db

OPEN_STATES = ("queued", "starting", "running")


def _sessions_today(now: dt.datetime, tz: ZoneInfo):
    start, end = quota.day_bounds(now, tz)
    where = (m.Session.started_at < to_db(end)) & (m.Session.ended_at.is_null() | (m.Session.ended_at > to_db(start)))
    return start, end, where


def _seconds_today(start: dt.datetime, end: dt.datetime, now: dt.datetime):
    """SQL: a session's seconds inside [start, end), an open one counted up to ``now``."""
    s, e, n = to_db(start), to_db(end), to_db(now)
    started, ended = m.Session.started_at, m.Session.ended_at
    if isinstance(m.Session._meta.database, pw.PostgresqlDatabase):
        span = pw.fn.date_part("epoch", pw.fn.LEAST(pw.fn.COALESCE(ended, n), e) - pw.fn.GREATEST(started, s))
        return pw.fn.GREATEST(0, span)
    # SQLite keeps times as ISO text, which sorts as time does; julianday counts milliseconds.
    span = (pw.fn.julianday(pw.fn.MIN(pw.fn.COALESCE(ended, n), e)) - pw.fn.julianday(pw.fn.MAX(started, s))) * 86400.0
    return pw.fn.MAX(0, span)


def _used_query(now: dt.datetime, tz: ZoneInfo, where):
    start, end, today = _sessions_today(now, tz)
    return m.Session.select(pw.fn.COALESCE(pw.fn.SUM(_seconds_today(start, end, now)), 0.0)).where(today & where)


def used_today(now: dt.datetime, tz: ZoneInfo, *, device_id: int | None = None, user_id: int | None = None) -> float:
    where = (m.Session.user == user_id) if user_id is not None else (m.Session.device == device_id)
    return float(_used_query(now, tz, where).scalar() or 0.0)


def lock_user(db: pw.Database, user_id: int) -> None:
    """Take the user's quota lock for the rest of the current transaction, before counting.

    Quota checks of one user then take turns, on every device and node: the next one waits
    until this transaction has committed its activation, and counts it. PostgreSQL: the user's
    row ``FOR UPDATE``. SQLite has no row locks: a no-op write takes its database-wide write
    lock, which must come before any read of the transaction (BEGIN is deferred; a read first
    would make the later write fail instead of wait).
    """
    if db.for_update:
        m.User.select(m.User.id).where(m.User.id == user_id).for_update().execute()
    else:
        m.User.update(id=m.User.id).where(m.User.id == user_id).execute()


def promised(state: str, duration_s: int, ends_at, now: dt.datetime) -> float:
    """What one open activation still reserves: the rest of a running one, all of any other."""
    if state == "running" and ends_at is not None:
        return max(0.0, (from_db(ends_at) - now).total_seconds())
    return float(duration_s)


def reserved(now: dt.datetime, *, device_id: int | None = None, user_id: int | None = None) -> float:
    """Time promised to queued and running work."""
    where = m.Activation.state.in_(OPEN_STATES)
    where &= (m.Activation.user == user_id) if user_id is not None else (m.Activation.device == device_id)
    rows = m.Activation.select(m.Activation.state, m.Activation.duration_s, m.Activation.ends_at).where(where).tuples()
    return sum(promised(state, duration, ends_at, now) for state, duration, ends_at in rows)


def by_device(now: dt.datetime, tz: ZoneInfo, ids=None) -> dict[int, tuple[float, float]]:
    """``{device_id: (used_s, reserved_s)}`` for every device (or those of ``ids``: a page), in two
    queries (``GET /devices``)."""
    start, end, where = _sessions_today(now, tz)
    open_runs = m.Activation.state.in_(OPEN_STATES)
    if ids is not None:
        where &= m.Session.device.in_(list(ids))
        open_runs &= m.Activation.device.in_(list(ids))
    used = dict(m.Session.select(m.Session.device, pw.fn.SUM(_seconds_today(start, end, now)))
                .where(where).group_by(m.Session.device).tuples())
    reserved_s = collections.defaultdict(float)
    for device_id, state, duration, ends_at in m.Activation.select(
            m.Activation.device, m.Activation.state, m.Activation.duration_s, m.Activation.ends_at
    ).where(open_runs).tuples():
        reserved_s[device_id] += promised(state, duration, ends_at, now)
    return {d: (float(used.get(d) or 0.0), reserved_s.get(d, 0.0)) for d in set(used) | set(reserved_s)}


def _member_minutes(user_id: int, device_id: int):
    site = m.Device.select(m.Device.site).where(m.Device.id == device_id)
    return (m.Membership.select(m.Membership.daily_quota_minutes)
            .where((m.Membership.user == user_id) & (m.Membership.site.in_(site))))


# The hot statement of every activation, written out: peewee took ~1 ms to build it, PostgreSQL
# ~0.3 ms to run it (docs/decisions.md, "Hand-written SQL on the activation path").
_QUOTA_READS = """
SELECT u.daily_quota_minutes,
  (SELECT ms.daily_quota_minutes FROM membership ms JOIN device d ON d.site_id = ms.site_id
    WHERE ms.user_id = u.id AND d.id = %(device)s),
  (SELECT COALESCE(SUM(GREATEST(0, date_part('epoch',
            LEAST(COALESCE(s.ended_at, %(now)s), %(end)s) - GREATEST(s.started_at, %(start)s)))), 0)
    FROM session s
    WHERE s.device_id = %(device)s AND s.started_at < %(end)s AND (s.ended_at IS NULL OR s.ended_at > %(start)s))
FROM "user" u WHERE u.id = %(user)s"""


def quota_reads(db: pw.Database, now: dt.datetime, tz: ZoneInfo, user_id: int,
                device_id: int) -> tuple[float | None, float | None, float]:
    """The user's daily minutes, their member minutes at the device's site and the device's own
    use today (only the device's actor writes its sessions); then, when a quota spanning devices
    applies (the user's or the member's), the user's quota lock (``lock_user``), before the
    caller counts that use. PostgreSQL: one round trip without such a quota, two with one."""
    if db.for_update:
        start, end = quota.day_bounds(now, tz)
        row = db.execute_sql(_QUOTA_READS, {"user": user_id, "device": device_id, "now": to_db(now),
                                            "start": to_db(start), "end": to_db(end)}).fetchone()
        if row is None:
            return None, None, 0.0
        if row[0] is not None or row[1] is not None:
            lock_user(db, user_id)
        return row[0], row[1], float(row[2] or 0.0)
    # SQLite: the write lock before any read of the transaction (see lock_user).
    lock_user(db, user_id)
    quota_minutes = m.User.select(m.User.daily_quota_minutes).where(m.User.id == user_id).scalar()
    return (quota_minutes, _member_minutes(user_id, device_id).scalar(),
            used_today(now, tz, device_id=device_id))


def user_today(now: dt.datetime, tz: ZoneInfo, user_id: int) -> tuple[float, float]:
    """The user's (used, reserved) seconds today on every device."""
    return used_today(now, tz, user_id=user_id), reserved(now, user_id=user_id)


def member_limit(now: dt.datetime, tz: ZoneInfo, user_id: int, device_id: int, minutes=None) -> quota.Limit | None:
    """The user's per-member quota at the device's site (``minutes``, read under the lock), with
    today's use and promises on that site's devices; None when the membership sets no quota."""
    if minutes is None:
        return None
    site = m.Device.select(m.Device.site).where(m.Device.id == device_id)
    devices = m.Device.select(m.Device.id).where(m.Device.site.in_(site))
    used = float(_used_query(now, tz, (m.Session.user == user_id) & m.Session.device.in_(devices)).scalar() or 0.0)
    open_rows = (m.Activation.select(m.Activation.state, m.Activation.duration_s, m.Activation.ends_at)
                 .where(m.Activation.state.in_(OPEN_STATES) & (m.Activation.user == user_id)
                        & m.Activation.device.in_(devices)).tuples())
    promised_s = sum(promised(state, duration, ends_at, now) for state, duration, ends_at in open_rows)
    return quota.Limit("member", minutes * 60, used, promised_s)
