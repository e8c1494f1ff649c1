"""Fixtures: one PostgreSQL database and one MQTT prefix per test run, a real server, real pumps."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# CI runs the property tests on a fixed set of examples (no database of past failures on a clean
# clone, no flake from a rare new example); runs by hand keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

from pumplink.devices.simulator import SimulatedPump
from tests.fake_expo import FakeExpo
from tests.support import MQTT_URL, Server, create_database, drop_database, free_port, run_id, server_env

ADMIN = ("admin@example.org", "admin-password-1")
# Every test registers and logs in from 127.0.0.1: the per-address limits a real server keeps
# would stop the suite. Tests of those limits start servers of their own with real values.
TEST_LIMITS = {"PUMPLINK_REGISTER_PER_CLIENT": "100000", "PUMPLINK_LOGIN_PER_CLIENT": "100000"}


@pytest.fixture(scope="session")
def run_tag() -> str:
    return run_id()


@pytest.fixture(scope="session")
def pg_factory(run_tag):
    """Makes fresh PostgreSQL databases for this run and drops them all at the end."""
    made = []
    counter = itertools.count()

    def make() -> str:
        name = f"pumplink_test_{run_tag}_{next(counter)}"
        url = create_database(name)
        made.append(name)
        return url

    yield make
    for name in made:
        drop_database(name)


@pytest.fixture(scope="session")
def log_dir(run_tag) -> Path:
    """Server logs outlive pytest's own temp dirs (which other runs prune)."""
    path = Path(os.environ.get("PUMPLINK_TEST_LOGDIR", tempfile.gettempdir())) / f"pumplink-test-{run_tag}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def server_registry(pg_factory, run_tag, log_dir):
    """Starts servers on fresh databases with their own topic prefixes; stops any left at the end."""
    servers = []
    counter = itertools.count()

    def make(database_url: str | None = None, **overrides) -> Server:
        n = next(counter)
        prefix = f"pltest-{run_tag}-{n}"
        env = server_env(database_url or pg_factory(), prefix, **{**TEST_LIMITS, **overrides})
        server = Server(env, log_dir / f"server{n}.log")
        server.prefix = prefix
        server.legacy_base = env["PUMPLINK_LEGACY_BASE"]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server_factory(server_registry):
    """Servers of a test module's own, stopped when the module ends (each holds database connections)."""
    made = []

    def make(database_url: str | None = None, **overrides) -> Server:
        server = server_registry(database_url, **overrides)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def server(server_registry) -> Server:
    """The shared server; tests make their own devices and users so they never collide."""
    return server_registry()


class World:
    """A test's view of one server: accounts, devices and simulated pumps, cleaned up after."""

    def __init__(self, server: Server):
        self.server = server
        self.pumps: list[SimulatedPump] = []
        self.devices: list[int] = []
        self._admin = None

    @property
    def admin(self):
        if self._admin is None:
            self._admin = self.login(*ADMIN)
        return self._admin

    def login(self, email: str, password: str):
        r = self.server.api().post("login", {"email": email, "password": password})
        assert r.status_code == 200, r.text
        return self.server.api(r.json()["access_token"])

    def user(self, role: str = "user", password: str = "password-123"):
        """An account of ``role``, logged in. A pending account cannot log in (403), so a pending
        one is approved, logged in, then sent back to pending: its access token keeps working
        (for /me, and for the 403s a pending user gets) until it expires."""
        email = f"u{secrets.token_hex(5)}@example.org"
        r = self.server.api().post("register", {"email": email, "password": password})
        assert r.status_code == 201, r.text
        uid = r.json()["user"]["id"]
        r = self.admin.patch(f"users/{uid}", {"role": "user" if role == "pending" else role})
        assert r.status_code == 200, r.text
        api = self.login(email, password)
        if role == "pending":
            r = self.admin.patch(f"users/{uid}", {"role": "pending"})
            assert r.status_code == 200, r.text
        api.user_id, api.email = uid, email
        return api

    def device(self, name: str = "Test pump", **fields) -> int:
        r = self.admin.post("devices", {"name": name, **fields})
        assert r.status_code == 201, r.text
        self.devices.append(r.json()["id"])
        return r.json()["id"]

    def pump(self, device_id: int, **options) -> SimulatedPump:
        pump = SimulatedPump(MQTT_URL, self.server.prefix, device_id, legacy_base=self.server.legacy_base, **options)
        pump.start()
        self.pumps.append(pump)
        return pump

    def close(self):
        for pump in self.pumps:
            try:
                pump.stop()
            except Exception:
                pass
        # A server has room for one legacy device (they share one control topic): free it.
        for device_id in self.devices:
            r = self.admin.get(f"devices/{device_id}")
            if r.status_code == 200 and r.json()["protocol"] == "legacy":
                self.admin.delete(f"devices/{device_id}")


@pytest.fixture
def world(server):
    w = World(server)
    yield w
    w.close()


@pytest.fixture(scope="module")
def expo():
    """The stand-in for Expo's push service: a local HTTP server that records what it receives."""
    fake = FakeExpo().start()
    yield fake
    fake.stop()


class PrivateBroker:
    """A Mosquitto of one test's own, on a free port, so stopping it disturbs nobody else."""

    def __init__(self):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        proc = subprocess.Popen([self.binary, "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"private broker exited with {proc.returncode} (port {self.port})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private broker did not start")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)


@pytest.fixture
def private_broker():
    broker = PrivateBroker()
    broker.start()
    yield broker
    broker.stop()
