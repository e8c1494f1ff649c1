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
import random
import re
import statistics
import sys
import time

import psycopg2
import psycopg2.extras

from pumplink.devices.simulator import SimulatedPump
from harness import MQTT_URL

from .common import (HERE, UTC, BenchServer, Context, clear_retained, group_cpu_s, group_rss_mb, login, machine,
                     wait_for_log)

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


def schedule_lateness(admin, env: dict, prefix: str, devices: list[int], measured: int) -> tuple[list[float], list[float]]:
    """Create ``measured`` one-off schedules over HTTP, due 2 s and more ahead, spread over
    ``devices``; time each ON at a simulated pump. Returns (lateness s, create ms)."""
    pumps: list[SimulatedPump] = []
    try:
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
        return lateness, create_ms
    finally:
        for pump in pumps:
            try:
                pump.stop()
            except Exception:
                pass
        clear_retained(prefix, devices)  # the shared broker keeps nothing of ours


def measure(size: int, measured: int, ctx: Context) -> dict:
    bs = BenchServer(ctx, str(size), PUMPLINK_QUEUE_LIMIT=10)
    try:
        # Schema and the admin (user 1) first, so the inserted schedules have an owner.
        bs.prepare()
        insert_s = insert_pending(bs.url, size) if size else 0.0
        began = time.perf_counter()
        bs.start(timeout=120)
        server, env, prefix = bs.server, bs.env, bs.prefix
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
        lateness, create_ms = schedule_lateness(admin, env, prefix, devices, measured)

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
        bs.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="pending schedules in the large run")
    parser.add_argument("--measured", type=int, default=10, help="schedules timed at the pumps in each run")
    args = parser.parse_args(argv)
    ctx = Context.make()
    small = measure(0, args.measured, ctx)
    small["pending_schedules"] = args.measured  # the measured ones are all it holds
    large = measure(args.size, args.measured, ctx)
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
        "machine": machine(),
        "small": small, "large": large, "lateness_ratio_large_over_small": ratio,
        "notes": "lateness is measured at simulated pumps (ON command received minus due time); "
                 "idle CPU is user+system time of all server processes over ~5 s after start-up",
    }
    out = HERE / "results_schedules.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}; server logs in {ctx.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
