"""The harness tests and benchmarks share: a real ``pumplink serve`` in a subprocess, an HTTP
client, throw-away PostgreSQL databases, and waiting on a condition.

It lives at the top of the repository, beside ``tests/`` and ``bench/``, so that neither imports
the other; it is not part of the installed package (no server needs it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import requests

PG_ADMIN_DSN = os.environ.get("PUMPLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_URL = os.environ.get("PUMPLINK_TEST_MQTT", "mqtt://127.0.0.1:1883")
PUMPLINK_BIN = str(Path(sys.executable).with_name("pumplink"))


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_id() -> str:
    return f"{os.getpid()}_{secrets.token_hex(3)}"


def create_database(name: str) -> str:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_database(name: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


class Api:
    """A client as the app is one: JSON over HTTP with a Bearer token."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base.rstrip("/")
        self.token = token

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}{path if path.startswith('/') else '/api/v1/' + path}"

    def request(self, method: str, path: str, json=None, token: str | None = None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        token = token if token is not None else self.token
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        # A connection per request, closed by us: no idle keep-alive socket for a graceful stop to wait on.
        return requests.request(method, self.url(path), json=json, headers=headers, timeout=kw.pop("timeout", 15), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json=None, **kw):
        return self.request("POST", path, json=json if json is not None else {}, **kw)

    def patch(self, path, json=None, **kw):
        return self.request("PATCH", path, json=json, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


class Server:
    """``pumplink serve`` in its own process group, so a test can SIGKILL all of it."""

    def __init__(self, env: dict, log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        host, port = env["PUMPLINK_BIND"].rsplit(":", 1)
        self.base = f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> "Server":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([PUMPLINK_BIN, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /health within {timeout}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def kill(self) -> None:
        """A crash: every process of the server dies at once, no clean-up runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def api(self, token: str | None = None) -> Api:
        return Api(self.base, token)


def server_env(database_url: str, prefix: str, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUMPLINK_")}
    env.update({
        "PUMPLINK_DATABASE_URL": database_url,
        "PUMPLINK_MQTT_URL": MQTT_URL,
        "PUMPLINK_MQTT_PREFIX": prefix,
        "PUMPLINK_LEGACY_BASE": f"{prefix}-legacy",
        "PUMPLINK_BIND": f"127.0.0.1:{free_port()}",
        "PUMPLINK_JWT_SECRET": secrets.token_urlsafe(40),
        "PUMPLINK_ACK_TIMEOUT_S": "1",
        "PUMPLINK_ACK_RETRIES": "2",
        "PUMPLINK_QUEUE_LIMIT": "2",
        "PUMPLINK_ADMIN_EMAIL": "admin@example.org",
        "PUMPLINK_ADMIN_PASSWORD": "admin-password-1",
        "PUMPLINK_PUSH_ENABLED": "false",
        "PUMPLINK_LOG_LEVEL": "INFO",
        # Tests run pumps for a second or two and schedules seconds apart.
        "PUMPLINK_MIN_RUN_S": "1",
        "PUMPLINK_SCHEDULE_MIN_GAP_S": "0",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Re-check a condition observable from outside (an HTTP answer) until it holds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


# --- ZooKeeper for the cluster tests and bench_cluster: Debian's jars, a free port, data in a temp dir
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest names the jars it needs
ZOOKEEPER_START_TIMEOUT_S = 60.0


class ZooKeeper:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.hosts = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (home / "data").mkdir(parents=True, exist_ok=True)
        # Session timeouts from 1 s to 30 s may be asked for; the tests choose theirs.
        (home / "zoo.cfg").write_text(
            f"tickTime=200\ndataDir={home / 'data'}\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
            "minSessionTimeout=1000\nmaxSessionTimeout=30000\nadmin.enableServer=false\n"
            "4lw.commands.whitelist=ruok\n"
            # A test server: no fsync and no 64 MB log preallocation, which a loaded disk makes slow.
            # A SIGKILLed server still keeps what it wrote (the page cache), so sessions survive a restart.
            "forceSync=no\npreAllocSize=1024\n"
        )

    def start(self) -> "ZooKeeper":
        if not ZOOKEEPER_JAR.exists() or shutil.which("java") is None:
            raise RuntimeError("ZooKeeper is not installed (apt-get install zookeeper); .ci/run installs it")
        log = open(self.home / "zookeeper.log", "ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-cp", str(ZOOKEEPER_JAR), "org.apache.zookeeper.server.ZooKeeperServerMain", str(self.home / "zoo.cfg")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + ZOOKEEPER_START_TIMEOUT_S
        while time.monotonic() < deadline:  # a process start-up: nothing to wait on but the port
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited: see {self.home / 'zookeeper.log'}")
            if self._ok() and self._takes_sessions(deadline - time.monotonic()):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"ZooKeeper did not answer in {ZOOKEEPER_START_TIMEOUT_S} s")

    def _ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"ruok")
                return s.recv(4) == b"imok"
        except OSError:
            return False

    def _takes_sessions(self, within: float) -> bool:
        # Ready means a session can be created (its first write), not just an open port.
        from kazoo.client import KazooClient
        from kazoo.handlers.threading import KazooTimeoutError

        client = KazooClient(hosts=self.hosts, timeout=10)
        try:
            client.start(timeout=max(1.0, within))
            return True
        except KazooTimeoutError:
            return False
        finally:
            client.stop()
            client.close()

    def kill(self) -> None:
        """Gone at once, as after a crash: clients see their connection drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
