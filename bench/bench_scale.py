"""Scale: 10,000 devices with their actors and 100,000 pending schedules.

    .venv/bin/python -m bench.bench_scale [--devices 10000] [--schedules 100000]

Three servers in the same run, rows inserted before each starts:

* ``base``: the 1-device server of a fresh install (the baseline);
* ``devices``: 10,000 devices, no schedules (memory per device = its RSS delta over ``base``);
* ``full``: 10,000 devices and 100,000 pending schedules.

For each: start-up time (until ``/health`` answers, and until the worker is quiet), device
actors that died during start-up (they are revived, one request per device at a bounded
concurrency, so memory is counted with every actor alive), resident memory of the worker,
its idle CPU over ~5 s (``/proc/<pid>/stat``; nothing should poll), and the lateness of 10
schedules created over HTTP and timed at simulated pumps (``bench_schedules``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from .bench_schedules import LOADED, insert_pending, schedule_lateness
from .common import (BenchServer, Context, fmt_row, http_load, idle_cpu_percent, insert_devices, proc_cpu_s,
                     proc_rss_mb, table_header, verdict)

ACTOR_DIED = "Unhandled exception in DeviceActor"
SCHEDULER_DIED = "Unhandled exception in SchedulerActor"
MEASURED = 10
# "Nothing polls": 10,000 devices may add at most this much idle CPU (percentage points of one
# core) to the 1-device server's, whose own idle is the libraries' 1 Hz heartbeats (gunicorn's
# worker notify, paho's network loop), ~1 % on this machine.
IDLE_EXTRA_PERCENT = 1.0


def wait_scheduler(bs: BenchServer, timeout: float = 180.0) -> tuple[float | None, float | None]:
    """(seconds its heap load took, seconds after start it was logged), or (None, None) when the
    scheduler actor died during start-up (then no schedule would ever fire)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        text = bs.server.log_text()
        found = LOADED.search(text)
        if found:
            return float(found.group(2)), time.monotonic() - began
        if SCHEDULER_DIED in text:
            return None, None
        time.sleep(0.1)
    raise RuntimeError(f"the scheduler neither loaded nor died within {timeout}s")


def wait_quiet(pid: int, timeout: float = 180.0, window: float = 0.5, below: float = 3.0) -> float:
    """Block until the process used < ``below`` % CPU over two windows in a row; seconds waited."""
    began = time.monotonic()
    quiet = 0
    while time.monotonic() - began < timeout:
        c0 = proc_cpu_s(pid)
        time.sleep(window)
        quiet = quiet + 1 if 100 * (proc_cpu_s(pid) - c0) / window < below else 0
        if quiet >= 2:
            return time.monotonic() - began - 2 * window
    raise RuntimeError(f"worker {pid} still busy after {timeout}s")


def settle(pid: int, below: float = 1.0, timeout: float = 20.0) -> float:
    """Seconds until a 1 s window below ``below`` % (bounded; returns the time waited either way),
    so start-up work still draining is not counted as polling."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        c0 = proc_cpu_s(pid)
        time.sleep(1.0)
        if 100 * (proc_cpu_s(pid) - c0) < below:
            break
    return time.monotonic() - began


def measure(ctx: Context, name: str, devices: int, schedules: int) -> dict:
    bs = BenchServer(ctx, name, PUMPLINK_QUEUE_LIMIT=10)
    try:
        bs.prepare()
        extra = insert_devices(bs.url, devices - 1) if devices > 1 else []
        insert_s = insert_pending(bs.url, schedules) if schedules else 0.0
        began = time.perf_counter()
        bs.start(timeout=300)
        health_s = time.perf_counter() - began
        heap_s, _ = wait_scheduler(bs)
        quiet_after = wait_quiet(bs.worker)
        settled_s = time.perf_counter() - began - 1.0  # minus the two quiet windows
        died = bs.server.log_text().count(ACTOR_DIED)
        admin = bs.admin()
        ids = [1] + extra
        revive = None
        if died:
            # Any request reaches the device through the supervisor, which restarts a dead actor.
            walk = http_load(bs.base, "", paths=[f"/api/v1/device/{i}/status" for i in ids], token=admin.token,
                             concurrency=8, max_requests=len(ids), max_seconds=240, warmup_s=0)
            revive = {"requests": walk["requests"], "statuses": walk["statuses"], "seconds": walk["elapsed_s"],
                      "died_again": bs.server.log_text().count(ACTOR_DIED) - died}
            wait_quiet(bs.worker)
        rss_mb = proc_rss_mb(bs.worker)
        settle_s = settle(bs.worker)
        idle = idle_cpu_percent(bs.worker, 5.0)
        list_all = None
        if devices > 1:
            t = time.perf_counter()
            r = admin.get("devices", timeout=180)
            list_all = {"status": r.status_code, "seconds": round(time.perf_counter() - t, 2),
                        "devices": len(r.json().get("devices", [])) if r.status_code == 200 else 0}
        lateness_devices = ids[:5] if len(ids) >= 5 else ids + [
            admin.post("devices", {"name": f"Bench pump {n}"}).json()["id"] for n in range(5 - len(ids))]
        lateness = create_ms = None
        if heap_s is not None:
            lateness, create_ms = schedule_lateness(admin, bs.env, bs.prefix, lateness_devices, MEASURED)
        return {
            "devices": devices, "pending_schedules": schedules, "insert_s": round(insert_s, 2),
            "startup_health_s": round(health_s, 2), "startup_quiet_s": round(settled_s, 2),
            "quiet_wait_s": round(quiet_after, 2), "scheduler_alive": heap_s is not None,
            "scheduler_heap_load_s": heap_s,
            "actors_died_at_startup": died, "revive": revive,
            "worker_rss_mb": round(rss_mb, 1), "idle_settle_s": round(settle_s, 1),
            "idle_cpu_percent": round(idle, 2),
            "list_all_devices": list_all,
            "create_schedule_ms_median": round(statistics.median(create_ms), 1) if create_ms else None,
            "lateness_ms": sorted(round(x * 1000, 1) for x in lateness) if lateness else None,
            "lateness_median_ms": round(statistics.median(lateness) * 1000, 1) if lateness else None,
            "lateness_max_ms": round(max(lateness) * 1000, 1) if lateness else None,
        }
    finally:
        bs.close()


def run(ctx: Context, devices: int | None = None, schedules: int | None = None) -> dict:
    devices = devices or (2000 if ctx.quick else 10_000)
    schedules = schedules or (20_000 if ctx.quick else 100_000)
    base = measure(ctx, "scale-base", 1, 0)
    only = measure(ctx, "scale-devices", devices, 0)
    full = measure(ctx, "scale-full", devices, schedules)
    per_device_kb = (only["worker_rss_mb"] - base["worker_rss_mb"]) * 1024 / (devices - 1)
    per_schedule_b = (full["worker_rss_mb"] - only["worker_rss_mb"]) * 2**20 / max(1, schedules)
    result = {
        "base": base, "devices_only": only, "full": full,
        "rss_per_device_kb": round(per_device_kb, 1),
        "rss_per_schedule_bytes": round(per_schedule_b, 0),
        "startup_ratio_full_over_base": round(full["startup_quiet_s"] / max(0.01, base["startup_quiet_s"]), 2),
        "lateness_median_ratio": _ratio(full["lateness_median_ms"], base["lateness_median_ms"]),
        "lateness_max_ratio": _ratio(full["lateness_max_ms"], base["lateness_max_ms"]),
    }
    result["idle_extra_percent"] = round(full["idle_cpu_percent"] - base["idle_cpu_percent"], 2)
    result["idle_pass"] = result["idle_extra_percent"] <= IDLE_EXTRA_PERCENT
    result["actors_pass"] = all(r["actors_died_at_startup"] == 0 and r["scheduler_alive"] for r in (only, full))
    return result


def _ratio(value, baseline):
    return round(value / max(0.1, baseline), 2) if value is not None and baseline is not None else None


def report(result: dict) -> None:
    b, o, f = result["base"], result["devices_only"], result["full"]
    print(f"\nScale ({f['devices']} devices, {f['pending_schedules']} pending schedules; baseline: 1 device)")
    print(f"  {'':36}{'base':>10}{'devices':>10}{'full':>10}")
    rows = [("devices", "devices"), ("pending schedules", "pending_schedules"),
            ("start-up to /health (s)", "startup_health_s"), ("start-up until worker quiet (s)", "startup_quiet_s"),
            ("device actors died at start-up", "actors_died_at_startup"),
            ("scheduler alive after start-up", "scheduler_alive"),
            ("worker RSS, all actors alive (MB)", "worker_rss_mb"),
            ("waited for a 1 s window < 1 % CPU (s)", "idle_settle_s"),
            ("idle CPU of the worker, next 5 s (%)", "idle_cpu_percent"),
            ("POST /schedules median (ms)", "create_schedule_ms_median"),
            ("schedule lateness median (ms)", "lateness_median_ms"), ("schedule lateness max (ms)", "lateness_max_ms")]
    for label, key in rows:
        print(f"  {label:36}{b[key]!s:>10}{o[key]!s:>10}{f[key]!s:>10}")
    for label, r in (("devices", o), ("full", f)):
        if r["revive"]:
            print(f"  {label}: reviving every actor took {r['revive']['seconds']} s "
                  f"({r['revive']['statuses']}, died again: {r['revive']['died_again']})")
        if r["list_all_devices"]:
            la = r["list_all_devices"]
            print(f"  {label}: GET /devices (all) -> {la['status']} in {la['seconds']} s ({la['devices']} devices)")
    print(table_header("full", "base"))
    print(fmt_row("start-up until quiet (s)", f["startup_quiet_s"], b["startup_quiet_s"],
                  result["startup_ratio_full_over_base"]))
    print(fmt_row("lateness median (ms)", f["lateness_median_ms"], b["lateness_median_ms"],
                  result["lateness_median_ratio"]))
    print(fmt_row("lateness max (ms)", f["lateness_max_ms"], b["lateness_max_ms"], result["lateness_max_ratio"]))
    print(f"  memory: {result['rss_per_device_kb']} KB per device (actor), "
          f"{result['rss_per_schedule_bytes']:.0f} B per pending schedule")
    print(fmt_row("idle CPU of the worker, 5 s (%)", f["idle_cpu_percent"], b["idle_cpu_percent"],
                  f"+{result['idle_extra_percent']}"))
    print(f"  target: idle CPU ~0, i.e. {f['devices']} devices add <= {IDLE_EXTRA_PERCENT} point to the 1-device "
          f"server's -> {verdict(result['idle_pass'])}")
    print(f"  every device actor and the scheduler survive start-up -> {verdict(result['actors_pass'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--schedules", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    ctx = Context.make(quick=args.quick)
    result = run(ctx, args.devices, args.schedules)
    report(result)
    print(f"\nserver logs in {ctx.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
