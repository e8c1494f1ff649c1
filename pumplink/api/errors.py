"""Every error leaves as ``{"error", "code"}`` with an honest status; a 500 never leaks a trace."""

from __future__ import annotations

import json
import logging
import re

import falcon
import peewee
import pydantic

from pumplink.storage.db import OPERATIONAL_ERRORS
from pumplink.errors import BadRequest, DatabaseUnavailable, PumpLinkError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 411: "length_required", 413: "body_too_large",
    414: "uri_too_long", 415: "unsupported_media_type", 422: "invalid_value", 429: "too_many_requests",
    431: "headers_too_large", 503: "unavailable",
}


def _write(resp: falcon.Response, status: int, message: str, code: str, **extra) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    body = {"error": message, "code": code}
    body.update(extra)
    resp.text = json.dumps(body)


def serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    status = exc.status_code
    title = re.sub(r"^\d+\s*", "", exc.title or "")
    message = exc.description or title or "The request failed."
    if status == 404 and not exc.description:
        message = f"There is nothing at {req.path}."
    elif status == 405 and not exc.description:
        message = f"{req.method} is not allowed on {req.path}."
    _write(resp, status, message, getattr(exc, "code", None) or _CODES.get(status, "http_error"))
    for name, value in (exc.headers or {}).items():
        resp.set_header(name, value)


def handle_domain_error(req, resp, exc: PumpLinkError, params) -> None:
    if exc.retry_after is not None:
        resp.set_header("Retry-After", str(int(max(1, exc.retry_after))))
    _write(resp, exc.status, exc.message, exc.code, **exc.extra)


def handle_validation_error(req, resp, exc: pydantic.ValidationError, params) -> None:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    kind = first.get("type", "")
    # Missing fields and wrong types are malformed requests (400); values out of range are 422.
    malformed = kind == "missing" or kind.endswith("_type") or kind.endswith("_parsing") or kind in (
        "extra_forbidden", "model_type", "json_invalid", "dict_type", "list_type")
    message = f"{where}: {first.get('msg', 'invalid value')}"
    if malformed:
        _write(resp, 400, message, "invalid_field" if kind != "missing" else "missing_field", field=where)
    else:
        _write(resp, 422, message, "invalid_value", field=where)


def handle_database_error(req, resp, exc, params) -> None:
    log.warning("database unavailable during %s %s: %s", req.method, req.path, exc)
    handle_domain_error(req, resp, DatabaseUnavailable(), params)


def handle_data_error(req, resp, exc, params) -> None:
    # A value the schema let through but the database cannot hold: the request's fault, not ours.
    log.warning("database refused a value on %s %s: %s", req.method, req.path, exc)
    _write(resp, 422, "A value is out of the range the server can store.", "value_out_of_range")


def handle_integrity_error(req, resp, exc, params) -> None:
    # A uniqueness race or a constraint validation missed: refused, logged, never a 500.
    log.warning("database constraint refused %s %s: %s", req.method, req.path, exc)
    _write(resp, 409, "The change conflicts with what is stored; reload and try again.", "conflict")


def handle_unexpected(req, resp, exc: Exception, params) -> None:
    if isinstance(exc, falcon.HTTPError):
        serialize_http_error(req, resp, exc)
        return
    log.exception("unexpected error on %s %s", req.method, req.path)
    _write(resp, 500, "Something went wrong on the server; it has been logged.", "internal_error")


def install(app: falcon.App) -> None:
    app.set_error_serializer(serialize_http_error)
    app.add_error_handler(Exception, handle_unexpected)
    for error_class in OPERATIONAL_ERRORS:
        app.add_error_handler(error_class, handle_database_error)
    app.add_error_handler(pydantic.ValidationError, handle_validation_error)
    app.add_error_handler(peewee.DataError, handle_data_error)
    app.add_error_handler(peewee.IntegrityError, handle_integrity_error)
    app.add_error_handler(PumpLinkError, handle_domain_error)


def malformed_json(detail: str) -> BadRequest:
    return BadRequest(f"The body is not valid JSON: {detail}", "malformed_json")
