"""Migration 4 on a database made by the schema before sites (data/schema_v3.sql, pg_dump of
migrations 1-3): every row is kept, devices and approved accounts land in the default site, the
old clients' flows still pass, and running it again changes nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg2
import pytest
import websocket

from pumplink.accounts.credentials import hash_password
from pumplink.storage import migrations
from pumplink.storage import models as m
from pumplink.storage.db import make_database
from tests.conftest import ADMIN, World

SCHEMA_V3 = Path(__file__).parent / "data" / "schema_v3.sql"
TABLES = ("user", "device", "activation", "session", "schedule", "schedule_run", "refresh_token", "device_log",
          "audit_log")
PASSWORD = "old-password-1"


def _old_database(url: str) -> None:
    """The previous schema, with users, devices, activations, sessions and schedules in it."""
    now = dt.datetime.utcnow().replace(microsecond=0)
    day = dt.timedelta(days=1)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA_V3.read_text())
        cur.execute("SELECT MAX(version) FROM schema_version")
        assert cur.fetchone()[0] == 3
        hashed = hash_password(PASSWORD)
        admin_hash = hash_password(ADMIN[1])
        cur.execute('INSERT INTO "user" (id, email, password_hash, role, created_at) VALUES '
                    "(10, %s, %s, 'admin', %s), (11, 'farmer@example.org', %s, 'user', %s), "
                    "(12, 'waiting@example.org', %s, 'pending', %s)",
                    (ADMIN[0], admin_hash, now, hashed, now, hashed, now))
        cur.execute("SELECT setval(pg_get_serial_sequence('\"user\"', 'id'), 20)")
        cur.execute("INSERT INTO device (id, name, protocol, max_run_minutes, created_at) VALUES "
                    "(2, 'Canal pump', 'pumplink', 30, %s)", (now,))
        cur.execute("SELECT setval(pg_get_serial_sequence('device', 'id'), 2)")
        cur.execute("INSERT INTO refresh_token (user_id, token_hash, family, created_at, expires_at) VALUES "
                    "(11, 'h1', 'f1', %s, %s)", (now, now + 30 * day))
        cur.execute("INSERT INTO activation (id, device_id, user_id, duration_s, state, source, created_at, "
                    "started_at, ends_at, ended_at) VALUES "
                    "(1, 1, 11, 60, 'completed', 'api', %s, %s, %s, %s), "
                    "(2, 2, 10, 30, 'completed', 'api', %s, %s, %s, %s)",
                    (now - day, now - day, now - day + dt.timedelta(seconds=60), now - day + dt.timedelta(seconds=60),
                     now - day, now - day, now - day + dt.timedelta(seconds=30), now - day + dt.timedelta(seconds=30)))
        cur.execute("SELECT setval(pg_get_serial_sequence('activation', 'id'), 2)")
        cur.execute("INSERT INTO session (device_id, activation_id, user_id, started_at, ended_at, intended_s, "
                    "actual_s, start_cause, end_reason) VALUES "
                    "(1, 1, 11, %s, %s, 60, 60, 'command', 'timer'), (2, 2, 10, %s, %s, 30, 30, 'command', 'timer')",
                    (now - day, now - day + dt.timedelta(seconds=60), now - day, now - day + dt.timedelta(seconds=30)))
        cur.execute("INSERT INTO device_log (device_id, event, cause, at) VALUES (1, 'on', 'command', %s)", (now - day,))
        cur.execute("INSERT INTO schedule (id, device_id, user_id, start_time, rrule, duration_s, enabled, "
                    "next_run_at, created_at, next_run_index) VALUES "
                    "(1, 1, 11, %s, 'FREQ=DAILY', 60, true, %s, %s, 0)", (now + day, now + day, now))
        cur.execute("SELECT setval(pg_get_serial_sequence('schedule', 'id'), 1)")
        cur.execute("INSERT INTO schedule_run (schedule_id, due_at, fired_at, outcome) VALUES (1, %s, %s, 'started')",
                    (now - day, now - day))
        cur.execute("INSERT INTO audit_log (at, actor_id, action, target) VALUES (%s, 10, 'user.update', 'user:11')",
                    (now,))


def _rows(url: str) -> dict[str, list]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        found = {}
        for table in TABLES:
            cur.execute(f'SELECT id FROM "{table}" ORDER BY id')
            found[table] = [r[0] for r in cur.fetchall()]
        return found


def _sites(url: str) -> tuple[list, list, list]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, is_default FROM site ORDER BY id")
        sites = cur.fetchall()
        cur.execute("SELECT id, site_id FROM device ORDER BY id")
        devices = cur.fetchall()
        cur.execute("SELECT site_id, user_id, role FROM membership ORDER BY user_id")
        return sites, devices, cur.fetchall()


@pytest.fixture(scope="module")
def old_url(pg_factory):
    url = pg_factory()
    _old_database(url)
    return url


def test_an_old_database_migrates_with_every_row_kept_twice_safely(old_url, server_factory):
    before = _rows(old_url)
    assert all(before[t] for t in ("user", "device", "activation", "session", "schedule"))

    server = server_factory(old_url, PUMPLINK_JOIN_DEFAULT_SITE="true")
    after = _rows(old_url)
    assert after == before, "the migration must keep every row"
    sites, devices, members = _sites(old_url)
    assert len(sites) == 1 and sites[0][1] is True
    default = sites[0][0]
    assert devices == [(1, default), (2, default)]
    # Approved accounts join as operators, admins as managers, a pending account not at all.
    assert members == [(default, 10, "manager"), (default, 11, "operator")]

    # Once more, by hand: the migration's own steps find everything in place and change nothing.
    db = make_database(old_url)
    m.bind_models(db)
    with db.connection_context(), db.atomic():
        migrations._v4_sites(db)
    with db.connection_context():
        assert migrations.current_version(db) == len(migrations.MIGRATIONS)
    db.close()
    assert _rows(old_url) == before and _sites(old_url) == (sites, devices, members)

    # And by a restart, which finds version 4 applied.
    server.stop()
    server.start()
    assert _rows(old_url) == before and _sites(old_url) == (sites, devices, members)
    _old_clients_still_work(server)


def _old_clients_still_work(server) -> None:
    """The app's flow on the migrated data: log in, see device 1, run it, hear on/off as text."""
    world = World(server)
    try:
        r = server.api().post("login", {"email": "farmer@example.org", "password": PASSWORD})
        assert r.status_code == 200, r.text
        farmer = server.api(r.json()["access_token"])
        assert [d["id"] for d in farmer.get("devices").json()["devices"]] == [1, 2]
        assert [s["id"] for s in farmer.get("schedules").json()["items"]] == [1]
        assert [a["id"] for a in farmer.get("activations").json()["items"]] == [1]
        world.pump(1)
        ws = websocket.create_connection(server.base.replace("http://", "ws://") + "/ws", timeout=5)
        try:
            ws.send(r.json()["access_token"])
            assert ws.recv() == "off"
            r = farmer.post("activate-device", {"device_id": 1, "duration": 0.02})
            assert r.status_code == 202, r.text
            assert ws.recv() == "on"
            assert ws.recv() == "off"
        finally:
            ws.close()
        # The pending account is still pending and still cannot log in.
        r = server.api().post("login", {"email": "waiting@example.org", "password": PASSWORD})
        assert r.status_code == 403 and r.json()["code"] == "approval_required"
    finally:
        world.close()
