"""How the scheduler copes with 100,000 pending schedules (a benchmark, not a test).

    .venv/bin/python -m bench.bench_schedules [--size 100000] [--measured 10]

For a small and a large database (fresh PostgreSQL each), pending schedules are inserted
directly, then a real ``pumplink serve`` is started and measured: start-up time (until
``/health`` answers, and until the scheduler has loaded its heap), idle CPU of the server's
processes over ~5 s (from /proc/<pid>/stat), memory, and the lateness of ``--measured``
schedules created over HTTP and timed at simulated pumps. Prints a table and writes
bench/results_schedules.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extras
import requests

from pumplink.simulator import SimulatedPump
from tests.support import MQTT_URL, PUMPLINK_BIN, Server, create_database, drop_database, run_id, server_env

UTC = dt.timezone.utc
ADMIN = ("admin@example.org", "admin-password-1")
HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADED = re.compile(r"scheduler loaded (\d+) pending schedules in ([0-9.]+)s")


def insert_pending(url: str, count: int) -> float:
    """``count`` schedules due 1 to 30 days ahead (none fires during the run); 10 % daily rules."""
    rnd = random.Random(4)
    now = dt.datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for _ in range(count):
        due = now + dt.timedelta(seconds=rnd.uniform(86400, 30 * 86400))
        rule = "FREQ=DAILY" if rnd.random() < 0.1 else None
        rows.append((1, 1, due, rule, 60, True, due, now))
    began = time.perf_counter()
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO schedule (device_id, user_id, start_time, rrule, duration_s, enabled, next_run_at, "
                 "created_at) VALUES %s", rows, page_size=5000)
    conn.close()
    return time.perf_counter() - began


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


def wait_for_log(server: Server, pattern: re.Pattern, timeout: float = 120.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(server.log_path.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"no {pattern.pattern!r} in the server log within {timeout}s:\n{server.log_tail()}")


def login(server: Server):
    r = requests.post(f"{server.base}/api/v1/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=15)
    r.raise_for_status()
    return server.api(r.json()["access_token"])


def measure(size: int, measured: int, tag: str, log_dir: Path) -> dict:
    name = f"pumplink_bench_{tag}_{size}"
    url = create_database(name)
    prefix = f"plbench-{tag}-{size}"
    env = server_env(url, prefix, PUMPLINK_QUEUE_LIMIT=10)
    pumps: list[SimulatedPump] = []
    server = None
    try:
        # Schema and the admin (user 1) first, so the inserted schedules have an owner.
        subprocess.run([PUMPLINK_BIN, "create-admin", "--email", ADMIN[0], "--password", ADMIN[1]], env=env,
                       check=True, capture_output=True)
        insert_s = insert_pending(url, size) if size else 0.0
        server = Server(env, log_dir / f"server_{size}.log")
        began = time.perf_counter()
        server.start(timeout=120)
        health_s = time.perf_counter() - began
        loaded = wait_for_log(server, LOADED)
        ready_s = time.perf_counter() - began
        assert int(loaded.group(1)) == size, loaded.group(0)

        pgid = server.proc.pid
        time.sleep(1.0)  # let start-up work (connects, retained messages) settle
        cpu0, t0 = group_cpu_s(pgid), time.monotonic()
        time.sleep(5.0)
        idle_cpu_pct = 100 * (group_cpu_s(pgid) - cpu0) / (time.monotonic() - t0)
        rss_mb = group_rss_mb(pgid)

        admin = login(server)
        devices = [1] + [admin.post("devices", {"name": f"Bench pump {n}"}).json()["id"] for n in range(1, 5)]
        pumps = [SimulatedPump(MQTT_URL, prefix, d, legacy_base=env["PUMPLINK_LEGACY_BASE"]).start() for d in devices]
        for d in devices:
            deadline = time.monotonic() + 10
            while admin.get(f"devices/{d}").json()["state"] != "off" and time.monotonic() < deadline:
                time.sleep(0.05)

        wall0, mono0 = time.time(), time.monotonic()
        expected: dict[int, list[float]] = {}
        create_ms = []
        for k in range(measured):
            pump_index = k % len(pumps)
            due_wall = time.time() + 2.0 + 1.5 * (k // len(pumps)) + 0.2 * pump_index
            start = dt.datetime.fromtimestamp(due_wall, UTC).isoformat(timespec="milliseconds")
            t = time.perf_counter()
            r = admin.post("schedules", {"device_id": devices[pump_index], "start_time": start, "duration_s": 1})
            create_ms.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            expected.setdefault(pump_index, []).append(mono0 + (due_wall - wall0))
        lateness = []
        for i, pump in enumerate(pumps):
            want = len(expected.get(i, []))
            pump.wait_for(lambda p: len([c for c in p.commands if c["action"] == "on"]) >= want, timeout=30,
                          what=f"{want} scheduled ONs")
            ons = [c for c in pump.commands if c["action"] == "on"]
            lateness += [c["at"] - due for c, due in zip(ons, expected.get(i, []))]

        t = time.perf_counter()
        admin.get("schedules", params={"limit": 50}).raise_for_status()
        list_ms = (time.perf_counter() - t) * 1000
        return {
            "pending_schedules": size,
            "insert_s": round(insert_s, 2),
            "startup_health_s": round(health_s, 2),
            "startup_scheduler_loaded_s": round(ready_s, 2),
            "scheduler_heap_load_s": float(loaded.group(2)),
            "idle_cpu_percent": round(idle_cpu_pct, 2),
            "rss_mb": round(rss_mb, 1),
            "create_ms_median": round(statistics.median(create_ms), 1),
            "list_page_ms": round(list_ms, 1),
            "lateness_ms": sorted(round(x * 1000, 1) for x in lateness),
            "lateness_median_ms": round(statistics.median(lateness) * 1000, 1),
            "lateness_max_ms": round(max(lateness) * 1000, 1),
        }
    finally:
        for pump in pumps:
            try:
                pump.stop()
            except Exception:
                pass
        if server is not None:
            server.stop()
        drop_database(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="pending schedules in the large run")
    parser.add_argument("--measured", type=int, default=10, help="schedules timed at the pumps in each run")
    args = parser.parse_args(argv)
    tag = run_id()
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pumplink-bench-{tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    small = measure(0, args.measured, tag, log_dir)
    small["pending_schedules"] = args.measured  # the measured ones are all it holds
    large = measure(args.size, args.measured, tag, log_dir)
    large["pending_schedules"] = args.size + args.measured
    ratio = {
        "lateness_median": round(large["lateness_median_ms"] / max(small["lateness_median_ms"], 0.1), 2),
        "lateness_max": round(large["lateness_max_ms"] / max(small["lateness_max_ms"], 0.1), 2),
    }
    rows = [("pending schedules", "pending_schedules"), ("bulk insert (s)", "insert_s"),
            ("start-up to /health (s)", "startup_health_s"),
            ("start-up to heap loaded (s)", "startup_scheduler_loaded_s"),
            ("heap load in scheduler (s)", "scheduler_heap_load_s"), ("idle CPU, 5 s (%)", "idle_cpu_percent"),
            ("server RSS (MB)", "rss_mb"), ("POST /schedules median (ms)", "create_ms_median"),
            ("GET /schedules page (ms)", "list_page_ms"), ("lateness median (ms)", "lateness_median_ms"),
            ("lateness max (ms)", "lateness_max_ms")]
    print(f"\n{'':32}{'small':>12}{'large':>12}")
    for label, key in rows:
        print(f"{label:32}{small[key]:>12}{large[key]:>12}")
    print(f"{'lateness ratio large/small':32}{'median':>12}{ratio['lateness_median']:>12}")
    print(f"{'':32}{'max':>12}{ratio['lateness_max']:>12}")
    result = {
        "when": dt.datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "small": small, "large": large, "lateness_ratio_large_over_small": ratio,
        "notes": "lateness is measured at simulated pumps (ON command received minus due time); "
                 "idle CPU is user+system time of all server processes over ~5 s after start-up",
    }
    out = HERE / "results_schedules.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}; server logs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
