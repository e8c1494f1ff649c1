"""Fleet restart: 10,000 pumps online with retained state and availability, then the server starts.

    .venv/bin/python -m bench.bench_fleet [--devices 10000] [--quick]

The devices are inserted and every pump's retained ``availability`` and ``state`` published
before ``pumplink serve`` starts, at the broker's stock settings. Measured: how many of the
2 x N retained messages reached the server (``pumplink_mqtt_retained_total``), how long until
every device's state was known (``pumplink_devices{state="off"}`` = N), counted from the
process start and from its first ``/health``; and, with the fleet up, ``GET /devices`` whole
and its first page (``?limit=50``). Baseline from the same run: a plain paho client that
subscribes the same wildcards at once (what the server did before), and what it receives.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import requests

from harness import MQTT_URL
from .common import BenchServer, Context, PumpFleet, fmt_row, insert_devices, table_header, verdict

KNOWN_WITHIN_S = 10.0
FIRST_PAGE_MS = 50.0


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _wildcard_receive(prefix: str, expected: int, quiet_s: float = 2.0) -> int:
    """The baseline: one subscribe of the wildcards, as the server did before; what arrives."""
    url = urlsplit(MQTT_URL)
    got = [0]
    last = [time.monotonic()]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-wild-{uuid.uuid4().hex[:8]}")

    def on_message(c, u, msg):
        got[0] += 1
        last[0] = time.monotonic()

    client.on_message = on_message
    client.on_connect = lambda c, *a, **k: c.subscribe([(f"{prefix}/devices/+/state", 1),
                                                        (f"{prefix}/devices/+/availability", 1)])
    client.connect(url.hostname, url.port or 1883, keepalive=30)
    client.loop_start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and got[0] < expected and time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def _first_page_ms(base: str, token: str, rounds: int = 20) -> dict:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        r = s.get(f"{base}/api/v1/devices", params={"limit": 50}, timeout=30)
        times.append((time.perf_counter() - began) * 1000)
        r.raise_for_status()
    cursor = r.json()["next_cursor"]
    began = time.perf_counter()
    s.get(f"{base}/api/v1/devices", params={"limit": 50, "cursor": cursor}, timeout=30).raise_for_status()
    later = (time.perf_counter() - began) * 1000
    began = time.perf_counter()
    whole = s.get(f"{base}/api/v1/devices", timeout=120)
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2),
            "second_page_ms": round(later, 2), "whole_status": whole.status_code,
            "whole_s": round(time.perf_counter() - began, 2), "whole_count": len(whole.json().get("devices", []))}


def run(ctx: Context, devices: int | None = None) -> dict:
    n = devices or (1000 if ctx.quick else 10_000)
    bs = BenchServer(ctx, "fleet", PUMPLINK_LOG_LEVEL="WARNING").prepare()
    fleet = None
    try:
        ids = insert_devices(bs.url, n)
        fleet = PumpFleet(MQTT_URL, bs.prefix, ids, clients=4).start()
        fleet.announce(ids, timeout=120)
        baseline = _wildcard_receive(bs.prefix, 2 * n)
        spawned = time.monotonic()
        bs.start(timeout=300)
        health = time.monotonic()
        known_at, text, samples = None, "", 0
        while time.monotonic() - health < max(KNOWN_WITHIN_S, 30.0):
            text = requests.get(f"{bs.base}/metrics", timeout=10).text
            samples += 1
            if _metric(text, "pumplink_devices", '{state="off"}') >= n:
                known_at = time.monotonic()
                break
            time.sleep(0.1)
        received = {k: int(_metric(text, "pumplink_mqtt_retained_total", f'{{kind="{k}"}}'))
                    for k in ("state", "availability")}
        result = {
            "devices": n, "retained_sent": 2 * n, "retained_received": sum(received.values()),
            "received_by_kind": received,
            "dropped": 2 * n - sum(received.values()),
            "known": int(_metric(text, "pumplink_devices", '{state="off"}')),
            "known_s_from_spawn": round(known_at - spawned, 2) if known_at else None,
            "known_s_from_health": round(known_at - health, 2) if known_at else None,
            "startup_health_s": round(health - spawned, 2),
            "fetch_s": _metric(text, "pumplink_mqtt_retained_fetch_seconds"),
            "baseline_wildcard_received": baseline,
        }
        result["pass"] = bool(known_at and known_at - health <= KNOWN_WITHIN_S and result["dropped"] == 0)
        token = bs.admin().token
        result["list"] = _first_page_ms(bs.base, token)
        result["list"]["pass"] = result["list"]["p50_ms"] <= FIRST_PAGE_MS
        return result
    finally:
        if fleet is not None:
            fleet.close()
        bs.close()


def report(result: dict) -> None:
    n = result["devices"]
    print(f"\nfleet restart: {n} pumps online with retained state before start-up")
    print(table_header("PumpLink", "baseline"))
    print(fmt_row("retained messages received", f"{result['retained_received']}/{2 * n}",
                  f"{result['baseline_wildcard_received']}/{2 * n}", "-", note="baseline: one wildcard subscribe"))
    print(f"  retained fetch took {result['fetch_s']:.2f} s (pumplink_mqtt_retained_fetch_seconds)")
    print(fmt_row("every state known after /health", f"{result['known_s_from_health']} s", "-", "-",
                  note=f"(from spawn {result['known_s_from_spawn']} s) {verdict(result['pass'])}"))
    lst = result["list"]
    print(fmt_row("GET /devices?limit=50, p50", f"{lst['p50_ms']} ms", f"whole {lst['whole_s']} s", "-",
                  note=verdict(lst["pass"])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    ctx = Context.make(quick=args.quick)
    report(run(ctx, args.devices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
