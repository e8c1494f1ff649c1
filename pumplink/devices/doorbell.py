"""A device's messages from the MQTT link, waiting for its actor: told once per burst.

The link (``Supervisor.route``, on paho's thread) puts each of a device's pump messages (report,
ack, availability) and the broker's return here, in arrival order, and tells the actor a ``Ring``
only when none is pending. The actor takes what waits, at most ``limit`` at a time, and handles
it as one unit (transactions.py): a pump flapping at hundreds of reports a second costs one
wake-up and one group commit per burst instead of one per report. Nothing is dropped; a burst
beyond ``limit`` rings again, behind whatever else the actor was told meanwhile (timers, asks).
"""

from __future__ import annotations

import collections
import threading


class Doorbell:
    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: collections.deque = collections.deque()
        self._rung = False  # a Ring is on its way to the actor, or being handled

    def put(self, message) -> bool:
        """Queue ``message``; True when the caller must ring (tell the actor a ``Ring``)."""
        with self._lock:
            self._waiting.append(message)
            if self._rung:
                return False
            self._rung = True
            return True

    def take(self, limit: int) -> tuple[list, bool]:
        """The oldest ``limit`` messages at most, and whether more wait (the taker rings again)."""
        with self._lock:
            n = min(limit, len(self._waiting))
            taken = [self._waiting.popleft() for _ in range(n)]
            more = bool(self._waiting)
            self._rung = more
            return taken, more

    def __len__(self) -> int:
        return len(self._waiting)
