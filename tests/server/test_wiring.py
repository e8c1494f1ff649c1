"""The wiring in-process: events reach only the listeners that handle them, and a start that
fails part-way stops what it had started."""

from __future__ import annotations

import datetime as dt

import peewee
import pykka
import pytest

from pumplink.config import Config
from pumplink.events import Alert, DeviceStateChanged, EventBus, UserAccessChanged
from pumplink.server.startup import ActorSystem
from pumplink.storage.db import make_database

AT = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


class Recorder(pykka.ThreadingActor):
    def __init__(self):
        super().__init__()
        self.heard = []

    def on_receive(self, message):
        if message == "heard?":
            return list(self.heard)
        self.heard.append(type(message).__name__)


@pytest.fixture
def recorders():
    refs = [Recorder.start(), Recorder.start()]
    yield refs
    for ref in refs:
        ref.stop()


def test_each_listener_hears_only_the_event_types_it_subscribed_to(recorders):
    live, push = recorders
    bus = EventBus()
    bus.subscribe(live, DeviceStateChanged, UserAccessChanged)
    bus.subscribe(push, Alert)
    bus.publish(DeviceStateChanged(device_id=1, state="on", previous="off", available=True, activation_id=None,
                                   reason="ack", at=AT))
    bus.publish(Alert(key="k", kind="device_on", device_id=1, title="t", body="b", audience="approved"))
    bus.publish(UserAccessChanged(user_id=5, role=None, at=AT))
    assert live.ask("heard?") == ["DeviceStateChanged", "UserAccessChanged"]
    assert push.ask("heard?") == ["Alert"]
    bus.unsubscribe(push)
    bus.publish(Alert(key="k2", kind="device_on", device_id=1, title="t", body="b", audience="approved"))
    assert push.ask("heard?") == ["Alert"]


def test_a_listener_names_what_it_handles():
    with pytest.raises(ValueError):
        EventBus().subscribe(object())


def test_a_start_that_fails_stops_what_it_started(tmp_path):
    # A database without the schema: the device actors cannot load, after the broadcaster, the
    # notifier and the MQTT link have started.
    config = Config(jwt_secret="x" * 40, database_url=f"sqlite:///{tmp_path / 'empty.db'}", push_enabled=True)
    before = set(pykka.ActorRegistry.get_all())
    system = ActorSystem(config, make_database(config.database_url))
    with pytest.raises(peewee.OperationalError):
        system.start(broker_wait_s=0)
    assert system.broadcaster is not None and system.notifier is not None and system.supervisor is not None
    assert set(pykka.ActorRegistry.get_all()) == before
    system.stop()  # twice is harmless
