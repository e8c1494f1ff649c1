"""DeviceGateway: the small facade the API calls; every call to an actor has a timeout."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import peewee as pw
import pykka

from pumplink.storage import models as m
from pumplink.quota import usage
from pumplink.clock import to_db
from pumplink.devices.messages import RunRequest
from pumplink.errors import Conflict, Forbidden, NotFound, Unavailable, Unprocessable
from pumplink.events import UserAccessChanged

if TYPE_CHECKING:
    from pumplink.server.startup import ActorSystem

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 10.0


def actor_name(user: m.User) -> str:
    return f"{'admin' if user.role == 'admin' else 'user'}:{user.id}"


class Gateway:
    def __init__(self, system: "ActorSystem"):
        self.system = system
        self.rt = system.rt
        self._proxies: dict[int, tuple] = {}

    # --- plumbing ----------------------------------------------------------------------------
    def _call(self, device_id: int, method: str, *args, timeout: float = ASK_TIMEOUT_S, **kwargs):
        return self._wait(self._start(device_id, method, *args, **kwargs), timeout)

    def _proxy(self, device_id: int):
        # Building a pykka proxy introspects the actor; one per actor is enough.
        ref = self.system.supervisor.get(device_id)
        cached = self._proxies.get(device_id)
        if cached is None or cached[0] is not ref:
            cached = self._proxies[device_id] = (ref, ref.proxy())
        return cached[1]

    def _start(self, device_id: int, method: str, *args, **kwargs) -> pykka.Future:
        try:
            return getattr(self._proxy(device_id), method)(*args, **kwargs)
        except pykka.ActorDeadError:
            raise Unavailable("The device is restarting; try again in a moment.", "device_restarting") from None

    def _release_connection(self) -> None:
        """Give the request's pooled connection back before waiting on an actor.

        The actor needs a connection of its own to answer; requests holding theirs while they
        wait exhausted the pool under load (every request waiting for an actor waiting for a
        connection). peewee reconnects by itself if the request queries again afterwards.
        """
        db = self.rt.db
        if not db.is_closed() and not db.in_transaction():
            db.close()

    def _wait(self, future: pykka.Future, timeout: float = ASK_TIMEOUT_S):
        self._release_connection()
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout:
            raise Unavailable("The device did not answer in time; try again shortly.", "device_timeout") from None
        except pykka.ActorDeadError:
            raise Unavailable("The device is restarting; try again in a moment.", "device_restarting") from None

    def _all(self, method: str, *args) -> list:
        futures = [(i, self._start(i, method, *args)) for i in self.system.supervisor.ids()]
        return [self._wait(f) for _, f in futures]

    def audit(self, actor: m.User | None, action: str, target: str | None, detail: dict | None = None) -> None:
        m.AuditLog.create(actor=actor.id if actor else None, action=action, target=target,
                          detail=json.dumps(detail) if detail is not None else None,
                          at=to_db(self.rt.clock.now()))

    # --- devices -----------------------------------------------------------------------------
    def devices(self) -> list[dict]:
        # Today's use of every device in two queries here, not two per device in each actor.
        today = usage.by_device(self.rt.clock.now(), self.rt.config.tz)
        ids = self.system.supervisor.ids()
        futures = [self._start(i, "view", today.get(i, (0.0, 0.0))) for i in ids]
        return [self._wait(f) for f in futures]

    def device(self, device_id: int) -> dict:
        return self._call(device_id, "describe")

    def go_status(self, device_id: int) -> dict:
        return self._call(device_id, "go_status")

    def snapshot(self) -> list[dict]:
        return self._all("summary")

    def create_device(self, admin: m.User, **fields) -> dict:
        with self.rt.db.atomic():
            self._one_legacy_device(fields.get("protocol"))
            device = m.Device.create(**fields)
        # Committed first: the actor loads its device on a connection of its own.
        self.system.supervisor.start_device(device.id)
        self.audit(admin, "device.create", f"device:{device.id}", fields)
        return self.device(device.id)

    def update_device(self, admin: m.User, device_id: int, **fields) -> dict:
        self._existing(device_id)
        if fields:
            with self.rt.db.atomic():
                self._one_legacy_device(fields.get("protocol"), device_id)
                m.Device.update(**fields).where(m.Device.id == device_id).execute()
            if "protocol" in fields:
                self.system.supervisor.set_protocol(device_id, fields["protocol"])
        self.audit(admin, "device.update", f"device:{device_id}", fields)
        return self._call(device_id, "reload")

    def _one_legacy_device(self, protocol: str | None, device_id: int | None = None) -> None:
        """At most one live legacy device (docs/decisions.md): every legacy controller listens on
        the one ``{legacy_base}/control`` topic, so a second would be switched by the first's
        commands. Called in the transaction that writes the device."""
        if protocol != "legacy":
            return
        if isinstance(self.rt.db, pw.PostgresqlDatabase):
            # Two admins creating legacy devices at once take turns (SQLite writes serialise anyway).
            self.rt.db.execute_sql("SELECT pg_advisory_xact_lock(4242010)")
        other = (m.Device.select(m.Device.id, m.Device.name)
                 .where((m.Device.protocol == "legacy") & m.Device.deleted_at.is_null()
                        & (m.Device.id != (device_id or 0)))
                 .first())
        if other is not None:
            raise Conflict(
                f"Device {other.id} ({other.name}) already speaks the legacy protocol. Legacy controllers all "
                f"listen on the one topic {self.rt.topics.legacy_control}, so a second one would be switched by "
                f"the other's commands. Delete device {other.id} or change its protocol first.",
                "legacy_device_exists", device_id=other.id,
            )

    def delete_device(self, admin: m.User, device_id: int) -> None:
        self._existing(device_id)
        # OFF first: a deleted device must not be left running.
        self._call(device_id, "force_shutdown", actor_name(admin))
        m.Device.update(deleted_at=to_db(self.rt.clock.now())).where(m.Device.id == device_id).execute()
        self.system.supervisor.stop_device(device_id)
        self.audit(admin, "device.delete", f"device:{device_id}")

    def _existing(self, device_id: int) -> m.Device:
        device = m.Device.get_or_none((m.Device.id == device_id) & m.Device.deleted_at.is_null())
        if device is None:
            raise NotFound(f"There is no device {device_id}.", "device_not_found")
        return device

    # --- activations -------------------------------------------------------------------------
    def activate(self, user: m.User, device_id: int, duration_s: int) -> dict:
        return self._call(device_id, "activate", user.id, duration_s, "api", None, user.daily_quota_minutes)

    def activate_for_schedule(self, device_id: int, user_id: int, duration_s: int, schedule_id: int,
                              run_id: int, reply_to: pykka.ActorRef) -> None:
        """For the scheduler: a message; the device tells ``reply_to`` a RunSettled."""
        try:
            self.system.supervisor.get(device_id).tell(RunRequest(run_id, schedule_id, user_id, duration_s, reply_to))
        except pykka.ActorDeadError:
            raise Unavailable("The device is restarting; try again in a moment.", "device_restarting") from None

    def cancel_activation(self, user: m.User, activation_id: int) -> dict:
        act = m.Activation.get_or_none(m.Activation.id == activation_id)
        if act is None:
            raise NotFound(f"There is no activation {activation_id}.", "activation_not_found")
        if user.role != "admin" and act.user_id != user.id:
            raise Forbidden("Only the owner of an activation or an admin may cancel it.", "not_owner")
        result = self._call(act.device_id, "cancel", activation_id, actor_name(user))
        if user.role == "admin" and act.user_id != user.id:
            self.audit(user, "activation.cancel", f"activation:{activation_id}")
        return result

    def user_access_changed(self, user_id: int, role: str | None) -> list[int]:
        """A user's role changed (``None``: deleted), after the change is committed.

        Live sockets hear it at once (closed on deletion or demotion, re-filtered otherwise). A
        user who lost approval has their queued activations cancelled with reason
        ``owner_revoked`` on every device (issue 10, finding 7); a run already going finishes.
        Returns the cancelled activation ids."""
        self.rt.bus.publish(UserAccessChanged(user_id=user_id, role=role, at=self.rt.clock.now()))
        if role in ("user", "admin"):
            return []
        cancelled: list[int] = []
        for future in [self._start(i, "cancel_queued_of", user_id, "owner_revoked") for i in self.system.supervisor.ids()]:
            cancelled.extend(self._wait(future))
        if cancelled:
            log.info("user %s lost approval: queued activations %s cancelled", user_id, cancelled)
        return cancelled

    def force_shutdown(self, admin: m.User, device_id: int) -> dict:
        self._existing(device_id)
        result = self._call(device_id, "force_shutdown", actor_name(admin))
        self.audit(admin, "device.force_shutdown", f"device:{device_id}", result)
        return result

    def emergency_stop(self, admin: m.User) -> list[dict]:
        results = self._all("force_shutdown", actor_name(admin))
        self.audit(admin, "emergency_stop", "devices:all", {"devices": [r["device_id"] for r in results]})
        return results

    @staticmethod
    def check_run_length(device: m.Device, seconds: int, min_run_s: int) -> None:
        """The one check of a run's length, for requests and schedules alike (422 either way):
        at least PUMPLINK_MIN_RUN_S (motor starts cost wear), at most the device's max run."""
        if seconds < min_run_s:
            raise Unprocessable(
                f"A run lasts at least {min_run_s} s; {seconds} s is too short.", "duration_below_min_run",
                min_run_s=min_run_s,
            )
        if seconds > device.max_run_minutes * 60:
            raise Unprocessable(
                f"{device.name} runs at most {device.max_run_minutes:g} minutes at a time.", "duration_above_max_run",
                max_run_minutes=device.max_run_minutes,
            )

    @staticmethod
    def duration_s(duration_min: float | None, duration_s: float | None) -> int:
        """``duration_s`` wins over ``duration`` (minutes), as API.md says."""
        if duration_s is None and duration_min is None:
            raise Unprocessable("Give duration (minutes) or duration_s (seconds).", "duration_missing")
        seconds = duration_s if duration_s is not None else duration_min * 60
        if seconds <= 0:
            raise Unprocessable("The duration must be greater than zero.", "invalid_duration")
        return max(1, round(seconds))

    # --- schedules (issue 4) -----------------------------------------------------------------
    def _scheduler_call(self, method: str, *args, timeout: float = ASK_TIMEOUT_S):
        ref = self.system.scheduler
        try:
            if ref is None:
                raise pykka.ActorDeadError("no scheduler")
            future = getattr(ref.proxy(), method)(*args)
            self._release_connection()
            return future.get(timeout=timeout)
        except pykka.Timeout:
            raise Unavailable("The scheduler did not answer in time; try again shortly.", "scheduler_timeout") from None
        except pykka.ActorDeadError:
            raise Unavailable("The scheduler is not running; try again in a moment.", "scheduler_unavailable") from None

    def create_schedule(self, user: m.User, device_id: int, start, rrule: str | None, duration_s: int) -> dict:
        return self._scheduler_call("create", user.id, device_id, start, rrule, duration_s)

    def set_schedule_enabled(self, user: m.User, schedule: m.Schedule, enabled: bool) -> dict:
        result = self._scheduler_call("set_enabled", schedule.id, enabled)
        if user.role == "admin" and schedule.user_id != user.id:
            self.audit(user, "schedule.enable" if enabled else "schedule.disable", f"schedule:{schedule.id}")
        return result

    def delete_schedule(self, user: m.User, schedule: m.Schedule) -> None:
        self._scheduler_call("delete", schedule.id)
        if user.role == "admin" and schedule.user_id != user.id:
            self.audit(user, "schedule.delete", f"schedule:{schedule.id}")

    # --- live view (issue 5) -----------------------------------------------------------------
    def summary(self, device_id: int) -> dict:
        """One device's live summary (state, availability, running activation); no database work."""
        return self._call(device_id, "summary")
