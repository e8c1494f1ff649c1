"""What the API and the scheduler ask of a device: runs, cancels, force shutdown, reload and
the views of it. Each ask is one transaction (``transactional``).

A mixin of ``DeviceActor``: it runs on its thread.
"""

from __future__ import annotations

import logging
import uuid

from pumplink.clock import iso, to_db
from pumplink.devices import machine
from pumplink.devices.quota_check import UNKNOWN
from pumplink.devices.transactions import transactional
from pumplink.errors import Conflict, TooManyRequests, Unavailable
from pumplink.events import Audience
from pumplink.gateway import Gateway
from pumplink.storage import models as m
from pumplink.views import activation_view

log = logging.getLogger(__name__)


class Requests:
    """Mixin of ``DeviceActor``."""

    @transactional
    def activate(self, user_id: int | None, duration_s: int, source: str = "api",
                 schedule_id: int | None = None, user_quota=UNKNOWN) -> dict:
        """``user_quota``: the user's daily minutes when the caller has them at hand (None: no quota)."""
        device = self._live_device()
        Gateway.check_run_length(device, duration_s, self.config.min_run_s)
        busy = self.current is not None or self.pending is not None or self.off_owed
        why = machine.refusal(available=self.available, off_stuck=self.off_stuck,
                              broker_connected=self.rt.broker.connected.is_set(), busy=busy,
                              queued=len(self.queue), queue_limit=self.config.queue_limit)
        if why == "device_offline":
            raise Conflict(f"{device.name} is offline; it cannot be started now.", "device_offline")
        if why == "off_unconfirmed":
            raise Conflict(f"{device.name} has not confirmed its last OFF; it takes no new runs until it does.",
                           "off_unconfirmed")
        if why == "broker_unavailable":
            raise Unavailable("The MQTT broker is not reachable; pumps cannot be started now.",
                              "broker_unavailable", retry_after=5)
        if why == "queue_full":
            raise TooManyRequests(
                f"{device.name} already has {len(self.queue)} requests waiting; try again later.", "queue_full",
                retry_after=max(1, int(self._reserved_s(self.clock.now()))),
            )
        self._check_quota(user_id, duration_s, user_quota)
        act = m.Activation.create(
            device=self.device_id, user=user_id, schedule=schedule_id, duration_s=duration_s,
            source=source, state="queued", created_at=to_db(self.clock.now()),
        )
        self.queue.append(act)
        self.rt.metrics.queued.inc()
        self.rt.metrics.activations_accepted.labels(source).inc()
        log.info("device %s activation %s queued for %ss (%s)", self.device_id, act.id, duration_s, source)
        self._changed(act)
        self._advance()
        return activation_view(act, self.clock.now())

    @transactional
    def cancel(self, activation_id: int, by: str) -> dict:
        for act in self.queue:
            if act.id == activation_id:
                self.queue.remove(act)
                self.rt.metrics.queued.dec()
                self._finish(act, "cancelled", "cancelled", by)
                return activation_view(act, self.clock.now())
        if self.current is not None and self.current.id == activation_id:
            act = self.current
            self._stop_current("stopped", "cancelled", by)
            return activation_view(act, self.clock.now())
        raise Conflict("This activation has already ended.", "activation_ended")

    @transactional
    def cancel_queued_of(self, user_id: int, reason: str = "owner_revoked") -> list[int]:
        """Cancel a user's queued activations (the user is no longer approved). A run already
        going is left to end at its time: it was asked for while the user was approved."""
        mine = [act for act in self.queue if act.user_id == user_id]
        for act in mine:
            self.queue.remove(act)
            self.rt.metrics.queued.dec()
            self._finish(act, "cancelled", reason, "system")
        return [act.id for act in mine]

    @transactional
    def force_shutdown(self, by: str) -> dict:
        """OFF at once, whatever the state; the queue is cancelled. Works for offline devices too."""
        cancelled = []
        while self.queue:
            act = self.queue.popleft()
            self.rt.metrics.queued.dec()
            self._finish(act, "cancelled", "force", by)
            cancelled.append(act.id)
        stopped = self.current.id if self.current is not None else None
        if self.current is not None:
            self._stop_current("stopped", "force", by)
        else:
            if self.pending is not None:
                self._cancel_timer(self.pending.timer)
                self.pending = None
            self._send("off", None, reason="force", actor=by)
        self._refresh_state("force")
        self._alert("force_shutdown", f"force_shutdown:{self.device_id}:{uuid.uuid4().hex}",
                    f"{self.device.name} force shutdown", f"{self.device.name} was shut down by an admin.", Audience.admins())
        return {"device_id": self.device_id, "stopped_activation_id": stopped, "cancelled_activation_ids": cancelled}

    @transactional
    def reload(self) -> dict:
        old, self.device = self.device, m.Device.get_by_id(self.device_id)
        if old is not None and old.protocol != self.device.protocol:
            # What the old firmware said no longer holds (legacy controllers never say "online").
            self.available = None
            self._refresh_state("protocol changed")
        return self.describe()

    @transactional
    def describe(self) -> dict:
        now = self.clock.now()
        return self.view((self._used_today_s(now), self._reserved_s(now)))

    def view(self, today: tuple[float, float]) -> dict:
        """The device as the API shows it, given today's (used, reserved) seconds; no database work."""
        device = self.device
        now = self.clock.now()
        used, reserved = today
        quota_s = self._device_quota_s()
        running = activation_view(self.current, now) if self.current is not None else None
        return {
            "id": device.id,
            "name": device.name,
            "protocol": device.protocol,
            "state": self.state,
            "available": self.available,
            "online": self.available is True,
            "running": running,
            "queue": [activation_view(a, now) for a in self.queue],
            "session_id": self.session.id if self.session is not None else None,
            "off_owed": self.off_owed,
            "flapping": device.flapping_since is not None,
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
        act = self.current
        return {
            "device_id": self.device_id,
            "status": self.state,
            "active_until": iso(act.ends_at) if act is not None and act.state == "running" else None,
            "intended_duration": round(act.duration_s / 60, 3) if act is not None else None,
            "session_id": self.session.id if self.session is not None else None,
        }

    def summary(self) -> dict:
        """The little a WebSocket snapshot needs; no database work."""
        return {"device_id": self.device_id, "name": self.device.name, "state": self.state,
                "available": self.available,
                "activation_id": self.current.id if self.current is not None else None}

