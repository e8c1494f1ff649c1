"""Versioned schema migrations, applied in order inside one transaction each; safe to run twice."""

from __future__ import annotations

import logging

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migration

from pumplink.storage import models as m

log = logging.getLogger(__name__)


def _v1_initial(db: pw.Database) -> None:
    tables = [t for t in m.MODELS if t is not m.SchemaVersion]
    db.create_tables(tables, safe=True)
    # One open session per device, enforced by the database itself.
    db.execute_sql(
        'CREATE UNIQUE INDEX IF NOT EXISTS session_one_open_per_device ON "session" (device_id) '
        "WHERE ended_at IS NULL"
    )
    if not m.Device.select().where(m.Device.id == 1).exists():
        m.Device.insert(id=1, name="Motor Pump", protocol="pumplink").execute()
        if isinstance(db, pw.PostgresqlDatabase):
            db.execute_sql("SELECT setval(pg_get_serial_sequence('device', 'id'), (SELECT MAX(id) FROM device))")


def _v2_device_safety(db: pw.Database) -> None:
    """An owed OFF and a flapping flag survive a restart (issue 10, findings 4 and 15)."""
    have = {c.name for c in db.get_columns("device")}
    migrator = SchemaMigrator.from_database(db)
    for name in ("off_owed_since", "flapping_since"):
        if name not in have:  # a fresh install's v1 created them already, from the model
            run_migration(migrator.add_column("device", name, pw.DateTimeField(null=True)))


def _v3_schedule_run_index(db: pw.Database) -> None:
    # A COUNT rule keeps its position instead of counting from its first run at every step.
    if "next_run_index" not in {c.name for c in db.get_columns("schedule")}:
        db.execute_sql("ALTER TABLE schedule ADD COLUMN next_run_index INTEGER NOT NULL DEFAULT 0")
    from pumplink.clock import from_db
    from pumplink.schedules.recurrence import Recurrence

    tz = _zone()
    for s in m.Schedule.select().where(m.Schedule.rrule.contains("COUNT") & m.Schedule.next_run_at.is_null(False)):
        try:
            rec = Recurrence.of(s, tz)
            due = from_db(s.next_run_at)
            for n, pos in enumerate(rec.runs(rec.start)):
                if pos.at >= due or n > 1_000_000:
                    break
            else:
                continue
            if pos.at == due:
                s.next_run_index = pos.index
                s.save(only=[m.Schedule.next_run_index])
        except Exception:  # a rule this version refuses: it does not run anyway
            log.warning("schedule %s: could not place its next run in its COUNT rule", s.id)


def _zone():
    # Rules are read in the server's zone; migrations are given only the database.
    from zoneinfo import ZoneInfo

    from pumplink import config

    try:
        return config.load().tz
    except Exception:
        return ZoneInfo("UTC")


MIGRATIONS = [
    (1, "initial schema", _v1_initial),
    (2, "owed OFF and flapping flag on devices", _v2_device_safety),
    (3, "schedule.next_run_index for COUNT rules", _v3_schedule_run_index),
]


def current_version(db: pw.Database) -> int:
    if not db.table_exists("schema_version"):
        return 0
    row = m.SchemaVersion.select(pw.fn.MAX(m.SchemaVersion.version)).scalar()
    return row or 0


def migrate(db: pw.Database) -> list[int]:
    """Apply every migration newer than the database; returns the versions applied."""
    m.bind_models(db)
    applied = []
    with db.connection_context():
        db.create_tables([m.SchemaVersion], safe=True)
        for version, title, apply in MIGRATIONS:
            with db.atomic():
                _lock(db)
                if m.SchemaVersion.select().where(m.SchemaVersion.version == version).exists():
                    continue
                log.info("applying migration %d: %s", version, title)
                apply(db)
                m.SchemaVersion.insert(version=version).execute()
                applied.append(version)
    return applied


def _lock(db: pw.Database) -> None:
    # Two processes migrating at once take turns instead of racing.
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_xact_lock(4242001)")
