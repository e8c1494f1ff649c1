"""How live events look on the wire, and who may receive them: pure, shared by the broadcaster
(live/broadcaster.py) and the WebSocket transport (live/socket.py).
"""

from __future__ import annotations

import json

from pumplink.clock import iso
from pumplink.events import ActivationChanged, DeviceStateChanged, ScheduleChanged
from pumplink.sites.reach import Reach

# Who may see an event: EVERYONE who may see its device (device state), ADMINS only, or one user
# id (the owner, as REST's "own rows, or everyone's for admins"); always within the receiver's
# sites (``receives``, the rule REST's lists apply through sites.access).
EVERYONE, ADMINS = "everyone", "admins"


def legacy_frame(state: str) -> str:
    """The legacy app's on/off: ``on`` only once the pump has confirmed it runs."""
    return "on" if state == "on" else "off"


def event_body(event, event_id: int, skipped: int = 0) -> tuple[int | None, dict] | None:
    """``(device_id, JSON body)`` of an event for JSON clients; None for events they do not get.
    ``skipped``: earlier state changes of the device this one stands for (debounced)."""
    if isinstance(event, DeviceStateChanged):
        return event.device_id, {
            "type": "device.state", "id": event_id, "device_id": event.device_id, "state": event.state,
            "previous": event.previous, "available": event.available, "activation_id": event.activation_id,
            "reason": event.reason, "at": iso(event.at),
            # Last, so a client's outbox can add the states it replaced (live.connection.with_skipped).
            "skipped": skipped,
        }
    if isinstance(event, ActivationChanged):
        act = event.activation
        return act.get("device_id"), {
            "type": "activation", "id": event_id, "device_id": act.get("device_id"),
            "activation_id": act.get("id"), "state": act.get("state"), "activation": act, "at": iso(event.at),
        }
    if isinstance(event, ScheduleChanged):
        return event.device_id, {
            "type": "schedule", "id": event_id, "device_id": event.device_id, "schedule_id": event.schedule_id,
            "change": event.change, "schedule": event.detail, "at": iso(event.at),
        }
    return None


def dumps(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"), default=str)


def audience_of(event, schedule_owner=None):
    """Who may see ``event``: EVERYONE, ADMINS or a user id. ``schedule_owner(event)`` finds the
    owner of a schedule event that does not name one."""
    if isinstance(event, DeviceStateChanged):
        return EVERYONE
    if isinstance(event, ActivationChanged):
        return owner_or_admins(event.activation.get("user_id"))
    if isinstance(event, ScheduleChanged):
        owner = event.user_id
        if owner is None and schedule_owner is not None:
            owner = schedule_owner(event)
        return owner_or_admins(owner)
    return ADMINS


def owner_or_admins(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else ADMINS


def may_see(role: str | None, user_id: int | None, audience) -> bool:
    if role == "admin" or audience == EVERYONE:
        return True
    return audience != ADMINS and user_id is not None and audience == user_id


def receives(reach: Reach, role: str | None, user_id: int | None, device_id: int | None, audience) -> bool:
    """Whether one receiver gets an event about ``device_id`` meant for ``audience``."""
    return may_see(role, user_id, audience) and reach.may_see_device(user_id, role, device_id)


def lost_access(old_role: str | None, new_role: str | None) -> bool:
    """Deleted, or demoted to pending: the account's sockets are closed with 1008."""
    return new_role is None or (new_role == "pending" and old_role != "pending")
