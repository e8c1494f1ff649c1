"""A device actor's quota checks: its device's daily quota, the requesting user's, and the user's
per-member quota at the device's site; quota.rules.strictest decides."""

from __future__ import annotations

import datetime as dt

from pumplink.storage import models as m
from pumplink.quota import rules as quota
from pumplink.quota import usage
from pumplink.errors import TooManyRequests

UNKNOWN = object()  # "not given": look it up


class Quotas:
    """Mixin of ``DeviceActor``."""

    def _device_quota_s(self) -> float:
        minutes = self.device.daily_quota_minutes
        return (minutes if minutes is not None else self.config.daily_quota_minutes) * 60

    def _used_today_s(self, now: dt.datetime, user_id: int | None = None) -> float:
        if user_id is not None:
            return usage.used_today(now, self.config.tz, user_id=user_id)
        return usage.used_today(now, self.config.tz, device_id=self.device_id)

    def _reserved_s(self, now: dt.datetime, user_id: int | None = None) -> float:
        """Time promised to queued and running work: this actor's own in memory (it is the only
        writer of its device), a user's across devices from the database."""
        if user_id is not None:
            return usage.reserved(now, user_id=user_id)
        open_acts = [*self.queue, *([self.current] if self.current is not None else [])]
        return sum(usage.promised(a.state, a.duration_s, a.ends_at, now) for a in open_acts)

    def _lock_user(self, user_id: int) -> None:
        # Each device actor checks in its own transaction: without this, two requests on two
        # devices at once both missed the other's run (finding 17).
        usage.lock_user(self.db, user_id)

    def _check_quota(self, user_id: int | None, duration_s: int, user_quota=UNKNOWN) -> None:
        now = self.clock.now()
        checks = [("device", self._device_quota_s(), None)]
        if user_id is not None:
            # Before any read (on SQLite a write must come first); a user's own and per-member
            # quotas both count across devices, so every run of a user takes it.
            self._lock_user(user_id)
            if user_quota is UNKNOWN:
                user_quota = m.User.select(m.User.daily_quota_minutes).where(m.User.id == user_id).scalar()
            if user_quota is not None:
                checks.append(("user", user_quota * 60, user_id))
        limits = [quota.Limit(kind, quota_s, self._used_today_s(now, uid), self._reserved_s(now, uid))
                  for kind, quota_s, uid in checks]
        member = usage.member_limit(now, self.config.tz, user_id, self.device_id) if user_id is not None else None
        if member is not None:
            limits.append(member)
        ok, tightest = quota.strictest(limits, duration_s)
        if not ok:
            kind, free = tightest.kind, tightest.free_s
            whose = {"device": f"{self.device.name}'s", "member": "your site's", "user": "your"}[kind]
            raise TooManyRequests(
                f"This would pass {whose} daily quota: {free / 60:.1f} minutes are left today.",
                "quota_exhausted", retry_after=quota.seconds_until_reset(now, self.config.tz),
                quota=kind, left_s=round(free, 1), left_minutes=round(free / 60, 2),
            )
