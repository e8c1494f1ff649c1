"""DeviceActor: the shell around one device's machine (machine.py).

The machine decides; this actor gives it events and the time, and carries out the effects it
returns, in order: rows in the message's transaction (transactions.py), OFF commands at once,
ON commands once the transaction that records them has committed, timers, and events to the
bus. The activation is a decision ("run for N seconds"); the session is a physical fact (the
pump said ON / OFF): an activation ends when the server decides, its session when the pump
confirms, so the actual duration is honest.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import pykka

from pumplink.cluster import fencing
from pumplink.devices import commands, records, state
from pumplink.devices.doorbell import Doorbell
from pumplink.devices.machine import Machine
from pumplink.devices.messages import Publish, TimerFired
from pumplink.devices.records import DeviceRecords
from pumplink.devices.requests import Requests
from pumplink.devices.transactions import DatabaseDown, Transactions, Unsaved
from pumplink.devices.writer import GroupWriter
from pumplink.errors import NotFound
from pumplink.events import ActivationChanged, Alert, DeviceStateChanged
from pumplink.runtime import Runtime
from pumplink.storage import models as m
from pumplink.timers import Timer, tell_later
from pumplink.views import activation_view

log = logging.getLogger(__name__)

__all__ = ["DeviceActor", "DeviceRecords"]


class DeviceActor(Transactions, Requests, pykka.ThreadingActor):
    # Daemon threads: CPython tracks non-daemon ones in a list walked at every thread start, which
    # made starting 10,000 actors quadratic. Actors are stopped explicitly at shutdown anyway.
    use_daemon_thread = True

    def __init__(self, device_id: int, rt: Runtime, mqtt: pykka.ActorRef, writer: GroupWriter,
                 preload: "DeviceRecords | None" = None, cluster=None, bell: Doorbell | None = None):
        super().__init__()
        self.bell = bell if bell is not None else Doorbell()  # the link's messages (Supervisor.route)
        # Cluster mode (cluster/node.py): this device's partition and the epoch it was started
        # under; every write checks it, every command carries it. None: a single node.
        self.cluster = cluster
        self.fence: fencing.Fence | None = cluster.fence_for(device_id) if cluster is not None else None
        self.writer = writer
        self._grouped = False  # this message's rows go to the writer, not to a transaction of ours
        self.unsaved: tuple[list, list] | None = None  # (rows, effects after them) of a failed group commit
        self._unit = 1  # messages the machine took in the unit being handled (transactions.py)
        self.device_id = device_id
        self.preload = preload
        self.rt = rt
        self.db = rt.db
        self.config = rt.config
        self.clock = rt.clock
        self.mqtt = mqtt
        self.device: m.Device | None = None  # the row: name and limits for requests and views
        self.machine: Machine | None = None
        self.timers: dict[str, Timer] = {}  # one of each kind: ack | off | owed | flap | adopt
        self.queued_counted = 0  # this device's part of the queued-activations gauge
        self.shown = "unknown"
        # Messages that arrived while the database was away, replayed in order when it returns.
        self.backlog: collections.deque = collections.deque()
        self.replay_armed = False
        self.resync_needed = False  # the database failed mid-way: memory may be ahead of it
        self._deferred_on: list[tuple[str, str]] | None = None  # ONs waiting for their transaction

    # --- life cycle ------------------------------------------------------------------------
    def on_start(self) -> None:
        self.rt.metrics.device_state(None, self.shown)
        preload, self.preload = self.preload, None
        now = self.clock.now()
        if preload is None:
            with self.db.connection_context():
                preload = DeviceRecords.load(self.device_id, now)
        self.device = preload.device
        c = self.config
        settings = state.Settings(c.ack_timeout_s, c.ack_retries, c.queue_limit, c.manual_runs_per_hour,
                                  c.daily_quota_minutes)
        self.machine = Machine(settings, state.DeviceState(records.device_value(preload.device)))
        if preload.needs_writes(now):
            with self.db.connection_context():
                with self.db.atomic():
                    fencing.check(self.db, self.fence)
                    self._apply(self.machine.recover(preload.values(), now))
        else:
            # The common start: nothing to close, so no connection is taken from the pool.
            self._apply(self.machine.recover(preload.values(), now))

    def on_stop(self) -> None:
        self.rt.metrics.device_state(self.shown, None)
        self.rt.metrics.queued.dec(self.queued_counted)
        for timer in self.timers.values():
            timer.cancel()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("device %s actor failed: %s", self.device_id, exception_value)

    def _resync(self) -> None:
        """Forget memory and rebuild it from the database, as after a crash."""
        loaded = DeviceRecords.load(self.device_id, self.clock.now())
        self.device = loaded.device
        self._apply(self.machine.recover(loaded.values(), self.clock.now(), resync=True))

    # --- carrying out effects --------------------------------------------------------------
    def _apply(self, effects: list) -> None:
        """In order, except that OFF commands go first (a safety OFF never waits on a row) and rows
        come next (in the message's transaction, or committed by the group writer)."""
        for e in effects:
            if isinstance(e, state.Publish) and e.command.action == "off":
                self._publish(e.command)
        # Then the rows, so that every later effect finds the ids of the records they inserted.
        rows = [e for e in effects if isinstance(e, state.ROWS)]
        rest = [e for e in effects if not isinstance(e, state.ROWS)
                and not (isinstance(e, state.Publish) and e.command.action == "off")]
        if rows and self._grouped:
            try:
                self.writer.commit(rows, self.machine.st.device, self.fence)  # durable on return: an ON may follow
            except DatabaseDown:
                # The message is handled in memory: its timers run now (a due OFF must not wait);
                # its rows, ONs and events wait until the rows are durable (Transactions.unsaved).
                self._carry_out([e for e in rest if isinstance(e, (state.Arm, state.Cancel))])
                self.unsaved = (rows, [e for e in rest if not isinstance(e, (state.Arm, state.Cancel))])
                raise Unsaved() from None
        else:
            for e in records.fold(rows):
                records.write(e, self.machine.st.device)
        self._carry_out(rest)

    def _carry_out(self, effects: list) -> None:
        """Every effect but rows and OFF commands, in order."""
        for e in effects:
            if isinstance(e, state.Publish):
                if e.command.action == "on":
                    self._publish(e.command)
            elif isinstance(e, state.Arm):
                self._cancel(e.kind)
                self.timers[e.kind] = tell_later(self.actor_ref, e.delay_s, TimerFired(e.kind, e.token))
            elif isinstance(e, state.Cancel):
                self._cancel(e.kind)
            elif isinstance(e, state.StateChanged):
                self._state_changed(e)
            elif isinstance(e, state.RunChanged):
                now = self.clock.now()
                seen = dataclasses.replace(e.seen, id=e.activation.id)  # as it was then, with its id now
                self.rt.bus.publish(ActivationChanged(activation=activation_view(seen, now), at=now))
            elif isinstance(e, state.Alert):
                key = ":".join(str(p.id if isinstance(p, (state.Activation, state.Session)) else p) for p in e.key)
                self.rt.bus.publish(Alert(key=key, kind=e.kind, device_id=self.device_id, title=e.title, body=e.body,
                                          audience=e.audience))
            elif isinstance(e, state.Count):
                self._count(e)
        self._count_queued()

    def _count_queued(self) -> None:
        queued = len(self.machine.st.queue)
        if queued != self.queued_counted:
            self.rt.metrics.queued.inc(queued - self.queued_counted)
            self.queued_counted = queued

    def _publish(self, cmd: state.Command) -> None:
        """An OFF goes at once, always; an ON waits for the transaction that records it to commit."""
        topic, payload = commands.encode(
            self.rt.topics, self.device_id, self.machine.st.device.protocol, cmd.action, now=cmd.sent_at,
            command_id=cmd.id, activation_id=cmd.activation.id if cmd.activation is not None else None,
            duration_s=cmd.duration_s, **self._sender())
        if cmd.action == "on" and self._deferred_on is not None:
            self._deferred_on.append((topic, payload))
        elif cmd.action == "on":
            self._send_on(topic, payload)
        elif self.cluster is not None and not self.cluster.may_send_off(self.device_id):
            log.warning("device %s: OFF withheld (ZooKeeper silent too long; another node may own it)", self.device_id)
            self.rt.metrics.cluster_withheld.labels("off").inc()
        else:
            self.mqtt.tell(Publish(topic, payload))

    def _sender(self) -> dict:
        if self.fence is None:
            return {}
        return {"node": self.cluster.node, "epoch": self.fence[1]}

    def _send_on(self, topic: str, payload: str) -> None:
        """Cluster mode: an ON only while this node's session is healthy and the partition is
        still ours (an OFF always goes). A withheld ON is not acked; the ack timeout decides."""
        if self.cluster is not None and not self.cluster.may_send_on(self.device_id):
            log.warning("device %s: ON withheld (this node may not send ON now)", self.device_id)
            self.rt.metrics.cluster_withheld.labels("on").inc()
            return
        self.mqtt.tell(Publish(topic, payload))

    def _cancel(self, kind: str) -> None:
        timer = self.timers.pop(kind, None)
        if timer is not None:
            timer.cancel()

    def _count(self, e: state.Count) -> None:
        metrics = self.rt.metrics
        if e.metric == "activations":
            metrics.activations.labels(*e.labels).inc()
        elif e.metric == "accepted":
            metrics.activations_accepted.labels(*e.labels).inc()
        elif e.metric == "ack_latency":
            metrics.ack_latency.labels(*e.labels).observe(e.value)

    def _state_changed(self, e: state.StateChanged) -> None:
        self.shown = e.state
        self.rt.metrics.device_state(e.previous, e.state)
        activation_id = e.activation.id if e.activation is not None else None
        log.info("device %s state %s -> %s (activation %s, reason %s)", self.device_id, e.previous, e.state,
                 activation_id, e.reason, extra={"device_id": self.device_id, "state": e.state,
                                                 "previous": e.previous, "activation_id": activation_id,
                                                 "reason": e.reason})
        self.rt.bus.publish(DeviceStateChanged(
            device_id=self.device_id, state=e.state, previous=e.previous, available=e.available,
            activation_id=activation_id, reason=e.reason, at=self.clock.now(),
        ))

    def _live_device(self) -> m.Device:
        if self.device is None or self.device.deleted_at is not None:
            raise NotFound(f"There is no device {self.device_id}.", "device_not_found")
        return self.device
