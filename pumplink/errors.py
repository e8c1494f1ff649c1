"""Domain errors. Each carries the HTTP status, a snake_case code and a sentence a person can act on.

The API maps them to ``{"error", "code"}`` bodies in one handler; actors raise them without
knowing about HTTP frameworks.
"""

from __future__ import annotations


class PumpLinkError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, *, retry_after: float | None = None, **extra):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.retry_after = retry_after
        self.extra = extra


class BadRequest(PumpLinkError):
    status = 400
    code = "bad_request"


class Unauthorized(PumpLinkError):
    status = 401
    code = "unauthorized"


class Forbidden(PumpLinkError):
    status = 403
    code = "forbidden"


class NotFound(PumpLinkError):
    status = 404
    code = "not_found"


class Conflict(PumpLinkError):
    status = 409
    code = "conflict"


class Unprocessable(PumpLinkError):
    status = 422
    code = "invalid_value"


class TooManyRequests(PumpLinkError):
    status = 429
    code = "too_many_requests"


class Unavailable(PumpLinkError):
    status = 503
    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """The one "database is down" answer (503, ``database_unavailable``), wherever it is noticed."""

    code = "database_unavailable"

    def __init__(self, message: str = "The database is not reachable right now; try again shortly.", **kw):
        kw.setdefault("retry_after", 5)
        super().__init__(message, **kw)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""
