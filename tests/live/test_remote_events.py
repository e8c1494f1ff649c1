"""Events from other nodes (cluster mode) in the broadcaster: sent on like local ones, but the
flapping alert is raised only for this node's own devices (their owner raises it once)."""

from __future__ import annotations

import datetime as dt
import queue

import peewee
import pykka

from pumplink.config import Config
from pumplink.events import Alert, DeviceStateChanged
from pumplink.live.broadcaster import BroadcasterActor, Remote
from pumplink.runtime import Runtime

UTC = dt.timezone.utc


class Listener(pykka.ThreadingActor):
    def __init__(self, heard: queue.Queue):
        super().__init__()
        self.heard = heard

    def on_receive(self, message):
        self.heard.put(message)


def flap(device_id: int, n: int):
    at = dt.datetime.now(UTC)
    return [DeviceStateChanged(device_id=device_id, state=("on", "off")[i % 2], previous=("off", "on")[i % 2],
                               available=True, activation_id=None, reason="manual", at=at) for i in range(n)]


def test_a_flapping_device_of_another_node_raises_no_alert_here():
    rt = Runtime.build(Config(live_changes_per_s=3), peewee.SqliteDatabase(":memory:"))
    heard: queue.Queue = queue.Queue()
    listener = Listener.start(heard)
    rt.bus.subscribe(listener, Alert)
    broadcaster = BroadcasterActor.start(rt)
    try:
        for event in flap(7, 10):
            broadcaster.tell(Remote(event))
        for event in flap(8, 10):  # this node's own: alerted
            broadcaster.tell(event)
        alert = heard.get(timeout=5)
        assert isinstance(alert, Alert) and alert.kind == "device_flapping_live" and alert.device_id == 8
        broadcaster.ask(Remote(flap(9, 1)[0]), timeout=5)  # everything told before has been handled
        assert heard.empty()
        assert rt.metrics.flapping_live._value.get() == 2  # both debounced for the live view
    finally:
        broadcaster.stop()
        listener.stop()
