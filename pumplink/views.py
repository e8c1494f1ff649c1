"""How records look in API answers and events."""

from __future__ import annotations

import datetime as dt
import json

from pumplink.storage import models as m
from pumplink.clock import from_db, iso


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
        "action": entry.action,
        "target": entry.target,
        "detail": json.loads(entry.detail) if entry.detail else None,
    }
