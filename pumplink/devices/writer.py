"""Group commit: the rows of many devices' messages in one transaction.

A device actor handing the rows of a unit (a pump's message, a timer, or several that waited
together: transactions.py) to ``GroupWriter.commit`` waits until they are durable (or failed),
so it publishes an ON only after the row recording it committed, exactly as with a transaction
of its own; meanwhile the writer's thread gathers what other devices handed over. Batches form by themselves: while one
transaction commits, the next one's units queue up (no timed wait, so an idle device pays
nothing); a batch holds at most ``MAX_UNITS`` units and ``MAX_ROWS`` rows.

A failed batch fails every unit in it with ``DatabaseUnavailable``: each device takes the path
it takes when its own transaction fails mid-way (backlog, replay, resync from the database).

Cluster mode: a unit carries its partition's fence (partition, epoch); the batch first checks
them all in one query (cluster/fencing.py) and writes only the units whose epoch is current. A
refused unit fails with ``Fenced`` and ``on_fenced(partition)`` is told once per partition.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import peewee

from pumplink.cluster import fencing
from pumplink.devices import records
from pumplink.errors import DatabaseUnavailable
from pumplink.metrics import Metrics
from pumplink.storage.db import OPERATIONAL_ERRORS

log = logging.getLogger(__name__)

MAX_ROWS = 500  # rows in one transaction at most: a commit never waits on a huge batch
# Units in one transaction at most: their devices' events are released together when it commits,
# and a burst larger than a WebSocket client's outbox (live/connection.py) drops it (a device's
# state events of one unit take one place there: a newer replaces the waiting one).
MAX_UNITS = 32
DOWN_RECHECK_S = 0.5  # while down, whether the database is back is asked at most this often


class _Unit:
    __slots__ = ("rows", "device", "fence", "done", "error", "queued_at")

    def __init__(self, rows: list, device, fence: fencing.Fence | None = None):
        self.rows, self.device, self.fence = rows, device, fence
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.queued_at = time.monotonic()


class GroupWriter:
    def __init__(self, db, metrics: Metrics):
        self.db = db
        self.metrics = metrics
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.down = False  # the last batch failed: devices keep their messages until it is back
        # Multi-row inserts need their ids back in order: PostgreSQL's RETURNING (SQLite: row by row).
        self.bulk = isinstance(db, peewee.PostgresqlDatabase)
        self._checked_at = 0.0
        self.on_fenced = lambda partition: None  # cluster mode: a partition's write was refused

    def start(self) -> "GroupWriter":
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def commit(self, rows: list, device, fence: fencing.Fence | None = None) -> None:
        """Write ``rows`` (state.ROWS effects of one device, in order) and return once they are
        durable; ``DatabaseUnavailable`` when they are not, ``Fenced`` when ``fence`` (cluster
        mode) is no longer its partition's epoch. Inserted records get their ids."""
        unit = _Unit(rows, device, fence)
        self._queue.put(unit)
        unit.done.wait()
        if isinstance(unit.error, OPERATIONAL_ERRORS):
            raise DatabaseUnavailable() from unit.error
        if unit.error is not None:
            raise unit.error

    def available(self) -> bool:
        """False while the database is known to be away (asked again at most every DOWN_RECHECK_S)."""
        if not self.down:
            return True
        now = time.monotonic()
        if now - self._checked_at >= DOWN_RECHECK_S:
            self._checked_at = now
            try:
                with self.db.connection_context():
                    self.db.execute_sql("SELECT 1")
                self.down = False
            except OPERATIONAL_ERRORS:
                self._discard_connections()
        return not self.down

    # --- the writer's thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            unit = self._queue.get()
            if unit is None:
                return
            batch, rows = [unit], len(unit.rows)
            while rows < MAX_ROWS and len(batch) < MAX_UNITS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
                rows += len(more.rows)
            self._write(batch)

    def _write(self, batch: list[_Unit]) -> None:
        try:
            errors = self._transaction(batch)
        except OPERATIONAL_ERRORS as exc:
            log.error("group commit of %d message(s) failed: %s", len(batch), exc)
            self.down = True
            self._checked_at = time.monotonic()
            self._discard_connections()
            errors = [exc] * len(batch)
        except Exception:  # noqa: BLE001 - a bug in one unit must not fail the others: each alone
            log.exception("group commit of %d message(s) failed; writing them one by one", len(batch))
            errors = [self._alone(unit) for unit in batch]
        now = time.monotonic()
        self.metrics.commit_batch.observe(len(batch))
        for unit, error in zip(batch, errors):
            self.metrics.commit_wait.observe(now - unit.queued_at)
            unit.error = error
            unit.done.set()

    def _transaction(self, batch: list[_Unit]) -> list[BaseException | None]:
        """Per unit, None (written) or why not (Fenced)."""
        with self.db.connection_context():
            with self.db.atomic():
                fences = [unit.fence for unit in batch if unit.fence is not None]
                stale = fencing.refused(self.db, fences) if fences else set()
                errors = [fencing.Fenced(*unit.fence) if unit.fence in stale else None for unit in batch]
                todo = [unit for unit, error in zip(batch, errors) if error is None]
                if self.bulk:
                    records.write_many([(unit.rows, unit.device) for unit in todo])
                else:
                    for unit in todo:
                        for effect in unit.rows:
                            records.write(effect, unit.device)
        self.down = False
        for partition in sorted({p for p, _ in stale}):
            log.warning("partition %d: a write under an old epoch was refused; its devices stop here", partition)
            self.on_fenced(partition)
        return errors

    def _alone(self, unit: _Unit) -> BaseException | None:
        try:
            return self._transaction([unit])[0]
        except Exception as exc:  # noqa: BLE001 - told to its device
            return exc

    def _discard_connections(self) -> None:
        try:
            if hasattr(self.db, "close_idle"):
                self.db.close_idle()
        except Exception:  # noqa: BLE001 - broken connections; the pool replaces them
            log.debug("closing idle connections failed", exc_info=True)
