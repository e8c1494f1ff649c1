"""A device's rows: what its actor starts from (DeviceRecords), its sessions and its log."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt

from pumplink.clock import from_db, to_db
from pumplink.quota import usage
from pumplink.storage import models as m

OPEN_STATES = usage.OPEN_STATES


@dataclasses.dataclass
class DeviceRecords:
    """What a device actor starts from: its row, its open session, its unfinished activations."""

    device: m.Device
    session: m.Session | None
    activations: list[m.Activation]

    @classmethod
    def load(cls, device_id: int) -> "DeviceRecords":
        return cls(
            device=m.Device.get_by_id(device_id),
            session=m.Session.get_or_none((m.Session.device == device_id) & m.Session.ended_at.is_null()),
            activations=list(m.Activation.select()
                             .where((m.Activation.device == device_id) & m.Activation.state.in_(OPEN_STATES))
                             .order_by(m.Activation.created_at, m.Activation.id)),
        )

    @classmethod
    def load_all(cls) -> list["DeviceRecords"]:
        """Every live device's records in three queries, for start-up."""
        sessions = {s.device_id: s for s in m.Session.select().where(m.Session.ended_at.is_null())}
        activations = collections.defaultdict(list)
        for act in (m.Activation.select().where(m.Activation.state.in_(OPEN_STATES))
                    .order_by(m.Activation.created_at, m.Activation.id)):
            activations[act.device_id].append(act)
        return [cls(d, sessions.get(d.id), activations.get(d.id, []))
                for d in m.Device.select().where(m.Device.deleted_at.is_null()).order_by(m.Device.id)]

    def needs_writes(self, now: dt.datetime) -> bool:
        """Whether recovery has an activation to close (else it only reads): anything but queued
        ones and the one run that resumes."""
        resumed = next((a for a in self.activations if a.state == "running" and from_db(a.ends_at) > now), None)
        return any(a.state != "queued" and a is not resumed for a in self.activations)



def open_session(device_id: int, act: m.Activation | None, cause: str, started_at: dt.datetime) -> m.Session:
    return m.Session.create(
        device=device_id, activation=act.id if act else None, user=act.user_id if act else None,
        started_at=to_db(started_at), intended_s=act.duration_s if act else None, start_cause=cause,
    )


def close_session(s: m.Session, reason: str, end: dt.datetime) -> None:
    s.ended_at = to_db(end)
    s.actual_s = max(0.0, (end - from_db(s.started_at)).total_seconds())
    s.end_reason = reason
    s.save()


def write_log(device_id: int, session: m.Session | None, event: str, cause: str, actor: str | None, at: dt.datetime,
              *, activation_id: int | None = None, detail: str | None = None) -> None:
    m.DeviceLog.create(device=device_id, session=session.id if session else None, activation=activation_id,
                       event=event, cause=cause, actor=actor, detail=detail, at=to_db(at))
