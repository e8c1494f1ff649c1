"""peewee models for everything the API names. Times are naive UTC (see ``clock.to_db``).

Models are bound to a database at run time (``bind_models``), so nothing here is global state.
"""

from __future__ import annotations

import datetime as dt

import peewee as pw


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class BaseModel(pw.Model):
    class Meta:
        legacy_table_names = False


class User(BaseModel):
    # Stored lowercased; the unique index therefore compares case-insensitively.
    email = pw.CharField(max_length=254, unique=True)
    password_hash = pw.CharField(max_length=100)
    role = pw.CharField(max_length=16, default="pending", index=True)
    daily_quota_minutes = pw.FloatField(null=True)
    created_at = pw.DateTimeField(default=_utcnow)


class RefreshToken(BaseModel):
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="refresh_tokens")
    token_hash = pw.CharField(max_length=64, unique=True)
    family = pw.CharField(max_length=36, index=True)
    created_at = pw.DateTimeField(default=_utcnow)
    expires_at = pw.DateTimeField()
    used_at = pw.DateTimeField(null=True)
    revoked_at = pw.DateTimeField(null=True)


class Site(BaseModel):
    """A farm or a village scheme: every device belongs to one, people are members with a role."""

    name = pw.CharField(max_length=100, unique=True)
    # The site every device of an older install was put in, and new accounts join (see config).
    is_default = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=_utcnow)


class Membership(BaseModel):
    site = pw.ForeignKeyField(Site, on_delete="CASCADE", backref="memberships")
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="memberships")
    role = pw.CharField(max_length=16)  # viewer | operator | manager (pumplink.sites.access.SITE_ROLES)
    # NULL: no per-member quota at this site.
    daily_quota_minutes = pw.FloatField(null=True)
    created_at = pw.DateTimeField(default=_utcnow)

    class Meta:
        indexes = ((("site", "user"), True),)


class Invitation(BaseModel):
    site = pw.ForeignKeyField(Site, on_delete="CASCADE", backref="invitations")
    # SHA-256 of the code: the code itself is shown once and never stored.
    code_hash = pw.CharField(max_length=64, unique=True)
    role = pw.CharField(max_length=16)
    created_by = pw.ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    created_at = pw.DateTimeField(default=_utcnow)
    expires_at = pw.DateTimeField()
    used_at = pw.DateTimeField(null=True)
    used_by = pw.ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")


def default_site_id() -> int | None:
    """The site a device goes to when none is named (made by migration 4, or 1 on a fresh install)."""
    return Site.select(Site.id).where(Site.is_default == True).order_by(Site.id).scalar()  # noqa: E712


class Device(BaseModel):
    name = pw.CharField(max_length=100)
    site = pw.ForeignKeyField(Site, on_delete="RESTRICT", backref="devices", index=True, default=default_site_id)
    protocol = pw.CharField(max_length=16, default="pumplink")
    # NULL: the PUMPLINK_DAILY_QUOTA_MINUTES setting applies.
    daily_quota_minutes = pw.FloatField(null=True)
    max_run_minutes = pw.FloatField(default=60)
    created_at = pw.DateTimeField(default=_utcnow)
    deleted_at = pw.DateTimeField(null=True)
    # Since when an OFF was sent that the pump has not confirmed: a restart sends it again.
    off_owed_since = pw.DateTimeField(null=True)
    # Since when controller-started runs exceed PUMPLINK_MANUAL_RUNS_PER_HOUR (no device_on pushes).
    flapping_since = pw.DateTimeField(null=True)


class Schedule(BaseModel):
    device = pw.ForeignKeyField(Device, on_delete="CASCADE", backref="schedules")
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="schedules")
    start_time = pw.DateTimeField()
    rrule = pw.TextField(null=True)
    duration_s = pw.IntegerField()
    enabled = pw.BooleanField(default=True)
    next_run_at = pw.DateTimeField(null=True, index=True)
    created_at = pw.DateTimeField(default=_utcnow)
    # next_run_at's place in its rule: a COUNT rule counts on from here (migration 3).
    next_run_index = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])


class Activation(BaseModel):
    device = pw.ForeignKeyField(Device, on_delete="CASCADE", backref="activations")
    user = pw.ForeignKeyField(User, null=True, on_delete="SET NULL", backref="activations")
    schedule = pw.ForeignKeyField(Schedule, null=True, on_delete="SET NULL")
    duration_s = pw.IntegerField()
    # queued -> starting -> running -> (stopping) -> completed | stopped | failed; queued -> cancelled
    state = pw.CharField(max_length=16, default="queued")
    reason = pw.CharField(max_length=64, null=True)
    ended_by = pw.CharField(max_length=64, null=True)
    source = pw.CharField(max_length=16, default="api")
    command_id = pw.CharField(max_length=36, null=True)
    created_at = pw.DateTimeField(default=_utcnow)
    started_at = pw.DateTimeField(null=True)
    ends_at = pw.DateTimeField(null=True)
    ended_at = pw.DateTimeField(null=True)

    class Meta:
        indexes = ((("device", "state"), False), (("user", "created_at"), False))


class Session(BaseModel):
    device = pw.ForeignKeyField(Device, on_delete="CASCADE", backref="sessions")
    activation = pw.ForeignKeyField(Activation, null=True, on_delete="SET NULL")
    user = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    started_at = pw.DateTimeField()
    ended_at = pw.DateTimeField(null=True)
    intended_s = pw.IntegerField(null=True)
    actual_s = pw.FloatField(null=True)
    start_cause = pw.CharField(max_length=32)
    end_reason = pw.CharField(max_length=32, null=True)

    class Meta:
        indexes = ((("device", "started_at"), False), (("user", "started_at"), False))


class DeviceLog(BaseModel):
    device = pw.ForeignKeyField(Device, on_delete="CASCADE", backref="logs")
    session = pw.ForeignKeyField(Session, null=True, on_delete="SET NULL")
    activation = pw.ForeignKeyField(Activation, null=True, on_delete="SET NULL")
    event = pw.CharField(max_length=16)
    cause = pw.CharField(max_length=32)
    actor = pw.CharField(max_length=64, null=True)
    detail = pw.TextField(null=True)
    at = pw.DateTimeField(default=_utcnow)

    class Meta:
        indexes = ((("device", "at"), False),)


class ScheduleRun(BaseModel):
    schedule = pw.ForeignKeyField(Schedule, on_delete="CASCADE", backref="runs")
    due_at = pw.DateTimeField()
    fired_at = pw.DateTimeField(default=_utcnow)
    outcome = pw.CharField(max_length=32)
    detail = pw.TextField(null=True)
    activation = pw.ForeignKeyField(Activation, null=True, on_delete="SET NULL")

    class Meta:
        # A due time fires at most once, across restarts.
        indexes = ((("schedule", "due_at"), True),)


class PushToken(BaseModel):
    token = pw.CharField(max_length=200, unique=True)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", backref="push_tokens")
    created_at = pw.DateTimeField(default=_utcnow)


class SentNotification(BaseModel):
    event_key = pw.CharField(max_length=100)
    token = pw.CharField(max_length=200)
    status = pw.CharField(max_length=16, default="pending")
    detail = pw.TextField(null=True)
    created_at = pw.DateTimeField(default=_utcnow)

    class Meta:
        # Each event reaches each token at most once.
        indexes = ((("event_key", "token"), True),)


class AuditLog(BaseModel):
    at = pw.DateTimeField(default=_utcnow, index=True)
    actor = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    action = pw.CharField(max_length=64)
    # NULL: a server-wide entry (accounts, emergency stop), read by admins only.
    site = pw.ForeignKeyField(Site, null=True, on_delete="SET NULL", index=True)
    target = pw.CharField(max_length=64, null=True)
    detail = pw.TextField(null=True)


class SchemaVersion(BaseModel):
    version = pw.IntegerField(primary_key=True)
    applied_at = pw.DateTimeField(default=_utcnow)


MODELS = [User, RefreshToken, Site, Membership, Invitation, Device, Schedule, Activation, Session, DeviceLog, ScheduleRun,
          PushToken, SentNotification, AuditLog, SchemaVersion]


def bind_models(db: pw.Database) -> None:
    db.bind(MODELS, bind_refs=False, bind_backrefs=False)
