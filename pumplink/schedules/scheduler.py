"""SchedulerActor: due schedules in a min-heap with one timer; due runs become activations.

The database holds the truth (``schedule.next_run_at``, ``schedule_run``); the heap is only
an index of it, rebuilt at start-up. A run row is inserted before the device is asked, and
``(schedule, due_at)`` is unique, so a crash at any point can never start a run twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

import peewee
import pykka

from pumplink.accounts import roles
from pumplink.sites import access
from pumplink.devices.messages import RunSettled
from pumplink.storage import models as m
from pumplink.clock import from_db, iso, to_db
from pumplink.storage.db import OPERATIONAL_ERRORS, unit_of_work
from pumplink.errors import NotFound, PumpLinkError
from pumplink.events import Alert, Audience, ScheduleChanged
from pumplink.runtime import Runtime
from pumplink.schedules.planning import DueQueue, Recurrence, outcome_of, plan
from pumplink.schedules.partitioned import REFRESH_S, Partitioned, Refresh
from pumplink.views import run_view, schedule_view
from pumplink.timers import Timer, tell_later

log = logging.getLogger(__name__)

DEVICE_ANSWER_S = 15.0  # a run whose device has not answered by then is recorded "failed: no answer"
RETRY_S = 5.0  # a run that hit a database error is tried again this much later
LOAD_PAGE = 5000  # schedules read per query when the heap is rebuilt at start-up


@dataclasses.dataclass(frozen=True)
class Wake:
    token: int


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Settle the runs whose device has not answered within DEVICE_ANSWER_S."""


@dataclasses.dataclass(frozen=True)
class Retry:
    schedule_id: int
    due: dt.datetime


class SchedulerActor(Partitioned, pykka.ThreadingActor):
    def __init__(self, rt: Runtime, gateway, cluster=None):
        super().__init__()
        self.cluster = cluster  # cluster mode: only owned devices' schedules (partitioned.py)
        self.rt = rt
        self.db = rt.db
        self.clock = rt.clock
        self.config = rt.config
        self.tz = rt.config.tz
        self.gateway = gateway
        self.queue = DueQueue(self.clock, self._arm)
        # Runs told to their device, not answered yet: run id -> (schedule id, monotonic deadline).
        # One timer (Sweep) for all of them, not a waiter per run.
        self.awaiting: dict[int, tuple[int, float]] = {}
        self.sweep_armed = False
        self.started_in_s: float | None = None

    # --- life cycle ------------------------------------------------------------------------
    def _arm(self, delay: float, token: int) -> Timer:
        return tell_later(self.actor_ref, delay, Wake(token))

    def on_start(self) -> None:
        began = time.perf_counter()
        if self.cluster is not None:
            tell_later(self.actor_ref, REFRESH_S, Refresh())
            return  # the heap fills partition by partition (Plan)
        with self.db.connection_context():
            self._settle_interrupted_runs()
            self.queue.load(self._pending())
        self.started_in_s = time.perf_counter() - began
        self.rt.metrics.scheduler_heap.set(len(self.queue))
        log.info("scheduler loaded %d pending schedules in %.3fs; next due %s", len(self.queue),
                 self.started_in_s, iso(self.queue.armed_for) if self.queue.armed_for else "never")

    def on_stop(self) -> None:
        self.queue.cancel_alarm()

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        log.error("scheduler actor failed: %s", exception_value)

    def _pending(self) -> list[tuple[int, dt.datetime]]:
        # In pages: each query hands the gevent loop back, so 100,000 schedules do not stall requests.
        items: list[tuple[int, dt.datetime]] = []
        last = 0
        while True:
            page = list(m.Schedule.select(m.Schedule.id, m.Schedule.next_run_at)
                        .where(m.Schedule.enabled & m.Schedule.next_run_at.is_null(False) & (m.Schedule.id > last))
                        .order_by(m.Schedule.id).limit(LOAD_PAGE).tuples())
            items.extend((sid, from_db(due)) for sid, due in page)
            if len(page) < LOAD_PAGE:
                return items
            last = page[-1][0]

    def _settle_interrupted_runs(self, devices: list[int] | None = None) -> None:
        """Runs whose device answer was lost in a crash: find their activation, never fire again."""
        runs = m.ScheduleRun.select().where(m.ScheduleRun.outcome == "firing")
        if devices is not None:
            runs = runs.join(m.Schedule).where(m.Schedule.device.in_(devices))
        for run in runs:
            act = (m.Activation.select()
                   .where((m.Activation.schedule == run.schedule_id) & (m.Activation.created_at >= run.fired_at))
                   .order_by(m.Activation.created_at).first())
            if act is not None:
                run.outcome = "queued" if act.started_at is None and act.state in ("queued", "cancelled") else "started"
                run.activation = act.id
                run.detail = "settled after a restart"
            else:
                run.outcome = "interrupted"
                run.detail = "the server stopped before the device took the request; not retried (at most once)"
            run.save()
            log.info("schedule %s run %s settled after restart: %s", run.schedule_id, run.id, run.outcome)

    # --- messages --------------------------------------------------------------------------
    def on_receive(self, message):
        try:
            self._dispatch(message)
        except OPERATIONAL_ERRORS + (PumpLinkError,) as exc:
            log.error("scheduler could not handle %s: %s", type(message).__name__, exc)
        except Exception:
            # An exception here would kill the actor and every schedule with it.
            log.exception("scheduler failed handling %r", message)

    def _dispatch(self, message) -> None:
        if self._partitioned(message):
            pass
        elif isinstance(message, Wake):
            for schedule_id, due in self.queue.take_due(message.token):
                self._fire_safely(schedule_id, due)
        elif isinstance(message, Retry):
            if message.schedule_id not in self.queue:
                self.queue.put(message.schedule_id, message.due)
        elif isinstance(message, RunSettled):
            self.awaiting.pop(message.run_id, None)
            self._settle(message)
        elif isinstance(message, Sweep):
            self._sweep()
        else:
            log.warning("scheduler ignores unknown message %r", message)
        self.rt.metrics.scheduler_heap.set(len(self.queue))

    def _fire_safely(self, schedule_id: int, due: dt.datetime) -> None:
        try:
            self._fire(schedule_id, due)
        except OPERATIONAL_ERRORS + (PumpLinkError,) as exc:
            # Popped from the heap but not recorded: try again, or it would be lost until a restart.
            log.error("schedule %s due %s not fired (%s); retrying in %.0fs", schedule_id, iso(due), exc, RETRY_S)
            tell_later(self.actor_ref, RETRY_S, Retry(schedule_id, due))

    @unit_of_work
    def _fire(self, schedule_id: int, due: dt.datetime) -> None:
        s = m.Schedule.get_or_none(m.Schedule.id == schedule_id)
        if s is None or not s.enabled or s.next_run_at is None or from_db(s.next_run_at) != due:
            return  # deleted or changed since this entry was queued
        if not self.owns(s.device_id):
            return  # cluster mode: its partition moved; the new owner plans it
        now = self.clock.now()
        try:
            rec = Recurrence.of(s, self.tz)
        except PumpLinkError as exc:
            # A rule this server no longer accepts (stored before a limit existed): say so on the
            # schedule and stop it, instead of failing at every start-up.
            self._refuse_rule(s, due, now, exc)
            return
        decision = plan(rec, due, now, self.config.schedule_grace_s, s.next_run_index)
        owner = m.User.get_or_none(m.User.id == s.user_id)
        approved = owner is not None and roles.approved(owner.role)
        may_run, why_not = access.may_run(s.user_id, s.device_id) if approved else (False, None)
        outcome = "firing" if decision.fire else "missed"
        detail = None
        if not decision.fire:
            detail = (f"due {iso(due)}; the server was not running then, and "
                      f"{(now - due).total_seconds():.0f}s is past the {self.config.schedule_grace_s:g}s grace window")
            if decision.skipped or decision.more:
                detail += (f"; {decision.skipped}{' or more' if decision.more else ''} later run(s) "
                           "were missed with it")
        elif not approved:
            # A demoted owner may not start pumps, by hand or by schedule; the schedule stays and
            # runs again once an admin approves the account.
            outcome = "skipped"
            detail = f"the owner's account is not approved (role {owner.role if owner else 'none'}); not run"
        elif not may_run:
            # Removed from the device's site, or no longer an operator there: the schedule stays
            # (a manager may restore the role) but does not start the pump.
            outcome = "skipped"
            detail = f"the owner may no longer run this device ({why_not}); not run"
        with self.db.atomic():
            try:
                with self.db.atomic():
                    run = m.ScheduleRun.create(schedule=schedule_id, due_at=to_db(due), fired_at=to_db(now),
                                               outcome=outcome, detail=detail)
            except peewee.IntegrityError:
                run = None  # this due time was handled before a crash; at most once
            s.next_run_at = to_db(decision.next_run)
            s.next_run_index = decision.next_index
            s.save(only=[m.Schedule.next_run_at, m.Schedule.next_run_index])
        if decision.next_run is not None:
            self.queue.put(schedule_id, decision.next_run)
        if run is None:
            log.info("schedule %s due %s was already handled; not fired again", schedule_id, iso(due))
            return
        if outcome == "skipped":
            log.warning("schedule %s run due %s skipped: %s", schedule_id, iso(due), detail)
            self._publish(s, "fired", {"run": run_view(run)})
            if approved:
                self._alert_skipped(s, due, detail)
            return
        if not decision.fire:
            log.warning("schedule %s run due %s missed (%.0fs late)", schedule_id, iso(due), (now - due).total_seconds())
            self._publish(s, "missed", {"run": run_view(run)})
            self._alert_not_run(s, due, detail)
            return
        self.rt.metrics.schedule_lateness.observe(max(0.0, (now - due).total_seconds()))
        log.info("schedule %s fires run %s due %s (%.3fs late) on device %s", schedule_id, run.id, iso(due),
                 (now - due).total_seconds(), s.device_id)
        try:
            # A message, not an ask: the device tells us RunSettled; nothing here waits on it.
            self.gateway.activate_for_schedule(s.device_id, s.user_id, s.duration_s, schedule_id,
                                               run.id, self.actor_ref)
        except PumpLinkError as exc:  # no such device actor, or it is restarting
            self._settle(RunSettled(run.id, schedule_id, None, exc))
            return
        self.awaiting[run.id] = (schedule_id, self.clock.monotonic() + DEVICE_ANSWER_S)
        self._arm_sweep()

    def _arm_sweep(self) -> None:
        if self.sweep_armed or not self.awaiting:
            return
        self.sweep_armed = True
        first = min(deadline for _, deadline in self.awaiting.values())
        tell_later(self.actor_ref, max(0.0, first - self.clock.monotonic()) + 0.05, Sweep())

    def _sweep(self) -> None:
        """A device that never answered: its run is settled as unanswered (at most once: _settle
        only updates a run still "firing", so an answer that comes later is dropped)."""
        self.sweep_armed = False
        now = self.clock.monotonic()
        try:
            for run_id, (schedule_id, deadline) in list(self.awaiting.items()):
                if deadline <= now:
                    del self.awaiting[run_id]
                    self._settle(RunSettled(run_id, schedule_id, None, pykka.Timeout("no answer from the device")))
        finally:
            self._arm_sweep()

    def _refuse_rule(self, s: m.Schedule, due: dt.datetime, now: dt.datetime, exc: PumpLinkError) -> None:
        log.error("schedule %s has a rule this server refuses %r (%s); disabled", s.id, s.rrule, exc)
        with self.db.atomic():
            try:
                with self.db.atomic():
                    m.ScheduleRun.create(schedule=s.id, due_at=to_db(due), fired_at=to_db(now),
                                         outcome="rejected: rule", detail=exc.message)
            except peewee.IntegrityError:
                pass
            s.enabled = False
            s.save(only=[m.Schedule.enabled])

    @unit_of_work
    def _settle(self, msg: RunSettled) -> None:
        outcome, detail = outcome_of(msg.activation, msg.error)
        if isinstance(msg.error, pykka.Timeout):
            outcome, detail = "failed: no answer", f"the device did not answer within {DEVICE_ANSWER_S:g}s"
        activation_id = (msg.activation or {}).get("id")
        updated = (m.ScheduleRun.update(outcome=outcome, detail=detail, activation=activation_id)
                   .where((m.ScheduleRun.id == msg.run_id) & (m.ScheduleRun.outcome == "firing")).execute())
        level = logging.INFO if msg.error is None else logging.WARNING
        log.log(level, "schedule %s run %s: %s%s (activation %s)", msg.schedule_id, msg.run_id, outcome,
                f": {detail}" if detail else "", activation_id)
        if not updated:
            return  # the schedule was deleted meanwhile
        run = m.ScheduleRun.get_by_id(msg.run_id)
        s = m.Schedule.get_or_none(m.Schedule.id == msg.schedule_id)
        if s is None:
            return
        if isinstance(msg.error, NotFound) and not m.Device.select().where(
                (m.Device.id == s.device_id) & m.Device.deleted_at.is_null()).exists():
            # The device was deleted: later runs could only be refused the same way.
            s.enabled = False
            s.save(only=[m.Schedule.enabled])
            self.queue.discard(s.id)
            log.info("schedule %s disabled: its device %s was deleted", s.id, s.device_id)
        self._publish(s, "fired", {"run": run_view(run)})  # once per run, with its outcome
        if msg.error is not None:
            self._alert_not_run(s, from_db(run.due_at), f"{outcome}: {detail}")

    # --- requests (asked by the API through the gateway) -----------------------------------
    @unit_of_work
    def create(self, user_id: int, device_id: int, start: dt.datetime, rule: str | None, duration_s: int) -> dict:
        rec = Recurrence(start, rule, self.tz)  # checked by the API (schedules.check_new); bounded anyway
        first = rec.first()
        s = m.Schedule.create(device=device_id, user=user_id, start_time=to_db(rec.start), rrule=rec.text,
                              duration_s=duration_s, enabled=True, next_run_at=to_db(first), next_run_index=0,
                              created_at=to_db(self.clock.now()))
        if first is not None and self.owns(device_id):
            self.queue.put(s.id, first)
        log.info("schedule %s created by user %s: device %s, %ss, first run %s, rule %s", s.id, user_id, device_id,
                 duration_s, iso(first), rec.text)
        view = schedule_view(s, self.tz)
        self._publish(s, "created", view)
        return view

    @unit_of_work
    def set_enabled(self, schedule_id: int, enabled: bool) -> dict:
        s = self._load(schedule_id)
        if s.enabled != enabled:
            s.enabled = enabled
            if enabled:
                # Runs that passed while it was disabled were not wanted: the next one from now.
                # (A COUNT rule walks at most WALK_LIMIT runs here; if that is not enough, its
                # next run stays in the past and the rest are skipped as missed, in steps.)
                anchor = from_db(s.next_run_at)
                pos = Recurrence.of(s, self.tz).at_or_after(self.clock.now(), anchor, s.next_run_index)
                s.next_run_at, s.next_run_index = to_db(pos.at), pos.index
                if s.next_run_at is not None and self.owns(s.device_id):
                    self.queue.put(s.id, from_db(s.next_run_at))
            else:
                # next_run_at stays as the anchor to resume from; the heap forgets the schedule.
                self.queue.discard(s.id)
            s.save(only=[m.Schedule.enabled, m.Schedule.next_run_at, m.Schedule.next_run_index])
            log.info("schedule %s %s", s.id, "enabled" if enabled else "disabled")
        view = self._view(s)
        self._publish(s, "updated", view)
        return view

    @unit_of_work
    def delete(self, schedule_id: int) -> None:
        s = self._load(schedule_id)
        self.queue.discard(s.id)
        s.delete_instance()
        log.info("schedule %s deleted", schedule_id)
        self._publish(s, "deleted", {"id": schedule_id})

    # --- helpers ---------------------------------------------------------------------------
    def _load(self, schedule_id: int) -> m.Schedule:
        s = m.Schedule.get_or_none(m.Schedule.id == schedule_id)
        if s is None:
            raise NotFound(f"There is no schedule {schedule_id}.", "schedule_not_found")
        return s

    def _view(self, s: m.Schedule) -> dict:
        runs = list(s.runs.order_by(m.ScheduleRun.due_at.desc()).limit(20))
        return schedule_view(s, self.tz, runs, s.runs.count())

    def _publish(self, s: m.Schedule, change: str, detail: dict) -> None:
        self.rt.bus.publish(ScheduleChanged(schedule_id=s.id, device_id=s.device_id, change=change, detail=detail,
                                            at=self.clock.now(), user_id=s.user_id))

    def _alert_skipped(self, s: m.Schedule, due: dt.datetime, why: str) -> None:
        # Not tied to the device: its owner is told even when no longer a member of its site.
        self.rt.bus.publish(Alert(
            key=f"schedule_skipped:{s.id}:{iso(due)}", kind="schedule_skipped", device_id=None,
            title="A scheduled run was skipped", body=f"Schedule {s.id} (due {iso(due)}) did not run: {why}.",
            audience=Audience.user(s.user_id), data={"schedule_id": s.id, "due_at": iso(due)},
        ))

    def _alert_not_run(self, s: m.Schedule, due: dt.datetime, why: str | None) -> None:
        self.rt.bus.publish(Alert(
            key=f"schedule_missed:{s.id}:{iso(due)}", kind="schedule_missed", device_id=s.device_id,
            title="A scheduled run did not happen",
            body=f"Schedule {s.id} (due {iso(due)}) did not run: {why or 'unknown reason'}.",
            audience=Audience.user(s.user_id), data={"schedule_id": s.id, "due_at": iso(due)},
        ))
