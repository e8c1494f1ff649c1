"""The doorbell between the MQTT link and a device actor (pumplink/devices/doorbell.py): one Ring
per burst, messages taken in arrival order a unit at a time, none dropped."""

from __future__ import annotations

from pumplink.devices.doorbell import Doorbell


def test_a_burst_rings_once_and_is_taken_in_order_a_unit_at_a_time():
    bell = Doorbell()
    rings = [bell.put(n) for n in range(70)]
    assert rings == [True] + [False] * 69, "the actor is told once"
    assert bell.take(32) == (list(range(32)), True)  # more wait: the taker rings again itself
    assert bell.put(70) is False, "still rung: the taker's own Ring is on its way"
    assert bell.take(32) == (list(range(32, 64)), True)
    assert bell.take(32) == (list(range(64, 71)), False)
    assert len(bell) == 0
    assert bell.put(71) is True, "taken empty: the next message rings again"


def test_a_ring_that_finds_nothing_leaves_the_bell_ready():
    bell = Doorbell()
    assert bell.take(32) == ([], False)
    assert bell.put("report") is True
