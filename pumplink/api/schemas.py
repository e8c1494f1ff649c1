"""One declarative schema per request body. Wrong types are 400, values out of range 422."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator

from pumplink.errors import Unprocessable

Number = StrictInt | StrictFloat
# Quotas and max runs below ~a second mean nothing to a pump (and underflow the column).
MIN_MINUTES = 0.01


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Credentials(Body):
    email: StrictStr = Field(max_length=254)
    password: StrictStr = Field(max_length=1024)


class RefreshBody(Body):
    refresh_token: StrictStr = Field(min_length=1, max_length=512)


class LogoutBody(Body):
    refresh_token: StrictStr | None = Field(default=None, max_length=512)


class UserPatch(Body):
    role: Literal["pending", "user", "admin"] | None = None
    daily_quota_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)


class Timed(Body):
    """A body with a run length: ``duration`` (minutes, the app's) or ``duration_s`` (seconds).

    Subclasses declare both fields (in their own order: the first wrong field is the one
    reported). Zero or less is 422 from the fields' bounds; neither given is 422
    ``duration_missing``.
    """

    @model_validator(mode="after")
    def _one_duration(self):
        if self.duration is None and self.duration_s is None:
            # A domain error, not a ValueError: pydantic lets it through with its code intact.
            raise Unprocessable("Give duration (minutes) or duration_s (seconds).", "duration_missing")
        return self

    @property
    def seconds(self) -> int:
        """The run length in whole seconds; ``duration_s`` wins over ``duration``, as API.md says."""
        seconds = self.duration_s if self.duration_s is not None else self.duration * 60
        return max(1, round(seconds))


def minutes_field() -> Any:
    """The ``duration`` field: minutes, the app's unit (zero, the dial at rest, is 422)."""
    return Field(default=None, gt=0, le=24 * 60, description="minutes")


def seconds_field() -> Any:
    """The ``duration_s`` field: seconds; it wins over ``duration``."""
    return Field(default=None, gt=0, le=24 * 3600, description="seconds; wins over duration")


class ActivateBody(Timed):
    device_id: StrictInt = Field(default=1, ge=1)
    duration: Number | None = minutes_field()
    duration_s: Number | None = seconds_field()


class DeviceCreate(Body):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: StrictStr = Field(min_length=1, max_length=100)
    protocol: Literal["pumplink", "legacy"] = "pumplink"
    daily_quota_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)
    max_run_minutes: Number = Field(default=60, ge=MIN_MINUTES, le=24 * 60)
    site_id: StrictInt | None = Field(default=None, ge=1, le=2**31 - 1)


class DevicePatch(Body):
    # Absent means "unchanged"; only the quota may be null ("the default"). The other columns are
    # NOT NULL, so an explicit null is a wrong type (400), not a database error.
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: StrictStr = Field(default=None, min_length=1, max_length=100)
    protocol: Literal["pumplink", "legacy"] = None
    daily_quota_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)
    max_run_minutes: Number = Field(default=None, ge=MIN_MINUTES, le=24 * 60)
    site_id: StrictInt = Field(default=None, ge=1, le=2**31 - 1)


# A day inside Python's range: a time without a zone gets the server's later, and no zone's
# offset (under 24 h) can then push it out of range on the way to UTC.
EARLIEST = dt.datetime(1, 1, 2)
LATEST = dt.datetime(9999, 12, 30, 23, 59, 59)


def _storable(value: dt.datetime) -> dt.datetime:
    if not EARLIEST <= value.replace(tzinfo=None) <= LATEST:
        raise ValueError("must be between 0001-01-02 and 9999-12-30")
    return value


StorableTime = Annotated[dt.datetime, AfterValidator(_storable)]
MAX_ID = 2**31 - 1
# The characters a query value may never carry (PostgreSQL cannot store NUL; none is meaningful).
CONTROL_CHARACTERS = frozenset(chr(c) for c in (*range(0x20), 0x7F))


class PageQuery(Body):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=10**9)
    cursor: str | None = Field(default=None,
                               description="next_cursor of the previous page: the page after it (stable under inserts)")
    since: StorableTime | None = Field(default=None, description="ISO 8601; without a zone, the server's")
    until: StorableTime | None = Field(default=None, description="ISO 8601; without a zone, the server's")


class DeviceQuery(Body):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


class OwnedQuery(PageQuery):
    mine: Literal["true", "false"] | None = Field(default=None, description="admins: only their own")
    device_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class ActivationQuery(OwnedQuery):
    state: str | None = Field(default=None, max_length=16, pattern=r"^[a-z_]+$",
                              description="queued, starting, running, stopping, completed, stopped, failed "
                                          "or cancelled")


class ScheduleQuery(OwnedQuery):
    enabled: bool | None = None


class EmptyBody(Body):
    """A body that carries nothing (``{}``), as the app sends it."""
