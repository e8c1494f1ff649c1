"""One declarative schema per request body. Wrong types are 400, values out of range 422."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

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


class ActivateBody(Body):
    device_id: StrictInt = Field(default=1, ge=1)
    duration: Number | None = Field(default=None, gt=0, le=24 * 60)
    duration_s: Number | None = Field(default=None, gt=0, le=24 * 3600)


class DeviceCreate(Body):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: StrictStr = Field(min_length=1, max_length=100)
    protocol: Literal["pumplink", "legacy"] = "pumplink"
    daily_quota_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)
    max_run_minutes: Number = Field(default=60, ge=MIN_MINUTES, le=24 * 60)


class DevicePatch(Body):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: StrictStr | None = Field(default=None, min_length=1, max_length=100)
    protocol: Literal["pumplink", "legacy"] | None = None
    daily_quota_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)
    max_run_minutes: Number | None = Field(default=None, ge=MIN_MINUTES, le=24 * 60)


class PageQuery(Body):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=10**9)
    since: dt.datetime | None = None
    until: dt.datetime | None = None


class EmptyBody(Body):
    """A body that carries nothing (``{}``), as the app sends it."""
