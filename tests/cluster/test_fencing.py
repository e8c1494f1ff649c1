"""Fencing against a real PostgreSQL: a write under an old epoch is refused by the database, in
the group writer's batch and in a device's own transaction, and nothing of it is written."""

from __future__ import annotations

import threading

import peewee as pw
import pytest

from pumplink.cluster import fencing
from pumplink.cluster.partitions import partition_of
from pumplink.devices import records
from pumplink.devices.writer import GroupWriter
from pumplink.metrics import Metrics
from pumplink.storage import models as m
from pumplink.storage.db import make_database
from pumplink.storage.migrations import migrate
from tests.devices.test_writer import _rows


@pytest.fixture
def db(pg_factory):
    db = make_database(pg_factory())
    m.bind_models(db)
    migrate(db)
    with db.connection_context():
        for n in range(8):
            m.Device.create(name=f"Pump {n}")
    yield db
    db.close_all()


def test_epochs_only_rise(db):
    with db.connection_context():
        assert fencing.claim(db, 5, 10)
        assert fencing.current(db, 5) == 10
        assert not fencing.claim(db, 5, 10)  # the same epoch again: someone holds it already
        assert not fencing.claim(db, 5, 7)  # an older owner coming back
        assert fencing.current(db, 5) == 10
        assert fencing.claim(db, 5, 11)
        assert fencing.current(db, 5) == 11


def test_a_batch_claim_raises_each_partition_it_may_and_refuses_the_others(db):
    with db.connection_context():
        assert fencing.claim(db, 5, 10)
        assert fencing.claim_all(db, {3: 4, 5: 9, 6: 12}) == {3, 6}  # 5 has a newer owner
        assert [fencing.current(db, p) for p in (3, 5, 6)] == [4, 10, 12]
        assert fencing.claim_all(db, {}) == set()


def test_a_batch_claim_that_waits_too_long_claims_nothing(db):
    """A lock wait past ``wait_s`` on one partition fails the whole batch: the Member gives every
    lock of it back and tries again, so no partition counts as claimed without its row."""
    with db.connection_context():
        fencing.claim_all(db, {1: 5, 2: 5})
    with db.connection_context(), db.atomic():
        fencing.check(db, (2, 5))  # an old owner's write in flight on partition 2
        errors = []

        def takeover():
            with db.connection_context():
                try:
                    fencing.claim_all(db, {1: 6, 2: 6}, wait_s=0.2)
                except pw.OperationalError as exc:
                    errors.append(exc)

        thread = threading.Thread(target=takeover)
        thread.start()
        thread.join(10)
    assert len(errors) == 1 and "lock timeout" in str(errors[0])
    with db.connection_context():
        assert [fencing.current(db, p) for p in (1, 2)] == [5, 5]


def test_a_late_write_of_an_old_epoch_is_refused_and_the_current_one_lands(db):
    with db.connection_context():
        devices = [records.device_value(d) for d in m.Device.select().order_by(m.Device.id)]
    old, new = devices[0], devices[1]
    p_old, p_new = partition_of(old.id), partition_of(new.id)
    assert p_old != p_new  # ids 1 and 2 hash apart (a fixed function: this never changes)
    with db.connection_context():
        fencing.claim(db, p_old, 3)
        fencing.claim(db, p_new, 4)
        fencing.claim(db, p_old, 9)  # p_old moved on to a newer owner (epoch 9)
    refused_partitions = []
    writer = GroupWriter(db, Metrics()).start()
    writer.on_fenced = refused_partitions.append
    try:
        start = threading.Barrier(2)
        errors = {}

        def write(device, fence):
            _, rows = _rows(device.id)
            start.wait()
            try:
                writer.commit(rows, device, fence)
                errors[device.id] = None
            except Exception as exc:  # noqa: BLE001 - checked below
                errors[device.id] = exc

        threads = [threading.Thread(target=write, args=(old, (p_old, 3))),
                   threading.Thread(target=write, args=(new, (p_new, 4)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert isinstance(errors[old.id], fencing.Fenced) and errors[old.id].partition == p_old
        assert errors[new.id] is None
        assert refused_partitions == [p_old]
        with db.connection_context():
            assert {s.device_id for s in m.Session.select()} == {new.id}  # nothing of the stale write
            assert {e.device_id for e in m.DeviceLog.select()} == {new.id}
    finally:
        writer.stop()


def test_a_device_transaction_checks_its_fence_and_takes_a_share_lock(db):
    """The takeover's claim waits for an old owner's transaction in flight, then refuses its next."""
    with db.connection_context():
        fencing.claim(db, 1, 5)
    claimed = threading.Event()

    def takeover():
        with db.connection_context():
            fencing.claim(db, 1, 6)
        claimed.set()

    with db.connection_context():
        with db.atomic():
            fencing.check(db, (1, 5))  # the old owner's write begins: row share-locked
            thread = threading.Thread(target=takeover)
            thread.start()
            assert not claimed.wait(0.5)  # the new owner's claim waits for it
        thread.join(10)
    assert claimed.is_set()
    with db.connection_context():
        with pytest.raises(fencing.Fenced):
            with db.atomic():
                fencing.check(db, (1, 5))
        with db.atomic():
            fencing.check(db, (1, 6))
        fencing.check(db, None)  # a single node: no fence, no check
