"""The device's machine (pumplink/devices/machine.py): events and an explicit clock in,
effects out. No database, no broker, no actor. Each test names the transitions it covers;
the last test checks that every transition machine.TRANSITIONS lists has one.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from pumplink.clock import from_db, to_db
from pumplink.devices import rules
from pumplink.devices.machine import TRANSITIONS, Machine
from pumplink.devices.messages import Ack, Availability, BrokerConnected, StateReport, TimerFired
from pumplink.quota.rules import Limit
from pumplink.devices.state import (Activation, Alert, Arm, Cancel, Count, Device, DeviceState, Insert, Loaded,
                                    Publish, Refusal, RunChanged, Session, Settings, Starts, StateChanged, Update,
                                    UpdateDevice, Usage, WriteLog)

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
SETTINGS = Settings(ack_timeout_s=2.0, ack_retries=1, queue_limit=2, manual_runs_per_hour=3, daily_quota_minutes=60)
COVERED: set[str] = set()


def covers(*names):
    for name in names:
        assert name in TRANSITIONS, name
    COVERED.update(names)
    return lambda fn: fn


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class Shell:
    """What the actor does with effects, as far as a test needs: give inserted records ids."""

    def __init__(self, protocol="pumplink", available=True, **state):
        self.ids = itertools.count(1)
        cmd_ids = itertools.count(1)
        self.m = Machine(SETTINGS, DeviceState(Device(7, "Pump", protocol, None), available=available, **state),
                         new_id=lambda: f"c{next(cmd_ids)}")

    def apply(self, fx):
        for e in fx:
            if isinstance(e, Insert) and e.record.id is None:
                e.record.id = next(self.ids)
        return fx

    @property
    def st(self):
        return self.m.st

    def ask(self, t=0.0, duration=60, user=1, usage=Usage(0.0), broker=True):
        result = self.m.activate(at(t), user_id=user, duration_s=duration, source="api", schedule_id=None,
                                 usage=usage, broker_connected=broker)
        if isinstance(result, Refusal):
            return result, []
        act, fx = result
        return act, self.apply(fx)

    def on(self, event, t):
        return self.apply(self.m.handle(event, at(t)))

    def running(self, duration=60):
        """A run acked at t=1."""
        act, _ = self.ask(0, duration)
        self.on(Ack(self.st.pending.id, True, "on"), 1)
        return act


def sent(fx):
    return [(e.command.action, e.command.reason if e.command.id else "untracked") for e in fx if isinstance(e, Publish)]


def of(fx, kind):
    return [e for e in fx if isinstance(e, kind)]


def alerts(fx):
    return [e.kind for e in of(fx, Alert)]


# --- requests and quota -----------------------------------------------------------------------
@covers("request queued", "ON sent")
def test_request_queued_then_on_sent_after_its_row():
    s = Shell()
    act, fx = s.ask(0, 60)
    assert act.state == "starting" and act.id == 1 and s.st.current is act
    assert sent(fx) == [("on", "command")]
    # The ON is after the row that records it: the shell publishes it once that row is durable.
    assert fx.index(of(fx, Insert)[0]) < fx.index(of(fx, Publish)[0])
    assert of(fx, Arm)[0].kind == "ack" and of(fx, Arm)[0].delay_s == 2.0
    assert of(fx, StateChanged)[-1].state == "starting"
    assert Count("accepted", ("api",)) in fx
    second, fx = s.ask(0.5, 60)
    assert second.state == "queued" and list(s.st.queue) == [second] and sent(fx) == []


@covers("request refused: offline", "request refused: off unconfirmed", "request refused: broker down",
        "request refused: queue full")
@pytest.mark.parametrize("setup, broker, code", [
    (dict(available=False), True, "device_offline"),
    (dict(off_stuck=True), True, "off_unconfirmed"),
    ({}, False, "broker_unavailable"),
])
def test_request_refused(setup, broker, code):
    s = Shell(**setup)
    refusal, fx = s.ask(0, 60, broker=broker)
    assert isinstance(refusal, Refusal) and refusal.code == code and fx == []
    assert s.m.refusal(at(0), broker_connected=broker).code == code


def test_queue_full():
    s = Shell()
    s.ask(0, 60), s.ask(0, 60), s.ask(0, 60)
    refusal, _ = s.ask(0, 60)
    assert refusal.code == "queue_full" and refusal.queued == 2 and refusal.reserved_s == 180


@covers("quota fits", "quota refused for the device", "quota refused for the user",
        "quota refused for the member at the site")
@pytest.mark.parametrize("usage, duration, outcome", [
    (Usage(0.0), 3600, None),  # the device's 60 minutes, exactly
    (Usage(3000.0), 600, None),
    (Usage(3000.0), 601, ("device", 600.0)),
    (Usage(0.0, user_quota_minutes=10, user_used_s=300, user_reserved_s=200), 100, None),
    (Usage(0.0, user_quota_minutes=10, user_used_s=300, user_reserved_s=200), 101, ("user", 100.0)),
    (Usage(3590.0, user_quota_minutes=10), 60, ("device", 10.0)),  # the device is checked first
    # The strictest allowance decides: the member's at the site, when it has the least time free.
    (Usage(0.0, member=Limit("member", 600, 400, 100)), 100, None),
    (Usage(0.0, member=Limit("member", 600, 400, 100)), 101, ("member", 100.0)),
    (Usage(0.0, user_quota_minutes=10, user_used_s=500, member=Limit("member", 600, 0, 0)), 101, ("user", 100.0)),
])
def test_quota(usage, duration, outcome):
    s = Shell()
    result, _ = s.ask(0, duration, usage=usage)
    if outcome is None:
        assert isinstance(result, Activation)
    else:
        assert (result.code, result.quota, result.free_s) == ("quota_exhausted", *outcome)


def test_quota_counts_what_this_device_promised():
    s = Shell()
    s.running(1200)  # acked at 1 s: runs until 1201 s
    s.ask(2, 1200)  # queued: all of it
    assert s.m.reserved_s(at(101)) == 1100 + 1200
    result, _ = s.ask(101, 1301)
    assert result.code == "quota_exhausted" and result.free_s == 3600 - 2300
    assert isinstance(s.ask(101, 1300)[0], Activation)


# --- the ON and its ack -------------------------------------------------------------------------
@covers("ON acked: running")
def test_on_acked_starts_the_run():
    s = Shell()
    act, _ = s.ask(0, 60)
    fx = s.on(Ack("c1", True, "on"), 1.5)
    assert act.state == "running" and from_db(act.started_at) == at(1.5) and from_db(act.ends_at) == at(61.5)
    session = s.st.session
    assert of(fx, Insert)[0].record is session and session.activation is act and session.intended_s == 60
    assert of(fx, WriteLog)[0].event == "on" and of(fx, WriteLog)[0].session is session
    assert Arm("off", act.id, 60) in fx and Cancel("ack") in fx
    assert alerts(fx) == ["device_on"] and of(fx, Alert)[0].key == ("device_on", "activation", act)
    assert Count("ack_latency", ("on",), 1.5) in fx
    assert s.st.shown == "on" and s.st.pending is None


@covers("ON refused")
def test_on_refused():
    s = Shell()
    act, _ = s.ask(0, 60)
    fx = s.on(Ack("c1", False, "off", "jammed"), 1)
    assert (act.state, act.reason, act.ended_by) == ("failed", "device_refused", "device")
    assert alerts(fx) == ["activation_failed"] and s.st.current is None and s.st.shown == "off"
    assert Count("activations", ("failed", "device_refused")) in fx


@covers("ON ack timeout: resend", "ON ack timeout: give up, OFF owed")
def test_on_ack_timeout():
    s = Shell()
    act, first = s.ask(0, 60)
    fx = s.on(TimerFired("ack", "c1"), 2)
    assert of(fx, Publish)[0].command is of(first, Publish)[0].command  # the same payload again
    assert Arm("ack", "c1", 2.0) in fx and s.st.pending.attempts == 2 and act.state == "starting"
    fx = s.on(TimerFired("ack", "c1"), 4)
    assert (act.state, act.reason) == ("failed", "ack_timeout")
    assert sent(fx) == [("off", "untracked")]  # the pump may have switched on unheard
    assert s.st.off_owed and s.st.device.off_owed_since == to_db(at(4)) and UpdateDevice(("off_owed_since",)) in fx
    assert Arm("owed", s.st.owed_token, 2.0) in fx and alerts(fx) == ["ack_timeout"]
    assert s.m.refusal(at(5), broker_connected=True) is None  # owed, not stuck: it may still queue
    queued, fx = s.ask(5, 60)
    assert queued.state == "queued" and sent(fx) == []  # not started while an OFF is owed


# --- the end of a run and the OFF ---------------------------------------------------------------
@covers("run ends at its time", "OFF acked")
def test_run_ends_then_off_acked_then_next_starts():
    s = Shell()
    act = s.running(60)
    nxt, _ = s.ask(2, 30)
    fx = s.on(TimerFired("off", act.id), 61)
    assert (act.state, act.reason, act.ended_by) == ("completed", "completed", "system")
    assert sent(fx) == [("off", "completed")] and s.st.shown == "stopping" and Cancel("off") in fx
    session = s.st.session
    fx = s.on(Ack(s.st.pending.id, True, "off"), 61.2)
    assert session.end_reason == "completed" and from_db(session.ended_at) == at(61.2)
    assert session.actual_s == pytest.approx(60.2)
    assert [w.event for w in of(fx, WriteLog)] == ["off"]
    assert sent(fx) == [("on", "command")] and nxt.state == "starting"


@covers("OFF refused: owed, stuck")
def test_off_refused():
    s = Shell()
    act = s.running()
    s.on(TimerFired("off", act.id), 61)
    fx = s.on(Ack(s.st.pending.id, False, "on", "relay stuck"), 61.1)
    assert s.st.off_owed and s.st.off_stuck and s.st.reported == "on" and alerts(fx) == ["off_refused"]
    assert of(fx, Alert)[0].key == ("off_unconfirmed", 7, "2026-01-01T12:01:01.100Z")
    assert s.m.refusal(at(62), broker_connected=True).code == "off_unconfirmed"


@covers("OFF ack timeout: owed, session closed at likely time")
def test_off_unanswered_closes_a_timed_session_at_its_end():
    s = Shell()
    act = s.running(60)
    s.on(TimerFired("off", act.id), 61)
    session = s.st.session
    s.on(TimerFired("ack", "c2"), 63)
    fx = s.on(TimerFired("ack", "c2"), 65)
    assert session.end_reason == "off_unacknowledged" and from_db(session.ended_at) == at(61)
    assert s.st.session is None and s.st.reported is None and s.st.off_stuck and alerts(fx) == ["ack_timeout"]
    assert of(fx, WriteLog)[0].cause == "off_unacknowledged"


@covers("OFF ack timeout on legacy: session stays open")
def test_off_unanswered_on_legacy_keeps_the_session():
    s = Shell(protocol="legacy")
    act = s.running(60)
    s.on(TimerFired("off", act.id), 61)
    s.on(TimerFired("ack", "c2"), 63)
    s.on(TimerFired("ack", "c2"), 65)
    assert s.st.session is not None and s.st.session.ended_at is None and s.st.off_owed


@covers("owed OFF resent in rounds", "owed OFF paid by ack")
def test_owed_off_rounds_double_then_paid():
    s = Shell()
    act = s.running(60)
    s.on(TimerFired("off", act.id), 61)
    s.on(TimerFired("ack", "c2"), 63)
    fx = s.on(TimerFired("ack", "c2"), 65)
    assert [a.delay_s for a in of(fx, Arm)] == [2.0]  # round 0
    fx = s.on(TimerFired("owed", s.st.owed_token), 67)
    assert sent(fx) == [("off", "owed")] and s.st.shown == "stopping"
    owed_id = s.st.pending.id
    s.on(TimerFired("ack", owed_id), 69)
    fx = s.on(TimerFired("ack", owed_id), 71)
    assert [a.delay_s for a in of(fx, Arm) if a.kind == "owed"] == [4.0]  # round 1: doubled
    assert s.on(TimerFired("owed", s.st.owed_token - 1), 72) == []  # a stale token
    fx = s.on(TimerFired("owed", s.st.owed_token), 75)
    fx = s.on(Ack(s.st.pending.id, True, "off"), 75.5)
    assert not s.st.off_owed and not s.st.off_stuck and s.st.owed_round == 0
    assert s.st.device.off_owed_since is None and UpdateDevice(("off_owed_since",)) in fx
    assert s.m.refusal(at(76), broker_connected=True) is None


@covers("owed OFF paid by an OFF report")
def test_owed_off_paid_by_report():
    s = Shell(off_owed=True)
    s.st.device.off_owed_since = to_db(T0)
    fx = s.on(StateReport("off", "manual", None, False), 1)
    assert not s.st.off_owed and s.st.reported == "off" and Cancel("owed") not in fx
    assert UpdateDevice(("off_owed_since",)) in fx


@covers("owed OFF waits while offline, sent when back online")
def test_owed_off_waits_for_the_pump():
    s = Shell(available=False, off_owed=True, owed_armed=True)
    assert s.on(TimerFired("owed", 0), 2) == []
    fx = s.on(Availability(True, False), 3)
    assert sent(fx) == [("off", "owed")] and s.st.shown == "stopping"


@covers("broker back: owed OFF paid, queue moves")
def test_broker_back():
    s = Shell(off_owed=True)
    fx = s.on(BrokerConnected(), 1)
    assert sent(fx) == [("off", "owed")]
    s = Shell(available=None)
    s.st.queue.append(Activation(7, 1, None, 60, "api", to_db(T0), id=9))
    assert sent(s.on(BrokerConnected(), 1)) == [("on", "command")]


# --- acks that do not apply ----------------------------------------------------------------------
@covers("late or repeated ack ignored", "legacy id-less ack")
@pytest.mark.parametrize("ack_id, applies", [("c1", True), ("c0", False), (None, True)])
def test_which_ack_applies(ack_id, applies):
    s = Shell()
    act, _ = s.ask(0, 60)
    fx = s.on(Ack(ack_id, True, "on"), 1)
    assert (act.state == "running") is applies and (fx != []) is applies
    if applies:  # the same ack again, late
        assert s.on(Ack(ack_id, True, "on"), 2) == []


# --- what the pump reports on its own -----------------------------------------------------------
@covers("manual ON reported", "manual OFF reported")
def test_manual_on_and_off():
    s = Shell()
    fx = s.on(StateReport("on", "manual", None, False), 1)
    session = s.st.session
    assert session.start_cause == "manual" and session.activation is None and of(fx, Insert)[0].record is session
    assert alerts(fx) == ["device_on"] and of(fx, Alert)[0].key == ("device_on", "session", session)
    assert s.st.shown == "on" and list(s.st.manual_starts) == [at(1)]
    fx = s.on(StateReport("off", "manual", None, False), 5)
    assert session.end_reason == "manual" and session.actual_s == 4 and s.st.shown == "off"
    assert of(fx, WriteLog)[0].actor == "device"


@covers("OFF report ends the run", "pump fault ends the run")
@pytest.mark.parametrize("reason, outcome, alert", [
    ("timer", ("completed", "completed"), []),
    ("fault", ("failed", "fault"), ["activation_failed"]),
    ("manual", ("stopped", "device_off"), []),
])
def test_off_report_ends_the_run(reason, outcome, alert):
    s = Shell()
    act = s.running()
    fx = s.on(StateReport("off", reason, None, False), 30)
    assert (act.state, act.reason, act.ended_by) == (*outcome, "device") and alerts(fx) == alert
    assert s.st.session is None and s.st.current is None


@covers("report of ON for our command")
def test_report_of_our_on_waits_for_its_ack():
    s = Shell()
    act, _ = s.ask(0, 60)
    fx = s.on(StateReport("on", "command", 60, False), 0.5)
    assert of(fx, Insert) == [] and s.st.session is None and act.state == "starting"
    s.on(Ack("c1", True, "on"), 0.6)
    assert act.state == "running" and s.st.session.activation is act


@covers("flapping flagged", "flapping cleared")
def test_flapping():
    s = Shell()
    for i in range(3):
        fx = s.on(StateReport("on", "manual", None, False), i * 10)
        assert alerts(fx) == ["device_on"]
        s.on(StateReport("off", "manual", None, False), i * 10 + 5)
    fx = s.on(StateReport("on", "manual", None, False), 40)
    assert alerts(fx) == ["device_flapping"] and s.st.device.flapping_since == to_db(at(40))
    assert Arm("flap", 0, rules.FLAP_RECHECK_S) in fx
    s.on(StateReport("off", "manual", None, False), 45)
    fx = s.on(StateReport("on", "manual", None, False), 50)
    assert alerts(fx) == []  # still flagged: recorded, not pushed, no second alert
    fx = s.on(TimerFired("flap", 0), 60)
    assert Arm("flap", 0, rules.FLAP_RECHECK_S) in fx  # the window is still full
    fx = s.on(TimerFired("flap", 0), 3600 + 25)  # the first three have left the trailing hour
    assert s.st.device.flapping_since is None and UpdateDevice(("flapping_since",)) in fx and s.st.flap_token == 1


def test_the_trailing_hours_starts_are_counted_as_by_filtering_them_all():
    """A flapping pump's starts are dropped from the front as they leave the hour; what is kept
    and counted is what filtering them all at each start kept, also with the clock set back."""
    starts, kept = Starts(), []
    times = [at(n * 7.5) for n in range(1200)]
    times[600:603] = [at(30), at(4000), at(10)]  # set back twice
    for n, t in enumerate(times):
        starts.add(t)
        since = t - rules.FLAP_WINDOW
        kept = [x for x in [*kept, t] if x > since]
        assert starts.count_after(since) == len(kept), n
        assert list(starts) == sorted(kept)


# --- requests that end runs ---------------------------------------------------------------------
@covers("cancel queued", "cancel running", "cancel ended", "cancel a user's queue")
def test_cancels():
    s = Shell()
    act = s.running()
    mine, _ = s.ask(2, 60, user=1)
    theirs, _ = s.ask(2, 60, user=2)
    done, fx = s.m.cancel(at(3), theirs.id, "user:2")
    assert done is theirs and theirs.state == "cancelled" and sent(fx) == []
    acts, fx = s.m.cancel_queued_of(at(4), 1, "owner_revoked")
    assert acts == [mine] and mine.reason == "owner_revoked" and not s.st.queue
    done, fx = s.m.cancel(at(5), act.id, "user:1")
    assert (act.state, act.reason) == ("stopped", "cancelled") and sent(fx) == [("off", "cancelled")]
    assert s.m.cancel(at(6), act.id, "user:1") == (None, [])


@covers("force stop", "force stop when idle")
def test_force():
    s = Shell()
    act = s.running()
    queued, _ = s.ask(2, 60)
    stopped, cancelled, fx = s.m.force_shutdown(at(3), "user:9")
    assert stopped is act and cancelled == [queued] and act.reason == "force" and queued.reason == "force"
    assert sent(fx) == [("off", "force")] and alerts(fx) == ["force_shutdown"] and s.st.shown == "stopping"
    s = Shell(available=False)
    stopped, cancelled, fx = s.m.force_shutdown(at(3), "user:9")
    assert stopped is None and sent(fx) == [("off", "force")]


@covers("protocol changed on reload")
def test_reload():
    s = Shell()
    s.on(Availability(False, True), 0)
    assert s.m.reload(at(1), name="Pump", protocol="pumplink", daily_quota_minutes=5) == []
    assert s.m.quota_s() == 300
    fx = s.m.reload(at(2), name="Pump", protocol="legacy", daily_quota_minutes=None)
    assert s.st.available is None and s.st.device.protocol == "legacy" and of(fx, StateChanged)[0].state == "unknown"


# --- recovery -----------------------------------------------------------------------------------
def loaded(acts, session=None, protocol="pumplink", off_owed_since=None):
    return Loaded(Device(7, "Pump", protocol, None, off_owed_since), session, acts, [])


def run(id_, state, started=-100, ends=None, duration=60):
    return Activation(7, 1, None, duration, "api", to_db(at(-200)), state, id=id_, started_at=to_db(at(started)),
                      ends_at=to_db(at(ends)) if ends is not None else None)


@covers("recovery: run past its end", "recovery: queued wait again")
def test_recovery_run_past_its_end():
    s = Shell(available=None)
    act, queued = run(1, "running", -100, -40), run(2, "queued")
    session = Session(to_db(at(-100)), "command", activation_id=1, intended_s=60, id=5)
    fx = s.apply(s.m.recover(loaded([act, queued], session), at(0)))
    assert (act.state, act.reason, from_db(act.ended_at)) == ("completed", "recovered", at(-40))
    assert session.end_reason == "recovered" and from_db(session.ended_at) == at(-40)
    assert s.st.off_owed and list(s.st.queue) == [queued] and sent(fx) == []  # sent once the broker is up
    assert sent(s.on(BrokerConnected(), 1)) == [("off", "owed")]


@covers("recovery: run still due")
def test_recovery_run_still_due():
    s = Shell(available=None)
    act = run(1, "running", -20, 40)
    session = Session(to_db(at(-20)), "command", activation_id=1, intended_s=60, id=5)
    fx = s.apply(s.m.recover(loaded([act], session), at(0)))
    assert s.st.current is act and Arm("off", 1, 40.0) in fx and not s.st.off_owed and s.st.session is session


@covers("recovery: pending ON at crash")
def test_recovery_pending_on():
    s = Shell(available=None)
    act = run(1, "starting", -63)  # its pump's own timer would have ended it at -3
    s.apply(s.m.recover(loaded([act]), at(0)))
    assert (act.state, act.reason) == ("failed", "recovered") and s.st.unconfirmed_on is act and s.st.off_owed
    fx = s.on(StateReport("on", "command", None, True), 1)  # it did land
    session = s.st.session
    assert session.activation is act and from_db(session.started_at) == at(-63)
    assert "after a restart" in of(fx, WriteLog)[0].detail and sent(fx) == [("off", "owed")]


@covers("recovery: pending ON waits for the pump's word", "adopted: the pump confirms, the run goes on to its end")
def test_recovery_adopts_the_run_the_pump_confirms():
    s = Shell(available=None)
    act = run(1, "starting", -3)  # ON sent 3 s before now for 60 s; the crash came before its ack
    fx = s.apply(s.m.recover(loaded([act]), at(0)))
    assert act.state == "starting" and s.st.current is act and not s.st.off_owed and not of(fx, Update) + of(fx, Arm)
    fx = s.on(BrokerConnected(), 0.1)  # its retained report comes now: the ack timeout counts from here
    assert Arm("adopt", 1, SETTINGS.ack_timeout_s) in fx and sent(fx) == []  # nothing owed: the pump is not stopped
    assert s.m.activate(at(0.2), user_id=1, duration_s=60, source="api", schedule_id=None, usage=Usage(0.0),
                        broker_connected=True)[0].state == "queued"  # the next waits for it
    fx = s.on(StateReport("on", "command", 60, True), 0.5)  # retained since the pump switched on
    assert (act.state, from_db(act.ends_at), from_db(act.started_at)) == ("running", at(57), at(-3))
    assert Update(act, ("state", "ends_at")) in fx and Cancel("adopt") in fx and sent(fx) == []
    assert Arm("off", 1, 56.5) in fx and s.st.shown == "on" and s.st.adopting is None
    session = s.st.session
    assert session.activation is act and from_db(session.started_at) == at(-3) and of(fx, Insert)[0].record is session
    assert "after a restart" in of(fx, WriteLog)[0].detail
    assert s.on(TimerFired("adopt", 1), 2) == []  # its timer, if it still fires, is stale
    fx = s.on(TimerFired("off", 1), 57)  # the original end
    assert sent(fx) == [("off", "completed")] and act.state == "completed"


@covers("adoption refused: the pump says otherwise")
@pytest.mark.parametrize("report", [
    StateReport("off", "timer", None, True),  # it never got the ON (or ran out)
    StateReport("on", "manual", None, True),  # on, but not for our command
    StateReport("on", "command", 600, True),  # its timer runs longer than the run asked for
    StateReport("on", "command", None, True),  # no timer of its own to vouch for the end
])
def test_adoption_refused_when_the_pump_says_otherwise(report):
    s = Shell(available=None)
    act = run(1, "starting", -3)
    s.apply(s.m.recover(loaded([act]), at(0)))
    fx = s.on(report, 0.5)
    assert (act.state, act.reason) == ("failed", "recovered") and s.st.current is None and s.st.adopting is None
    assert sent(fx) == [("off", "owed")] and Cancel("adopt") in fx
    if report.state == "on":  # the time it ran is still on record, as this run's
        assert s.st.session.activation is act and s.st.off_owed


@covers("adoption refused: no word within the ack timeout")
def test_adoption_refused_without_a_report():
    s = Shell(available=None)
    act = run(1, "starting", -3)
    s.apply(s.m.recover(loaded([act]), at(0)))
    s.on(BrokerConnected(), 0)
    queued = s.m.activate(at(0.5), user_id=1, duration_s=60, source="api", schedule_id=None, usage=Usage(0.0),
                          broker_connected=True)[0]
    fx = s.on(TimerFired("adopt", 1), 2)
    assert (act.state, act.reason) == ("failed", "recovered") and s.st.off_owed and s.st.unconfirmed_on is act
    assert sent(fx) == [("off", "owed")] and list(s.st.queue) == [queued]  # the queue waits for the OFF's ack
    fx = s.on(Ack(s.st.pending.id, True, "off"), 2.1)
    assert not s.st.off_owed and sent(fx) == [("on", "command")] and s.st.current is queued


def test_adopting_run_can_be_cancelled_and_legacy_or_owed_never_adopt():
    s = Shell(available=None)
    act = run(1, "starting", -3)
    s.apply(s.m.recover(loaded([act]), at(0)))
    _, fx = s.m.cancel(at(1), 1, "user:1")
    assert act.state == "stopped" and sent(fx) == [("off", "cancelled")] and Cancel("adopt") in fx
    for shell, records in ((Shell(available=None, protocol="legacy"), loaded([run(1, "starting", -3)], protocol="legacy")),
                           (Shell(available=None), loaded([run(1, "starting", -3)], off_owed_since=to_db(at(-5))))):
        shell.apply(shell.m.recover(records, at(0)))
        assert shell.st.adopting is None and shell.st.off_owed and records.activations[0].state == "failed"


@covers("recovery: legacy session stays open")
def test_recovery_legacy():
    s = Shell(available=None, protocol="legacy")
    act = run(1, "running", -100, -40)
    session = Session(to_db(at(-100)), "command", activation_id=1, intended_s=60, id=5)
    s.apply(s.m.recover(loaded([act], session, protocol="legacy"), at(0)))
    assert act.state == "completed" and s.st.session is session and session.ended_at is None and s.st.off_owed


def test_recovery_keeps_an_owed_off_and_resync_pays_it():
    s = Shell()
    s.running()
    fx = s.apply(s.m.recover(loaded([], off_owed_since=to_db(T0)), at(5), resync=True))
    assert s.st.current is None and s.st.off_owed and sent(fx) == [("off", "owed")]
    assert {c.kind for c in of(fx, Cancel)} >= {"off", "ack", "owed", "flap"}


# --- while the database is away -----------------------------------------------------------------
@covers("database away: due OFF sent", "database away: owed OFF resent", "database away: pending OFF resent")
def test_without_database():
    s = Shell()
    act = s.running()
    fx = s.m.without_database(TimerFired("off", act.id), at(61))
    assert sent(fx) == [("off", "untracked")] and s.st.off_owed and not of(fx, Insert) + of(fx, Update)
    s = Shell(off_owed=True, owed_armed=True)
    fx = s.m.without_database(TimerFired("owed", 0), at(2))
    assert sent(fx) == [("off", "untracked")] and [a.kind for a in of(fx, Arm)] == ["owed"]
    s = Shell()
    act = s.running()
    s.on(TimerFired("off", act.id), 61)
    fx = s.m.without_database(TimerFired("ack", s.st.pending.id), at(63))
    assert sent(fx) == [("off", "completed")] and s.st.off_owed and [a.kind for a in of(fx, Arm)] == ["owed"]
    assert s.m.without_database(Ack("x", True, "on"), at(64)) == []


def test_run_changed_for_every_step_of_a_run():
    s = Shell()
    act, fx = s.ask(0, 60)
    # Each event and row shows the run as it was when the effect was made, not as it ended the step.
    assert [(e.activation, e.seen.state) for e in of(fx, RunChanged)] == [(act, "queued"), (act, "starting")]
    assert of(fx, Insert)[0].row.state == "queued" and of(fx, Update)[0].values["state"] == "starting"


def test_every_transition_has_a_test():
    assert set(TRANSITIONS) - COVERED == set()
