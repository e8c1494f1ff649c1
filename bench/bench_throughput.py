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
                     insert_devices, print_profile, table_header, verdict, wait_device_states)
from tests.support import MQTT_URL

CONCURRENCY = 32
RUN_S = 3600  # runs outlast the benchmark; quotas are set high so none is refused for time
QUEUE_LIMIT = 10


def _activations(bs: BenchServer, token: str, devices: list[int], seconds: float) -> dict:
    bodies = [{"device_id": d, "duration_s": RUN_S} for d in devices]
    # Each device can take one run and QUEUE_LIMIT waiting: never more requests than that.
    return http_load(bs.base, "/api/v1/activate", method="POST", token=token, bodies=bodies,
                     concurrency=CONCURRENCY, max_requests=len(devices) * QUEUE_LIMIT, max_seconds=seconds,
                     warmup_s=1.0)


def _health(bs: BenchServer, seconds: float) -> dict:
    return http_load(bs.base, "/api/v1/health", concurrency=CONCURRENCY, max_requests=10_000_000,
                     max_seconds=seconds, warmup_s=1.0)


def run(ctx: Context, devices: int | None = None, seconds: float | None = None) -> dict:
    count = devices or (200 if ctx.quick else 1000)
    seconds = seconds or (5.0 if ctx.quick else 12.0)
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
        wait_device_states(admin, ids, "off", timeout=120)

        # A first pass at each kind warms the worker (imports, pools) outside the measurement.
        http_load(bs.base, "/api/v1/health", concurrency=CONCURRENCY, max_requests=500, max_seconds=5, warmup_s=0)
        with CpuMeter(bs.worker) as cpu_h1:
            health_before = _health(bs, seconds)
        with CpuMeter(bs.worker) as cpu_a:
            act = _activations(bs, user.token, ids, seconds)
        with CpuMeter(bs.worker) as cpu_h2:
            health_after = _health(bs, seconds)

        accepted = act["rate_per_s"].get("202", 0.0)
        health = (health_before["rate_per_s"].get("200", 0.0) + health_after["rate_per_s"].get("200", 0.0)) / 2
        # The server's record agrees with what the clients were told.
        wait_s = time.monotonic() + 10
        ons = 0
        while time.monotonic() < wait_s:
            ons = fleet.commands["on"]
            if ons >= min(len(ids), act["statuses"].get("202", 0)):
                break
            time.sleep(0.1)
        result = {
            "devices": count, "concurrency": CONCURRENCY, "seconds": seconds,
            "activations_accepted_per_s": accepted,
            "activation_statuses": act["statuses"],
            "activation_latency": act["latency"],
            "health_per_s": round(health, 1),
            "health_per_s_before_after": [health_before["rate_per_s"].get("200", 0.0),
                                          health_after["rate_per_s"].get("200", 0.0)],
            "health_latency": health_before["latency"],
            "ratio": round(accepted / health, 3) if health else None,
            "pumps_switched_on": ons,
            "server_worker_cpu_percent": {"health": cpu_h1.percent, "activate": cpu_a.percent,
                                          "health_again": cpu_h2.percent},
            "client_cpu_percent": {"health": health_before["client_cpu_percent"],
                                   "activate": act["client_cpu_percent"]},
        }
        result["pass"] = bool(health) and accepted / health >= 0.3
        if ctx.profile:
            # Fresh devices' queues are full by now: cancel everything, then profile a new load.
            admin.post("admin/emergency-stop", timeout=120).raise_for_status()
            with Profile(bs.worker, ctx.log_dir / "profile_throughput.txt", seconds=seconds) as prof:
                _activations(bs, user.token, ids, seconds)
            result["profile"] = prof.summary
            result["profile_file"] = str(prof.out)
            with Profile(bs.worker, ctx.log_dir / "profile_health.txt", seconds=min(seconds, 6)) as prof:
                _health(bs, min(seconds, 6))
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
    print(f"\nThroughput ({result['concurrency']} concurrent clients, {result['devices']} pumps, "
          f"{result['seconds']} s per phase)")
    print(table_header("per s", "health per s"))
    print(fmt_row("activations accepted (202)", result["activations_accepted_per_s"], result["health_per_s"],
                  result["ratio"], "", "target >= 0.3"))
    lat = result["activation_latency"]
    print(f"  activation latency under load: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms; "
          f"statuses {result['activation_statuses']}")
    print(f"  health before/after: {result['health_per_s_before_after']}; worker CPU % "
          f"{result['server_worker_cpu_percent']}; load-generator CPU % {result['client_cpu_percent']}")
    print(f"  pumps switched on: {result['pumps_switched_on']}")
    print(f"  target: ratio >= 0.3  ->  {verdict(result['pass'])}")
    print_profile("server worker under the activation load", result.get("profile"))
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
