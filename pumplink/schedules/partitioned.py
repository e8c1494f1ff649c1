"""Cluster mode's part of the scheduler: its heap holds only the schedules of devices this node
owns (docs/cluster.md). A mixin of ``SchedulerActor``, on its thread.

- ``Plan(devices)``: a partition was taken: settle its devices' runs interrupted by the old
  owner's end, and queue their pending schedules.
- ``Forget(devices)``: a partition went elsewhere: its schedules leave the heap.
- ``Refresh`` (every REFRESH_S): schedules created, enabled or changed through another node
  reach the heap of their device's owner. A due entry whose device is not ours is dropped
  unfired (``_fire`` asks ``owns``); the unique (schedule, due_at) run makes a double fire
  impossible even when two nodes believed they owned a device.
"""

from __future__ import annotations

import dataclasses
import logging

from pumplink.clock import from_db
from pumplink.storage import models as m
from pumplink.timers import tell_later

log = logging.getLogger(__name__)

REFRESH_S = 2.0


@dataclasses.dataclass(frozen=True)
class Plan:
    devices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Forget:
    devices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Refresh:
    """Timer: pick up schedules changed through other nodes."""


class Partitioned:
    """Mixin of ``SchedulerActor`` (its ``cluster``, ``queue``, ``db``, ``actor_ref``)."""

    cluster = None

    def owns(self, device_id: int) -> bool:
        return self.cluster is None or self.cluster.owns(device_id)

    def _partitioned(self, message) -> bool:
        """Handles the cluster messages; False for any other."""
        if isinstance(message, Plan):
            with self.db.connection_context():
                self._settle_interrupted_runs(list(message.devices))
                self._queue_pending(list(message.devices))
        elif isinstance(message, Forget):
            gone = set(message.devices)
            with self.db.connection_context():
                for (sid,) in m.Schedule.select(m.Schedule.id).where(m.Schedule.device.in_(list(gone))).tuples():
                    self.queue.discard(sid)
        elif isinstance(message, Refresh):
            try:
                with self.db.connection_context():
                    self._queue_pending(None)
            finally:
                tell_later(self.actor_ref, REFRESH_S, Refresh())
        else:
            return False
        return True

    def _queue_pending(self, devices: list[int] | None) -> None:
        where = m.Schedule.enabled & m.Schedule.next_run_at.is_null(False)
        if devices is not None:
            where &= m.Schedule.device.in_(devices)
        for sid, device_id, due in m.Schedule.select(m.Schedule.id, m.Schedule.device, m.Schedule.next_run_at) \
                .where(where).tuples():
            due = from_db(due)
            if self.owns(device_id) and self.queue.due_of(sid) != due:
                self.queue.put(sid, due)
