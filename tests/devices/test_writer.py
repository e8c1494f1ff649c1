"""The group writer (pumplink/devices/writer.py) against a real PostgreSQL: many devices' rows in
one transaction, ids set before the caller goes on, a failure told to every caller in the batch."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from pumplink.clock import to_db
from pumplink.devices import records, state
from pumplink.errors import DatabaseUnavailable
from pumplink.metrics import Metrics
from pumplink.devices.writer import GroupWriter
from pumplink.storage import models as m
from pumplink.storage.db import make_database
from pumplink.storage.migrations import migrate

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
DEVICES = 40


@pytest.fixture
def db(pg_factory):
    db = make_database(pg_factory())
    m.bind_models(db)
    migrate(db)
    with db.connection_context():
        for n in range(DEVICES):
            m.Device.create(name=f"Pump {n}")
    yield db
    db.close_all()


def _rows(device_id: int):
    session = state.Session(to_db(T0), "manual")
    return session, [state.Insert(session), state.WriteLog("on", "manual", "device", T0, session)]


def _samples(histogram) -> dict:
    return {s.name.rsplit("_", 1)[-1]: s.value for s in histogram.collect()[0].samples if not s.labels.get("le")}


def test_many_devices_share_transactions_and_every_row_lands_with_its_id(db):
    metrics = Metrics()
    writer = GroupWriter(db, metrics).start()
    try:
        devices = [records.device_value(d) for d in m.Device.select().order_by(m.Device.id)]
        start = threading.Barrier(len(devices), timeout=30)  # a lost thread fails the test, never hangs it
        sessions, errors = {}, []

        def device(d: state.Device):
            session, rows = _rows(d.id)
            try:
                start.wait()
                writer.commit(rows, d)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            sessions[d.id] = session.id  # set by the writer before commit returned

        threads = [threading.Thread(target=device, args=(d,), daemon=True) for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert errors == []
        with db.connection_context():
            stored = {s.id: s.device_id for s in m.Session.select()}
            logs = {(entry.device_id, entry.session_id) for entry in m.DeviceLog.select()}
        assert stored == {sid: did for did, sid in sessions.items()}
        assert logs == {(did, sid) for did, sid in sessions.items()}  # each log row names its own session
        batch = _samples(metrics.commit_batch)
        assert len(sessions) == len(devices)  # every device's rows landed
        assert batch["count"] < len(devices) and batch["sum"] == len(devices)  # fewer transactions than messages
        assert _samples(metrics.commit_wait)["count"] == len(devices)
    finally:
        writer.stop()


def test_a_message_whose_rows_fail_fails_alone_and_the_writer_goes_on(db):
    writer = GroupWriter(db, Metrics()).start()
    try:
        device = records.device_value(m.Device.get_by_id(1))
        bad = state.Device(999_999, "gone", "pumplink", None)  # no such device: its log row violates a key
        _, rows = _rows(1)
        with pytest.raises(Exception) as failed:
            writer.commit(_rows(bad.id)[1], bad)
        assert not isinstance(failed.value, DatabaseUnavailable)  # a bug, not an outage
        writer.commit(rows, device)  # the writer goes on
        with db.connection_context():
            assert m.Session.select().count() == 1 and m.DeviceLog.select().count() == 1
        assert writer.available()
    finally:
        writer.stop()


def test_an_update_of_a_record_inserted_in_the_same_rows_is_folded_into_its_insert():
    act = state.Activation(1, 2, None, 60, "api", to_db(T0))
    first = state.Insert(act)
    act.state, act.command_id = "starting", "c-1"
    rows = [first, state.Update(act, ("state", "command_id")), state.WriteLog("on", "api", "user:2", T0, None, act)]
    folded = records.fold(rows)
    assert [type(e) for e in folded] == [state.Insert, state.WriteLog]
    assert (folded[0].row.state, folded[0].row.command_id) == ("starting", "c-1")
    assert folded[0].record is act
    assert (first.row.state, first.row.command_id) == ("queued", None)  # the machine's effect is left as it was


def test_many_sessions_closed_in_one_batch_each_get_their_own_values(db):
    """A batch of OFF reports closes every session with its own end (one UPDATE with CASE)."""
    devices = [records.device_value(d) for d in m.Device.select().order_by(m.Device.id)][:5]
    opened = []
    with db.connection_context():
        for n, d in enumerate(devices):
            s = state.Session(to_db(T0 + dt.timedelta(seconds=n)), "manual")
            records.write(state.Insert(s), d)
            opened.append(s)
        units = []
        for n, (s, d) in enumerate(zip(opened, devices)):
            s.ended_at, s.actual_s, s.end_reason = to_db(T0 + dt.timedelta(seconds=10 + n)), 10.0 + n, f"why{n}"
            units.append(([state.Update(s, ("ended_at", "actual_s", "end_reason"))], d))
        with db.atomic():
            records.write_many(units)
        stored = {row.id: (row.ended_at, row.actual_s, row.end_reason) for row in m.Session.select()}
    assert stored == {s.id: (s.ended_at, s.actual_s, s.end_reason) for s in opened}


def _close(s: state.Session, at: dt.datetime, why: str) -> state.Update:
    s.ended_at, s.actual_s, s.end_reason = to_db(at), (at - T0).total_seconds(), why
    return state.Update(s, ("ended_at", "actual_s", "end_reason"))


def test_a_session_closed_and_the_next_opened_in_one_message_both_land(db):
    """A run's ack supersedes the pump's own session: the close must reach the table before the
    new open session, or the one-open-session-per-device index refuses the batch."""
    writer = GroupWriter(db, Metrics()).start()
    try:
        device = records.device_value(m.Device.get_by_id(1))
        manual = state.Session(to_db(T0), "manual")
        writer.commit([state.Insert(manual)], device)
        run = state.Session(to_db(T0 + dt.timedelta(seconds=5)), "command")
        writer.commit([_close(manual, T0 + dt.timedelta(seconds=5), "superseded"), state.Insert(run),
                       state.WriteLog("on", "command", "user:1", T0, run)], device)
        with db.connection_context():
            stored = {s.id: (s.ended_at, s.end_reason) for s in m.Session.select()}
        assert stored == {manual.id: (manual.ended_at, "superseded"), run.id: (None, None)}
    finally:
        writer.stop()


def test_a_burst_of_reports_in_one_unit_keeps_one_session_per_on_off(db):
    """A flapping pump's reports handled as one unit: the session left open by the previous unit
    closes, each ON..OFF in between is its own session, the last ON stays open, every change logged."""
    writer = GroupWriter(db, Metrics()).start()
    try:
        device = records.device_value(m.Device.get_by_id(1))
        t = [T0 + dt.timedelta(milliseconds=10 * n) for n in range(8)]
        first = state.Session(to_db(t[0]), "manual")
        writer.commit([state.Insert(first), state.WriteLog("on", "manual", "device", t[0], first)], device)
        rows = [_close(first, t[1], "manual"), state.WriteLog("off", "manual", "device", t[1], first)]
        sessions = [first]
        for n in (2, 4, 6):
            s = state.Session(to_db(t[n]), "manual")
            sessions.append(s)
            rows += [state.Insert(s), state.WriteLog("on", "manual", "device", t[n], s)]
            if n < 6:
                rows += [_close(s, t[n + 1], "manual"), state.WriteLog("off", "manual", "device", t[n + 1], s)]
        writer.commit(rows, device)
        with db.connection_context():
            stored = [(s.id, s.started_at, s.ended_at) for s in m.Session.select().order_by(m.Session.id)]
            logged = [(e.event, e.session_id) for e in m.DeviceLog.select().order_by(m.DeviceLog.id)]
        assert stored == [(s.id, s.started_at, s.ended_at) for s in sessions]
        assert [ended is None for _, _, ended in stored] == [False, False, False, True]
        assert logged == [("on", sessions[0].id), ("off", sessions[0].id), ("on", sessions[1].id),
                          ("off", sessions[1].id), ("on", sessions[2].id), ("off", sessions[2].id),
                          ("on", sessions[3].id)]
    finally:
        writer.stop()
