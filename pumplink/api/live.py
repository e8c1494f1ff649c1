"""Live over HTTP: the Expo push-token API, and ``GET /ws`` without an upgrade (426).

The WebSocket itself (``LiveSocket``) is in live/socket.py.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Literal

import falcon
from pydantic import BaseModel, Field, StrictStr

from pumplink.api.openapi import doc
from pumplink.api.schemas import Body
from pumplink.api.support import Auth, read_json
from pumplink.clock import to_db
from pumplink.errors import NotFound, PumpLinkError, Unprocessable
from pumplink.events import Alert
from pumplink.storage import models as m

log = logging.getLogger(__name__)

EXPO_TOKEN = re.compile(r"^(?:ExponentPushToken|ExpoPushToken)\[[^\[\]\s]{1,180}\]$")


class PushTokenBody(Body):
    token: StrictStr = Field(min_length=1, max_length=200)


class PushTokenQuery(Body):
    token: str | None = Field(default=None, description="instead of the body")


class PushTokenAnswer(BaseModel):
    message: str
    token: str


class LiveQuery(Body):
    token: str | None = Field(default=None, description="access token (else the Authorization header, "
                                                          "else the first text message)")
    format: Literal["json"] | None = Field(default=None, description="JSON frames even with first-message auth")


def expo_token(raw: str) -> str:
    token = raw.strip()
    if not EXPO_TOKEN.match(token):
        raise Unprocessable("token must be an Expo push token such as ExponentPushToken[xxxxxxxxxxxxxxxxxxxxxx].",
                            "invalid_push_token", field="token")
    return token


class RegisterPushToken:
    """One row per token. Registering a token another account holds moves it (a shared phone's new
    user), on the record: an audit entry, and a push to the old owner's other phones. Each account
    keeps its ``max_tokens`` most recently registered tokens; the oldest is dropped beyond that."""

    def __init__(self, auth: Auth, clock, bus=None, max_tokens: int = 10):
        self.auth, self.clock, self.bus, self.max_tokens = auth, clock, bus, max_tokens

    @doc("Register this phone's Expo push token (201; 200 when known: from another account it moves "
         "here, which is audited and told to that account; beyond the limit per account the oldest "
         "token is dropped)", body=PushTokenBody, status=201, answer=PushTokenAnswer, errors=(422,))
    def on_post(self, req, resp):
        user = self.auth.user(req)
        token = expo_token(read_json(req, PushTokenBody).token)
        now = to_db(self.clock.now())
        known = m.PushToken.get_or_none(m.PushToken.token == token)
        # created_at is the latest registration: apps register at every start, so "oldest" is
        # the token not seen for longest.
        (m.PushToken.insert(token=token, user=user.id, created_at=now)
         .on_conflict(conflict_target=[m.PushToken.token],
                      update={m.PushToken.user: user.id, m.PushToken.created_at: now})
         .execute())
        moved = known is not None and known.user_id != user.id
        if moved:
            self._moved(user, known.user_id, token)
        dropped = self._trim(user.id)
        resp.status = falcon.HTTP_201 if known is None else falcon.HTTP_200
        message = "Push notifications will reach this device" + (" (moved from another account)." if moved else ".")
        if dropped:
            message += f" Your oldest push token was dropped: at most {self.max_tokens} per account."
        resp.media = {"message": message, "token": token}

    def _trim(self, user_id: int) -> int:
        keep = (m.PushToken.select(m.PushToken.id).where(m.PushToken.user == user_id)
                .order_by(m.PushToken.created_at.desc(), m.PushToken.id.desc()).limit(self.max_tokens))
        return (m.PushToken.delete()
                .where((m.PushToken.user == user_id) & m.PushToken.id.not_in(keep)).execute())

    def _moved(self, user, old_owner: int, token: str) -> None:
        at = self.clock.now()
        shown = token[:-9] + "…]" if len(token) > 30 else token  # enough to recognise, not to reuse
        m.AuditLog.create(actor=user.id, action="push_token.moved", target=f"user:{old_owner}",
                          detail=json.dumps({"from_user": old_owner, "to_user": user.id, "token": shown}),
                          at=to_db(at))
        log.warning("push token %s moved from user %s to user %s", shown, old_owner, user.id)
        if self.bus is not None:
            self.bus.publish(Alert(
                key=f"push_token_moved:{old_owner}:{user.id}:{at.timestamp():.6f}", kind="push_token_moved",
                device_id=None, title="Notifications moved",
                body=f"A phone that received your PumpLink notifications now receives {user.email}'s. "
                     "If that was not you, log in on it again.",
                audience=f"user:{old_owner}"))


class PushToken:
    def __init__(self, auth: Auth):
        self.auth = auth

    @doc("Stop push notifications to one of your tokens", body=PushTokenBody, query=PushTokenQuery,
         answer=PushTokenAnswer, errors=(404,))
    def on_delete(self, req, resp):
        user = self.auth.user(req)
        raw = req.get_param("token")
        token = raw.strip() if raw else read_json(req, PushTokenBody).token.strip()
        removed = m.PushToken.delete().where((m.PushToken.token == token) & (m.PushToken.user == user.id)).execute()
        if not removed:
            raise NotFound("This push token is not registered to your account.", "push_token_not_found")
        resp.media = {"message": "Push notifications to this device stopped.", "token": token}


class UpgradeRequired(PumpLinkError):
    status = 426
    code = "upgrade_required"


class WebSocketOnly:
    """``GET /ws`` without an upgrade: say what to do instead of a bare 404."""

    @doc("WebSocket (101 Switching Protocols): live device, activation and schedule events. "
         "Text mode (the app): send the access token first, receive on/off. JSON mode (?format=json, "
         "or Bearer/?token=): a snapshot, then numbered events; send {type: subscribe, device_ids}. "
         "Close 1008: a bad token at connect, a JSON client's token expiring without {type: auth}, "
         "the account deleted or demoted to pending; 4029: the account opened too many sockets. "
         "Each receiver gets only what REST shows it. A plain GET answers 426.",
         status=101, auth=None, query=LiveQuery, content_type="text/plain")
    def on_get(self, req, resp):
        raise UpgradeRequired("This is a WebSocket endpoint: connect with a WebSocket client "
                              "(Upgrade: websocket).")


def routes(auth: Auth, clock, bus=None, max_push_tokens: int = 10) -> dict:
    return {
        "/register-push-token": RegisterPushToken(auth, clock, bus, max_push_tokens),
        "/push-token": PushToken(auth),
        "/ws": WebSocketOnly(),
    }
