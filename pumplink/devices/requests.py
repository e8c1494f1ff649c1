"""What the API and the scheduler ask of a device: runs, cancels, force shutdown, reload and
the views of it. Each ask is one transaction (``transactional``); the machine decides, this
reads what a quota check needs, turns a refusal into its error and shows the result.

A mixin of ``DeviceActor``: it runs on its thread.
"""

from __future__ import annotations

import datetime as dt
import logging

from pumplink.clock import iso
from pumplink.devices.state import Refusal, Usage
from pumplink.devices.transactions import transactional
from pumplink.errors import Conflict, TooManyRequests, Unavailable
from pumplink.gateway import Gateway
from pumplink.quota import rules as quota_rules
from pumplink.quota import usage
from pumplink.storage import models as m
from pumplink.views import activation_view

log = logging.getLogger(__name__)

class Requests:
    """Mixin of ``DeviceActor``."""

    @transactional
    def activate(self, user_id: int | None, duration_s: int, source: str = "api",
                 schedule_id: int | None = None) -> dict:
        device = self._live_device()
        Gateway.check_run_length(device, duration_s, self.config.min_run_s)
        now = self.clock.now()
        broker = self.rt.broker.connected.is_set()
        result = self.machine.refusal(now, broker_connected=broker)
        if result is None:
            result = self.machine.activate(now, user_id=user_id, duration_s=duration_s, source=source,
                                           schedule_id=schedule_id, usage=self._usage(now, user_id),
                                           broker_connected=broker)
        if isinstance(result, Refusal):
            raise self._refused(result, now)
        act, effects = result
        self._apply(effects)
        log.info("device %s activation %s queued for %ss (%s)", self.device_id, act.id, duration_s, source)
        return activation_view(act, now)

    def _usage(self, now: dt.datetime, user_id: int | None) -> Usage:
        """Today's numbers for the quota check. A user's own and per-member quotas span devices:
        their lock comes before counting them, so checks of one user on two devices take turns
        (usage.quota_reads); a user without such a quota takes no lock."""
        tz = self.config.tz
        if user_id is None:
            return Usage(usage.used_today(now, tz, device_id=self.device_id))
        user_quota, member_minutes, device_used = usage.quota_reads(self.db, now, tz, user_id, self.device_id)
        member = usage.member_limit(now, tz, user_id, self.device_id, member_minutes)
        if user_quota is None:
            return Usage(device_used, member=member)
        return Usage(device_used, user_quota, *usage.user_today(now, tz, user_id), member=member)

    def _refused(self, why: Refusal, now: dt.datetime) -> Exception:
        name = self.device.name
        if why.code == "device_offline":
            return Conflict(f"{name} is offline; it cannot be started now.", "device_offline")
        if why.code == "off_unconfirmed":
            return Conflict(f"{name} has not confirmed its last OFF; it takes no new runs until it does.",
                            "off_unconfirmed")
        if why.code == "broker_unavailable":
            return Unavailable("The MQTT broker is not reachable; pumps cannot be started now.",
                               "broker_unavailable", retry_after=5)
        if why.code == "queue_full":
            return TooManyRequests(f"{name} already has {why.queued} requests waiting; try again later.",
                                   "queue_full", retry_after=max(1, int(why.reserved_s)))
        whose = {"device": f"{name}'s", "member": "your site's"}.get(why.quota, "your")
        return TooManyRequests(
            f"This would pass {whose} daily quota: {why.free_s / 60:.1f} minutes are left today.",
            "quota_exhausted", retry_after=quota_rules.seconds_until_reset(now, self.config.tz),
            quota=why.quota, left_s=round(why.free_s, 1), left_minutes=round(why.free_s / 60, 2),
        )

    @transactional
    def cancel(self, activation_id: int, by: str) -> dict:
        act, effects = self.machine.cancel(self.clock.now(), activation_id, by)
        if act is None:
            raise Conflict("This activation has already ended.", "activation_ended")
        self._apply(effects)
        return activation_view(act, self.clock.now())

    @transactional
    def cancel_queued_of(self, user_id: int, reason: str = "owner_revoked") -> list[int]:
        """Cancel a user's queued activations (the user is no longer approved). A run already
        going is left to end at its time: it was asked for while the user was approved."""
        acts, effects = self.machine.cancel_queued_of(self.clock.now(), user_id, reason)
        self._apply(effects)
        return [act.id for act in acts]

    @transactional
    def force_shutdown(self, by: str) -> dict:
        """OFF at once, whatever the state; the queue is cancelled. Works for offline devices too."""
        stopped, cancelled, effects = self.machine.force_shutdown(self.clock.now(), by)
        self._apply(effects)
        return {"device_id": self.device_id, "stopped_activation_id": stopped.id if stopped is not None else None,
                "cancelled_activation_ids": [act.id for act in cancelled]}

    @transactional
    def reload(self) -> dict:
        self.device = d = m.Device.get_by_id(self.device_id)
        self._apply(self.machine.reload(self.clock.now(), name=d.name, protocol=d.protocol,
                                        daily_quota_minutes=d.daily_quota_minutes))
        return self.describe()

    @transactional
    def describe(self) -> dict:
        now = self.clock.now()
        return self.view((usage.used_today(now, self.config.tz, device_id=self.device_id),
                          self.machine.reserved_s(now)))

    def view(self, today: tuple[float, float]) -> dict:
        """The device as the API shows it, given today's (used, reserved) seconds; no database work."""
        device, st = self.device, self.machine.st
        now = self.clock.now()
        used, reserved = today
        quota_s = self.machine.quota_s()
        running = activation_view(st.current, now) if st.current is not None else None
        return {
            "id": device.id,
            "name": device.name,
            "protocol": device.protocol,
            "state": st.shown,
            "available": st.available,
            "online": st.available is True,
            "running": running,
            "queue": [activation_view(a, now) for a in st.queue],
            "session_id": st.session.id if st.session is not None else None,
            "off_owed": st.off_owed,
            "flapping": st.device.flapping_since is not None,
            "daily_quota_minutes": quota_s / 60,
            "max_run_minutes": device.max_run_minutes,
            "today": {
                "used_s": round(used, 1),
                "used_minutes": round(used / 60, 2),
                "reserved_s": round(reserved, 1),
                "left_minutes": round(max(0.0, quota_s - used - reserved) / 60, 2),
            },
        }

    def go_status(self) -> dict:
        """The Go server's ``/device/{id}/status`` shape, kept for old clients."""
        st = self.machine.st
        act = st.current
        return {
            "device_id": self.device_id,
            "status": st.shown,
            "active_until": iso(act.ends_at) if act is not None and act.state == "running" else None,
            "intended_duration": round(act.duration_s / 60, 3) if act is not None else None,
            "session_id": st.session.id if st.session is not None else None,
        }

    def summary(self) -> dict:
        """The little a WebSocket snapshot needs; no database work."""
        st = self.machine.st
        return {"device_id": self.device_id, "name": self.device.name, "state": st.shown,
                "available": st.available, "activation_id": st.current.id if st.current is not None else None}

