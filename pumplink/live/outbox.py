"""A WebSocket client's outbox: bounded, and a device's waiting state frame is replaced by its newer one.

The replacing frame moves to the end (event ids stay increasing) and, when sent, says how many
it replaced (``skipped``): a client that is behind gets each device's latest state.
"""

from __future__ import annotations

import collections
import itertools

import gevent.event

SKIPPED = ',"skipped":'  # how a state frame ends (live.frames.event_body puts it last)


def skipped_in(frame) -> int:
    """The ``skipped`` count a frame already carries (a debounced event stands for several)."""
    cut = frame.rfind(SKIPPED) if isinstance(frame, str) else -1
    if cut < 0 or not frame.endswith("}"):
        return 0
    return int(frame[cut + len(SKIPPED):-1])


def with_skipped(frame: str, more: int) -> str:
    """``frame`` with ``more`` added to its ``skipped`` count (a legacy text frame has none)."""
    cut = frame.rfind(SKIPPED)
    if cut < 0 or not frame.endswith("}"):
        return frame
    return f"{frame[:cut]}{SKIPPED}{int(frame[cut + len(SKIPPED):-1]) + more}}}"


class Outbox:
    """A bounded FIFO where an entry with a key replaces (and moves past) a waiting one with that key."""

    def __init__(self, limit: int):
        self.maxsize = limit
        self._items: collections.OrderedDict = collections.OrderedDict()  # key -> (frame, replaced)
        self._ready = gevent.event.Event()
        self._serial = itertools.count()
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame, key=None) -> bool:
        """False when full; never blocks."""
        replaced = 0
        if key is not None and key in self._items:
            old, old_replaced = self._items.pop(key)
            # The replaced frame, what it had replaced, and the changes it stood for itself.
            replaced = old_replaced + 1 + skipped_in(old)
            self.coalesced += 1
        elif len(self._items) >= self.maxsize:
            return False
        self._items[key if key is not None else ("frame", next(self._serial))] = (frame, replaced)
        self._ready.set()
        return True

    def get(self, timeout: float):
        """The oldest entry's frame, with what it replaced counted in; ``Empty`` after ``timeout``."""
        if not self._items:
            self._ready.clear()
            if not self._ready.wait(timeout) or not self._items:
                raise Empty()
        _, (frame, replaced) = self._items.popitem(last=False)
        return with_skipped(frame, replaced) if replaced and isinstance(frame, str) else frame


class Empty(Exception):
    """Nothing came within the timeout."""
