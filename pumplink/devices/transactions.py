"""The shell's transactions: each message in order, a pump's message or a timer through the
group writer (writer.py: many devices' rows in one transaction), an ask of the API in a
transaction of its own (its quota check reads under the user's lock); while the database is
away, messages wait in a backlog (a due OFF does not: Machine.without_database) and are
replayed when it returns; an ON is published only once the rows recording it committed.

Messages that wait together (a burst from the link's doorbell, doorbell.py, or a backlog) are
handled as one unit of at most ``UNIT`` messages: the machine takes each in order, and their rows
go to the writer together, so the unit waits for one commit instead of one per message. A unit
ends with the first message that sends an ON: that ON goes out after its commit and before any
later message's OFF, as when each message was handled alone. OFFs go out before the commit.

A mixin of ``DeviceActor``: it runs on its thread. It decides nothing.
"""

from __future__ import annotations

import functools
import itertools
import logging

import pykka

from pumplink.cluster.fencing import Fenced, check as check_fence
from pumplink.devices import state
from pumplink.devices.messages import Replay, Ring, RunRequest, RunSettled
from pumplink.errors import DatabaseUnavailable
from pumplink.storage.db import OPERATIONAL_ERRORS
from pumplink.timers import tell_later

log = logging.getLogger(__name__)

REPLAY_S = 1.0  # while the database is away, try the backlog again this often
# Messages handled as one unit (one commit) at most: a timer told meanwhile waits at most one unit.
UNIT = 32


# The database could not be reached; what was being done is not done.
DatabaseDown = DatabaseUnavailable


class Unsaved(DatabaseUnavailable):
    """A group commit failed after the message was handled in memory: its rows wait (unsaved)."""


def transactional(method):
    """An ask of the API: earlier messages are caught up first, then one transaction."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._catch_up()
        return self._in_transaction(method, self, *args, **kwargs)

    return wrapper

class Transactions:
    """Mixin of ``DeviceActor``."""

    def on_receive(self, message):
        if isinstance(message, RunRequest):
            self._run_for_schedule(message)
            return
        if isinstance(message, Ring):
            taken, more = self.bell.take(UNIT)
            if more:
                self.actor_ref.tell(message)  # the rest after what was told meanwhile (a timer's OFF)
            self.backlog.extend(taken)
        elif isinstance(message, Replay):
            self.replay_armed = False
        else:
            self.backlog.append(message)
        try:
            self._catch_up()
        except Fenced:
            # Another node owns the device now: nothing more is done here (the node stops this actor).
            self.backlog.clear()
        except DatabaseDown as exc:
            if not isinstance(exc, Unsaved) or self.backlog:  # an Unsaved message is handled already
                self._safety_without_database(message)
            if not self.replay_armed:
                self.replay_armed = True
                tell_later(self.actor_ref, REPLAY_S, Replay())

    def _run_for_schedule(self, req: RunRequest) -> None:
        """A schedule's run, answered as the ask of the API is (the same checks, the same
        refusals), told back to the scheduler as RunSettled."""
        activation, error = None, None
        try:
            activation = self.activate(req.user_id, req.duration_s, "schedule", req.schedule_id)
        except Exception as exc:  # the device's refusal is the answer the run records
            error = exc
        try:
            req.reply_to.tell(RunSettled(req.run_id, req.schedule_id, activation, error))
        except pykka.ActorDeadError:
            log.warning("schedule %s run %s settled after the scheduler stopped", req.schedule_id, req.run_id)

    def _catch_up(self) -> None:
        """Handle the backlog in order, a unit of messages at a time; DatabaseDown leaves the rest."""
        if self.resync_needed:
            self._in_transaction(self._resync)
            self.resync_needed = False
        if self.unsaved is not None:
            self._group_committed(self._save_unsaved)
        while self.backlog:
            self._unit = 1  # messages of this unit that the machine has taken (set by _dispatch)
            try:
                self._group_committed(self._dispatch, list(itertools.islice(self.backlog, UNIT)))
            except Unsaved:
                self._forget(self._unit)
                raise
            except (DatabaseDown, Fenced):
                raise
            except Exception:
                # A bug must not wedge the device behind one message (nor kill the actor).
                log.exception("device %s failed handling %r", self.device_id,
                              list(itertools.islice(self.backlog, self._unit)))
            self._forget(self._unit)

    def _forget(self, n: int) -> None:
        for _ in range(n):
            self.backlog.popleft()

    def _in_transaction(self, fn, *args, **kwargs):
        try:
            # The pool pings a connection on checkout, so one that predates a database restart is
            # found out here, before memory is touched.
            self.db.connect(reuse_if_open=True)
        except OPERATIONAL_ERRORS as exc:
            log.warning("device %s: database unavailable (%s); %d message(s) wait", self.device_id, exc,
                        len(self.backlog))
            self._close_connection(broken=True)
            raise DatabaseDown() from exc
        outermost = self._deferred_on is None
        if outermost:
            self._deferred_on = []
        try:
            with self.db.atomic():
                check_fence(self.db, self.fence)  # cluster mode: refused unless the partition is still ours
                result = fn(*args, **kwargs)
            if outermost:
                # Committed: only now may the pump be switched on, or a run could go unrecorded.
                for topic, payload in self._deferred_on:
                    self._send_on(topic, payload)
            return result
        except Fenced as exc:
            self.cluster.fenced(exc.partition)
            raise
        except OPERATIONAL_ERRORS as exc:
            # Memory may have moved ahead of the rolled-back writes: rebuild it from the database.
            log.error("device %s: database failed mid-way (%s); resynchronising when it returns", self.device_id, exc)
            self.resync_needed = True
            self._close_connection(broken=True)
            raise DatabaseDown() from exc
        finally:
            if outermost:
                self._deferred_on = None
            self._close_connection()

    def _group_committed(self, fn, *args):
        """A pump's message or a timer: no connection of its own; its rows are committed with
        other devices' by the writer (writer.py), and it waits until they are durable."""
        if not self.writer.available():
            log.warning("device %s: database unavailable; %d message(s) wait", self.device_id, len(self.backlog))
            raise DatabaseDown()
        self._grouped = True
        try:
            return fn(*args)
        except Unsaved:
            log.error("device %s: a group commit failed; its rows are written when the database returns",
                      self.device_id)
            raise
        finally:
            self._grouped = False

    def _save_unsaved(self) -> None:
        """The rows of a message handled while the database went away, then what followed them."""
        rows, rest = self.unsaved
        self.writer.commit(rows, self.machine.st.device)  # DatabaseDown: they wait again
        self.unsaved = None
        self._carry_out(rest)

    def _close_connection(self, broken: bool = False) -> None:
        try:
            if not self.db.is_closed() and not self.db.in_transaction():
                self.db.close()
            if broken and hasattr(self.db, "close_idle"):
                self.db.close_idle()
        except Exception:  # a connection already broken; the pool replaces it
            log.debug("closing a broken connection failed", exc_info=True)

    def _dispatch(self, messages: list) -> None:
        """The machine takes the messages in order, up to the first that sends an ON; their
        effects are carried out together (one commit)."""
        effects = []
        for n, message in enumerate(messages, 1):
            self._unit = n
            try:
                fx = self.machine.handle(message, self.clock.now())
            except Exception:  # a bug in one message must not lose the others' effects
                log.exception("device %s failed handling %r", self.device_id, message)
                continue
            effects += fx
            if any(isinstance(e, state.Publish) and e.command.action == "on" for e in fx):
                break
        self.rt.metrics.device_unit.observe(self._unit)
        self._apply(effects)

    def _safety_without_database(self, message) -> None:
        """An OFF that is due does not wait for the database: send it now, book it later."""
        self._apply(self.machine.without_database(message, self.clock.now()))
