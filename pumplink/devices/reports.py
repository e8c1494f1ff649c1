"""What the pump and the timers tell a device: acks, state reports, availability, timer
fires and the broker coming back. machine.py decides; these carry the decision out.

A mixin of ``DeviceActor``: it runs on its thread, inside its transactions.
"""

from __future__ import annotations

import logging

from pumplink.clock import from_db
from pumplink.devices import machine
from pumplink.devices.messages import Ack, Availability, BrokerConnected, StateReport, TimerFired
from pumplink.events import Audience
from pumplink.timers import tell_later

log = logging.getLogger(__name__)


class Reports:
    """Mixin of ``DeviceActor``."""

    def _dispatch(self, message) -> None:
        if isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, StateReport):
            self._on_state(message)
        elif isinstance(message, Availability):
            self._on_availability(message)
        elif isinstance(message, TimerFired):
            if message.kind == "ack":
                self._on_ack_timeout(message.token)
            elif message.kind == "off":
                self._on_off_timer(message.token)
            elif message.kind == "owed":
                self._on_owed_timer(message.token)
            elif message.kind == "flap":
                self._on_flap_timer(message.token)
        elif isinstance(message, BrokerConnected):
            self._pay_off_debt()
            self._advance()
        else:
            log.warning("device %s ignores unknown message %r", self.device_id, message)

    def _snapshot_without_writes(self, message) -> bool:
        """A retained OFF or availability, or the broker coming back, for a device with nothing
        running, queued, open or owed: handling it only changes memory (and says so to the live
        view), so it needs no transaction."""
        if isinstance(message, BrokerConnected):
            pass
        elif not isinstance(message, (StateReport, Availability)) or not message.retained:
            return False
        if isinstance(message, StateReport) and message.state != "off":
            return False
        return (self.current is None and self.pending is None and not self.queue and self.session is None
                and self.unconfirmed_on is None and not self.off_owed and self.device is not None
                and self.device.off_owed_since is None and not self.resync_needed)

    def _on_ack(self, ack: Ack) -> None:
        p = self.pending
        if not machine.ack_applies(p.id if p is not None else None, ack.command_id):
            log.info("device %s: ack for %s is not awaited (late or repeated); ignored", self.device_id, ack.command_id)
            return
        self._cancel_timer(p.timer)
        self.pending = None
        self.rt.metrics.ack_latency.labels(p.action).observe(self.clock.monotonic() - p.sent_at)
        if p.action == "on":
            act = self.current
            if act is None or act.id != p.activation_id or act.state != "starting":
                self._refresh_state("ack")
                self._advance()
                return
            if ack.ok:
                self._start_running(act)
            else:
                if ack.state in ("on", "off"):
                    self.reported = ack.state
                self._finish(act, "failed", "device_refused", "device", detail=ack.error)
                self._alert("activation_failed", f"activation_failed:{act.id}", f"{self.device.name} did not start",
                            f"The pump refused to start: {ack.error or 'no reason given'}.", Audience.user(act.user_id, also_admins=True))
        else:
            if ack.ok:
                self.reported = "off"
                self._off_confirmed()
                self._close_session(p.reason)
                self._log("off", p.reason, p.actor, activation_id=p.activation_id)
            else:
                if ack.state in ("on", "off"):
                    self.reported = ack.state
                log.error("device %s refused OFF: %s", self.device_id, ack.error)
                self._off_not_confirmed(p, refused=ack.error or "no reason given")
        self._refresh_state(p.reason if p.action == "off" else "command")
        self._advance()

    def _on_ack_timeout(self, command_id: str) -> None:
        p = self.pending
        if p is None or p.id != command_id:
            return
        if machine.after_ack_timeout(p.attempts, self.config.ack_retries) == "resend":
            p.attempts += 1
            log.warning("device %s: no ack for %s %s, re-sending (attempt %d)", self.device_id, p.action, p.id, p.attempts)
            self._publish(p.topic, p.payload, p.action)
            p.timer = tell_later(self.actor_ref, self.config.ack_timeout_s, TimerFired("ack", p.id))
            return
        self.pending = None
        log.error("device %s: no ack for %s %s after %d attempts", self.device_id, p.action, p.id, p.attempts)
        if p.action == "on" and self.current is not None and self.current.id == p.activation_id:
            act = self.current
            self._finish(act, "failed", "ack_timeout", "system")
            self._alert("ack_timeout", f"ack_timeout:{act.id}", f"{self.device.name} did not answer",
                        "The pump did not confirm the start command; it was sent OFF for safety.",
                        Audience.user(act.user_id, also_admins=True))
            # For safety: the pump may have switched on without our hearing it. Owed until confirmed.
            self._send_untracked_off()
            self._owe_off()
        else:
            self._off_not_confirmed(p, refused=None)
        self._refresh_state("ack_timeout")
        self._advance()

    def _on_off_timer(self, activation_id: int) -> None:
        act = self.current
        if act is None or act.id != activation_id or act.state != "running":
            return
        self.off_timer = None
        self._stop_current("completed", "completed", "system")

    def _on_state(self, report: StateReport) -> None:
        awaiting_on_ack = self.pending is not None and self.pending.action == "on"
        if report.state == "on":
            self.reported = "on"
            meaning = machine.on_report(awaiting_on_ack=awaiting_on_ack, reason=report.reason,
                                        has_session=self.session is not None,
                                        unconfirmed_on=self.unconfirmed_on is not None)
            if meaning == "confirm_unconfirmed":
                # The ON sent before a crash did land: the pump has run since it was sent.
                act, self.unconfirmed_on = self.unconfirmed_on, None
                self._open_session(act, "command", started_at=from_db(act.started_at))
                self._log("on", "command", self._actor_of(act), activation_id=act.id,
                          detail="confirmed by the pump's report after a restart")
            elif meaning == "manual":
                # Recorded even while an OFF is on its way: the pump did run until that OFF lands.
                self._open_session(None, report.reason)
                self._log("on", report.reason, "device")
                if not self._flapping():
                    self._alert("device_on", f"device_on:session:{self.session.id}", self.device.name,
                                f"{self.device.name} was switched on ({report.reason}).", Audience.approved())
            self._pay_off_debt()
        else:
            self.reported = "off"
            self._off_confirmed()
            self.unconfirmed_on = None
            if self.session is not None:
                self._close_session(report.reason)
                self._log("off", report.reason, "device",
                          activation_id=self.current.id if self.current else None)
            act = self.current
            if act is not None and machine.off_report_ends_run(run_state=act.state, awaiting_on_ack=awaiting_on_ack):
                state, reason = machine.off_report_outcome(report.reason)
                self._finish(act, state, reason, "device")
                if reason == "fault":
                    self._alert("activation_failed", f"activation_failed:{act.id}", f"{self.device.name} fault",
                                "The pump reported a fault and switched off.", Audience.user(act.user_id, also_admins=True))
        self._refresh_state(report.reason)
        self._advance()

    def _on_availability(self, msg: Availability) -> None:
        self.available = msg.online
        self._refresh_state("online" if msg.online else "offline")
        if msg.online:
            self._pay_off_debt()
            self._advance()

    # --- requests from the API and the scheduler ----------------------------------------------
