"""What the API answers, as pydantic models: the OpenAPI document's success bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Time = str  # ISO 8601 with Z


class UserOut(BaseModel):
    id: int
    email: str
    role: Literal["pending", "user", "admin"]
    approved: bool
    daily_quota_minutes: float | None
    created_at: Time


class RegisterAnswer(BaseModel):
    message: str
    user: UserOut


class TokensAnswer(BaseModel):
    access_token: str
    token: str  # the same as access_token, as the Go server answered
    refresh_token: str
    token_type: str
    expires_in: int
    user: UserOut


class UserPage(BaseModel):
    items: list[UserOut]
    limit: int
    offset: int
    next_cursor: str | None = Field(default=None, description="the next page: ?cursor=<this>; null on the last page")


class ActivationOut(BaseModel):
    id: int
    device_id: int
    user_id: int | None
    schedule_id: int | None
    duration_s: int
    duration_minutes: float
    state: Literal["queued", "starting", "running", "completed", "stopped", "failed", "cancelled"]
    reason: str | None
    ended_by: str | None
    source: str
    created_at: Time
    started_at: Time | None
    ends_at: Time | None
    ended_at: Time | None
    remaining_s: float | None


class ActivationAnswer(BaseModel):
    message: str
    activation: ActivationOut


class ActivationPage(BaseModel):
    items: list[ActivationOut]
    limit: int
    offset: int
    next_cursor: str | None = Field(default=None, description="the next page: ?cursor=<this>; null on the last page")


class Today(BaseModel):
    used_s: float
    used_minutes: float
    reserved_s: float
    left_minutes: float


class DeviceOut(BaseModel):
    id: int
    name: str
    protocol: Literal["pumplink", "legacy"]
    state: Literal["unknown", "offline", "off", "starting", "on", "stopping"]
    available: bool | None
    online: bool
    running: ActivationOut | None
    queue: list[ActivationOut]
    session_id: int | None
    daily_quota_minutes: float
    max_run_minutes: float
    today: Today
    off_owed: bool  # an OFF the pump has not confirmed yet: queued work waits
    flapping: bool  # switched on by its controller more than PUMPLINK_MANUAL_RUNS_PER_HOUR times


class DeviceList(BaseModel):
    devices: list[DeviceOut]
    limit: int | None = Field(default=None, description="only when a page was asked for (?limit= or ?cursor=)")
    next_cursor: str | None = Field(default=None, description="only when a page was asked for; null on the last page")


class GoStatus(BaseModel):
    device_id: int
    status: str
    active_until: Time | None
    intended_duration: float | None  # minutes
    session_id: int | None


class ShutdownAnswer(BaseModel):
    message: str
    device_id: int
    stopped_activation_id: int | None
    cancelled_activation_ids: list[int]


class EmergencyAnswer(BaseModel):
    message: str
    devices: list[dict]


class SessionOut(BaseModel):
    id: int
    device_id: int
    activation_id: int | None
    user_id: int | None
    started_at: Time
    ended_at: Time | None
    intended_s: int | None
    actual_s: float | None
    start_cause: str
    end_reason: str | None


class SessionPage(BaseModel):
    items: list[SessionOut]
    limit: int
    offset: int
    next_offset: int | None
    next_cursor: str | None = Field(default=None, description="the next page: ?cursor=<this>; null on the last page")


class LogOut(BaseModel):
    id: int
    device_id: int
    session_id: int | None
    activation_id: int | None
    event: Literal["on", "off"]
    cause: str
    actor: str | None
    detail: str | None
    at: Time


class LogPage(BaseModel):
    items: list[LogOut]
    limit: int
    offset: int
    next_offset: int | None
    next_cursor: str | None = Field(default=None, description="the next page: ?cursor=<this>; null on the last page")


class AuditOut(BaseModel):
    id: int
    at: Time
    actor_id: int | None
    action: str
    target: str | None
    detail: dict | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    limit: int
    offset: int
    next_cursor: str | None = Field(default=None, description="the next page: ?cursor=<this>; null on the last page")


class Health(BaseModel):
    status: str


class ClusterStatus(BaseModel):
    node: str
    session: str
    partitions: list[int]
    owned: int
    epochs: dict[str, int]
    handovers: dict[str, int]
    forwarded: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="forwarded calls since start: sent (to owners: ok, error, unreachable, timeout, refused) "
                    "and received (as owner: ok, error, invalid, refused)")


class Ready(BaseModel):
    status: str
    checks: dict[str, str]
    cluster: ClusterStatus | None = None  # cluster mode only
