"""Versioned schema migrations, applied in order inside one transaction each; safe to run twice."""

from __future__ import annotations

import logging

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migration

from pumplink.accounts import roles
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
        # A fresh install's tables are today's models: its first device already needs a site.
        m.Device.insert(id=1, name="Motor Pump", protocol="pumplink", site=default_site_id()).execute()
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


DEFAULT_SITE_NAME = "Default site"


def default_site_id() -> int:
    """The default site's id, made when there is none (migrations 1 and 4)."""
    found = m.default_site_id()
    if found is None:
        found = m.Site.insert(name=DEFAULT_SITE_NAME, is_default=True).execute()
    return found


def _v4_sites(db: pw.Database) -> None:
    """Sites: every device into the default site, every approved account into it (admins as managers).

    Each step checks what is there first, so running it again (or after a half-applied copy)
    changes nothing and keeps every row."""
    db.create_tables([m.Site, m.Membership, m.Invitation], safe=True)
    site_id = default_site_id()
    migrator = SchemaMigrator.from_database(db)
    device_columns = {c.name: c for c in db.get_columns("device")}
    if "site_id" not in device_columns:
        run_migration(migrator.add_column("device", "site_id",
                                          pw.ForeignKeyField(m.Site, null=True, field=m.Site.id, on_delete="RESTRICT")))
    m.Device.update(site=site_id).where(m.Device.site.is_null()).execute()
    if "site_id" not in device_columns or device_columns["site_id"].null:
        run_migration(migrator.add_not_null("device", "site_id"))
    if "device_site_id" not in {i.name for i in db.get_indexes("device")}:
        run_migration(migrator.add_index("device", ("site_id",), False))
    if "site_id" not in {c.name for c in db.get_columns("audit_log")}:
        run_migration(migrator.add_column("audit_log", "site_id",
                                          pw.ForeignKeyField(m.Site, null=True, field=m.Site.id, on_delete="SET NULL")))
    members = set(m.Membership.select(m.Membership.user).where(m.Membership.site == site_id).tuples())
    rows = [{"site": site_id, "user": uid, "role": "manager" if role == "admin" else "operator"}
            for uid, role in m.User.select(m.User.id, m.User.role).where(m.User.role.in_(roles.APPROVED_ROLES)).tuples()
            if (uid,) not in members]
    if rows:
        m.Membership.insert_many(rows).execute()


def _zone():
    # Rules are read in the server's zone; migrations are given only the database.
    from zoneinfo import ZoneInfo

    from pumplink import config

    try:
        return config.load().tz
    except Exception:
        return ZoneInfo("UTC")


def _v5_partition_epoch(db: pw.Database) -> None:
    """Cluster mode's fencing tokens (docs/cluster.md): the epoch of each partition's current
    owner; a device write of an older epoch is refused. Unused by a single node."""
    db.execute_sql("CREATE TABLE IF NOT EXISTS partition_epoch (partition INTEGER PRIMARY KEY, epoch BIGINT NOT NULL)")


MIGRATIONS = [
    (1, "initial schema", _v1_initial),
    (2, "owed OFF and flapping flag on devices", _v2_device_safety),
    (3, "schedule.next_run_index for COUNT rules", _v3_schedule_run_index),
    (4, "sites, memberships and invitations; devices and approved accounts into the default site", _v4_sites),
    (5, "partition_epoch: fencing tokens of cluster mode", _v5_partition_epoch),
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
