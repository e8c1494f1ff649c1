"""A SIGKILL between a pump switching ON and the server hearing its ack, when the pump then
confirms the run: its retained report says `on` for our command with its own timer running.

The restarted server adopts the run: it goes on to its original end (counted from when the
ON was sent), the pump is not stopped early and not kept on late, and the time it ran is
on record as that run's session.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.conftest import World
from tests.faults.conftest import TERMINAL, all_pages, wait_activation, wait_state
from tests.faults.test_crash_windows import LateAckPump
from tests.support import MQTT_URL

ACK_AFTER_S = 1.0
DURATION_S = 8  # long enough for the restart to come before the run's end on a loaded machine


@dataclasses.dataclass
class Adopted:
    pump: LateAckPump
    activation: dict
    while_running: dict
    device: dict
    sessions: list
    ran_s: float
    restarted_after_s: float  # from the pump switching ON to the server answering again
    offs_before_end: int


@pytest.fixture(scope="module")
def adopted(server_factory) -> Adopted:
    server = server_factory()
    world = World(server)
    try:
        user = world.user()
        device_id = world.device("Late acks, confirmed")
        pump = LateAckPump(MQTT_URL, server.prefix, device_id, ack_after=ACK_AFTER_S).start()
        world.pumps.append(pump)
        wait_state(user, device_id, "off")
        r = user.post("activate", {"device_id": device_id, "duration_s": DURATION_S})
        assert r.status_code == 202, r.text
        activation_id = r.json()["activation"]["id"]
        pump.wait_for(lambda p: p.state == "on", what="pump on")
        on_at = time.monotonic()
        server.kill()  # the pump is ON; its ack is still on its way and will be lost
        commands_before = len(pump.commands)
        server.start()
        restarted_after = time.monotonic() - on_at
        while_running = wait_activation(user, activation_id, ("running",) + TERMINAL, timeout=5)
        pump.wait_for(lambda p: p.state == "off", timeout=DURATION_S + 2, what="pump off")
        activation = wait_activation(user, activation_id, TERMINAL, timeout=10)
        device = wait_state(user, device_id, "off")
        run = pump.runs[0]
        offs = sum(1 for c in pump.commands[commands_before:] if c["action"] == "off" and c["at"] < run["off"] - 0.5)
        yield Adopted(pump=pump, activation=activation, while_running=while_running, device=device,
                      sessions=all_pages(user, f"devices/{device_id}/sessions"), ran_s=run["off"] - run["on"],
                      restarted_after_s=restarted_after, offs_before_end=offs)
    finally:
        world.close()
        server.stop()


def test_the_restart_came_before_the_runs_end(adopted):
    assert adopted.restarted_after_s < DURATION_S - 1, f"restart took {adopted.restarted_after_s:.1f}s"


def test_the_run_goes_on_and_completes_at_its_original_end(adopted):
    assert adopted.while_running["state"] == "running", adopted.while_running
    a = adopted.activation
    assert (a["state"], a["reason"]) == ("completed", "completed"), a
    assert adopted.offs_before_end == 0, "the pump was sent OFF before its run's end"
    assert DURATION_S - 0.5 < adopted.ran_s < DURATION_S + 1.0, f"the pump ran {adopted.ran_s:.2f}s"
    assert len(adopted.pump.runs) == 1
    assert adopted.device["state"] == "off" and adopted.device["running"] is None, adopted.device


def test_the_time_the_pump_ran_is_the_runs_session(adopted):
    assert len(adopted.sessions) == 1, adopted.sessions
    s = adopted.sessions[0]
    assert s["ended_at"] and s["activation_id"] == adopted.activation["id"], s
    assert abs(s["actual_s"] - adopted.ran_s) < 0.5, f"the session says {s['actual_s']}s, the pump ran {adopted.ran_s:.2f}s"
