"""A device as a pure state machine: events and the current time in, effects out.

``Machine`` owns one device's ``DeviceState`` (state.py) and applies rules.py to it. Each
step takes what happened (an ack, a report, a timer: reactions.py; a request or a restart:
here) and ``now``, changes the state and returns the effects the shell (actor.py) carries
out in order: commands to publish, rows to write, events to emit, timers to arm or cancel.
No database, broker, thread or clock: the shell reads what a quota check needs and passes
it in (``Usage``).

States people see (rules.derive_state): unknown, off, starting, on, stopping, offline.
Beside them a run is queued, starting or running; an OFF may be owed (and stuck); the device
may be flagged flapping. The transitions, each covered by tests/devices/test_machine.py
(which fails when one in this list has no test):
"""

from __future__ import annotations

import datetime as dt
import logging

from pumplink.clock import from_db, iso, to_db
from pumplink.devices import rules
from pumplink.devices.reactions import Reactions, actor_of
from pumplink.devices.messages import StateReport, TimerFired
from pumplink.devices.state import (Activation, Alert, Arm, Cancel, Count, Insert, Loaded, Publish, Refusal, RunChanged,
                                    Starts, Update, Usage)
from pumplink.events import Audience
from pumplink.quota import rules as quota_rules
from pumplink.quota.usage import promised

log = logging.getLogger(__name__)

TRANSITIONS = (
    "request queued", "request refused: offline", "request refused: off unconfirmed",
    "request refused: broker down", "request refused: queue full",
    "quota fits", "quota refused for the device", "quota refused for the user", "quota refused for the member at the site",
    "ON sent", "ON acked: running", "ON refused", "ON ack timeout: resend", "ON ack timeout: give up, OFF owed",
    "run ends at its time", "cancel queued", "cancel running", "cancel ended", "cancel a user's queue",
    "OFF acked", "OFF refused: owed, stuck", "OFF ack timeout: owed, session closed at likely time",
    "OFF ack timeout on legacy: session stays open", "owed OFF resent in rounds", "owed OFF paid by ack",
    "owed OFF paid by an OFF report", "owed OFF waits while offline, sent when back online",
    "late or repeated ack ignored", "legacy id-less ack", "manual ON reported", "manual OFF reported",
    "OFF report ends the run", "pump fault ends the run", "report of ON for our command", "force stop",
    "force stop when idle", "flapping flagged", "flapping cleared", "recovery: run past its end",
    "recovery: run still due", "recovery: pending ON at crash", "recovery: legacy session stays open",
    "recovery: pending ON waits for the pump's word", "adopted: the pump confirms, the run goes on to its end",
    "adoption refused: the pump says otherwise", "adoption refused: no word within the ack timeout",
    "recovery: queued wait again", "database away: due OFF sent", "database away: owed OFF resent",
    "database away: pending OFF resent", "broker back: owed OFF paid, queue moves", "protocol changed on reload",
)
__doc__ += "".join(f"\n- {t}" for t in TRANSITIONS)


class Machine(Reactions):
    # --- requests -----------------------------------------------------------------------------
    def refusal(self, now: dt.datetime, *, broker_connected: bool) -> Refusal | None:
        """Why a new run is refused before its quota is read (the shell reads it after), or None."""
        st = self.st
        busy = st.current is not None or st.pending is not None or st.off_owed
        why = rules.refusal(available=st.available, off_stuck=st.off_stuck, broker_connected=broker_connected,
                            busy=busy, queued=len(st.queue), queue_limit=self.cfg.queue_limit)
        if why is None:
            return None
        return Refusal(why, queued=len(st.queue), reserved_s=self.reserved_s(now))

    def activate(self, now: dt.datetime, *, user_id: int | None, duration_s: int, source: str,
                 schedule_id: int | None, usage: Usage, broker_connected: bool) -> Refusal | tuple[Activation, list]:
        """A run asked for: refused (before or by its quota), or queued and, when it may, started."""
        self._step(now)
        why = self.refusal(now, broker_connected=broker_connected) or self.quota_refusal(duration_s, usage)
        if why is not None:
            return why
        act = Activation(self.st.device.id, user_id, schedule_id, duration_s, source, to_db(now))
        self.st.queue.append(act)
        self.fx += [Insert(act), Count("accepted", (source,)), RunChanged(act)]
        self._advance()
        return act, self._done()

    def quota_refusal(self, duration_s: int, usage: Usage) -> Refusal | None:
        """Every daily allowance that applies must hold; the one with the least time free decides."""
        limits = [quota_rules.Limit("device", self.quota_s(), usage.device_used_s, self.reserved_s(self.now))]
        if usage.member is not None:
            limits.append(usage.member)
        if usage.user_quota_minutes is not None:
            limits.append(quota_rules.Limit("user", usage.user_quota_minutes * 60, usage.user_used_s,
                                            usage.user_reserved_s))
        ok, tightest = quota_rules.strictest(limits, duration_s)
        return None if ok else Refusal("quota_exhausted", quota=tightest.kind, free_s=tightest.free_s)

    def quota_s(self) -> float:
        minutes = self.st.device.daily_quota_minutes
        return (minutes if minutes is not None else self.cfg.daily_quota_minutes) * 60

    def reserved_s(self, now: dt.datetime) -> float:
        """Time promised to this device's queued and running work (the machine is its only writer)."""
        open_acts = [*self.st.queue, *([self.st.current] if self.st.current is not None else [])]
        return sum(promised(a.state, a.duration_s, a.ends_at, now) for a in open_acts)

    def cancel(self, now: dt.datetime, activation_id: int, by: str) -> tuple[Activation | None, list]:
        """Cancel a queued run or stop the running one; (None, []) when it has already ended."""
        self._step(now)
        st = self.st
        for act in st.queue:
            if act.id == activation_id:
                st.queue.remove(act)
                self._finish(act, "cancelled", "cancelled", by)
                return act, self._done()
        if st.current is not None and st.current.id == activation_id:
            act = st.current
            self._stop_current("stopped", "cancelled", by)
            return act, self._done()
        return None, []

    def cancel_queued_of(self, now: dt.datetime, user_id: int, reason: str) -> tuple[list[Activation], list]:
        """A user's queued runs (the user is no longer approved); a run going ends at its time."""
        self._step(now)
        mine = [act for act in self.st.queue if act.user_id == user_id]
        for act in mine:
            self.st.queue.remove(act)
            self._finish(act, "cancelled", reason, "system")
        return mine, self._done()

    def force_shutdown(self, now: dt.datetime, by: str) -> tuple[Activation | None, list[Activation], list]:
        """OFF at once, whatever the state; the queue is cancelled. Offline devices too."""
        self._step(now)
        st = self.st
        cancelled = []
        while st.queue:
            act = st.queue.popleft()
            self._finish(act, "cancelled", "force", by)
            cancelled.append(act)
        stopped = st.current
        if stopped is not None:
            self._stop_current("stopped", "force", by)
        else:
            if st.pending is not None:
                self.fx.append(Cancel("ack"))
                st.pending = None
            self._send("off", None, reason="force", actor=by)
        self._refresh("force")
        self.fx.append(Alert("force_shutdown", ("force_shutdown", st.device.id, self.new_id()),
                             f"{st.device.name} force shutdown", f"{st.device.name} was shut down by an admin.",
                             Audience.admins()))
        return stopped, cancelled, self._done()

    def reload(self, now: dt.datetime, *, name: str, protocol: str, daily_quota_minutes: float | None) -> list:
        self._step(now)
        d = self.st.device
        changed = protocol != d.protocol
        d.name, d.protocol, d.daily_quota_minutes = name, protocol, daily_quota_minutes
        if changed:
            # What the old firmware said no longer holds (legacy controllers never say "online").
            self.st.available = None
            self._refresh("protocol changed")
        return self._done()

    # --- while the database is away -----------------------------------------------------------
    def without_database(self, event, now: dt.datetime) -> list:
        """While the database is away a due OFF is not kept waiting: only commands and timers."""
        self._step(now)
        st = self.st
        if not isinstance(event, TimerFired):
            return []
        pending_off = st.pending.id if st.pending is not None and st.pending.action == "off" else None
        what = rules.without_database(event.kind, event.token, current_id=st.current.id if st.current else None,
                                      off_owed=st.off_owed, owed_token=st.owed_token, pending_off_id=pending_off)
        if what == "off_now":
            log.warning("device %s: run %s is due to end while the database is away; OFF sent now",
                        st.device.id, event.token)
            st.off_owed = True
            self._send_untracked_off()
        elif what == "owed_again":
            st.owed_armed = False
            self._send_untracked_off()
            self._arm_owed()
        elif what == "pending_again":
            st.off_owed = True
            self.fx.append(Publish(st.pending))
            self._arm_owed()
        return self._done()

    # --- recovery (API.md, Crash recovery) ------------------------------------------------------
    def recover(self, loaded: Loaded, now: dt.datetime, *, resync: bool = False) -> list:
        """Reconcile the records with the clock before any request is accepted. ``resync``: the
        database failed mid-way, memory is forgotten and rebuilt (timers too), then the owed OFF
        is paid."""
        self._step(now)
        st = self.st
        if resync:
            self.fx += [Cancel(kind) for kind in ("off", "owed", "flap", "ack", "adopt")]
            st.owed_armed = st.flap_armed = False
            st.owed_token += 1
            st.flap_token += 1
            st.queue.clear()
            st.current = st.pending = st.adopting = None
        st.device, st.session = loaded.device, loaded.session
        st.manual_starts = Starts(sorted(loaded.manual_starts))
        by_id = {act.id: act for act in loaded.activations}
        plan = rules.recover(
            [rules.Run(a.id, a.state, _end_of(a)) for a in loaded.activations],
            session_activation_id=loaded.session.run_id if loaded.session else None,
            has_session=loaded.session is not None, protocol=loaded.device.protocol,
            off_owed_before=loaded.device.off_owed_since is not None, now=now)
        st.queue.extend(by_id[act_id] for act_id in plan.queued)
        if plan.resume is not None:
            act_id, remaining = plan.resume
            st.current = by_id[act_id]
            self.fx.append(Arm("off", act_id, remaining))
            log.info("device %s activation %s resumes after restart: %.1fs left", st.device.id, act_id, remaining)
        if plan.adopt is not None:
            # Its ON may have landed: the pump's retained report, once the broker is up, says
            # whether it runs it (the adopt timer is armed then).
            st.current = st.adopting = by_id[plan.adopt]
            log.info("device %s activation %s was starting at the crash; waiting for the pump's report",
                     st.device.id, plan.adopt)
        for close in plan.close:
            act = by_id[close.id]
            if close.unconfirmed_on:
                st.unconfirmed_on = act  # its ON may have landed: a report of ON is this run's
            self._finish(act, close.state, "recovered", "system", ended_at=close.ended_at)
            if close.close_session:
                self._close_session("recovered", ended_at=close.ended_at)
        # Sent once the broker link is up (BrokerConnected), not into a link that is not there yet.
        st.off_owed = plan.off_owed
        if st.device.flapping_since is not None:
            self._arm_flap()
        self._refresh("start-up")
        if resync:
            self._pay_off_debt()
        return self._done()

    # --- a run whose ON was sent before a crash --------------------------------------------------
    def _adopted(self, report: StateReport) -> bool:
        """The first report while a run started before a crash waits: adopted (True), or it
        fails and the report is read as any other (False)."""
        act = self.st.adopting
        if rules.adoption(state=report.state, reason=report.reason, remaining_s=report.remaining_s,
                          duration_s=act.duration_s) == "adopt":
            self._adopt(act)
            self._refresh(report.reason)
            return True
        self._refute(act, f"the pump reported {report.state} ({report.reason})")
        return False

    def _adopt(self, act: Activation) -> None:
        """The pump runs our command on its own timer: the run goes on to its original end."""
        st = self.st
        st.adopting, st.reported = None, "on"
        act.state = "running"
        ends = from_db(act.started_at) + dt.timedelta(seconds=act.duration_s)
        act.ends_at = to_db(ends)
        self.fx += [Cancel("adopt"), Update(act, ("state", "ends_at"))]
        if st.session is not None:
            self._close_session("superseded")
        self._open_session(act, "command", started_at=from_db(act.started_at))
        self._log("on", "command", actor_of(act), activation=act,
                  detail="confirmed by the pump's report after a restart")
        self.fx += [Arm("off", act.id, max(0.0, (ends - self.now).total_seconds())), RunChanged(act)]
        log.info("device %s activation %s adopted after a restart: the pump runs it until %s", st.device.id, act.id,
                 iso(ends))

    def _refute(self, act: Activation, why: str) -> None:
        """The pump says otherwise, or nothing in time: the run fails and the pump is sent OFF
        until it confirms (a report of ON is still this run's session)."""
        st = self.st
        self._finish(act, "failed", "recovered", "system", detail=why)
        st.unconfirmed_on = act
        self._owe_off()
        self._pay_off_debt()

    def _on_adopt_timer(self, activation_id) -> None:
        act = self.st.adopting
        if act is None or act.id != activation_id:
            return
        self._refute(act, "the pump did not report within the ack timeout")
        self._refresh("ack_timeout")
        self._advance()


def _end_of(act: Activation) -> dt.datetime | None:
    """A running run's end; a starting one's end had its ON landed when it was sent."""
    if act.state == "starting" and act.started_at is not None:
        return from_db(act.started_at) + dt.timedelta(seconds=act.duration_s)
    return from_db(act.ends_at) if act.ends_at else None


__all__ = ["Machine", "actor_of"]
