"""What every resource shares: reading JSON bodies, authentication, database connections."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import time

import falcon
import peewee

from pumplink.storage import models as m
from pumplink.accounts.credentials import bearer_token, well_formed
from pumplink.accounts.service import Accounts, require_role
from pumplink.errors import BadRequest, PumpLinkError, Unauthorized
from pumplink.api.errors import malformed_json

log = logging.getLogger("pumplink.request")

MAX_BODY = 1024 * 1024


def read_json(req: falcon.Request, schema=None):
    """The body as a dict (validated by ``schema`` when given); content type is not insisted on."""
    raw = _read_body(req)
    if not raw.strip():
        data = {}
    else:
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise malformed_json(str(exc)) from None
        except RecursionError:
            raise malformed_json("it is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.", "body_not_object")
    if _has_nul(data):
        # PostgreSQL cannot store NUL in text; refusing here beats a 500 from the driver.
        raise BadRequest("Text in the body must not contain NUL (\\u0000) characters.", "nul_character")
    return schema.model_validate(data) if schema is not None else data


def _read_body(req: falcon.Request) -> bytes:
    if req.content_length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        # falcon's bounded_stream reads a body without Content-Length as empty; the server
        # (gevent's pywsgi) decodes chunked input on wsgi.input itself.
        stream, parts, size = req.stream, [], 0
        while size <= MAX_BODY:
            part = stream.read(MAX_BODY + 1 - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        raw = b"".join(parts)
    else:
        raw = req.bounded_stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise falcon.HTTPContentTooLarge(description="The request body is larger than 1 MiB.")
    return raw


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _has_nul(value) -> bool:
    stack = [value]  # iterative: a body may be nested as deep as the JSON parser allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


MAX_FORWARDED_HOPS = 20
_warned_peers: set[str] = set()  # say once per peer (a few at most) that its X-Forwarded-For is ignored


@functools.lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def _ip(text: str):
    """An address from a peer or an X-Forwarded-For hop ("1.2.3.4", "1.2.3.4:5678", "[::1]:80")."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(req: falcon.Request, trusted_proxies: tuple[str, ...] = ()) -> str:
    """The client's address, for limits and logs.

    X-Forwarded-For is believed only when the peer is a trusted proxy, and then read from
    the right: each trusted proxy appends the address it saw, so the rightmost hop that is
    not a trusted proxy is the client. Hops further left are whatever the client wrote."""
    peer = req.remote_addr or "unknown"
    nets = _networks(tuple(trusted_proxies))
    current = _ip(peer)
    if not nets or current is None or not any(current in net for net in nets):
        if req.get_header("X-Forwarded-For") and peer not in _warned_peers and len(_warned_peers) < 8:
            _warned_peers.add(peer)
            log.warning("X-Forwarded-For from %s is ignored: that peer is not in PUMPLINK_TRUSTED_PROXIES. "
                        "If it is your reverse proxy, add it, or every client behind it shares its limits.", peer)
        return peer
    hops = [h for h in (req.get_header("X-Forwarded-For") or "").split(",") if h.strip()]
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        ip = _ip(hop)
        if ip is None:
            break  # not an address: stop at the last hop a trusted proxy vouched for
        current = ip
        if not any(ip in net for net in nets):
            break
    return str(current)


class Auth:
    def __init__(self, accounts: Accounts):
        self.accounts = accounts

    @staticmethod
    def bearer(req: falcon.Request) -> str:
        token = bearer_token(req.get_header("Authorization"))
        if token is None:
            raise Unauthorized("Log in first: send Authorization: Bearer <access token>.", "missing_token")
        if not well_formed(token):
            raise Unauthorized("The access token is not valid; log in again.", "invalid_token")
        return token

    def user(self, req: falcon.Request, role: str | None = None) -> m.User:
        user, _ = self.accounts.user_for_token(self.bearer(req))
        if role is not None:
            require_role(user, role)
        return user


class Resource:
    """What resources share: authentication, the gateway, the configured time zone and the clock."""

    def __init__(self, auth: Auth, gateway, tz=None, clock=None):
        self.auth = auth
        self.gateway = gateway
        self.tz = tz
        self.clock = clock


class DatabaseMiddleware:
    """A request's pooled connection (opened by its first query) is returned when it ends."""

    def __init__(self, db: peewee.Database):
        self.db = db

    def process_request(self, req, resp):
        if req.path.endswith(("/health", "/metrics")):
            return
        if req.content_length is not None and req.content_length > MAX_BODY:
            raise falcon.HTTPContentTooLarge(description="The request body is larger than 1 MiB.")

    def process_response(self, req, resp, resource, req_succeeded):
        if not self.db.is_closed():
            self.db.close()


class RequestLogMiddleware:
    """One line per request."""

    def process_request(self, req, resp):
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        started = getattr(req.context, "started", None)
        took = (time.perf_counter() - started) * 1000 if started else 0.0
        log.info("%s %s %s %.1fms", req.method, req.path, resp.status_code if hasattr(resp, "status_code") else resp.status,
                 took, extra={"method": req.method, "path": req.path, "duration_ms": round(took, 1)})


def page_params(req: falcon.Request):
    from pumplink.api.schemas import PageQuery

    return PageQuery.model_validate({k: v for k, v in req.params.items() if k in ("limit", "offset", "cursor", "since", "until")})


def owned(query, model, user, req: falcon.Request):
    """The caller's own rows (an admin's: everyone's, unless ``?mine=true``), and ``?device_id=``."""
    if user.role != "admin" or req.get_param("mine") == "true":
        query = query.where(model.user == user.id)
    device_id = req.get_param_as_int("device_id", min_value=1, max_value=2**31 - 1)
    if device_id is not None:
        query = query.where(model.device == device_id)
    return query


def path_id(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise falcon.HTTPNotFound(description=f"{value!r} is not an id.") from None
    if number < 1 or number > 2**31 - 1:
        raise falcon.HTTPNotFound(description=f"There is nothing with id {value}.")
    return number


__all__ = ["Auth", "DatabaseMiddleware", "RequestLogMiddleware", "read_json", "client_address", "page_params",
           "path_id", "PumpLinkError"]
