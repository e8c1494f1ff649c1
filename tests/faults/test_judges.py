"""The fault tests' judges catch what they are meant to catch (no server needed)."""

from __future__ import annotations

from tests.faults.conftest import RecordingPump, overruns
from tests.faults.test_sigkill_rounds import accounting


def pump_with(commands, runs) -> RecordingPump:
    pump = RecordingPump("mqtt://127.0.0.1:1", "judge", 1)  # never connected
    for cid, action, aid, duration, at in commands:
        pump.commands.append({"action": action, "id": cid, "duration_s": duration, "at": at})
        pump.bodies[cid] = {"id": cid, "action": action, "activation_id": aid, "duration_s": duration}
    pump.runs.extend({"on": on, "off": off, "reason": "timer", "duration_s": d} for on, off, d in runs)
    return pump


def test_overruns_measure_from_the_first_on_of_each_activation():
    on_time = pump_with([("a", "on", 7, 2, 10.0)], [(10.0, 12.1, 2)])
    assert overruns(on_time, {7: 2}, 2.0) == []
    # A second ON for the same activation (a new command id) restarts the pump's timer:
    # the run goes on past what the user asked for, and the judge says so.
    restarted = pump_with([("a", "on", 7, 2, 10.0), ("b", "on", 7, 2, 11.9)], [(10.0, 13.9, 2)])
    assert len(overruns(restarted, {7: 2}, 1.0)) == 1
    # A re-sent command (same id) does not restart the timer, so it does not move the intended end.
    resent = pump_with([("a", "on", 7, 2, 10.0), ("a", "on", 7, 2, 11.0)], [(10.0, 12.0, 2)])
    assert overruns(resent, {7: 2}, 0.5) == []
    # Back to back activations in one run: the later one's end counts.
    chained = pump_with([("a", "on", 7, 2, 10.0), ("b", "on", 8, 3, 11.5)], [(10.0, 14.5, 2)])
    assert overruns(chained, {7: 2, 8: 3}, 0.5) == []


def test_a_run_nobody_asked_for_is_reported():
    stray = pump_with([("a", "on", 99, 5, 10.0)], [(10.0, 15.0, 5)])
    assert "not on record" in overruns(stray, {7: 2}, 2.0)[0]
    never_off = pump_with([("a", "on", 7, 2, 10.0)], [(10.0, None, 2)])
    assert len(overruns(never_off, {7: 2}, 2.0)) == 1


def schedule(runs, next_run_at=None, rrule=None):
    return {"id": 5, "start_time": "2020-01-01T10:00:00.000Z", "rrule": rrule, "enabled": True,
            "next_run_at": next_run_at, "runs": runs}


def run(due, outcome="started", activation_id=None):
    return {"due_at": due, "outcome": outcome, "activation_id": activation_id}


def test_schedule_accounting():
    act = {1: {"id": 1, "schedule_id": 5}}
    assert accounting(schedule([run("2020-01-01T10:00:00.000Z", activation_id=1)]), act) == []
    assert accounting(schedule([run("2020-01-01T10:00:00.000Z", "missed")]), {}) == []
    # A due time long past with no run and not pending is lost.
    assert accounting(schedule([]), {}) != []
    # Unsettled, or fired twice for one due time.
    assert accounting(schedule([run("2020-01-01T10:00:00.000Z", "firing")]), {}) != []
    twice = {1: {"id": 1, "schedule_id": 5}, 2: {"id": 2, "schedule_id": 5}}
    assert accounting(schedule([run("2020-01-01T10:00:00.000Z", activation_id=1)]), twice) != []
    # A recurring rule: each of its due times needs its own record.
    rule = "FREQ=SECONDLY;INTERVAL=3;COUNT=2"
    assert accounting(schedule([run("2020-01-01T10:00:00.000Z", "missed")], rrule=rule), {}) != []
    both = [run("2020-01-01T10:00:00.000Z", "missed"), run("2020-01-01T10:00:03.000Z", "missed")]
    assert accounting(schedule(both, rrule=rule), {}) == []
