"""The one place a command to a controller is encoded (MQTT.md, Commands)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from pumplink.clock import iso


def new_id() -> str:
    return str(uuid.uuid4())


def encode(topics, device_id: int, protocol: str, action: str, *, now: dt.datetime, command_id: str | None = None,
           activation_id: int | None = None, duration_s: int | None = None, node: str | None = None,
           epoch: int | None = None) -> tuple[str, str]:
    """``(topic, payload)`` of an ON/OFF: a legacy controller takes a bare word on its one
    topic; a pumplink controller a JSON command carrying its id (acks name it). In cluster mode
    it also names the sending node and its partition's epoch (extra fields, ignored by v1
    controllers; one may refuse an epoch lower than one it has seen)."""
    if protocol == "legacy":
        return topics.legacy_control, action
    body = {"id": command_id or new_id(), "action": action, "activation_id": activation_id, "sent_at": iso(now)}
    if action == "on":
        body["duration_s"] = duration_s
    if node is not None:
        body["node"], body["epoch"] = node, epoch
    return topics.command(device_id), json.dumps(body)
