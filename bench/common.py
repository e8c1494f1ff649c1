"""What the benchmarks share: the machine's description, servers on fresh databases, a pump
fleet, an HTTP load generator in its own process, process accounting, statistics, profiling.

Everything talks to 127.0.0.1 only, and every loop here is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psutil
import psycopg2
import psycopg2.extras
import requests

from harness import (MQTT_URL, PG_ADMIN_DSN, PUMPLINK_BIN, Api, Server, create_database, drop_database,
                           run_id, server_env)

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
ADMIN = ("admin@example.org", "admin-password-1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY = str(Path(sys.executable).with_name("py-spy"))


# --- the machine -------------------------------------------------------------------------------
def machine() -> dict:
    """CPU, cores, RAM and the versions of Python, PostgreSQL and the running Mosquitto."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": _postgres_version(),
        "mosquitto": _mosquitto_version(),
    }


def describe_machine(info: dict) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM; Python {info['python']}, "
            f"PostgreSQL {info['postgresql']}, {info['mosquitto']}")


def _postgres_version() -> str:
    try:
        conn = psycopg2.connect(PG_ADMIN_DSN)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                return cur.fetchone()[0]
        finally:
            conn.close()
    except psycopg2.Error as exc:
        return f"unknown ({exc.__class__.__name__})"


def _mosquitto_version(timeout: float = 3.0) -> str:
    """Asked of the broker itself ($SYS/broker/version), so it is the one the benchmarks use."""
    found: dict = {}
    done = threading.Event()
    url = urlsplit(MQTT_URL)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-version-{uuid.uuid4().hex[:8]}")

    def on_connect(c, userdata, flags, reason_code, properties=None):
        c.subscribe("$SYS/broker/version", qos=0)

    def on_message(c, userdata, msg):
        found["version"] = msg.payload.decode(errors="replace")
        done.set()

    client.on_connect, client.on_message = on_connect, on_message
    try:
        client.connect(url.hostname, url.port or 1883, keepalive=10)
        client.loop_start()
        done.wait(timeout)
    except OSError as exc:
        return f"unknown ({exc})"
    finally:
        client.disconnect()
        client.loop_stop()
    if "version" in found:
        return found["version"]
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
        return out.splitlines()[0].strip()
    return "unknown"


# --- statistics --------------------------------------------------------------------------------
def percentile(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict:
    """p50/p90/p99/max and mean, in milliseconds, of durations given in seconds."""
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2),
            "mean_ms": round(sum(ms) / len(ms), 2)}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- processes ---------------------------------------------------------------------------------
def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process in the server's process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # After the command name: state is field 3, pgrp 5, utime 14, stime 15 (1-based, man 5 proc).
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def group_rss_mb(pgid: int) -> float:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total / 1024


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def worker_pid(master_pid: int, timeout: float = 10.0) -> int:
    """The gunicorn worker (the one process that runs the actors and the app)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(master_pid).children()
        if len(children) == 1:
            return children[0].pid
        time.sleep(0.05)
    raise RuntimeError(f"gunicorn master {master_pid} has no single worker")


def idle_cpu_percent(pid: int, seconds: float = 5.0) -> float:
    """CPU use of one process over a quiet interval, in percent of one core."""
    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (proc_cpu_s(pid) - cpu0) / (time.monotonic() - t0)


class CpuMeter:
    """CPU seconds a process used between ``start`` and ``stop`` (in percent of one core)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.cpu0 = self.t0 = 0.0
        self.percent = 0.0

    def __enter__(self):
        self.cpu0, self.t0 = proc_cpu_s(self.pid), time.monotonic()
        return self

    def __exit__(self, *exc):
        self.percent = round(100 * (proc_cpu_s(self.pid) - self.cpu0) / max(1e-6, time.monotonic() - self.t0), 1)


# --- servers -----------------------------------------------------------------------------------
def wait_for_log(server: Server, pattern: re.Pattern, timeout: float = 120.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(server.log_path.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"no {pattern.pattern!r} in the server log within {timeout}s:\n{server.log_tail()}")


def login(server: Server, email: str = ADMIN[0], password: str = ADMIN[1]) -> Api:
    r = requests.post(f"{server.base}/api/v1/login", json={"email": email, "password": password}, timeout=15)
    r.raise_for_status()
    api = server.api(r.json()["access_token"])
    api.user_id = None
    return api


def approved_user(server: Server, admin: Api) -> Api:
    """A registered user approved by the admin: the app's path, not an admin shortcut."""
    email, password = f"bench-{uuid.uuid4().hex[:10]}@example.org", "bench-password-1"
    r = server.api().post("register", {"email": email, "password": password})
    r.raise_for_status()
    uid = r.json()["user"]["id"]
    admin.patch(f"users/{uid}", {"role": "user"}).raise_for_status()
    api = login(server, email, password)
    api.user_id = uid
    return api


def insert_devices(url: str, count: int, *, max_run_minutes: float = 24 * 60) -> list[int]:
    """``count`` devices written straight to the database (before the server starts); their ids."""
    now = dt.datetime.now(UTC).replace(tzinfo=None)
    rows = [(f"Bench pump {n}", "pumplink", None, max_run_minutes, now) for n in range(count)]
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            ids = psycopg2.extras.execute_values(
                cur, "INSERT INTO device (name, protocol, daily_quota_minutes, max_run_minutes, created_at, site_id) "
                     "VALUES %s RETURNING id", rows, page_size=5000, fetch=True,
                template="(%s, %s, %s, %s, %s, (SELECT id FROM site WHERE is_default))")
    finally:
        conn.close()
    return sorted(i for (i,) in ids)


def sql_scalar(url: str, query: str, params=()):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def sql_rows(url: str, query: str, params=()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


@dataclasses.dataclass
class Context:
    """One ``python -m bench`` run: its tag (names databases and topics), log directory, options."""

    tag: str
    log_dir: Path
    quick: bool = False
    profile: bool = False

    @classmethod
    def make(cls, quick: bool = False, profile: bool = False) -> "Context":
        tag = run_id()
        log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pumplink-bench-{tag}"
        log_dir.mkdir(parents=True, exist_ok=True)
        return cls(tag, log_dir, quick, profile)


class BenchServer:
    """A ``pumplink serve`` on a fresh PostgreSQL database with its own topic prefix.

    ``prepare`` migrates and creates the admin (user 1) so rows can be inserted before
    ``start``; ``close`` stops the server and drops the database.
    """

    def __init__(self, ctx: Context, name: str, **env_overrides):
        self.ctx = ctx
        self.db_name = f"pumplink_bench_{ctx.tag}_{name}"
        self.prefix = f"plbench-{ctx.tag}-{name}"
        self.name = name
        self.url: str | None = None
        self.env_overrides = env_overrides
        self.env: dict = {}
        self.server: Server | None = None
        self.startup_s: float | None = None
        self.worker: int | None = None

    def prepare(self) -> "BenchServer":
        self.url = create_database(self.db_name)
        self.env = server_env(self.url, self.prefix, **self.env_overrides)
        subprocess.run([PUMPLINK_BIN, "create-admin", "--email", ADMIN[0], "--password", ADMIN[1]], env=self.env,
                       check=True, capture_output=True, timeout=60)
        return self

    def start(self, timeout: float = 120.0) -> "BenchServer":
        if self.url is None:
            self.prepare()
        self.server = Server(self.env, self.ctx.log_dir / f"server_{self.name}.log")
        began = time.perf_counter()
        self.server.start(timeout=timeout)
        self.startup_s = time.perf_counter() - began
        self.worker = worker_pid(self.server.proc.pid)
        return self

    @property
    def base(self) -> str:
        return self.server.base

    @property
    def legacy_base(self) -> str:
        return self.env["PUMPLINK_LEGACY_BASE"]

    def admin(self) -> Api:
        return login(self.server)

    def close(self) -> None:
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            if self.url is not None:
                drop_database(self.db_name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_device_states(api: Api, device_ids, want: str = "off", timeout: float = 30.0) -> None:
    """Until every given device shows ``want`` (each pump came online and reported)."""
    pending = set(device_ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        states = {d["id"]: d["state"] for d in api.get("devices", timeout=60).json()["devices"]}
        pending = {i for i in pending if states.get(i) != want}
        if pending:
            time.sleep(0.2)
    if pending:
        raise RuntimeError(f"{len(pending)} devices not {want!r} within {timeout}s, e.g. {sorted(pending)[:5]}")


# --- pumps -------------------------------------------------------------------------------------
class PumpFleet:
    """Many MQTT.md v1 controllers on a few paho clients, for loads where 1,000 SimulatedPumps
    (a client and a thread each) would cost the load generator more than the server.

    Each device comes online when announced (retained availability and state), acks every
    command and reports its state; an ON's own OFF timer is left out (runs outlast the
    measurement and the server switches the fleet off at the end). ``close`` clears the
    retained messages.
    """

    def __init__(self, mqtt_url: str, prefix: str, device_ids: list[int], clients: int = 4):
        self.url = urlsplit(mqtt_url)
        self.prefix = prefix
        self.device_ids = list(device_ids)
        self.commands: dict[str, int] = {"on": 0, "off": 0}
        self.state: dict[int, str] = {d: "off" for d in self.device_ids}
        self._lock = threading.Lock()
        self._clients: list[tuple[mqtt.Client, list[int], threading.Event]] = []
        chunks = [self.device_ids[i::clients] for i in range(clients)]
        for n, chunk in enumerate(c for c in chunks if c):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{n}-{uuid.uuid4().hex[:8]}")
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            ready = threading.Event()
            client.on_connect = self._on_connect(chunk, ready)
            client.on_message = self._on_message
            self._clients.append((client, chunk, ready))

    def topic(self, device_id: int, kind: str) -> str:
        return f"{self.prefix}/devices/{device_id}/{kind}"

    def start(self, timeout: float = 30.0) -> "PumpFleet":
        """Connect and subscribe to the command topics; ``announce`` brings the pumps online."""
        for client, _, _ in self._clients:
            client.connect(self.url.hostname, self.url.port or 1883, keepalive=30)
            client.loop_start()
        deadline = time.monotonic() + timeout
        for _, _, ready in self._clients:
            if not ready.wait(max(0.1, deadline - time.monotonic())):
                raise TimeoutError("the pump fleet could not connect and subscribe")
        return self

    def _on_connect(self, chunk: list[int], ready: threading.Event):
        def on_connect(client, userdata, flags, reason_code, properties=None):
            mids = set()
            for i in range(0, len(chunk), 100):
                _, mid = client.subscribe([(self.topic(d, "command"), 1) for d in chunk[i:i + 100]])
                mids.add(mid)

            def on_subscribe(client, userdata, mid, reason_codes, properties=None):
                mids.discard(mid)
                if not mids:
                    ready.set()
            client.on_subscribe = on_subscribe
        return on_connect

    def announce(self, device_ids, timeout: float = 30.0) -> None:
        """These pumps come online: retained availability and state, as firmware does on boot.

        A few hundred at a time: Mosquitto queues at most ``max_queued_messages`` (1000 by
        default) for a subscriber that lags and drops the rest, the server included."""
        wanted = set(device_ids)
        infos = []
        for client, chunk, _ in self._clients:
            for d in chunk:
                if d in wanted:
                    infos.append(client.publish(self.topic(d, "availability"), "online", qos=1, retain=True))
                    infos.append(client.publish(self.topic(d, "state"), json.dumps({"state": "off", "reason": "boot"}),
                                                qos=1, retain=True))
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))

    def _on_message(self, client, userdata, msg):
        try:
            device_id = int(msg.topic.split("/")[-2])
            body = json.loads(msg.payload)
            action, command_id = body["action"], body["id"]
        except (ValueError, KeyError, TypeError, IndexError):
            return
        with self._lock:
            self.commands[action] = self.commands.get(action, 0) + 1
            self.state[device_id] = "on" if action == "on" else "off"
        client.publish(self.topic(device_id, "ack"), json.dumps({"id": command_id, "ok": True,
                                                                  "state": self.state[device_id]}), qos=1)
        report = {"state": self.state[device_id], "reason": "command"}
        if action == "on" and body.get("duration_s"):
            report["remaining_s"] = body["duration_s"]
        client.publish(self.topic(device_id, "state"), json.dumps(report), qos=1, retain=True)

    def close(self) -> None:
        for client, chunk, _ in self._clients:
            infos = []
            for d in chunk:
                for kind in ("availability", "state"):
                    infos.append(client.publish(self.topic(d, kind), b"", qos=1, retain=True))
            for info in infos[-50:]:
                info.wait_for_publish(5)
            client.disconnect()
            client.loop_stop()


def clear_retained(prefix: str, device_ids, kinds=("state", "availability")) -> None:
    """Remove what a benchmark left retained on the shared broker under its own prefix."""
    url = urlsplit(MQTT_URL)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-clear-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.connect(url.hostname, url.port or 1883, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(f"{prefix}/devices/{d}/{k}", b"", qos=1, retain=True) for d in device_ids for k in kinds]
        for info in infos:
            info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


class MqttProbe:
    """Raw paho publish -> receive through the same broker: the floor under any command latency."""

    def __init__(self, prefix: str):
        self.topic = f"{prefix}/bench/probe"
        url = urlsplit(MQTT_URL)
        self.received = threading.Event()
        self.at = 0.0
        self.expect = b""
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-probe-sub-{uuid.uuid4().hex[:8]}")
        self.pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-probe-pub-{uuid.uuid4().hex[:8]}")
        subscribed = threading.Event()
        self.sub.on_connect = lambda c, *a, **k: c.subscribe(self.topic, qos=1)
        self.sub.on_subscribe = lambda *a, **k: subscribed.set()
        self.sub.on_message = self._on_message
        for client in (self.sub, self.pub):
            client.connect(url.hostname, url.port or 1883, keepalive=30)
            client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("the MQTT probe could not subscribe")

    def _on_message(self, client, userdata, msg):
        if msg.payload == self.expect:
            self.at = time.monotonic()
            self.received.set()

    def once(self, timeout: float = 5.0) -> float:
        """Seconds from publish (QoS 1, like a command) to receipt by the other client."""
        self.received.clear()
        self.expect = uuid.uuid4().hex.encode()
        began = time.monotonic()
        self.pub.publish(self.topic, self.expect, qos=1)
        if not self.received.wait(timeout):
            raise TimeoutError("an MQTT probe message was not received")
        return self.at - began

    def close(self) -> None:
        for client in (self.sub, self.pub):
            client.disconnect()
            client.loop_stop()


# --- HTTP load in its own process ------------------------------------------------------------------
def http_load(base: str, path: str, *, method: str = "GET", token: str | None = None, bodies: list | None = None,
              concurrency: int = 32, max_requests: int = 100_000, max_seconds: float = 10.0,
              warmup_s: float = 1.0, paths: list[str] | None = None,
              targets: list[tuple[str, list]] | None = None) -> dict:
    """``concurrency`` keep-alive clients (gevent greenlets in a child process) sending requests
    until ``max_requests`` or ``max_seconds``; rates counted after ``warmup_s``. Request k goes
    to ``paths[k % len(paths)]`` (else ``path``) with ``bodies[k % len(bodies)]``.

    ``targets`` (several servers, e.g. cluster nodes): ``[(base, bodies), ...]``; client i keeps
    its connection to ``targets[i % len(targets)]`` and sends that target's bodies in turn."""
    spec = {"base": base, "path": path, "paths": paths, "method": method, "token": token,
            "bodies": [json.dumps(b) for b in bodies] if bodies else None, "concurrency": concurrency,
            "max_requests": max_requests, "max_seconds": max_seconds, "warmup_s": warmup_s,
            "targets": [(b, [json.dumps(x) for x in bs]) for b, bs in targets] if targets else None}
    code = "from gevent import monkey; monkey.patch_all()\nimport bench.common as c; c._http_load_child()"
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), capture_output=True, text=True,
                         cwd=ROOT, timeout=max_seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _http_load_child() -> None:
    """Runs in the child (gevent patched first); reads the spec on stdin, prints one JSON line."""
    import http.client
    import itertools
    import resource

    import gevent

    spec = json.load(sys.stdin)
    url = urlsplit(spec["base"])
    headers = {"Connection": "keep-alive"}
    if spec["token"]:
        headers["Authorization"] = f"Bearer {spec['token']}"
    bodies, paths = spec["bodies"], spec["paths"]
    targets = [(urlsplit(b), tb, itertools.count()) for b, tb in spec.get("targets") or []]
    if bodies or any(tb for _, tb, _ in targets):
        headers["Content-Type"] = "application/json"
    counter = itertools.count()
    done: list[tuple[float, int, float]] = []
    began = time.monotonic()
    deadline = began + spec["max_seconds"]

    def client(n: int):
        where, own_bodies, own_counter = targets[n % len(targets)] if targets else (url, None, None)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        try:
            while time.monotonic() < deadline:
                k = next(counter)
                if k >= spec["max_requests"]:
                    return
                if own_bodies:
                    body = own_bodies[next(own_counter) % len(own_bodies)]
                else:
                    body = bodies[k % len(bodies)] if bodies else None
                path = paths[k % len(paths)] if paths else spec["path"]
                t = time.monotonic()
                try:
                    conn.request(spec["method"], path, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    status = 0
                end = time.monotonic()
                done.append((end, status, end - t))
        finally:
            conn.close()

    greenlets = [gevent.spawn(client, n) for n in range(spec["concurrency"])]
    gevent.joinall(greenlets, timeout=spec["max_seconds"] + 40)
    gevent.killall(greenlets, timeout=5)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    window_start = began + spec["warmup_s"]
    window = [d for d in done if d[0] >= window_start]
    last = max((d[0] for d in done), default=window_start)
    seconds = max(1e-6, last - window_start)
    statuses: dict[str, int] = {}
    for _, status, _ in window:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = [d[2] for d in window] or [0.0]
    elapsed = max(1e-6, time.monotonic() - began)
    print(json.dumps({
        "requests": len(done), "elapsed_s": round(elapsed, 3), "window_s": round(seconds, 3), "statuses": statuses,
        "rate_per_s": {s: round(n / seconds, 1) for s, n in statuses.items()},
        "latency": summary_ms(latencies), "concurrency": spec["concurrency"],
        "client_cpu_percent": round(100 * (usage.ru_utime + usage.ru_stime) / elapsed, 1),
    }))


# --- profiling ---------------------------------------------------------------------------------
class Profile:
    """``py-spy record`` of one process while the block runs (raw collapsed stacks), if py-spy
    is installed (``.venv/bin/pip install py-spy``); a no-op otherwise."""

    def __init__(self, pid: int, out: Path, seconds: float, rate: int = 100):
        self.pid, self.out, self.seconds, self.rate = pid, out, seconds, rate
        self.proc: subprocess.Popen | None = None
        self.summary: dict | None = None

    @staticmethod
    def available() -> bool:
        return Path(PY_SPY).exists()

    def __enter__(self):
        if self.available():
            self.proc = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(self.pid), "--duration", str(max(1, round(self.seconds))),
                 "--rate", str(self.rate), "--format", "raw", "-o", str(self.out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)  # attach before the load starts
        return self

    def __exit__(self, *exc):
        if self.proc is None:
            return
        try:
            self.proc.wait(self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        if self.out.exists():
            self.summary = summarize_collapsed(self.out)
        else:
            log.warning("py-spy wrote nothing: %s", self.proc.stderr.read().decode(errors="replace")[-500:])


def summarize_collapsed(path: Path, top: int = 25) -> dict:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
    def share(table):
        return [(name, round(100 * n / total, 1)) for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "self_percent": share(own), "inclusive_percent": share(inclusive)}


def _frame_name(frame: str) -> str:
    # py-spy writes "function (path/to/file.py:line)"; keep the function and the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    for anchor in ("site-packages", "pumplink", "lib"):
        if anchor in parts:
            idx = len(parts) - 1 - parts[::-1].index(anchor)
            file = "/".join(parts[idx + (1 if anchor != "pumplink" else 0):])
            break
    return f"{name} ({file})" if file else name


def print_profile(title: str, summary: dict | None, top: int = 12) -> None:
    if not summary:
        return
    print(f"\n  profile: {title} ({summary['samples']} samples)")
    print("    self %  function")
    for name, pct in summary["self_percent"][:top]:
        print(f"    {pct:6.1f}  {name}")
    print("    incl %  function")
    for name, pct in summary["inclusive_percent"][:top]:
        print(f"    {pct:6.1f}  {name}")


def fmt_row(label: str, value, baseline, ratio, unit: str = "", note: str = "") -> str:
    return f"  {label:34}{value!s:>12}{baseline!s:>14}{ratio!s:>9}  {unit}{('  ' + note) if note else ''}"


def table_header(value: str = "value", baseline: str = "baseline") -> str:
    return f"  {'':34}{value:>12}{baseline:>14}{'ratio':>9}"
