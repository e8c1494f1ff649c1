"""Group commit, before and after: the hot-path figures of two versions of the server, measured
in one run, each beside its own baselines.

    .venv/bin/python bench/bench_group_commit.py --before REV [--quick] [--only state_reports,...]

``REV`` (a commit) is exported to a temporary directory; each version runs the same
benchmarks (bench_state_reports, bench_throughput, bench_latency and the latency with 50
pumps whose runs overlap, below) in a child process whose ``PYTHONPATH`` points at its code,
so its ``pumplink serve`` runs that code. Versions alternate benchmark by benchmark so machine
noise hits both. Results go to bench/results_group_commit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results_group_commit.json"
NAMES = ["state_reports", "throughput", "latency", "overlap"]
OVERLAP_PUMPS = 50
OVERLAP_RUN_S = 2


def overlap(ctx, samples: int) -> dict:
    """POST /activate -> pump holds ON on idle devices while 50 other pumps run 2 s runs that
    overlap (a new run each ~40 ms: ONs, acks, reports, OFFs and their rows all the time)."""
    import requests

    from bench import bench_latency as bl
    from bench.common import BenchServer, MqttProbe, PumpFleet, approved_user, insert_devices, summary_ms
    from harness import MQTT_URL
    from pumplink.devices.simulator import SimulatedPump

    bs = BenchServer(ctx, "overlap", PUMPLINK_DAILY_QUOTA_MINUTES=10_000_000, PUMPLINK_ACK_TIMEOUT_S=5)
    pumps, fleet, probe, stop = {}, None, None, threading.Event()
    try:
        bs.prepare()
        busy = insert_devices(bs.url, OVERLAP_PUMPS)
        bs.start()
        admin = bs.admin()
        user = approved_user(bs.server, admin)
        devices = []
        for n in range(bl.DEVICES):
            r = admin.post("devices", {"name": f"Latency pump {n}", "max_run_minutes": 24 * 60})
            r.raise_for_status()
            devices.append(r.json()["id"])
        for d in devices:
            pumps[d] = SimulatedPump(MQTT_URL, bs.prefix, d, legacy_base=bs.legacy_base).start()
        fleet = PumpFleet(MQTT_URL, bs.prefix, busy).start()
        fleet.announce(busy)
        probe = MqttProbe(bs.prefix)
        started = {"202": 0, "other": 0}

        def load():
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {user.token}"
            i = 0
            while not stop.is_set():
                r = s.post(f"{bs.base}/api/v1/activate", json={"device_id": busy[i % len(busy)],
                                                               "duration_s": OVERLAP_RUN_S}, timeout=10)
                started["202" if r.status_code == 202 else "other"] += 1
                i += 1
                stop.wait(OVERLAP_RUN_S / OVERLAP_PUMPS)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(OVERLAP_RUN_S + 1)  # every busy pump has a run going
        bl._samples(bs, user, devices, pumps, probe, 12)
        me, mqtt_rt, act, _ = bl._samples(bs, user, devices, pumps, probe, samples)
        stop.set()
        loader.join(timeout=15)
        result = {"samples": samples, "activation_to_pump": summary_ms(act), "get_me": summary_ms(me),
                  "mqtt_publish_receive": summary_ms(mqtt_rt), "background_activations": started}
        floor = result["get_me"]["p50_ms"] + result["mqtt_publish_receive"]["p50_ms"]
        result["ratio_p50_to_baseline_sum"] = round(result["activation_to_pump"]["p50_ms"] / floor, 2)
        return result
    finally:
        stop.set()
        if probe is not None:
            probe.close()
        for pump in pumps.values():
            try:
                pump.stop()
            except Exception:  # noqa: BLE001 - a pump that cannot say goodbye changes no figure
                pass
        try:
            if bs.server is not None and bs.server.proc.poll() is None:
                bs.admin().post("admin/emergency-stop", timeout=60)
        except Exception:  # noqa: BLE001
            pass
        if fleet is not None:
            fleet.close()
        bs.close()


def child(name: str, quick: bool, out: Path) -> None:
    """One benchmark of the version on PYTHONPATH."""
    from bench.common import Context

    ctx = Context.make(quick=quick)
    if name == "overlap":
        result = overlap(ctx, 60 if quick else 200)
    else:
        module = __import__(f"bench.bench_{name}", fromlist=["run"])
        result = module.run(ctx)
    result.pop("profile", None)
    out.write_text(json.dumps(result, default=str))


def summary(name: str, r: dict) -> dict:
    if name == "state_reports":
        return {"ingested_per_s": r["server"]["per_s"], "raw_paho_per_s": r["raw_paho"]["per_s"], "ratio": r["ratio"]}
    if name == "throughput":
        ph = r["phases"]
        return {k: {"activations_per_s": v["activations_accepted_per_s"], "health_per_s": v["health_per_s"],
                    "ratio": v["ratio"]} for k, v in ph.items()}
    a, me, mq = r["activation_to_pump"], r["get_me"], r["mqtt_publish_receive"]
    return {"p50_ms": a["p50_ms"], "p99_ms": a["p99_ms"], "get_me_p50_ms": me["p50_ms"],
            "mqtt_p50_ms": mq["p50_ms"], "ratio": r["ratio_p50_to_baseline_sum"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=False, help="the commit to compare with")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(NAMES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick, Path(args.out))
        return 0
    versions = {"after": ROOT}
    tmp = None
    if args.before:
        tmp = tempfile.mkdtemp(prefix="pumplink-before-")
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        versions = {"before": Path(tmp), "after": ROOT}
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "before": args.before}
    for name in args.only.split(","):
        for label, code in versions.items():
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            env = {**os.environ, "PYTHONPATH": str(code)}
            cmd = [sys.executable, str(HERE / "bench_group_commit.py"), "--child", name, "--out", str(out)]
            print(f"{name} / {label}: running", flush=True)
            proc = subprocess.run(cmd + (["--quick"] if args.quick else []), cwd=code, env=env, timeout=1200)
            if proc.returncode != 0:
                results.setdefault(name, {})[label] = {"error": f"exit {proc.returncode}"}
                continue
            r = json.loads(out.read_text())
            results.setdefault(name, {})[label] = summary(name, r)
            print(f"{name} / {label}: {json.dumps(results[name][label])}", flush=True)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
