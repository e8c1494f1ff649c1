"""NotifierActor: Expo push notifications for ``Alert`` events, off the request path.

Each event reaches each token at most once, across retries and restarts: a SentNotification
row (unique event_key + token) is inserted BEFORE sending, and only the rows this actor
inserted are sent. A crash between the insert and the send loses that notification rather
than repeating it. Transient failures are retried with backoff by timers, never by sleeping.
"""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import urlsplit

import peewee
import pykka
import requests
import urllib3
from exponent_server_sdk import PushClient, PushMessage, PushServerError, PushTicket

from pumplink.accounts import roles
from pumplink.storage import models as m
from pumplink.clock import to_db
from pumplink.events import Alert
from pumplink.runtime import Runtime
from pumplink.timers import Timer, tell_later

log = logging.getLogger(__name__)

BATCH = 100  # Expo's limit of messages per request
MAX_ATTEMPTS = 5
BACKOFF_S = 1.0
BACKOFF_MAX_S = 60.0
# Expo keeps receipts for a day and advises reading them about 15 minutes after sending.
RECEIPT_DELAY_S = 15 * 60.0
HTTP_TIMEOUT_S = 10.0
_SDK_SAFE_TOKEN = "ExponentPushToken[pumplink]"


def expo_endpoint(url: str) -> tuple[str, str]:
    """``PUMPLINK_EXPO_URL`` (the push/send URL) as the SDK's ``host`` and ``api_url``."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/push/send"):
        path = path[: -len("/push/send")]
    return f"{parts.scheme}://{parts.netloc}", path or PushClient.DEFAULT_BASE_API_URL


class ExpoMessage(PushMessage):
    __slots__ = ()

    def get_payload(self) -> dict:
        # The SDK only knows the older ExponentPushToken[...] prefix; Expo also issues ExpoPushToken[...].
        payload = PushMessage.get_payload(self._replace(to=_SDK_SAFE_TOKEN))
        payload["to"] = self.to
        return payload


@dataclasses.dataclass(frozen=True)
class Retry:
    key: str
    messages: tuple
    attempt: int


@dataclasses.dataclass(frozen=True)
class CheckReceipts:
    tickets: tuple  # (ticket id, token, event key)


def is_transient(exc: Exception) -> bool:
    """Retry only when Expo surely did not take the request: a resend must not duplicate."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    response = getattr(exc, "response", None)
    if isinstance(exc, (PushServerError, requests.HTTPError)) and response is not None:
        return response.status_code == 429 or response.status_code >= 500
    return False


class NotifierActor(pykka.ThreadingActor):
    def __init__(self, rt: Runtime, *, backoff_s: float = BACKOFF_S, receipt_delay_s: float = RECEIPT_DELAY_S):
        super().__init__()
        self.rt = rt
        self.db = rt.db
        self.config = rt.config
        self.clock = rt.clock
        self.backoff_s = backoff_s
        self.receipt_delay_s = receipt_delay_s
        self.client: PushClient | None = None
        self._timers: list[Timer] = []

    def on_start(self) -> None:
        session = requests.Session()
        session.headers.update({"accept": "application/json", "accept-encoding": "gzip, deflate",
                                "content-type": "application/json"})
        if self.config.expo_access_token:
            session.headers["Authorization"] = f"Bearer {self.config.expo_access_token}"
        host, api_url = expo_endpoint(self.config.expo_url)
        self.client = PushClient(host=host, api_url=api_url, session=session, timeout=HTTP_TIMEOUT_S)
        log.info("push notifications go to %s%s/push/send", host, api_url)

    def on_stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.client is not None:
            self.client.session.close()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("notifier failed: %s", exception_value)

    def on_receive(self, message):
        try:
            with self.db.connection_context():
                if isinstance(message, Alert):
                    self._on_alert(message)
                elif isinstance(message, Retry):
                    self._send(message.key, list(message.messages), message.attempt)
                elif isinstance(message, CheckReceipts):
                    self._check_receipts(message.tickets)
        except Exception:
            # Never die: one failed alert must not end every later notification.
            log.exception("notifier failed handling %s", type(message).__name__)

    # --- an alert ----------------------------------------------------------------------------
    def _on_alert(self, alert: Alert) -> None:
        tokens = self._tokens(alert)
        if not tokens:
            log.debug("alert %s: nobody to notify", alert.key)
            return
        mine = self._claim(alert.key, tokens)
        if not mine:
            log.info("alert %s was already sent to all %d tokens; not again", alert.key, len(tokens))
            return
        title = self._title(alert)
        data = {"kind": alert.kind, "event": alert.key, "device_id": alert.device_id, **alert.data}
        messages = [ExpoMessage(to=token, title=title, body=alert.body, data=data, sound="default", priority="high")
                    for token in mine]
        self._send(alert.key, messages, 1)

    def _tokens(self, alert: Alert) -> list[str]:
        """The tokens of the alert's audience as the accounts are NOW: a pending or deleted
        account is sent nothing, even an alert about its own activation or schedule."""
        audience = alert.audience
        approved = m.User.role.in_(roles.APPROVED_ROLES)
        admins = m.User.role == "admin"
        members = None
        if alert.device_id is not None:
            site = m.Device.select(m.Device.site).where(m.Device.id == alert.device_id)
            members = m.Membership.select(m.Membership.user).where(m.Membership.site.in_(site))
            # About a device, "the admins" are also those who manage its site.
            managers = members.where(m.Membership.role == "manager")
            admins = admins | (approved & m.User.id.in_(managers))
        if audience.group == "approved":
            where = approved
        elif audience.group == "admins":
            where = admins
        elif audience.group == "user" and audience.user_id is not None:
            where = approved & (m.User.id == audience.user_id)
            if audience.also_admins:
                where |= admins
        else:
            log.warning("alert %s has an unknown audience %r; only its extra user is told", alert.key, audience)
            where = m.User.id.is_null()
        if alert.extra_user_id is not None:
            where |= approved & (m.User.id == alert.extra_user_id)
        if members is not None:
            # An alert about a device reaches only who may see it: admins and its site's members.
            where = where & ((m.User.role == "admin") | m.User.id.in_(members))
        users = m.User.select(m.User.id).where(where)
        return [t for (t,) in m.PushToken.select(m.PushToken.token).where(m.PushToken.user.in_(users))
                .order_by(m.PushToken.id).tuples()]

    def _claim(self, key: str, tokens: list[str]) -> list[str]:
        """Insert one row per (event, token); the tokens whose row WE inserted are ours to send."""
        now = to_db(self.clock.now())
        rows = [{"event_key": key, "token": t, "status": "pending", "created_at": now} for t in tokens]
        if self.db.returning_clause:
            query = m.SentNotification.insert_many(rows).on_conflict_ignore().returning(m.SentNotification.token)
            return [token for (token,) in query.tuples().execute()]
        claimed = []
        for row in rows:
            try:
                with self.db.atomic():
                    m.SentNotification.insert(**row).execute()
                claimed.append(row["token"])
            except peewee.IntegrityError:
                pass
        return claimed

    def _title(self, alert: Alert) -> str:
        if alert.device_id is not None:
            name = m.Device.select(m.Device.name).where(m.Device.id == alert.device_id).scalar()
            if name:
                return name
        return alert.title

    # --- sending -----------------------------------------------------------------------------
    def _send(self, key: str, messages: list, attempt: int) -> None:
        for start in range(0, len(messages), BATCH):
            chunk = messages[start:start + BATCH]
            try:
                tickets = self.client.publish_multiple(chunk)
            except Exception as exc:  # the SDK raises requests' and its own errors
                if is_transient(exc) and attempt < MAX_ATTEMPTS:
                    self._retry(key, chunk, attempt, exc)
                else:
                    log.error("push for %s to %d tokens failed for good: %s", key, len(chunk), exc)
                    self._mark(key, [msg.to for msg in chunk], "failed", str(exc)[:500])
                continue
            self._on_tickets(key, tickets, attempt)

    def _on_tickets(self, key: str, tickets: list[PushTicket], attempt: int) -> None:
        sent, again, receipts = [], [], []
        for ticket in tickets:
            token = ticket.push_message.to
            if ticket.is_success():
                sent.append(token)
                if ticket.id:
                    receipts.append((ticket.id, token, key))
                continue
            error = (ticket.details or {}).get("error")
            if error == PushTicket.ERROR_DEVICE_NOT_REGISTERED:
                self._forget(token, key)
            elif error == PushTicket.ERROR_MESSAGE_RATE_EXCEEDED and attempt < MAX_ATTEMPTS:
                again.append(ticket.push_message)
            else:
                log.warning("push for %s to %s refused: %s %s", key, token, error, ticket.message)
                self._mark(key, [token], "failed", f"{error or 'error'}: {ticket.message}"[:500])
        if sent:
            self._mark(key, sent, "sent")
            log.info("push for %s sent to %d tokens", key, len(sent))
        if again:
            self._retry(key, again, attempt, "MessageRateExceeded")
        if receipts:
            self._tell_later(self.receipt_delay_s, CheckReceipts(tuple(receipts)))

    def _retry(self, key: str, messages: list, attempt: int, why) -> None:
        delay = min(BACKOFF_MAX_S, self.backoff_s * 2 ** (attempt - 1))
        log.warning("push for %s to %d tokens failed (%s); retry %d in %.1f s", key, len(messages), why,
                    attempt + 1, delay)
        self._tell_later(delay, Retry(key, tuple(messages), attempt + 1))

    def _check_receipts(self, tickets: tuple) -> None:
        by_id = {ticket_id: (token, key) for ticket_id, token, key in tickets}
        stubs = [PushTicket(push_message=None, status=PushTicket.SUCCESS_STATUS, message="", details=None, id=i)
                 for i in by_id]
        try:
            receipts = self.client.check_receipts_multiple(stubs)
        except Exception as exc:
            log.warning("reading %d push receipts failed: %s", len(stubs), exc)
            return
        for receipt in receipts:
            if receipt.id not in by_id:
                continue
            token, key = by_id[receipt.id]
            error = (receipt.details or {}).get("error")
            if receipt.is_success():
                self._mark(key, [token], "delivered")
            elif error == PushTicket.ERROR_DEVICE_NOT_REGISTERED:
                self._forget(token, key)
            else:
                self._mark(key, [token], "failed", f"{error or 'error'}: {receipt.message}"[:500])

    # --- records -----------------------------------------------------------------------------
    def _mark(self, key: str, tokens: list[str], status: str, detail: str | None = None) -> None:
        (m.SentNotification.update(status=status, detail=detail)
         .where((m.SentNotification.event_key == key) & m.SentNotification.token.in_(tokens)).execute())

    def _forget(self, token: str, key: str) -> None:
        m.PushToken.delete().where(m.PushToken.token == token).execute()
        self._mark(key, [token], "unregistered", "DeviceNotRegistered")
        log.info("push token %s… is no longer registered with Expo; removed", token[:24])

    def _tell_later(self, delay: float, message) -> None:
        self._timers = [t for t in self._timers if t.is_alive()]
        self._timers.append(tell_later(self.actor_ref, delay, message))
