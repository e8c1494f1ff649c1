"""Live events of a pump that changes state faster than people can follow: debounced.

Beyond ``PUMPLINK_LIVE_CHANGES_PER_S`` changes within a second a device is flagged (a metric,
one alert to admins) and its state events are held: the latest goes out every ``HOLD_S``,
saying how many it stands for (``skipped``), until the device has been calm for ``CALM_S``.
Only the live view is debounced; the device actor records every change. Pure logic: the
broadcaster drives it with its timer.
"""

from __future__ import annotations

import collections
import dataclasses

HOLD_S = 0.25  # while flapping, a device's latest state goes out this often
CALM_S = 2.0  # no change for this long ends the flag
WINDOW_S = 1.0


@dataclasses.dataclass
class _Device:
    times: collections.deque = dataclasses.field(default_factory=collections.deque)
    flapping: bool = False
    held: object = None
    held_count: int = 0
    last_change: float = 0.0


class Debouncer:
    def __init__(self, changes_per_s: int):
        self.limit = changes_per_s
        self.devices: dict[int, _Device] = {}

    def offer(self, device_id: int, event, now: float) -> tuple[object | None, bool]:
        """``(event to send now or None, newly flagged)``; a newly flagged device needs a flush timer."""
        d = self.devices.get(device_id)
        if d is None:
            d = self.devices[device_id] = _Device()
        d.last_change = now
        d.times.append(now)
        while d.times and d.times[0] <= now - WINDOW_S:
            d.times.popleft()
        if d.flapping:
            d.held, d.held_count = event, d.held_count + 1
            return None, False
        if len(d.times) > self.limit:
            d.flapping = True
            d.held, d.held_count = event, 1
            return None, True
        return event, False

    def flush(self, device_id: int, now: float) -> tuple[object | None, int, bool]:
        """The timer's tick: ``(held event or None, how many it stands for, still flapping)``."""
        d = self.devices.get(device_id)
        if d is None or not d.flapping:
            return None, 0, False
        event, count = d.held, d.held_count
        d.held, d.held_count = None, 0
        if event is None and now - d.last_change >= CALM_S:
            d.flapping = False
            d.times.clear()
        return event, count, d.flapping

    def flapping(self) -> int:
        return sum(1 for d in self.devices.values() if d.flapping)
