"""The device's decisions (pumplink/devices/rules.py), table by table, with an explicit clock.

No database, no broker, no actor: each row is (what the device knows, what happens) ->
what it decides.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pumplink.devices import rules
from pumplink.devices.rules import Close, Run

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# --- the state people see ---------------------------------------------------------------------
@pytest.mark.parametrize("available, pending, reported, state", [
    (False, "on", "on", "offline"),  # offline wins over everything
    (False, None, None, "offline"),
    (True, "on", "off", "starting"),  # an ON awaiting its ack
    (None, "off", "on", "stopping"),  # an OFF awaiting its ack
    (True, None, "on", "on"),
    (True, None, "off", "off"),
    (None, None, None, "unknown"),  # nothing heard yet
])
def test_state(available, pending, reported, state):
    assert rules.derive_state(available, pending, reported) == state


# --- requests ---------------------------------------------------------------------------------
BASE = dict(available=True, off_stuck=False, broker_connected=True, busy=False, queued=0, queue_limit=2)


@pytest.mark.parametrize("change, why", [
    ({}, None),
    ({"available": None}, None),  # not heard from yet: accepted, the ON tells
    ({"available": False}, "device_offline"),
    ({"off_stuck": True}, "off_unconfirmed"),
    ({"broker_connected": False}, "broker_unavailable"),
    ({"busy": True, "queued": 1}, None),  # queues behind the run
    ({"busy": True, "queued": 2}, "queue_full"),  # the queue limit
    ({"busy": False, "queued": 2}, None),  # idle: the head starts now, nothing waits
    ({"available": False, "off_stuck": True}, "device_offline"),  # the first reason is given
])
def test_refusal(change, why):
    assert rules.refusal(**{**BASE, **change}) == why


IDLE = dict(running=False, pending=False, queued=1, off_owed=False, available=True)


@pytest.mark.parametrize("change, starts", [
    ({}, True),
    ({"available": None}, True),
    ({"queued": 0}, False),
    ({"running": True}, False),
    ({"pending": True}, False),  # an ack awaited
    ({"off_owed": True}, False),  # finding 16: an owed OFF holds the queue
    ({"available": False}, False),  # waits until the pump is back
])
def test_queue_head_starts(change, starts):
    assert rules.may_start_next(**{**IDLE, **change}) is starts


# --- acks, re-sends and timeouts --------------------------------------------------------------
@pytest.mark.parametrize("attempts, retries, then", [
    (1, 2, "resend"), (2, 2, "resend"), (3, 2, "give_up"), (1, 0, "give_up"),
])
def test_ack_timeout(attempts, retries, then):
    assert rules.after_ack_timeout(attempts, retries) == then


@pytest.mark.parametrize("pending, ack, applies", [
    ("c1", "c1", True),
    ("c1", None, True),  # the legacy protocol: acks carry no id
    ("c1", "c0", False),  # late or repeated
    (None, "c1", False),  # nothing awaited
    (None, None, False),
])
def test_ack_applies(pending, ack, applies):
    assert rules.ack_applies(pending, ack) is applies


def test_on_ack_outcome():
    assert rules.on_ack_outcome(True) is None  # the run starts: session opened on the ack
    assert rules.on_ack_outcome(False) == ("failed", "device_refused")


# --- owed OFF (findings 4 and 16) ---------------------------------------------------------------
@pytest.mark.parametrize("round_, ack_timeout, delay", [
    (0, 2.0, 2.0), (1, 2.0, 4.0), (2, 2.0, 8.0), (5, 2.0, 60.0), (40, 2.0, 60.0), (0, 90.0, 60.0),
])
def test_owed_off_backoff(round_, ack_timeout, delay):
    assert rules.owed_delay(round_, ack_timeout) == delay


@pytest.mark.parametrize("owed, pending, available, pays", [
    (True, False, True, True),
    (True, False, None, True),
    (True, True, True, False),  # one is on its way
    (True, False, False, False),  # offline: its coming back pays it
    (False, False, True, False),
])
def test_owed_off_paid(owed, pending, available, pays):
    assert rules.may_pay_off_debt(off_owed=owed, pending=pending, available=available) is pays


@pytest.mark.parametrize("sent, intended, likely", [
    (at(10), 60, at(10)),  # the OFF was sent before its own timer ran out
    (at(100), 60, at(60)),  # its own timer stopped it first
    (None, None, at(120)),  # nothing better than now
    (at(-5), None, at(0)),  # never before the session began
])
def test_likely_off_time(sent, intended, likely):
    assert rules.likely_off_time(at(120), sent, at(0), intended) == likely


@pytest.mark.parametrize("protocol, intended, closes", [
    ("pumplink", 60, True), ("pumplink", None, False), ("legacy", 60, False), ("legacy", None, False),
])
def test_unacknowledged_off_closes_session(protocol, intended, closes):
    assert rules.closes_unacknowledged(protocol, intended) is closes


# --- reports of the pump: manual / timer / fault ----------------------------------------------
@pytest.mark.parametrize("awaiting, reason, session, unconfirmed, meaning", [
    (True, "command", False, False, "await_ack"),  # our ON landed; its ack follows
    (True, "manual", False, False, "manual"),  # switched on by hand while our ON is on its way
    (False, "command", False, True, "confirm_unconfirmed"),  # an ON sent before a crash landed
    (False, "manual", False, False, "manual"),
    (False, "manual", True, False, "nothing"),  # a session is open already
    (False, "command", True, True, "nothing"),
])
def test_report_on(awaiting, reason, session, unconfirmed, meaning):
    assert rules.on_report(awaiting_on_ack=awaiting, reason=reason, has_session=session,
                             unconfirmed_on=unconfirmed) == meaning


@pytest.mark.parametrize("reason, outcome", [
    ("timer", ("completed", "completed")),  # its own timer won the race with ours
    ("fault", ("failed", "fault")),
    ("manual", ("stopped", "device_off")),
    ("whatever", ("stopped", "device_off")),
])
def test_report_off_outcome(reason, outcome):
    assert rules.off_report_outcome(reason) == outcome


@pytest.mark.parametrize("run_state, awaiting, ends", [
    ("running", False, True), ("running", True, False), ("starting", False, False), (None, False, False),
])
def test_report_off_ends_run(run_state, awaiting, ends):
    assert rules.off_report_ends_run(run_state=run_state, awaiting_on_ack=awaiting) is ends


# --- flapping (manual_runs_per_hour) ----------------------------------------------------------------
@pytest.mark.parametrize("count, limit, flagged, decision", [
    (3, 3, False, "calm"), (4, 3, False, "flag"), (9, 3, True, "keep"), (3, 3, True, "clear"), (0, 0, True, "clear"),
])
def test_flapping(count, limit, flagged, decision):
    assert rules.flap_decision(count, limit, flagged) == decision


# --- the database outage: a due OFF does not wait ------------------------------------------------
OUTAGE = dict(current_id=7, off_owed=True, owed_token=3, pending_off_id="c9")


@pytest.mark.parametrize("kind, token, change, what", [
    ("off", 7, {}, "off_now"),  # the run is due to end
    ("off", 6, {}, None),  # a stale timer of an earlier run
    ("off", 7, {"current_id": None}, None),
    ("owed", 3, {}, "owed_again"),
    ("owed", 2, {}, None),  # a stale owed timer
    ("owed", 3, {"off_owed": False}, None),
    ("ack", "c9", {}, "pending_again"),  # an OFF not acked yet
    ("ack", "c9", {"pending_off_id": None}, None),  # an ON's ack timer waits for the database
    ("flap", 1, {}, None),
])
def test_without_database(kind, token, change, what):
    assert rules.without_database(kind, token, **{**OUTAGE, **change}) == what


# --- recovery at start-up -----------------------------------------------------------------------
NOW = at(1000)


@pytest.mark.parametrize("runs, session, protocol, owed_before, queued, resume, close, owed", [
    # nothing unfinished
    ([], None, "pumplink", False, [], None, [], False),
    # an OFF owed before the restart is owed still
    ([], None, "pumplink", True, [], None, [], True),
    # queued ones wait again
    ([Run(1, "queued"), Run(2, "queued")], None, "pumplink", False, [1, 2], None, [], False),
    # a running one with time left resumes
    ([Run(1, "running", at(1030))], 1, "pumplink", False, [], (1, 30.0), [], False),
    # a running one past its end: completed at its end, session closed, OFF owed
    ([Run(1, "running", at(900))], 1, "pumplink", False, [], None,
     [Close(1, "completed", at(900), True, False)], True),
    # ... a legacy pump has no timer: its session stays open until it confirms the OFF
    ([Run(1, "running", at(900))], 1, "legacy", False, [], None,
     [Close(1, "completed", at(900), False, False)], True),
    # an unconfirmed ON: failed now; a report of ON would be this run's
    ([Run(1, "starting")], None, "pumplink", False, [], None, [Close(1, "failed", NOW, False, True)], True),
    # an unconfirmed ON whose run would still be going: it waits for the pump's report
    ([Run(1, "starting", at(1030))], None, "pumplink", False, [], None, [], False),
    # ... not on a legacy pump (no timer of its own), nor when an OFF is owed anyway
    ([Run(1, "starting", at(1030))], None, "legacy", False, [], None, [Close(1, "failed", NOW, False, True)], True),
    ([Run(1, "starting", at(1030))], None, "pumplink", True, [], None, [Close(1, "failed", NOW, False, True)], True),
    # ... nor past its end (the pump's own timer has stopped it)
    ([Run(1, "starting", at(990))], None, "pumplink", False, [], None, [Close(1, "failed", NOW, False, True)], True),
    # two running with time left: only the first resumes
    ([Run(1, "running", at(1030)), Run(2, "running", at(1060))], None, "pumplink", False, [], (1, 30.0),
     [Close(2, "completed", NOW, False, False)], True),
    # an open session of an activation that ended: the pump may still be on
    ([], 5, "pumplink", False, [], None, [], True),
    # an open session of the pump's own (no activation): nothing owed
    ([], "manual", "pumplink", False, [], None, [], False),
])
def test_recovery(runs, session, protocol, owed_before, queued, resume, close, owed):
    plan = rules.recover(runs, session_activation_id=None if session in (None, "manual") else session,
                           has_session=session is not None, protocol=protocol, off_owed_before=owed_before, now=NOW)
    assert (plan.queued, plan.resume, plan.close, plan.off_owed) == (queued, resume, close, owed)
    waits = [r.id for r in runs if r.state == "starting" and all(c.id != r.id for c in close)]
    assert plan.adopt == (waits[0] if waits else None)


@pytest.mark.parametrize("state, reason, remaining, outcome", [
    ("on", "command", 60, "adopt"), ("on", "command", 0, "adopt"), ("on", "command", 60.9, "adopt"),
    ("on", "command", 62, "refute"),  # a longer timer than the run asked for is not our command
    ("on", "command", None, "refute"), ("on", "manual", 30, "refute"), ("on", "boot", 30, "refute"),
    ("off", "timer", None, "refute"), ("off", "command", None, "refute"),
])
def test_adoption(state, reason, remaining, outcome):
    assert rules.adoption(state=state, reason=reason, remaining_s=remaining, duration_s=60) == outcome


# --- the legacy protocol and the one command encoding -------------------------------------------
@pytest.mark.parametrize("protocol, action, duration, topic, payload", [
    ("legacy", "on", 60, "legacy/control", "on"),  # a bare word on the one topic, no id, no duration
    ("legacy", "off", None, "legacy/control", "off"),
    ("pumplink", "on", 60, "pl/devices/4/command",
     {"id": "c1", "action": "on", "activation_id": 9, "sent_at": "2026-01-01T12:00:00.000Z", "duration_s": 60}),
    ("pumplink", "off", None, "pl/devices/4/command",
     {"id": "c1", "action": "off", "activation_id": 9, "sent_at": "2026-01-01T12:00:00.000Z"}),
])
def test_command_encoding(protocol, action, duration, topic, payload):
    from pumplink.devices import commands
    from pumplink.runtime import Topics

    got_topic, got = commands.encode(Topics("pl", "legacy"), 4, protocol, action, now=T0, command_id="c1",
                                     activation_id=9, duration_s=duration)
    assert got_topic == topic
    assert (got if protocol == "legacy" else json.loads(got)) == payload


def test_untracked_off_has_an_id_of_its_own():
    from pumplink.devices import commands
    from pumplink.runtime import Topics

    first, second = (json.loads(commands.encode(Topics("pl", "legacy"), 4, "pumplink", "off", now=T0)[1])
                     for _ in range(2))
    assert first["id"] != second["id"] and first["activation_id"] is None
