"""DeviceActor: the only writer of one device's state, queue, running activation and session.

The activation is a decision ("run for N seconds", "stop now"); the session is a physical
fact (the pump said it is ON / OFF). An activation ends when the server decides it does and
sends OFF; its session closes when the pump confirms, so the actual duration is honest.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading

import pykka

from pumplink.clock import from_db, to_db
from pumplink.devices import commands, machine, records
from pumplink.devices.commands import Pending
from pumplink.devices.messages import Publish, TimerFired
from pumplink.devices.quota_check import Quotas
from pumplink.devices.records import DeviceRecords
from pumplink.devices.reports import Reports
from pumplink.devices.requests import Requests
from pumplink.devices.safety import Flapping, OwedOff
from pumplink.devices.transactions import Transactions
from pumplink.errors import NotFound
from pumplink.events import ActivationChanged, Alert, Audience, DeviceStateChanged
from pumplink.quota import usage
from pumplink.runtime import Runtime
from pumplink.storage import models as m
from pumplink.timers import tell_later
from pumplink.views import activation_view

log = logging.getLogger(__name__)

OPEN_STATES = usage.OPEN_STATES

class DeviceActor(Transactions, Reports, Requests, OwedOff, Flapping, Quotas, pykka.ThreadingActor):
    # Daemon threads: CPython tracks non-daemon ones in a list walked at every thread start, which
    # made starting 10,000 actors quadratic. Actors are stopped explicitly at shutdown anyway.
    use_daemon_thread = True

    def __init__(self, device_id: int, rt: Runtime, mqtt: pykka.ActorRef, preload: "DeviceRecords | None" = None):
        super().__init__()
        self.device_id = device_id
        self.preload = preload
        self.rt = rt
        self.db = rt.db
        self.config = rt.config
        self.clock = rt.clock
        self.mqtt = mqtt
        self.device: m.Device | None = None
        self.available: bool | None = None
        self.reported: str | None = None  # last ON/OFF the pump itself confirmed
        self.queue: collections.deque[m.Activation] = collections.deque()
        self.current: m.Activation | None = None  # starting or running
        self.session: m.Session | None = None
        self.pending: Pending | None = None
        self.off_timer: threading.Timer | None = None
        self.off_owed = False  # an OFF was never confirmed: send it again until it is (device.off_owed_since)
        self.off_stuck = False  # a whole round of an OFF failed (refused or unanswered): no new runs
        self.owed_timer: threading.Timer | None = None
        self.owed_round = 0  # rounds of the owed OFF sent so far: the re-send interval doubles
        self.flap_timer: threading.Timer | None = None
        self.owed_token = self.flap_token = 0  # a stale owed/flap timer carries an older token: ignored
        self.state = "unknown"
        # Messages that arrived while the database was away, replayed in order when it returns.
        self.backlog: collections.deque = collections.deque()
        self.replay_armed = False
        self.resync_needed = False  # the database failed mid-way: memory may be ahead of it
        self.unconfirmed_on: m.Activation | None = None  # an ON sent before a crash, never acknowledged
        self._deferred_on: list[tuple[str, str]] | None = None  # ONs waiting for their transaction

    # --- life cycle ------------------------------------------------------------------------
    def on_start(self) -> None:
        self.rt.metrics.device_state(None, self.state)
        preload, self.preload = self.preload, None
        if preload is None:
            with self.db.connection_context():
                preload = DeviceRecords.load(self.device_id)
        if preload.needs_writes(self.clock.now()):
            with self.db.connection_context():
                with self.db.atomic():
                    self._recover(preload)
        else:
            # The common start: nothing to close, so no connection is taken from the pool.
            self._recover(preload)

    def on_stop(self) -> None:
        self.rt.metrics.device_state(self.state, None)
        self.rt.metrics.queued.dec(len(self.queue))
        self._cancel_timer(self.off_timer)
        self._cancel_timer(self.owed_timer)
        self._cancel_timer(self.flap_timer)
        if self.pending:
            self._cancel_timer(self.pending.timer)

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("device %s actor failed: %s", self.device_id, exception_value)

    def _recover(self, rows: "DeviceRecords") -> None:
        """Reconcile the database with the clock before any request is accepted (API.md, Crash
        recovery); machine.recover decides, this carries it out."""
        self.device = rows.device
        now = self.clock.now()
        self.session = rows.session
        by_id = {act.id: act for act in rows.activations}
        plan = machine.recover(
            [machine.Run(a.id, a.state, from_db(a.ends_at) if a.ends_at else None) for a in rows.activations],
            session_activation_id=rows.session.activation_id if rows.session else None,
            has_session=rows.session is not None, protocol=rows.device.protocol,
            off_owed_before=rows.device.off_owed_since is not None, now=now)
        for act_id in plan.queued:
            self.queue.append(by_id[act_id])
            self.rt.metrics.queued.inc()
        if plan.resume is not None:
            act_id, remaining = plan.resume
            self.current = by_id[act_id]
            self.off_timer = tell_later(self.actor_ref, remaining, TimerFired("off", act_id))
            log.info("device %s activation %s resumes after restart: %.1fs left", self.device_id, act_id, remaining)
        for close in plan.close:
            act = by_id[close.id]
            if close.unconfirmed_on:
                self.unconfirmed_on = act  # its ON may have landed: a report of ON is this run's
            self._finish(act, close.state, "recovered", "system", ended_at=close.ended_at)
            if close.close_session:
                self._close_session("recovered", ended_at=close.ended_at)
            log.info("device %s activation %s closed by recovery (%s)", self.device_id, act.id, close.state)
        # Sent once the broker link is up (BrokerConnected), not into a link that is not there yet.
        self.off_owed = plan.off_owed
        if rows.device.flapping_since is not None:
            self._arm_flap_timer()
        self._refresh_state("start-up")

    # --- messages from MQTT and timers -------------------------------------------------------
    # --- the machinery -----------------------------------------------------------------------
    def _advance(self) -> None:
        if not machine.may_start_next(running=self.current is not None, pending=self.pending is not None,
                                      queued=len(self.queue), off_owed=self.off_owed, available=self.available):
            return
        act = self.queue.popleft()
        self.rt.metrics.queued.dec()
        act.state = "starting"
        act.started_at = to_db(self.clock.now())  # when the ON was sent; the ack sets the confirmed start
        self.current = act
        pending = self._send("on", act, reason="command", actor=self._actor_of(act))
        act.command_id = pending.id
        act.save()
        self._changed(act)
        self._refresh_state("command")

    def _start_running(self, act: m.Activation) -> None:
        now = self.clock.now()
        act.state = "running"
        act.started_at = to_db(now)
        act.ends_at = to_db(now + dt.timedelta(seconds=act.duration_s))
        act.save()
        self.reported = "on"
        if self.session is not None:
            self._close_session("superseded")
        self._open_session(act, "command")
        self._log("on", "command", self._actor_of(act), activation_id=act.id)
        self.off_timer = tell_later(self.actor_ref, act.duration_s, TimerFired("off", act.id))
        self._changed(act)
        self._alert("device_on", f"device_on:activation:{act.id}", self.device.name,
                    f"{self.device.name} is ON for {act.duration_s / 60:g} minutes.", Audience.approved())

    def _stop_current(self, state: str, reason: str, by: str) -> None:
        act = self.current
        if self.pending is not None:
            self._cancel_timer(self.pending.timer)
            self.pending = None
        self._finish(act, state, reason, by)
        self._send("off", None, reason=reason, actor=by, activation_id=act.id)
        self._refresh_state(reason)

    def _finish(self, act: m.Activation, state: str, reason: str, by: str, *, detail: str | None = None,
                ended_at: dt.datetime | None = None) -> None:
        act.state, act.reason, act.ended_by = state, reason, by
        act.ended_at = to_db(ended_at or self.clock.now())
        # Only what changed: the user may have been deleted meanwhile (user_id is stale).
        act.save(only=[m.Activation.state, m.Activation.reason, m.Activation.ended_by, m.Activation.ended_at])
        self.rt.metrics.activations.labels(state, reason).inc()
        if self.current is not None and self.current.id == act.id:
            self.current = None
            self._cancel_timer(self.off_timer)
            self.off_timer = None
        log.info("device %s activation %s %s (reason %s, by %s)%s", self.device_id, act.id, state, reason, by,
                 f": {detail}" if detail else "")
        self._changed(act)

    def _send(self, action: str, act: m.Activation | None, *, reason: str, actor: str,
              activation_id: int | None = None) -> Pending:
        command_id = commands.new_id()
        activation_id = act.id if act is not None else activation_id
        topic, payload = commands.encode(self.rt.topics, self.device_id, self.device.protocol, action,
                                         now=self.clock.now(), command_id=command_id, activation_id=activation_id,
                                         duration_s=act.duration_s if action == "on" else None)
        self._publish(topic, payload, action)
        pending = Pending(command_id, action, topic, payload, activation_id, reason, actor,
                          sent_at=self.clock.monotonic(), sent_wall=self.clock.now())
        pending.timer = tell_later(self.actor_ref, self.config.ack_timeout_s, TimerFired("ack", command_id))
        self.pending = pending
        return pending

    def _send_untracked_off(self) -> None:
        self._publish(*commands.encode(self.rt.topics, self.device_id, self.device.protocol, "off",
                                       now=self.clock.now()))

    def _publish(self, topic: str, payload: str, action: str = "off") -> None:
        """An OFF goes at once, always; an ON waits for the transaction that records it to commit."""
        if action == "on" and self._deferred_on is not None:
            self._deferred_on.append((topic, payload))
        else:
            self.mqtt.tell(Publish(topic, payload))

    def _open_session(self, act: m.Activation | None, cause: str, started_at: dt.datetime | None = None) -> None:
        self.session = records.open_session(self.device_id, act, cause, started_at or self.clock.now())

    def _close_session(self, reason: str, ended_at: dt.datetime | None = None) -> None:
        if self.session is not None:
            records.close_session(self.session, reason, ended_at or self.clock.now())
            self.session = None

    def _log(self, event: str, cause: str, actor: str | None, *, activation_id: int | None = None,
             detail: str | None = None) -> None:
        records.write_log(self.device_id, self.session, event, cause, actor, self.clock.now(),
                          activation_id=activation_id, detail=detail)

    def _derive_state(self) -> str:
        return machine.derive_state(self.available, self.pending.action if self.pending else None, self.reported)

    def _refresh_state(self, reason: str) -> None:
        new = self._derive_state()
        if new == self.state:
            return
        previous, self.state = self.state, new
        self.rt.metrics.device_state(previous, new)
        activation_id = self.current.id if self.current is not None else None
        log.info("device %s state %s -> %s (activation %s, reason %s)", self.device_id, previous, new,
                 activation_id, reason, extra={"device_id": self.device_id, "state": new, "previous": previous,
                                               "activation_id": activation_id, "reason": reason})
        self.rt.bus.publish(DeviceStateChanged(
            device_id=self.device_id, state=new, previous=previous, available=self.available,
            activation_id=activation_id, reason=reason, at=self.clock.now(),
        ))

    def _changed(self, act: m.Activation) -> None:
        self.rt.bus.publish(ActivationChanged(activation=activation_view(act, self.clock.now()), at=self.clock.now()))

    def _alert(self, kind: str, key: str, title: str, body: str, audience: Audience) -> None:
        self.rt.bus.publish(Alert(key=key, kind=kind, device_id=self.device_id, title=title, body=body,
                                  audience=audience))

    @staticmethod
    def _cancel_timer(timer: threading.Timer | None) -> None:
        if timer is not None:
            timer.cancel()

    @staticmethod
    def _actor_of(act: m.Activation) -> str:
        if act.schedule_id is not None:
            return f"schedule:{act.schedule_id}"
        return f"user:{act.user_id}" if act.user_id is not None else "system"

    def _live_device(self) -> m.Device:
        if self.device is None or self.device.deleted_at is not None:
            raise NotFound(f"There is no device {self.device_id}.", "device_not_found")
        return self.device
