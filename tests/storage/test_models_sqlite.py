"""The model layer and its migration, on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import datetime as dt

import peewee as pw
import pytest

from pumplink.storage import migrations
from pumplink.storage import models as m

T0 = dt.datetime(2026, 3, 29, 10, 0)


def test_migrating_twice_is_safe_and_a_fresh_install_has_the_motor_pump(db):
    every = [version for version, _, _ in migrations.MIGRATIONS]
    assert every[0] == 1 and every == sorted(every)
    assert migrations.migrate(db) == every
    assert migrations.migrate(db) == []
    with db.connection_context():
        assert migrations.current_version(db) == every[-1]
        pump = m.Device.get_by_id(1)
        assert (pump.name, pump.protocol, pump.deleted_at) == ("Motor Pump", "pumplink", None)
        assert m.Device.select().count() == 1
        # The id sequence moved past the seeded row: the next device is 2, not a clash with 1.
        assert m.Device.create(name="Second pump").id == 2


def test_email_is_unique(db):
    migrations.migrate(db)
    with db.connection_context():
        m.User.create(email="a@example.org", password_hash="x")
        with pytest.raises(pw.IntegrityError):
            with db.atomic():
                m.User.create(email="a@example.org", password_hash="y")
        assert m.User.select().count() == 1


def test_the_database_allows_only_one_open_session_per_device(db):
    migrations.migrate(db)
    with db.connection_context():
        other = m.Device.create(name="Other pump")
        closed = dict(started_at=T0, ended_at=T0 + dt.timedelta(minutes=5), start_cause="command", end_reason="timer")
        m.Session.create(device=1, **closed)
        m.Session.create(device=1, **closed)  # any number of finished sessions
        m.Session.create(device=1, started_at=T0 + dt.timedelta(minutes=10), start_cause="command")
        with pytest.raises(pw.IntegrityError):
            with db.atomic():
                m.Session.create(device=1, started_at=T0 + dt.timedelta(minutes=11), start_cause="manual")
        # Another device may be on at the same time.
        m.Session.create(device=other.id, started_at=T0 + dt.timedelta(minutes=11), start_cause="manual")
        open_ = m.Session.select().where(m.Session.ended_at.is_null()).count()
        assert open_ == 2


def test_deleting_a_user_keeps_device_history_and_drops_their_tokens(db):
    migrations.migrate(db)
    with db.connection_context():
        user = m.User.create(email="gone@example.org", password_hash="x")
        m.RefreshToken.create(user=user, token_hash="h" * 64, family="f", expires_at=T0)
        activation = m.Activation.create(device=1, user=user, duration_s=60, state="completed")
        m.Session.create(device=1, activation=activation, user=user, started_at=T0, ended_at=T0, start_cause="command")
        user.delete_instance()
        assert m.RefreshToken.select().count() == 0
        assert m.Activation.get_by_id(activation.id).user_id is None
        assert m.Session.get().user_id is None


def test_a_schedule_due_time_is_recorded_at_most_once(db):
    migrations.migrate(db)
    with db.connection_context():
        user = m.User.create(email="s@example.org", password_hash="x")
        schedule = m.Schedule.create(device=1, user=user, start_time=T0, duration_s=60)
        m.ScheduleRun.create(schedule=schedule, due_at=T0, outcome="started")
        with pytest.raises(pw.IntegrityError):
            with db.atomic():
                m.ScheduleRun.create(schedule=schedule, due_at=T0, outcome="started")


def test_a_version_1_database_gains_the_owed_off_and_flapping_columns(db, monkeypatch):
    """An install made before migration 2: its devices lack the columns, and get them, empty."""
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    assert migrations.migrate(db) == [1]
    with db.connection_context():
        for column in ("off_owed_since", "flapping_since"):
            db.execute_sql(f'ALTER TABLE "device" DROP COLUMN {column}')
    monkeypatch.undo()
    assert 2 in migrations.migrate(db)
    with db.connection_context():
        pump = m.Device.get_by_id(1)
        assert pump.off_owed_since is None and pump.flapping_since is None
        pump.off_owed_since = T0
        pump.save()
        assert m.Device.get_by_id(1).off_owed_since == T0


@pytest.mark.parametrize("which", ["user", "member"])
def test_quota_checks_of_one_user_take_turns(db, which):
    """Two quota checks of one user at once (two devices), through the reads an activation makes
    (usage.quota_reads): with a quota spanning devices (the user's own, or the member's at the
    site) the second waits for the first's transaction and then counts its activation, on
    SQLite as on PostgreSQL."""
    import threading
    from zoneinfo import ZoneInfo

    from pumplink.clock import UTC
    from pumplink.quota import usage

    migrations.migrate(db)
    now, tz = T0.replace(tzinfo=UTC), ZoneInfo("UTC")
    with db.connection_context():
        user = m.User.create(email="q@example.org", password_hash="x",
                             daily_quota_minutes=1 if which == "user" else None)
        uid = user.id
        m.Membership.create(user=uid, site=1, role="operator", daily_quota_minutes=1 if which == "member" else None)
    first_locked, seen = threading.Event(), {}

    def first():
        with db.connection_context(), db.atomic():
            usage.quota_reads(db, now, tz, uid, 1)
            first_locked.set()
            seen["first"] = usage.reserved(T0, user_id=uid)
            threading.Event().wait(0.3)  # the other check arrives meanwhile
            m.Activation.create(device=1, user=uid, duration_s=40, state="queued", created_at=T0)

    def second():
        first_locked.wait(5)
        with db.connection_context(), db.atomic():
            usage.quota_reads(db, now, tz, uid, 1)
            seen["second"] = usage.reserved(T0, user_id=uid)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"first": 0, "second": 40}
