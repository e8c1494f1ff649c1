"""How a device reacts to the pump, the broker and its timers: the event half of ``Machine``
(machine.py), which adds the requests and recovery. Pure: state and ``now`` in, effects out.
"""

from __future__ import annotations

import datetime as dt
import logging

from pumplink.clock import from_db, iso, to_db
from pumplink.devices import commands, rules
from pumplink.devices.messages import Ack, Availability, BrokerConnected, StateReport, TimerFired
from pumplink.devices.state import (Activation, Alert, Arm, Cancel, Command, Count, DeviceState, Insert, Publish,
                                    RunChanged, Session, Settings, StateChanged, Update, UpdateDevice, WriteLog)
from pumplink.events import Audience

log = logging.getLogger(__name__)
def actor_of(act: Activation) -> str:
    if act.schedule_id is not None:
        return f"schedule:{act.schedule_id}"
    return f"user:{act.user_id}" if act.user_id is not None else "system"


class Reactions:
    def __init__(self, settings: Settings, state: DeviceState, new_id=commands.new_id):
        self.cfg = settings
        self.st = state
        self.new_id = new_id  # command ids (uuid4); tests give their own
        self.now: dt.datetime = dt.datetime.min
        self.fx: list = []

    def _step(self, now: dt.datetime) -> None:
        self.now, self.fx = now, []

    def _done(self) -> list:
        fx, self.fx = self.fx, []
        return fx

    # --- events from the pump, the broker and the timers ----------------------------------
    def handle(self, event, now: dt.datetime) -> list:
        self._step(now)
        if isinstance(event, Ack):
            self._on_ack(event)
        elif isinstance(event, StateReport):
            self._on_state(event)
        elif isinstance(event, Availability):
            self.st.available = event.online
            self._refresh("online" if event.online else "offline")
            if event.online:
                self._pay_off_debt()
                self._advance()
        elif isinstance(event, TimerFired):
            getattr(self, f"_on_{event.kind}_timer", lambda token: None)(event.token)  # _on_adopt_timer: Machine
        elif isinstance(event, BrokerConnected):
            if self.st.adopting is not None:  # its retained report comes now: the ack timeout counts from here
                self.fx.append(Arm("adopt", self.st.adopting.id, self.cfg.ack_timeout_s))
            self._pay_off_debt()
            self._advance()
        else:
            log.warning("device %s ignores unknown message %r", self.st.device.id, event)
        return self._done()

    def _on_ack(self, ack: Ack) -> None:
        st = self.st
        p = st.pending
        if not rules.ack_applies(p.id if p is not None else None, ack.command_id):
            log.info("device %s: ack for %s is not awaited (late or repeated); ignored", st.device.id, ack.command_id)
            return
        self.fx.append(Cancel("ack"))
        st.pending = None
        self.fx.append(Count("ack_latency", (p.action,), max(0.0, (self.now - p.sent_at).total_seconds())))
        if p.action == "on":
            act = st.current
            if act is None or act is not p.activation or act.state != "starting":
                self._refresh("ack")
                self._advance()
                return
            if ack.ok:
                self._start_running(act)
            else:
                if ack.state in ("on", "off"):
                    st.reported = ack.state
                self._finish(act, "failed", "device_refused", "device", detail=ack.error)
                self._alert("activation_failed", ("activation_failed", act), f"{st.device.name} did not start",
                            f"The pump refused to start: {ack.error or 'no reason given'}.",
                            Audience.user(act.user_id, also_admins=True))
        elif ack.ok:
            st.reported = "off"
            self._off_confirmed()
            self._close_session(p.reason)
            self._log("off", p.reason, p.actor, activation=p.activation)
        else:
            if ack.state in ("on", "off"):
                st.reported = ack.state
            log.error("device %s refused OFF: %s", st.device.id, ack.error)
            self._off_not_confirmed(p, refused=ack.error or "no reason given")
        self._refresh(p.reason if p.action == "off" else "command")
        self._advance()

    def _on_ack_timer(self, command_id) -> None:
        st = self.st
        p = st.pending
        if p is None or p.id != command_id:
            return
        if rules.after_ack_timeout(p.attempts, self.cfg.ack_retries) == "resend":
            p.attempts += 1
            log.warning("device %s: no ack for %s %s, re-sending (attempt %d)", st.device.id, p.action, p.id, p.attempts)
            self.fx += [Publish(p), Arm("ack", p.id, self.cfg.ack_timeout_s)]
            return
        st.pending = None
        log.error("device %s: no ack for %s %s after %d attempts", st.device.id, p.action, p.id, p.attempts)
        if p.action == "on" and st.current is not None and st.current is p.activation:
            act = st.current
            self._finish(act, "failed", "ack_timeout", "system")
            self._alert("ack_timeout", ("ack_timeout", act), f"{st.device.name} did not answer",
                        "The pump did not confirm the start command; it was sent OFF for safety.",
                        Audience.user(act.user_id, also_admins=True))
            # For safety: the pump may have switched on without our hearing it. Owed until confirmed.
            self._send_untracked_off()
            self._owe_off()
        else:
            self._off_not_confirmed(p, refused=None)
        self._refresh("ack_timeout")
        self._advance()

    def _on_off_timer(self, activation_id) -> None:
        act = self.st.current
        if act is None or act.id != activation_id or act.state != "running":
            return
        self._stop_current("completed", "completed", "system")

    def _on_state(self, report: StateReport) -> None:
        st = self.st
        if st.adopting is not None and self._adopted(report):  # Machine: a run started before a crash
            return
        awaiting_on_ack = st.pending is not None and st.pending.action == "on"
        if report.state == "on":
            st.reported = "on"
            meaning = rules.on_report(awaiting_on_ack=awaiting_on_ack, reason=report.reason,
                                      has_session=st.session is not None, unconfirmed_on=st.unconfirmed_on is not None)
            if meaning == "confirm_unconfirmed":
                # The ON sent before a crash did land: the pump has run since it was sent.
                act, st.unconfirmed_on = st.unconfirmed_on, None
                self._open_session(act, "command", started_at=from_db(act.started_at))
                self._log("on", "command", actor_of(act), activation=act,
                          detail="confirmed by the pump's report after a restart")
            elif meaning == "manual":
                # Recorded even while an OFF is on its way: the pump did run until that OFF lands.
                self._open_session(None, report.reason)
                st.manual_starts.add(self.now)
                self._log("on", report.reason, "device")
                if not self._flapping():
                    self._alert("device_on", ("device_on", "session", st.session), st.device.name,
                                f"{st.device.name} was switched on ({report.reason}).", Audience.approved())
            self._pay_off_debt()
        else:
            st.reported = "off"
            self._off_confirmed()
            st.unconfirmed_on = None
            if st.session is not None:
                self._close_session(report.reason)
                self._log("off", report.reason, "device", activation=st.current)
            act = st.current
            if act is not None and rules.off_report_ends_run(run_state=act.state, awaiting_on_ack=awaiting_on_ack):
                state, reason = rules.off_report_outcome(report.reason)
                self._finish(act, state, reason, "device")
                if reason == "fault":
                    self._alert("activation_failed", ("activation_failed", act), f"{st.device.name} fault",
                                "The pump reported a fault and switched off.",
                                Audience.user(act.user_id, also_admins=True))
        self._refresh(report.reason)
        self._advance()

    # --- the owed OFF and flapping ------------------------------------------------------------
    def _pay_off_debt(self) -> None:
        st = self.st
        if rules.may_pay_off_debt(off_owed=st.off_owed, pending=st.pending is not None, available=st.available):
            self._send("off", None, reason="owed", actor="system")
            self._owe_off()
            self._refresh("owed")

    def _owe_off(self) -> None:
        """Booked (a restart sends it again) and sent again until the pump confirms it."""
        st = self.st
        st.off_owed = True
        if st.device.off_owed_since is None:
            st.device.off_owed_since = to_db(self.now)
            self.fx.append(UpdateDevice(("off_owed_since",), {"off_owed_since": st.device.off_owed_since}))
            log.warning("device %s owes an OFF; its queue waits until the pump confirms one", st.device.id)
        if st.pending is None:
            self._arm_owed()

    def _arm_owed(self) -> None:
        st = self.st
        if st.owed_armed:
            return
        delay = rules.owed_delay(st.owed_round, self.cfg.ack_timeout_s)
        st.owed_round += 1
        st.owed_armed = True
        self.fx.append(Arm("owed", st.owed_token, delay))

    def _on_owed_timer(self, token) -> None:
        st = self.st
        if token != st.owed_token:
            return
        st.owed_armed = False
        if not st.off_owed:
            return
        if st.pending is not None:
            self._arm_owed()  # a command is on its way; look again later
            return
        self._pay_off_debt()

    def _off_confirmed(self) -> None:
        st = self.st
        was_owed = st.off_owed
        st.off_owed = st.off_stuck = False
        st.owed_round = 0
        if st.owed_armed:
            self.fx.append(Cancel("owed"))
        st.owed_armed = False
        st.owed_token += 1
        if st.device.off_owed_since is not None:
            st.device.off_owed_since = None
            self.fx.append(UpdateDevice(("off_owed_since",), {"off_owed_since": None}))
        if was_owed:
            log.info("device %s confirmed OFF; its owed OFF is paid", st.device.id)

    def _off_not_confirmed(self, p: Command, refused: str | None) -> None:
        """A whole round of an OFF failed: refused (``refused``: its reason) or unanswered. It
        stays owed and is sent again; the device takes no new runs meanwhile."""
        st = self.st
        first = not st.off_stuck
        st.off_stuck = True
        if refused is None:
            s = st.session
            if s is not None and rules.closes_unacknowledged(st.device.protocol, s.intended_s):
                # A pumplink controller's own timer ends a timed run: count only that far.
                end = rules.likely_off_time(self.now, p.sent_at, from_db(s.started_at), s.intended_s)
                self._close_session("off_unacknowledged", ended_at=end)
                self._log("off", "off_unacknowledged", p.actor, activation=p.activation,
                          detail="the pump did not confirm OFF; its own timer stops the run; "
                                 "the OFF is sent again until the pump confirms it")
            st.reported = None  # a legacy pump has no timer: its session stays open, it may still run
        self._owe_off()
        if first:
            what = f"refused the OFF command ({refused})" if refused else "did not confirm the OFF command"
            self._alert("ack_timeout" if refused is None else "off_refused",
                        ("off_unconfirmed", st.device.id, iso(st.device.off_owed_since)),
                        f"{st.device.name} did not confirm OFF",
                        f"The pump {what}. It is sent again until the pump confirms it; the device takes no "
                        f"new runs until then. Check it.", Audience.admins())

    def _flapping(self) -> bool:
        """Whether pump-started runs in the trailing hour exceed the limit; beyond it the device
        is flagged (one alert to admins) and those runs are not pushed one by one."""
        st = self.st
        count = st.manual_starts.count_after(self.now - rules.FLAP_WINDOW)
        decision = rules.flap_decision(count, self.cfg.manual_runs_per_hour, st.device.flapping_since is not None)
        if decision in ("clear", "calm"):
            self._clear_flapping()
            return False
        if decision == "flag":
            st.device.flapping_since = to_db(self.now)
            self.fx.append(UpdateDevice(("flapping_since",), {"flapping_since": st.device.flapping_since}))
            log.warning("device %s is flapping: %d controller-started runs in the last hour", st.device.id, count)
            limit = self.cfg.manual_runs_per_hour
            self._alert("device_flapping", ("device_flapping", st.device.id, iso(self.now)),
                        f"{st.device.name} is flapping",
                        f"{st.device.name} was switched on at the pump {count} times in the last hour (more "
                        f"than {limit}). Its runs are still recorded, but not pushed one by one until it calms "
                        f"down. Check the controller.", Audience.admins())
        self._arm_flap()
        return True

    def _clear_flapping(self) -> None:
        st = self.st
        if st.device.flapping_since is None:
            return
        st.device.flapping_since = None
        self.fx += [UpdateDevice(("flapping_since",), {"flapping_since": None}), Cancel("flap")]
        st.flap_armed = False
        st.flap_token += 1
        log.info("device %s is no longer flapping", st.device.id)

    def _arm_flap(self) -> None:
        if not self.st.flap_armed:
            self.st.flap_armed = True
            self.fx.append(Arm("flap", self.st.flap_token, rules.FLAP_RECHECK_S))

    def _on_flap_timer(self, token) -> None:
        st = self.st
        if token != st.flap_token:
            return
        st.flap_armed = False
        if st.device.flapping_since is None:
            return
        count = st.manual_starts.count_after(self.now - rules.FLAP_WINDOW)
        if rules.flap_decision(count, self.cfg.manual_runs_per_hour, True) == "clear":
            self._clear_flapping()
        else:
            self._arm_flap()

    # --- the machinery ------------------------------------------------------------------------
    def _advance(self) -> None:
        st = self.st
        if not rules.may_start_next(running=st.current is not None, pending=st.pending is not None,
                                    queued=len(st.queue), off_owed=st.off_owed, available=st.available):
            return
        act = st.queue.popleft()
        act.state = "starting"
        act.started_at = to_db(self.now)  # when the ON was sent; the ack sets the confirmed start
        st.current = act
        act.command_id = self._send("on", act, reason="command", actor=actor_of(act)).id
        self.fx.append(Update(act, ("state", "started_at", "command_id")))
        self.fx.append(RunChanged(act))
        self._refresh("command")

    def _start_running(self, act: Activation) -> None:
        st = self.st
        act.state = "running"
        act.started_at = to_db(self.now)
        act.ends_at = to_db(self.now + dt.timedelta(seconds=act.duration_s))
        self.fx.append(Update(act, ("state", "started_at", "ends_at")))
        st.reported = "on"
        if st.session is not None:
            self._close_session("superseded")
        self._open_session(act, "command")
        self._log("on", "command", actor_of(act), activation=act)
        self.fx += [Arm("off", act.id, act.duration_s), RunChanged(act)]
        self._alert("device_on", ("device_on", "activation", act), st.device.name,
                    f"{st.device.name} is ON for {act.duration_s / 60:g} minutes.", Audience.approved())

    def _stop_current(self, state: str, reason: str, by: str) -> None:
        act = self.st.current
        if self.st.pending is not None:
            self.fx.append(Cancel("ack"))
            self.st.pending = None
        self._finish(act, state, reason, by)
        self._send("off", None, reason=reason, actor=by, activation=act)
        self._refresh(reason)

    def _finish(self, act: Activation, state: str, reason: str, by: str, *, detail: str | None = None,
                ended_at: dt.datetime | None = None) -> None:
        act.state, act.reason, act.ended_by = state, reason, by
        act.ended_at = to_db(ended_at or self.now)
        # Only what changed: the user may have been deleted meanwhile (user_id is stale).
        self.fx += [Update(act, ("state", "reason", "ended_by", "ended_at")), Count("activations", (state, reason))]
        if self.st.current is act:
            self.st.current = None
            self.fx.append(Cancel("off"))
        if self.st.adopting is act:
            self.st.adopting = None
            self.fx.append(Cancel("adopt"))
        log.info("device %s activation %s %s (reason %s, by %s)%s", self.st.device.id, act.id, state, reason, by,
                 f": {detail}" if detail else "")
        self.fx.append(RunChanged(act))

    def _send(self, action: str, act: Activation | None, *, reason: str, actor: str,
              activation: Activation | None = None) -> Command:
        cmd = Command(action, self.now, id=self.new_id(), activation=act or activation, reason=reason, actor=actor,
                      duration_s=act.duration_s if action == "on" else None)
        self.fx += [Publish(cmd), Arm("ack", cmd.id, self.cfg.ack_timeout_s)]
        self.st.pending = cmd
        return cmd

    def _send_untracked_off(self) -> None:
        self.fx.append(Publish(Command("off", self.now)))

    def _open_session(self, act: Activation | None, cause: str, started_at: dt.datetime | None = None) -> None:
        s = Session(to_db(started_at or self.now), cause, activation=act, user_id=act.user_id if act else None,
                    intended_s=act.duration_s if act else None)
        self.st.session = s
        self.fx.append(Insert(s))

    def _close_session(self, reason: str, ended_at: dt.datetime | None = None) -> None:
        s = self.st.session
        if s is None:
            return
        end = ended_at or self.now
        s.ended_at, s.end_reason = to_db(end), reason
        s.actual_s = max(0.0, (end - from_db(s.started_at)).total_seconds())
        self.fx.append(Update(s, ("ended_at", "actual_s", "end_reason")))
        self.st.session = None

    def _log(self, event: str, cause: str, actor: str | None, *, activation: Activation | None = None,
             detail: str | None = None) -> None:
        self.fx.append(WriteLog(event, cause, actor, self.now, self.st.session, activation, detail))

    def _refresh(self, reason: str) -> None:
        st = self.st
        new = rules.derive_state(st.available, st.pending.action if st.pending else None, st.reported)
        if new != st.shown:
            previous, st.shown = st.shown, new
            self.fx.append(StateChanged(previous, new, st.available, st.current, reason))

    def _alert(self, kind: str, key: tuple, title: str, body: str, audience: Audience) -> None:
        self.fx.append(Alert(kind, key, title, body, audience))
