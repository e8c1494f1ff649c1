"""How records look in API answers and events: one place, and every time through ``clock.iso``
(UTC, milliseconds, ``Z``)."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

from pumplink.accounts import roles
from pumplink.clock import from_db, iso
from pumplink.errors import PumpLinkError
from pumplink.schedules.recurrence import Recurrence
from pumplink.storage import models as m


def activation_view(a: m.Activation, now: dt.datetime) -> dict:
    ends_at = from_db(a.ends_at)
    remaining = None
    if a.state == "running" and ends_at is not None:
        remaining = max(0.0, round((ends_at - now).total_seconds(), 1))
    return {
        "id": a.id,
        "device_id": a.device_id,
        "user_id": a.user_id,
        "schedule_id": a.schedule_id,
        "duration_s": a.duration_s,
        "duration_minutes": round(a.duration_s / 60, 3),
        "state": a.state,
        "reason": a.reason,
        "ended_by": a.ended_by,
        "source": a.source,
        "created_at": iso(a.created_at),
        "started_at": iso(a.started_at),
        "ends_at": iso(a.ends_at),
        "ended_at": iso(a.ended_at),
        "remaining_s": remaining,
    }


def session_view(s: m.Session) -> dict:
    return {
        "id": s.id,
        "device_id": s.device_id,
        "activation_id": s.activation_id,
        "user_id": s.user_id,
        "started_at": iso(s.started_at),
        "ended_at": iso(s.ended_at),
        "intended_s": s.intended_s,
        "actual_s": None if s.actual_s is None else round(s.actual_s, 3),
        "start_cause": s.start_cause,
        "end_reason": s.end_reason,
    }


def log_view(entry: m.DeviceLog) -> dict:
    return {
        "id": entry.id,
        "device_id": entry.device_id,
        "session_id": entry.session_id,
        "activation_id": entry.activation_id,
        "event": entry.event,
        "cause": entry.cause,
        "actor": entry.actor,
        "detail": entry.detail,
        "at": iso(entry.at),
    }


def audit_view(entry: m.AuditLog) -> dict:
    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor_id": entry.actor_id,
        "site_id": entry.site_id,
        "action": entry.action,
        "target": entry.target,
        "detail": json.loads(entry.detail) if entry.detail else None,
    }


def user_view(user: m.User) -> dict:
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "approved": roles.approved(user.role),
        "daily_quota_minutes": user.daily_quota_minutes,
        "created_at": iso(user.created_at),
    }


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
                  run_count: int | None = None, expand: bool = True) -> dict:
    """``expand=False`` shows only the stored next run (a listing past its time budget)."""
    upcoming: list[dt.datetime] = []
    if s.enabled and s.next_run_at is not None:
        upcoming = [from_db(s.next_run_at)]
        if expand:
            try:
                upcoming = Recurrence.of(s, tz).upcoming(from_db(s.next_run_at), 5, s.next_run_index) or upcoming
            except PumpLinkError:  # a rule this server no longer accepts; the stored next run still holds
                pass
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
