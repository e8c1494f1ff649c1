"""What keeps a device safe when its pump misbehaves (issue 10): an OFF the pump has not
confirmed is owed, booked and sent again until it is confirmed (findings 4 and 16); a
controller switched on too often by hand is flagged flapping (finding 15).

Mixins of ``DeviceActor``: they run on its thread, inside its transactions.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from pumplink.storage import models as m
from pumplink.clock import from_db, iso, to_db
from pumplink.devices import machine
from pumplink.devices.messages import TimerFired
from pumplink.events import Audience
from pumplink.timers import tell_later

if TYPE_CHECKING:
    from pumplink.devices.commands import Pending

log = logging.getLogger(__name__)

from pumplink.devices.machine import FLAP_RECHECK_S, FLAP_WINDOW


class OwedOff:
    """An OFF the pump has not confirmed (``off_owed``, ``device.off_owed_since``)."""

    def _pay_off_debt(self) -> None:
        """Send the owed OFF now, unless one is on its way or the pump is known to be offline
        (its coming back online pays the debt)."""
        if machine.may_pay_off_debt(off_owed=self.off_owed, pending=self.pending is not None,
                                    available=self.available):
            self._send("off", None, reason="owed", actor="system")
            self._owe_off()  # booked, if it was not yet (a no-op when it was)
            self._refresh_state("owed")

    def _owe_off(self) -> None:
        """The pump has not confirmed an OFF: remember it in the database (a restart sends it
        again) and send it again until the pump confirms it."""
        self.off_owed = True
        if self.device.off_owed_since is None:
            self.device.off_owed_since = to_db(self.clock.now())
            m.Device.update(off_owed_since=self.device.off_owed_since).where(m.Device.id == self.device_id).execute()
            log.warning("device %s owes an OFF; its queue waits until the pump confirms one", self.device_id)
        if self.pending is None:
            self._arm_owed_timer()

    def _arm_owed_timer(self) -> None:
        if self.owed_timer is not None:
            return
        delay = machine.owed_delay(self.owed_round, self.config.ack_timeout_s)
        self.owed_round += 1
        self.owed_timer = tell_later(self.actor_ref, delay, TimerFired("owed", self.owed_token))

    def _on_owed_timer(self, token: int) -> None:
        if token != self.owed_token:
            return
        self.owed_timer = None
        if not self.off_owed:
            return
        if self.pending is not None:
            self._arm_owed_timer()  # a command is on its way; look again later
            return
        self._pay_off_debt()

    def _off_confirmed(self) -> None:
        """The pump said it is OFF: the debt is paid and the queue may move."""
        was_owed = self.off_owed
        self.off_owed = self.off_stuck = False
        self.owed_round = 0
        self._cancel_timer(self.owed_timer)
        self.owed_timer = None
        self.owed_token += 1
        if self.device.off_owed_since is not None:
            self.device.off_owed_since = None
            m.Device.update(off_owed_since=None).where(m.Device.id == self.device_id).execute()
        if was_owed:
            log.info("device %s confirmed OFF; its owed OFF is paid", self.device_id)

    def _off_not_confirmed(self, p: Pending, refused: str | None) -> None:
        """A whole round of an OFF failed: the pump refused it (``refused``: its reason) or never
        answered. It stays owed and is sent again; the device takes no new runs meanwhile."""
        first = not self.off_stuck
        self.off_stuck = True
        if refused is None:
            session = self.session
            if session is not None and machine.closes_unacknowledged(self.device.protocol, session.intended_s):
                # A pumplink controller's own timer ends a timed run: count only that far.
                self._close_session("off_unacknowledged", ended_at=self._likely_off_time(p))
                self._log("off", "off_unacknowledged", p.actor, activation_id=p.activation_id,
                          detail="the pump did not confirm OFF; its own timer stops the run; "
                                 "the OFF is sent again until the pump confirms it")
            # Otherwise (a legacy pump has no timer) the session stays open: it may still run.
            self.reported = None
        self._owe_off()
        if first:
            what = f"refused the OFF command ({refused})" if refused else "did not confirm the OFF command"
            self._alert("ack_timeout" if refused is None else "off_refused",
                        f"off_unconfirmed:{self.device_id}:{iso(self.device.off_owed_since)}",
                        f"{self.device.name} did not confirm OFF",
                        f"The pump {what}. It is sent again until the pump confirms it; the device takes no "
                        f"new runs until then. Check it.", Audience.admins())

    def _likely_off_time(self, p: Pending) -> dt.datetime:
        """When an unconfirmed OFF most likely took effect, so quotas count what the pump ran:
        a pumplink controller with a timed run stopped at the latest when the OFF was first sent
        or when its own timer ran out."""
        return machine.likely_off_time(self.clock.now(), p.sent_wall, from_db(self.session.started_at),
                                       self.session.intended_s)


class Flapping:
    """Controller-started runs beyond PUMPLINK_MANUAL_RUNS_PER_HOUR (``device.flapping_since``)."""

    def _flapping(self) -> bool:
        """Whether controller-started runs in the trailing hour exceed PUMPLINK_MANUAL_RUNS_PER_HOUR.

        Beyond it the device is flagged (one ``device_flapping`` alert to admins) and its
        controller-started runs are no longer pushed one by one; they are still recorded. The
        flag clears once the trailing hour holds no more than the limit again.
        """
        now = self.clock.now()
        count = self._manual_runs_in_window(now)
        decision = machine.flap_decision(count, self.config.manual_runs_per_hour, self.device.flapping_since is not None)
        if decision in ("clear", "calm"):
            self._clear_flapping()
            return False
        if decision == "flag":
            self.device.flapping_since = to_db(now)
            m.Device.update(flapping_since=self.device.flapping_since).where(m.Device.id == self.device_id).execute()
            log.warning("device %s is flapping: %d controller-started runs in the last hour", self.device_id, count)
            self._alert("device_flapping", f"device_flapping:{self.device_id}:{iso(now)}",
                        f"{self.device.name} is flapping",
                        f"{self.device.name} was switched on at the pump {count} times in the last hour (more "
                        f"than {self.config.manual_runs_per_hour}). Its runs are still recorded, but not pushed "
                        f"one by one until it calms down. Check the controller.", Audience.admins())
        self._arm_flap_timer()
        return True

    def _manual_runs_in_window(self, now: dt.datetime) -> int:
        return (m.Session.select()
                .where((m.Session.device == self.device_id) & m.Session.activation.is_null()
                       & (m.Session.started_at > to_db(now - FLAP_WINDOW)))
                .count())

    def _clear_flapping(self) -> None:
        if self.device.flapping_since is None:
            return
        self.device.flapping_since = None
        m.Device.update(flapping_since=None).where(m.Device.id == self.device_id).execute()
        self._cancel_timer(self.flap_timer)
        self.flap_timer = None
        self.flap_token += 1
        log.info("device %s is no longer flapping", self.device_id)

    def _arm_flap_timer(self) -> None:
        if self.flap_timer is None:
            self.flap_timer = tell_later(self.actor_ref, FLAP_RECHECK_S, TimerFired("flap", self.flap_token))

    def _on_flap_timer(self, token: int) -> None:
        if token != self.flap_token:
            return
        self.flap_timer = None
        if self.device.flapping_since is None:
            return
        if machine.flap_decision(self._manual_runs_in_window(self.clock.now()), self.config.manual_runs_per_hour,
                                 True) == "clear":
            self._clear_flapping()
        else:
            self._arm_flap_timer()
