"""/activate and /schedules without a server: how a body is read and how errors are answered.

The gateway is a fake here (the right level: these are the API's own rules); tests/e2e cover the
same paths end to end with real actors.
"""

from __future__ import annotations

import datetime as dt

import pytest

from pumplink.errors import Conflict, Unavailable
from tests.api.fakes import NOW, world as make_world


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path / "api.db")


def error(result) -> tuple[int, str]:
    return result.status_code, result.json["code"]


def test_duration_s_wins_over_minutes_and_minutes_become_seconds(world):
    assert world.post("activate", {"device_id": world.device.id, "duration": 5, "duration_s": 90}).status_code == 202
    assert world.post("activate", {"device_id": world.device.id, "duration": 0.5}).status_code == 202
    r = world.post("activate", {"device_id": world.device.id, "duration_s": 0.2})
    assert r.status_code == 202 and r.json["message"] == "Activation 7 queued for 1 s."
    assert [c[3] for c in world.gateway.calls] == [90, 30, 1]


def test_a_body_without_a_duration_is_422_duration_missing(world):
    r = world.post("activate", {"device_id": world.device.id})
    assert error(r) == (422, "duration_missing")
    assert r.json["error"] == "Give duration (minutes) or duration_s (seconds)."
    assert world.gateway.calls == []


@pytest.mark.parametrize("body, status", [
    ({"duration": 0}, 422),  # the app's dial at rest
    ({"duration": -5}, 422),
    ({"duration_s": 0}, 422),
    ({"duration": 24 * 60 + 1}, 422),
    ({"duration": "ten"}, 400),
    ({"duration": True}, 400),
    ({"device_id": "1", "duration": 1}, 400),
])
def test_wrong_durations_never_reach_the_gateway(world, body, status):
    r = world.post("activate", {"device_id": world.device.id, **body})
    assert r.status_code == status and r.json["code"] in ("invalid_value", "invalid_field")
    assert world.gateway.calls == []


def test_the_gateway_s_refusals_keep_their_status_code_and_retry_after(world):
    world.gateway.error = Unavailable("The device did not answer in time; try again shortly.", "device_timeout")
    r = world.post("activate", {"device_id": world.device.id, "duration": 1})
    assert error(r) == (503, "device_timeout")
    world.gateway.error = Conflict("Well is offline; it cannot be started now.", "device_offline")
    r = world.post("activate", {"device_id": world.device.id, "duration": 1})
    assert error(r) == (409, "device_offline") and r.json["error"] == "Well is offline; it cannot be started now."


def test_a_pending_account_is_refused_before_the_gateway(world):
    r = world.post("activate", {"device_id": world.device.id, "duration": 1}, role="pending")
    assert error(r) == (403, "approval_required")
    assert world.gateway.calls == []


def schedule(world, **fields):
    start = (NOW + dt.timedelta(hours=1)).isoformat()
    return world.post("schedules", {"device_id": world.device.id, "start_time": start, **fields})


def test_a_schedule_takes_the_same_duration_rules(world):
    assert error(schedule(world)) == (422, "duration_missing")
    assert schedule(world, duration=0).status_code == 422
    assert error(schedule(world, duration=6)) == (422, "duration_above_max_run")
    assert world.gateway.calls == []
    r = schedule(world, duration=2, duration_s=45)
    assert r.status_code == 201 and "runs 45 s at" in r.json["message"]
    assert world.gateway.calls[-1][-1] == 45


def test_a_stopped_scheduler_is_503_and_a_missing_device_404(world):
    world.gateway.error = Unavailable("The scheduler is not running; try again in a moment.", "scheduler_unavailable")
    assert error(schedule(world, duration=1)) == (503, "scheduler_unavailable")
    r = world.post("schedules", {"device_id": 999, "start_time": NOW.isoformat(), "duration": 1})
    assert error(r) == (404, "device_not_found")
