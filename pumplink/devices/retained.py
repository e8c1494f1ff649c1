"""The plan for fetching every device's retained snapshot after a (re)connect, a batch at a time.

Mosquitto queues the retained messages matching a subscription all at once, and keeps at most
``max_inflight_messages`` + ``max_queued_messages`` (20 + 1000 by default) for one client: a
wildcard over a fleet of thousands loses the rest, however fast the server reads. So the link
subscribes the wildcards without their retained messages and asks for them per device, a batch
at a time; after each batch it publishes a marker to itself (QoS 1, so it queues behind the
batch) and asks for the next batch only when the marker came back. Pure logic: link.py drives it.
"""

from __future__ import annotations

import time

# Devices per batch: at most 2 retained messages each, far below the broker's 1,020 per client,
# with room for the live traffic that shares the queue.
BATCH_DEVICES = 200
MARKER_WAIT_S = 10.0  # a marker not back by then (a stalled link): go on; the watchdog judges the link


class RetainedFetch:
    def __init__(self, topics_by_device: list[list[str]], batch: int = BATCH_DEVICES):
        self.batches = [[t for topics in topics_by_device[i:i + batch] for t in topics]
                        for i in range(0, len(topics_by_device), batch)]
        self.devices = len(topics_by_device)
        self.batch = batch
        self.seq = -1  # index of the batch whose marker is awaited
        self.started = time.monotonic()
        self.timeouts = 0

    def extend(self, topics_by_device: list[list[str]]) -> None:
        """More devices to fetch (cluster mode: a partition taken while a fetch runs)."""
        for i in range(0, len(topics_by_device), self.batch):
            self.batches.append([t for topics in topics_by_device[i:i + self.batch] for t in topics])
        self.devices += len(topics_by_device)

    @property
    def current(self) -> list[str]:
        return self.batches[self.seq] if 0 <= self.seq < len(self.batches) else []

    def advance(self) -> list[str] | None:
        """The next batch's topics, or None when every batch was asked for."""
        self.seq += 1
        return self.current if self.seq < len(self.batches) else None

    @property
    def pending_devices(self) -> int:
        return max(0, self.devices - max(self.seq, 0) * self.batch)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
