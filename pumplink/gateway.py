"""DeviceGateway: the small facade the API calls; every call to an actor has a timeout.

It is built from the parts it uses (the supervisor's device refs, the scheduler, the database,
clock, bus, config and topics), not from the whole actor system. Calls reach an actor through
a callable on its proxy (``lambda d: d.activate(...)``), so a renamed method is an attribute
error tools can see, not a string nobody checks.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Callable, cast

import peewee as pw
import pykka

from pumplink.accounts import roles
from pumplink.storage import models as m
from pumplink.quota import usage
from pumplink.clock import Clock, to_db
from pumplink.config import Config
from pumplink.devices.messages import RunRequest
from pumplink.errors import Conflict, Forbidden, NotFound, Unavailable, Unprocessable
from pumplink.events import EventBus, SitesChanged, UserAccessChanged
from pumplink.routed import Routed

if TYPE_CHECKING:
    # Types only: the device actor imports this module (check_run_length).
    from pumplink.devices.supervisor import Supervisor
    from pumplink.proxies import DeviceProxy, SchedulerProxy
    from pumplink.runtime import Topics

DeviceCall = Callable[["DeviceProxy"], pykka.Future]
SchedulerCall = Callable[["SchedulerProxy"], pykka.Future]

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 10.0


def actor_name(user: m.User) -> str:
    return f"{'admin' if user.role == 'admin' else 'user'}:{user.id}"


class Gateway(Routed):
    def __init__(self, *, supervisor: "Supervisor", db: pw.Database, clock: Clock, bus: EventBus, config: Config,
                 topics: "Topics", scheduler: pykka.ActorRef | None = None):
        self.supervisor = supervisor
        self.db = db
        self.clock = clock
        self.bus = bus
        self.config = config
        self.topics = topics
        # Set by the actor system once the scheduler runs: the scheduler fires through this gateway.
        self.scheduler = scheduler
        self._proxies: dict[int, tuple[pykka.ActorRef, DeviceProxy]] = {}
        self._route_from(supervisor, config)  # cluster mode: devices other nodes own are forwarded there

    # --- plumbing ----------------------------------------------------------------------------
    def _call(self, device_id: int, call: DeviceCall, *, timeout: float = ASK_TIMEOUT_S) -> Any:
        return self._wait(self._start(device_id, call), timeout)

    def _proxy(self, device_id: int) -> "DeviceProxy":
        # Building a pykka proxy introspects the actor; one per actor is enough.
        ref = self.supervisor.get(device_id)
        cached = self._proxies.get(device_id)
        if cached is None or cached[0] is not ref:
            cached = self._proxies[device_id] = (ref, cast("DeviceProxy", ref.proxy()))
        return cached[1]

    def _start(self, device_id: int, call: DeviceCall) -> pykka.Future:
        try:
            return call(self._proxy(device_id))
        except NotFound:
            if self.router is not None and not self.router.runs_here(device_id):
                raise self.router.moved(device_id) from None  # given away since we looked: retry
            raise
        except pykka.ActorDeadError:
            raise Unavailable("The device is restarting; try again in a moment.", "device_restarting", retry_after=1) from None

    def _release_connection(self) -> None:
        """Give the request's pooled connection back before waiting on an actor.

        The actor needs a connection of its own to answer; requests holding theirs while they
        wait exhausted the pool under load (every request waiting for an actor waiting for a
        connection). peewee reconnects by itself if the request queries again afterwards.
        """
        db = self.db
        if not db.is_closed() and not db.in_transaction():
            db.close()

    def _wait(self, future: pykka.Future, timeout: float = ASK_TIMEOUT_S):
        self._release_connection()
        try:
            return future.get(timeout=timeout)
        except pykka.Timeout:
            raise Unavailable("The device did not answer in time; try again shortly.", "device_timeout", retry_after=2) from None
        except pykka.ActorDeadError:
            raise Unavailable("The device is restarting; try again in a moment.", "device_restarting", retry_after=1) from None

    def _all(self, call: DeviceCall) -> list:
        """Ask every device at once, then wait for each answer."""
        futures = [self._start(i, call) for i in self.supervisor.ids()]
        return [self._wait(f) for f in futures]

    def audit(self, actor: m.User | None, action: str, target: str | None, detail: dict | None = None,
              site_id: int | None = None) -> None:
        """One audit entry; ``site_id`` puts it in that site's log (its managers read it)."""
        m.AuditLog.create(actor=actor.id if actor else None, action=action, target=target, site=site_id,
                          detail=json.dumps(detail) if detail is not None else None,
                          at=to_db(self.clock.now()))

    @staticmethod
    def site_of(device_id: int) -> int | None:
        return m.Device.select(m.Device.site).where(m.Device.id == device_id).scalar()

    # --- devices -----------------------------------------------------------------------------
    def device_ids(self, visible: set[int] | None = None) -> list[int]:
        """The devices a caller may see (``sites.access.visible_devices``; None: every one), ascending,
        from the supervisor's memory: the one place a list of devices starts."""
        if self.router is None:
            ids = self.supervisor.ids()
        else:  # this node's actors are only its partitions' devices
            ids = [i for (i,) in m.Device.select(m.Device.id).where(m.Device.deleted_at.is_null())
                   .order_by(m.Device.id).tuples()]
        return ids if visible is None else [i for i in ids if i in visible]

    def devices(self, ids: list[int] | None = None) -> list[dict]:
        """Every device (or those of ``ids``, a page) as the API shows it."""
        # Today's use in two queries here, not two per device in each actor.
        return self._split(self.device_ids() if ids is None else ids, self._views, "views")

    def _views(self, ids: list[int]) -> list[dict]:
        if not ids:
            return []
        today = usage.by_device(self.clock.now(), self.config.tz, ids)
        sites = m.Device.select(m.Device.id, m.Device.site)
        sites = dict((sites if len(ids) > 500 else sites.where(m.Device.id.in_(ids))).tuples())
        futures = [self._start(i, lambda d: d.view(today.get(i, (0.0, 0.0)))) for i in ids]
        return [{**self._wait(f), "site_id": sites.get(i)} for i, f in zip(ids, futures)]

    def device(self, device_id: int) -> dict:
        if self._remote(device_id):
            return self._forward(device_id, "device", None)
        return {**self._call(device_id, lambda d: d.describe()), "site_id": self.site_of(device_id)}

    def go_status(self, device_id: int) -> dict:
        if self._remote(device_id):
            return self._forward(device_id, "go_status", None)
        return self._call(device_id, lambda d: d.go_status())

    def snapshot(self, visible: set[int] | None = None) -> list[dict]:
        """Every device's live summary, or those in ``visible``."""
        return self._split(self.device_ids(visible), self._summaries, "summaries")

    def _summaries(self, ids: list[int]) -> list[dict]:
        futures = [self._start(i, lambda d: d.summary()) for i in ids]
        return [self._wait(f) for f in futures]

    def create_device(self, admin: m.User, **fields) -> dict:
        with self.db.atomic():
            self._one_legacy_device(fields.get("protocol"))
            if fields.get("site_id") is None:
                fields["site_id"] = self._default_site()
            elif not m.Site.select().where(m.Site.id == fields["site_id"]).exists():
                raise Unprocessable(f"There is no site {fields['site_id']}.", "site_not_found", field="site_id")
            device = m.Device.create(**{("site" if k == "site_id" else k): v for k, v in fields.items()})
        # Committed first: the actor loads its device on a connection of its own.
        self.start_device(device.id)
        self.audit(admin, "device.create", f"device:{device.id}", fields, site_id=device.site_id)
        return self.device(device.id)

    def start_device(self, device_id: int) -> None:
        """A new device's actor, on the node that owns it."""
        if self._remote(device_id):
            self._forward(device_id, "start_device", None)
        else:
            self.supervisor.start_device(device_id)

    def update_device(self, admin: m.User, device_id: int, **fields) -> dict:
        if self._remote(device_id):
            return self._forward(device_id, "update_device", admin, fields=fields)
        before = self._existing(device_id).site_id
        if "site_id" in fields and not m.Site.select().where(m.Site.id == fields["site_id"]).exists():
            raise Unprocessable(f"There is no site {fields['site_id']}.", "site_not_found", field="site_id")
        if fields:
            with self.db.atomic():
                self._one_legacy_device(fields.get("protocol"), device_id)
                m.Device.update(**{("site" if k == "site_id" else k): v for k, v in fields.items()}).where(
                    m.Device.id == device_id).execute()
            if "protocol" in fields:
                self.supervisor.set_protocol(device_id, fields["protocol"])
        self.audit(admin, "device.update", f"device:{device_id}", fields, site_id=before)
        if fields.get("site_id", before) != before:
            self.audit(admin, "device.update", f"device:{device_id}", fields, site_id=fields["site_id"])
            self.sites_changed()
        return {**self._call(device_id, lambda d: d.reload()), "site_id": self.site_of(device_id)}

    def _default_site(self) -> int:
        site_id = m.default_site_id()
        if site_id is None:
            raise Unprocessable("There is no default site; name one with site_id.", "site_required", field="site_id")
        return site_id

    def sites_changed(self, user_id: int | None = None) -> None:
        """Memberships or a device's site changed (committed): the live feed reads them again."""
        self.bus.publish(SitesChanged(user_id=user_id, at=self.clock.now()))

    def _one_legacy_device(self, protocol: str | None, device_id: int | None = None) -> None:
        """At most one live legacy device (docs/decisions.md): every legacy controller listens on
        the one ``{legacy_base}/control`` topic, so a second would be switched by the first's
        commands. Called in the transaction that writes the device."""
        if protocol != "legacy":
            return
        if isinstance(self.db, pw.PostgresqlDatabase):
            # Two admins creating legacy devices at once take turns (SQLite writes serialise anyway).
            self.db.execute_sql("SELECT pg_advisory_xact_lock(4242010)")
        other = (m.Device.select(m.Device.id, m.Device.name)
                 .where((m.Device.protocol == "legacy") & m.Device.deleted_at.is_null()
                        & (m.Device.id != (device_id or 0)))
                 .first())
        if other is not None:
            raise Conflict(
                f"Device {other.id} ({other.name}) already speaks the legacy protocol. Legacy controllers all "
                f"listen on the one topic {self.topics.legacy_control}, so a second one would be switched by "
                f"the other's commands. Delete device {other.id} or change its protocol first.",
                "legacy_device_exists", device_id=other.id,
            )

    def delete_device(self, admin: m.User, device_id: int) -> None:
        self._existing(device_id)
        if self._remote(device_id):
            self._forward(device_id, "delete_device", admin)
            return
        # OFF first: a deleted device must not be left running.
        self._call(device_id, lambda d: d.force_shutdown(by=actor_name(admin)))
        m.Device.update(deleted_at=to_db(self.clock.now())).where(m.Device.id == device_id).execute()
        self.supervisor.stop_device(device_id)
        self.audit(admin, "device.delete", f"device:{device_id}", site_id=self.site_of(device_id))

    def _existing(self, device_id: int) -> m.Device:
        device = m.Device.get_or_none((m.Device.id == device_id) & m.Device.deleted_at.is_null())
        if device is None:
            raise NotFound(f"There is no device {device_id}.", "device_not_found")
        return device

    # --- activations -------------------------------------------------------------------------
    def activate(self, user: m.User, device_id: int, duration_s: int) -> dict:
        if self._remote(device_id):
            return self._forward(device_id, "activate", user, duration_s=duration_s)
        return self._call(device_id, lambda d: d.activate(user.id, duration_s, source="api"))

    def activate_for_schedule(self, device_id: int, user_id: int, duration_s: int, schedule_id: int,
                              run_id: int, reply_to: pykka.ActorRef) -> None:
        """For the scheduler: a message; the device tells ``reply_to`` a RunSettled."""
        try:
            self.supervisor.get(device_id).tell(RunRequest(run_id, schedule_id, user_id, duration_s, reply_to))
        except pykka.ActorDeadError:
            raise Unavailable("The device is restarting; try again in a moment.", "device_restarting", retry_after=1) from None

    def cancel_activation(self, user: m.User, activation_id: int) -> dict:
        act = m.Activation.get_or_none(m.Activation.id == activation_id)
        if act is None:
            raise NotFound(f"There is no activation {activation_id}.", "activation_not_found")
        if user.role != "admin" and act.user_id != user.id:
            raise Forbidden("Only the owner of an activation or an admin may cancel it.", "not_owner")
        if self._remote(act.device_id):
            return self._forward(act.device_id, "cancel_activation", user, activation_id=activation_id)
        result = self._call(act.device_id, lambda d: d.cancel(activation_id, by=actor_name(user)))
        if user.role == "admin" and act.user_id != user.id:
            self.audit(user, "activation.cancel", f"activation:{activation_id}", site_id=self.site_of(act.device_id))
        return result

    def user_access_changed(self, user_id: int, role: str | None) -> list[int]:
        """A user's role changed (``None``: deleted), after the change is committed.

        Live sockets hear it at once (closed on deletion or demotion, re-filtered otherwise). A
        user who lost approval has their queued activations cancelled with reason
        ``owner_revoked`` on every device (issue 10, finding 7); a run already going finishes.
        Returns the cancelled activation ids."""
        self.bus.publish(UserAccessChanged(user_id=user_id, role=role, at=self.clock.now()))
        if roles.approved(role):
            return []
        cancelled = self._each_node(lambda: self.cancel_queued_of(user_id), "cancel_queued_of", queued_of=user_id)
        if cancelled:
            log.info("user %s lost approval: queued activations %s cancelled", user_id, cancelled)
        return cancelled

    def cancel_queued_of(self, user_id: int) -> list[int]:
        """The user's queued activations on this node's devices, cancelled (``owner_revoked``)."""
        return [i for ids in self._all(lambda d: d.cancel_queued_of(user_id, reason="owner_revoked")) for i in ids]

    def member_lost_run(self, user_id: int, site_id: int) -> list[int]:
        """A member removed from a site or made a viewer: their queued runs there are cancelled
        (``owner_revoked``), as when an account loses approval; a run already going finishes."""
        return self._each_node(lambda: self._member_lost_run(user_id, site_id), "member_lost_run",
                               member=user_id, site_id=site_id)

    def _member_lost_run(self, user_id: int, site_id: int) -> list[int]:
        ids = [i for (i,) in m.Device.select(m.Device.id).where(m.Device.site == site_id).tuples()
               if i in set(self.supervisor.ids())]
        cancelled: list[int] = []
        for found in [self._wait(f) for f in
                      [self._start(i, lambda d: d.cancel_queued_of(user_id, reason="owner_revoked")) for i in ids]]:
            cancelled.extend(found)
        return cancelled

    def force_shutdown(self, admin: m.User, device_id: int) -> dict:
        self._existing(device_id)
        if self._remote(device_id):
            return self._forward(device_id, "force_shutdown", admin)
        result = self._call(device_id, lambda d: d.force_shutdown(by=actor_name(admin)))
        self.audit(admin, "device.force_shutdown", f"device:{device_id}", result, site_id=self.site_of(device_id))
        return result

    def emergency_stop(self, admin: m.User) -> list[dict]:
        by = actor_name(admin)
        results = self._each_node(lambda: self._all(lambda d: d.force_shutdown(by=by)), "emergency_stop", admin)
        if self.router is not None:  # every device answered, else a 503 to retry (after what could be done)
            self.router.check_covered([r["device_id"] for r in results], self.device_ids())
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

    # --- schedules ----------------------------------------------------------------------------
    def _scheduler_call(self, call: SchedulerCall, *, timeout: float = ASK_TIMEOUT_S) -> Any:
        ref = self.scheduler
        try:
            if ref is None:
                raise pykka.ActorDeadError("no scheduler")
            future = call(cast("SchedulerProxy", ref.proxy()))
            self._release_connection()
            return future.get(timeout=timeout)
        except pykka.Timeout:
            raise Unavailable("The scheduler did not answer in time; try again shortly.", "scheduler_timeout") from None
        except pykka.ActorDeadError:
            raise Unavailable("The scheduler is not running; try again in a moment.", "scheduler_unavailable") from None

    def create_schedule(self, user: m.User, device_id: int, start, rrule: str | None, duration_s: int) -> dict:
        if self._remote(device_id):
            return self._forward(device_id, "create_schedule", user, start=start.isoformat(), rrule=rrule,
                                 duration_s=duration_s)
        return self._scheduler_call(lambda s: s.create(user.id, device_id, start, rrule, duration_s))

    def set_schedule_enabled(self, user: m.User, schedule: m.Schedule, enabled: bool) -> dict:
        if self._remote(schedule.device_id):
            return self._forward(schedule.device_id, "set_schedule_enabled", user, schedule_id=schedule.id,
                                 enabled=enabled)
        result = self._scheduler_call(lambda s: s.set_enabled(schedule.id, enabled))
        if user.role == "admin" and schedule.user_id != user.id:
            self.audit(user, "schedule.enable" if enabled else "schedule.disable", f"schedule:{schedule.id}")
        return result

    def delete_schedule(self, user: m.User, schedule: m.Schedule) -> None:
        if self._remote(schedule.device_id):
            self._forward(schedule.device_id, "delete_schedule", user, schedule_id=schedule.id)
            return
        self._scheduler_call(lambda s: s.delete(schedule.id))
        if user.role == "admin" and schedule.user_id != user.id:
            self.audit(user, "schedule.delete", f"schedule:{schedule.id}")

    # --- live view -----------------------------------------------------------------
    def summary(self, device_id: int) -> dict:
        """One device's live summary (state, availability, running activation); no database work."""
        if self._remote(device_id):
            return self._forward(device_id, "summary", None)
        return self._call(device_id, lambda d: d.summary())
