"""Command latency: ``POST /api/v1/activate`` until a simulated pump holds the ON command.

    .venv/bin/python -m bench.bench_latency [--samples 300] [--profile]

Baselines from the same run, interleaved sample by sample so machine noise hits all three:
the same server's ``GET /api/v1/me`` round trip, and a raw paho publish -> receive through the
same broker. Target: activation p50 <= 2 x (GET /me p50 + MQTT p50).
"""

from __future__ import annotations

import argparse
import sys
import time

import requests

from pumplink.devices.simulator import SimulatedPump

from .common import (BenchServer, Context, CpuMeter, MqttProbe, Profile, approved_user, clear_retained, fmt_row,
                     print_profile, summary_ms, table_header, verdict)
from harness import MQTT_URL

DEVICES = 4  # rotated, so each device is idle again long before its next sample
RUN_S = 600  # long enough that no run ends on its own during the benchmark


def _wait_idle(session: requests.Session, base: str, device_id: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = session.get(f"{base}/api/v1/devices/{device_id}", timeout=10).json()
        if d["state"] == "off" and d["running"] is None and not d["queue"]:
            return
        time.sleep(0.005)
    raise RuntimeError(f"device {device_id} did not become idle within {timeout}s: {d}")


def _samples(bs: BenchServer, user, devices, pumps, probe: MqttProbe, samples: int, *, with_baselines: bool = True):
    base = bs.base
    s = requests.Session()  # keep-alive for every timed request, as an app would
    s.headers["Authorization"] = f"Bearer {user.token}"
    me, mqtt_rt, act, accepted = [], [], [], []
    deadline = time.monotonic() + 60 + samples * 0.5
    for i in range(samples):
        if time.monotonic() > deadline:
            raise RuntimeError(f"latency samples took too long ({i} of {samples} done)")
        if with_baselines:
            t = time.monotonic()
            r = s.get(f"{base}/api/v1/me", timeout=10)
            me.append(time.monotonic() - t)
            r.raise_for_status()
            mqtt_rt.append(probe.once())
        device_id = devices[i % len(devices)]
        pump = pumps[device_id]
        _wait_idle(s, base, device_id)
        seen = len(pump.commands)
        t = time.monotonic()
        r = s.post(f"{base}/api/v1/activate", json={"device_id": device_id, "duration_s": RUN_S}, timeout=10)
        answered = time.monotonic()
        if r.status_code != 202:
            raise RuntimeError(f"activation {i} answered {r.status_code}: {r.text}")
        cmd = pump.wait_for(lambda p: len(p.commands) > seen and p.commands[seen], timeout=10, what="ON command")
        if cmd["action"] != "on":
            raise RuntimeError(f"pump {device_id} got {cmd['action']} instead of on")
        act.append(cmd["at"] - t)
        accepted.append(answered - t)
        # Stop it at once (an OFF through the same path); the device rests until its next turn.
        s.delete(f"{base}/api/v1/activations/{r.json()['activation']['id']}", timeout=10).raise_for_status()
    s.close()
    return me, mqtt_rt, act, accepted


def run(ctx: Context, samples: int | None = None) -> dict:
    samples = samples or (60 if ctx.quick else 300)
    bs = BenchServer(ctx, "latency", PUMPLINK_DAILY_QUOTA_MINUTES=10_000_000, PUMPLINK_ACK_TIMEOUT_S=5)
    pumps: dict[int, SimulatedPump] = {}
    probe = None
    try:
        bs.start()
        admin = bs.admin()
        user = approved_user(bs.server, admin)
        devices = []
        for n in range(DEVICES):
            r = admin.post("devices", {"name": f"Latency pump {n}", "max_run_minutes": 24 * 60})
            r.raise_for_status()
            devices.append(r.json()["id"])
        for d in devices:
            pumps[d] = SimulatedPump(MQTT_URL, bs.prefix, d, legacy_base=bs.legacy_base).start()
        probe = MqttProbe(bs.prefix)
        _samples(bs, user, devices, pumps, probe, 12)  # warm-up: connections, caches, JIT-free but lazy imports
        with CpuMeter(bs.worker) as cpu:
            me, mqtt_rt, act, accepted = _samples(bs, user, devices, pumps, probe, samples)
        result = {
            "samples": samples,
            "activation_to_pump": summary_ms(act),
            "activation_http_202": summary_ms(accepted),
            "get_me": summary_ms(me),
            "mqtt_publish_receive": summary_ms(mqtt_rt),
            "server_worker_cpu_percent": cpu.percent,
        }
        floor = result["get_me"]["p50_ms"] + result["mqtt_publish_receive"]["p50_ms"]
        result["target_p50_ms"] = round(2 * floor, 2)
        result["ratio_p50_to_baseline_sum"] = round(result["activation_to_pump"]["p50_ms"] / floor, 2)
        result["pass"] = result["activation_to_pump"]["p50_ms"] <= 2 * floor
        if ctx.profile:
            n = 60 if ctx.quick else 200
            with Profile(bs.worker, ctx.log_dir / "profile_latency.txt", seconds=max(5, n * 0.05)) as prof:
                _samples(bs, user, devices, pumps, probe, n, with_baselines=False)
            result["profile"] = prof.summary
            result["profile_file"] = str(prof.out)
        return result
    finally:
        if probe is not None:
            probe.close()
        for pump in pumps.values():
            try:
                pump.stop()
            except Exception:  # a pump that cannot say goodbye changes no figure
                pass
        bs.close()
        if pumps:
            clear_retained(bs.prefix, list(pumps))


def report(result: dict) -> None:
    a, me, mq = result["activation_to_pump"], result["get_me"], result["mqtt_publish_receive"]
    floor = me["p50_ms"] + mq["p50_ms"]
    print(f"\nCommand latency ({result['samples']} samples, interleaved)")
    print(table_header("p50 ms", "p99 ms"))
    print(fmt_row("POST /activate -> pump has ON", a["p50_ms"], a["p99_ms"], ""))
    print(fmt_row("POST /activate -> 202 answer", result["activation_http_202"]["p50_ms"],
                  result["activation_http_202"]["p99_ms"], ""))
    print(fmt_row("baseline GET /me round trip", me["p50_ms"], me["p99_ms"], ""))
    print(fmt_row("baseline MQTT publish -> receive", mq["p50_ms"], mq["p99_ms"], ""))
    print(fmt_row("activation p50 / (me + mqtt) p50", a["p50_ms"], round(floor, 2),
                  result["ratio_p50_to_baseline_sum"], "", "target <= 2.0"))
    print(f"  target: activation p50 <= {result['target_p50_ms']} ms  ->  {verdict(result['pass'])}")
    print_profile("server worker under the latency load", result.get("profile"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also record the worker with py-spy")
    args = parser.parse_args(argv)
    ctx = Context.make(quick=args.quick, profile=args.profile)
    result = run(ctx, args.samples)
    report(result)
    print(f"\nserver logs in {ctx.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
