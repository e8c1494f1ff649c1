"""Today's ON time and promised time, counted from the database (for one device, one user, or all)."""

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


def used_today(now: dt.datetime, tz: ZoneInfo, *, device_id: int | None = None, user_id: int | None = None) -> float:
    start, end, where = _sessions_today(now, tz)
    where &= (m.Session.user == user_id) if user_id is not None else (m.Session.device == device_id)
    rows = m.Session.select(m.Session.started_at, m.Session.ended_at).where(where).tuples()
    return quota.used_seconds(((from_db(a), from_db(b)) for a, b in rows), start, end, now)


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
    spans = collections.defaultdict(list)
    for device_id, a, b in m.Session.select(m.Session.device, m.Session.started_at, m.Session.ended_at).where(where).tuples():
        spans[device_id].append((from_db(a), from_db(b)))
    reserved_s = collections.defaultdict(float)
    for device_id, state, duration, ends_at in m.Activation.select(
            m.Activation.device, m.Activation.state, m.Activation.duration_s, m.Activation.ends_at
    ).where(open_runs).tuples():
        reserved_s[device_id] += promised(state, duration, ends_at, now)
    return {d: (quota.used_seconds(spans.get(d, ()), start, end, now), reserved_s.get(d, 0.0))
            for d in set(spans) | set(reserved_s)}


def member_limit(now: dt.datetime, tz: ZoneInfo, user_id: int, device_id: int) -> quota.Limit | None:
    """The user's per-member quota at the device's site, with today's use and promises on that
    site's devices; None when the membership sets no quota."""
    site = m.Device.select(m.Device.site).where(m.Device.id == device_id)
    minutes = (m.Membership.select(m.Membership.daily_quota_minutes)
               .where((m.Membership.user == user_id) & (m.Membership.site.in_(site))).scalar())
    if minutes is None:
        return None
    devices = m.Device.select(m.Device.id).where(m.Device.site.in_(site))
    start, end, where = _sessions_today(now, tz)
    rows = (m.Session.select(m.Session.started_at, m.Session.ended_at)
            .where(where & (m.Session.user == user_id) & m.Session.device.in_(devices)).tuples())
    used = quota.used_seconds(((from_db(a), from_db(b)) for a, b in rows), start, end, now)
    open_rows = (m.Activation.select(m.Activation.state, m.Activation.duration_s, m.Activation.ends_at)
                 .where(m.Activation.state.in_(OPEN_STATES) & (m.Activation.user == user_id)
                        & m.Activation.device.in_(devices)).tuples())
    promised_s = sum(promised(state, duration, ends_at, now) for state, duration, ends_at in open_rows)
    return quota.Limit("member", minutes * 60, used, promised_s)
