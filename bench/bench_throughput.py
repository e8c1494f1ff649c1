"""Throughput: activations accepted per second, 32 concurrent clients over 1,000 pumps.

    .venv/bin/python -m bench.bench_throughput [--devices 1000] [--seconds 12] [--profile]

1,000 devices are inserted before the server starts and simulated by a ``PumpFleet`` (a few
paho clients that ack every command). The load generator (32 keep-alive clients, gevent, in
its own process) sends ``POST /api/v1/activate`` round-robin over the devices; the baseline is
``GET /api/v1/health`` on the same server with the same client set-up, measured before and
after (their mean). Target: activations/s >= 0.3 x health/s.
"""

from __future__ import annotations

import argparse
import sys
import time

from .common import (BenchServer, Context, CpuMeter, Profile, PumpFleet, approved_user, fmt_row, http_load,
                     insert_devices, print_profile, sql_rows, table_header, verdict, wait_device_states)
from harness import MQTT_URL

CONCURRENCY = 32
# As many clients as the database pool has connections (16) deadlock the worker: each request holds
# a connection while the device actor it waits on needs another. At most half the pool cannot, so
# the lower figure shows the capacity without the deadlock.
LOWER_CONCURRENCY = 8
RUN_S = 3600  # runs outlast the benchmark; quotas are set high so none is refused for time
QUEUE_LIMIT = 10
ANNOUNCE_BATCH = 250  # pumps coming online at once; see PumpFleet.announce


def _activations(bs: BenchServer, token: str, devices: list[int], seconds: float, clients: int = 32) -> dict:
    bodies = [{"device_id": d, "duration_s": RUN_S} for d in devices]
    # Each device takes one run and QUEUE_LIMIT waiting; over both phases, never more than that.
    return http_load(bs.base, "/api/v1/activate", method="POST", token=token, bodies=bodies,
                     concurrency=clients, max_requests=len(devices) * QUEUE_LIMIT // 2, max_seconds=seconds,
                     warmup_s=1.0)


def _health(bs: BenchServer, seconds: float, clients: int = 32) -> dict:
    return http_load(bs.base, "/api/v1/health", concurrency=clients, max_requests=10_000_000,
                     max_seconds=seconds, warmup_s=1.0)


def run(ctx: Context, devices: int | None = None, seconds: float | None = None) -> dict:
    count = devices or (200 if ctx.quick else 1000)
    seconds = seconds or (5.0 if ctx.quick else 10.0)
    bs = BenchServer(ctx, "throughput", PUMPLINK_DAILY_QUOTA_MINUTES=10_000_000, PUMPLINK_QUEUE_LIMIT=QUEUE_LIMIT,
                     PUMPLINK_ACK_TIMEOUT_S=30, PUMPLINK_LOG_LEVEL="INFO")
    fleet = None
    try:
        bs.prepare()
        ids = insert_devices(bs.url, count)
        bs.start(timeout=180)
        admin = bs.admin()
        user = approved_user(bs.server, admin)
        fleet = PumpFleet(MQTT_URL, bs.prefix, ids).start()
        for i in range(0, len(ids), ANNOUNCE_BATCH):
            fleet.announce(ids[i:i + ANNOUNCE_BATCH])
            wait_device_states(admin, ids[i:i + ANNOUNCE_BATCH], "off", timeout=60)

        # A first pass warms the worker (imports, pools) outside the measurement.
        http_load(bs.base, "/api/v1/health", concurrency=CONCURRENCY, max_requests=500, max_seconds=5, warmup_s=0)
        phases = {}
        for clients in (CONCURRENCY, LOWER_CONCURRENCY):
            with CpuMeter(bs.worker) as cpu_h:
                health = _health(bs, seconds, clients)
            log_mark = len(bs.server.log_text())
            with CpuMeter(bs.worker) as cpu_a:
                act = _activations(bs, user.token, ids, seconds, clients)
            tail = bs.server.log_text()[log_mark:]
            accepted = act["rate_per_s"].get("202", 0.0)
            health_rate = health["rate_per_s"].get("200", 0.0)
            phases[str(clients)] = {
                "concurrency": clients,
                "activations_accepted_per_s": accepted, "activation_statuses": act["statuses"],
                "activation_latency": act["latency"], "health_per_s": health_rate,
                "health_latency": health["latency"],
                "ratio": round(accepted / health_rate, 3) if health_rate else None,
                "pool_exhausted_errors": tail.count("MaxConnectionsExceeded: Max connections exceeded"),
                "device_timeouts": tail.count(" 503 "),
                "server_worker_cpu_percent": {"health": cpu_h.percent, "activate": cpu_a.percent},
                "client_cpu_percent": {"health": health["client_cpu_percent"], "activate": act["client_cpu_percent"]},
            }
        main_phase = phases[str(CONCURRENCY)]
        # The server's record agrees with what the clients were told.
        accepted_total = sum(ph["activation_statuses"].get("202", 0) for ph in phases.values())
        wait_s = time.monotonic() + 10
        ons = 0
        while time.monotonic() < wait_s:
            ons = fleet.commands["on"]
            if ons >= min(len(ids), accepted_total):
                break
            time.sleep(0.1)
        states = dict(sql_rows(bs.url, "SELECT state, count(*) FROM activation GROUP BY state"))
        result = {
            "devices": count, "seconds": seconds, **main_phase, "phases": phases,
            "activation_states_after": states, "pumps_switched_on": ons,
        }
        result["pass"] = bool(main_phase["health_per_s"]) and main_phase["ratio"] >= 0.3
        if ctx.profile:
            # Fresh devices' queues are full by now: cancel everything, then profile a new load.
            admin.post("admin/emergency-stop", timeout=120).raise_for_status()
            with Profile(bs.worker, ctx.log_dir / "profile_throughput.txt", seconds=seconds) as prof:
                _activations(bs, user.token, ids, seconds, LOWER_CONCURRENCY)
            result["profile"] = prof.summary
            result["profile_file"] = str(prof.out)
            with Profile(bs.worker, ctx.log_dir / "profile_health.txt", seconds=min(seconds, 6)) as prof:
                _health(bs, min(seconds, 6), LOWER_CONCURRENCY)
            result["profile_health"] = prof.summary
        return result
    finally:
        try:
            if bs.server is not None and bs.server.proc.poll() is None and fleet is not None:
                bs.admin().post("admin/emergency-stop", timeout=120)  # every pump OFF before the fleet goes
        except Exception:  # the figures are taken; a failed clean-up must not hide them
            pass
        if fleet is not None:
            fleet.close()
        bs.close()


def report(result: dict) -> None:
    print(f"\nThroughput ({result['devices']} pumps, {result['seconds']} s per phase; baseline GET /health with "
          f"the same clients)")
    print(table_header("per s", "health per s"))
    for ph in result["phases"].values():
        note = "target >= 0.3" if ph["concurrency"] == result["concurrency"] else ""
        print(fmt_row(f"activations accepted, {ph['concurrency']} clients", ph["activations_accepted_per_s"],
                      ph["health_per_s"], ph["ratio"], "", note))
    for ph in result["phases"].values():
        lat = ph["activation_latency"]
        print(f"  {ph['concurrency']} clients: activation p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms; statuses "
              f"{ph['activation_statuses']}; pool-exhausted errors {ph['pool_exhausted_errors']}; worker CPU % "
              f"{ph['server_worker_cpu_percent']}; load-generator CPU % {ph['client_cpu_percent']}")
    print(f"  pumps switched on: {result['pumps_switched_on']}; activations in the database: "
          f"{result['activation_states_after']}")
    print(f"  target: ratio >= 0.3 with {result['concurrency']} clients  ->  {verdict(result['pass'])}")
    print_profile(f"server worker under the activation load ({LOWER_CONCURRENCY} clients)", result.get("profile"))
    print_profile("server worker under the /health load", result.get("profile_health"), top=8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also record the worker with py-spy")
    args = parser.parse_args(argv)
    ctx = Context.make(quick=args.quick, profile=args.profile)
    result = run(ctx, args.devices, args.seconds)
    report(result)
    print(f"\nserver logs in {ctx.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
