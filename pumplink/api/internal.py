"""``POST /internal/v1/call``: a gateway call another node forwards to the owner of a device.

Registered only in cluster mode, and refused (401) unless signed with the cluster secret
(``cluster.signing``): a client of the public API cannot reach it, even through the same port.
The acting user is read again and authorized here, by the rule the public resource applied,
so a node never acts on another's say-so about who may do what; then the owner's gateway (which
never forwards again) runs the call. Its answer is ``{"result": ...}``; an error is written as
the public API writes it, and the forwarding node raises it again for its client.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Callable

from pumplink.accounts.service import require_role
from pumplink.cluster import signing
from pumplink.errors import BadRequest, Forbidden, NotFound, PumpLinkError, Unauthorized
from pumplink.gateway import Gateway, actor_name
from pumplink.sites import access
from pumplink.storage import models as m

log = logging.getLogger(__name__)

PATH = "/internal/v1/call"
MAX_BODY = 1024 * 1024


def _user(user_id: Any) -> m.User:
    user = m.User.get_or_none(m.User.id == user_id) if isinstance(user_id, int) else None
    if user is None:
        raise Unauthorized("This account no longer exists.", "user_gone")
    return user


def _ids(args: dict) -> list[int]:
    ids = args.get("device_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise BadRequest("device_ids must be a list of ids.", "invalid_call")
    return ids


def _device(args: dict) -> int:
    device_id = args.get("device_id")
    if not isinstance(device_id, int):
        raise BadRequest("device_id must be an id.", "invalid_call")
    return device_id


def _schedule(user: m.User, args: dict) -> m.Schedule:
    s = m.Schedule.get_or_none(m.Schedule.id == args.get("schedule_id"))
    if s is None or (user.role != "admin" and (s.user_id != user.id or not access.sees_device(user, s.device_id))):
        raise NotFound(f"There is no schedule {args.get('schedule_id')} of yours.", "schedule_not_found")
    return s


def _activate(gw: Gateway, user: m.User, a: dict):
    require_role(user, "user")
    return gw.activate(user, access.device_for(user, _device(a), access.RUN).id, int(a["duration_s"]))


def _update(gw: Gateway, user: m.User, a: dict):
    device = access.device_for(user, _device(a), access.MANAGE)
    if "site_id" in a["fields"] and not access.is_admin(user):
        raise Forbidden("Only a server admin may move a device to another site.", "admin_required")
    return gw.update_device(user, device.id, **a["fields"])


def _delete(gw: Gateway, user: m.User, a: dict):
    device = access.device_for(user, _device(a))  # 404 before 403, as the public resource
    require_role(user, "admin")
    gw.delete_device(user, device.id)


def _create_schedule(gw: Gateway, user: m.User, a: dict):
    require_role(user, "user")
    device = access.device_for(user, _device(a), access.RUN)
    return gw.create_schedule(user, device.id, dt.datetime.fromisoformat(a["start"]), a["rrule"], int(a["duration_s"]))


def _emergency_stop(gw: Gateway, user: m.User, a: dict):
    require_role(user, "admin")
    by = actor_name(user)
    return gw._all(lambda d: d.force_shutdown(by=by))  # this node's devices; the asking node audits


def _cancel(gw: Gateway, user: m.User, a: dict):
    act = m.Activation.get_or_none(m.Activation.id == a.get("activation_id"))
    if act is None or (user.role != "admin" and (act.user_id != user.id or not access.sees_device(user, act.device_id))):
        raise NotFound(f"There is no activation {a.get('activation_id')} of yours.", "activation_not_found")
    return gw.cancel_activation(user, act.id)


# op -> (needs an acting user, call). The checks are those of the public resource.
OPS: dict[str, tuple[bool, Callable[..., Any]]] = {
    "activate": (True, _activate),
    "cancel_activation": (True, _cancel),
    "force_shutdown": (True, lambda gw, u, a: gw.force_shutdown(u, access.device_for(u, _device(a), access.MANAGE).id)),
    "update_device": (True, _update),
    "delete_device": (True, _delete),
    "create_schedule": (True, _create_schedule),
    "set_schedule_enabled": (True, lambda gw, u, a: gw.set_schedule_enabled(u, _schedule(u, a), bool(a["enabled"]))),
    "delete_schedule": (True, lambda gw, u, a: gw.delete_schedule(u, _schedule(u, a))),
    "emergency_stop": (True, _emergency_stop),
    # Reads of devices the forwarding node already authorized (it holds the list filter): no user.
    "device": (False, lambda gw, u, a: gw.device(_device(a))),
    "go_status": (False, lambda gw, u, a: gw.go_status(_device(a))),
    "summary": (False, lambda gw, u, a: gw.summary(_device(a))),
    "views": (False, lambda gw, u, a: gw.devices(_ids(a))),
    "summaries": (False, lambda gw, u, a: gw._summaries(_ids(a))),
    "start_device": (False, lambda gw, u, a: gw.start_device(_device(a))),
    # System work every node does for its own devices (access changes, the asking node audits).
    "cancel_queued_of": (False, lambda gw, u, a: gw.cancel_queued_of(int(a["queued_of"]))),
    "member_lost_run": (False, lambda gw, u, a: gw._member_lost_run(int(a["member"]), int(a["site_id"]))),
}


class InternalCall:
    """The one internal resource. ``gateway`` is this node's; calls run on ``gateway.as_owner()``."""

    def __init__(self, gateway: Gateway, secret: str | None, metrics=None):
        self.gateway = gateway
        self.secret = secret
        self.metrics = metrics
        self.nonces = signing.Nonces()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.forwarded_served.labels(outcome).inc()

    def on_post(self, req, resp):
        raw = req.bounded_stream.read(MAX_BODY + 1)
        try:
            node = signing.verify(self.secret, _headers(req), req.method, req.path, raw, self.nonces)
        except Unauthorized as exc:
            self._count("refused")
            log.warning("internal call from %s refused: %s", req.remote_addr, exc.code)
            raise
        try:
            call = json.loads(raw)
            op, user_id, args = call["op"], call.get("user_id"), call.get("args")
            needs_user, run = OPS[op]
            if not isinstance(args, dict):
                raise TypeError("args")
        except (ValueError, KeyError, TypeError):
            self._count("invalid")
            raise BadRequest("Not a call this node knows.", "invalid_call") from None
        try:
            user = _user(user_id) if needs_user else None
            result = run(self.gateway.as_owner(), user, args)
        except PumpLinkError:
            self._count("error")
            raise
        except (KeyError, TypeError, ValueError) as exc:
            self._count("invalid")
            raise BadRequest(f"The call {op} lacks a valid argument ({exc}).", "invalid_call") from None
        self._count("ok")
        log.debug("internal call %s from %s", op, node)
        resp.media = {"result": result}


def _headers(req) -> dict[str, str | None]:
    return {h: req.get_header(h) for h in (signing.NODE, signing.TIME, signing.NONCE, signing.SIGNATURE)}
