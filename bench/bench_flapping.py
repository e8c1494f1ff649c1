"""A flapping pump slows nobody: one pump flips >= 500 times/s while another changes state 6
times; how fast those 6 changes reach 200 JSON WebSocket clients (a benchmark, not a test).

    .venv/bin/python -m bench.bench_flapping [--clients 200] [--rate 600] [--seconds 4] [--changes 6] [--profile]

A real ``pumplink serve``; the flapping pump is a plain paho publisher in a child process
(state reports ``on``/``off`` at ``--rate`` per second); the other pump is a SimulatedPump
switched by hand every 0.6 s. Each of its changes is timed from the switch to its arrival at
every client (greenlets of this process, websocket-client). Baseline from the same run: the
same 6 changes with no flapping. ``/health`` is timed every 50 ms throughout, and the worker's CPU
(per cent of one core) over each phase; after the flapping, how long until each of its reports
has its log row (a device that cannot keep up falls further behind the longer it flaps).
Writes bench/results_flapping.json. ``--changes N --seconds S``: more changes (S >= 0.6 N + 1)
for a steadier p99 than 6 give; ``--profile``: py-spy of the server's worker while the pump
flaps (raw stacks in /tmp, the top functions in the results).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

from bench.bench_fanout import ADMIN, Clients  # noqa: E402

HERE = Path(__file__).resolve().parent
CHANGES = 6
SPACING_S = 0.6
MISSED_S = 3.0
P99_TARGET_MS = 100.0
HEALTH_TARGET_MS = 100.0

FLAPPER = r"""
import sys, time, json, paho.mqtt.client as mqtt
host, port, topic, rate, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.max_inflight_messages_set(1000)
c.connect(host, port); c.loop_start()
began = time.monotonic(); n = 0
while time.monotonic() - began < seconds:
    due = began + n / rate
    time.sleep(max(0.0, due - time.monotonic()))
    c.publish(topic, json.dumps({"state": "on" if n % 2 == 0 else "off", "reason": "manual"}), qos=1, retain=True)
    n += 1
c.publish(topic, json.dumps({"state": "off", "reason": "manual"}), qos=1, retain=True).wait_for_publish(10)
print(json.dumps({"published": n + 1, "seconds": round(time.monotonic() - began, 2)}))
c.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
c.disconnect()
"""


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else None


def health_poller(base: str, out: list):
    s = requests.Session()
    while True:
        began = time.perf_counter()
        try:
            s.get(f"{base}/api/v1/health", timeout=10)
        except requests.RequestException:
            pass
        out.append((time.perf_counter() - began) * 1000)
        gevent.sleep(0.05)


def changes(pump, clients: Clients, first_round: int, n: int) -> tuple[list[float], int]:
    """``n`` changes of ``pump``; per change and client the latency (ms); how many arrived late or never."""
    latencies, missed = [], 0
    for k in range(first_round, first_round + n):
        t0 = time.perf_counter()
        pump.manual("on" if k % 2 == 0 else "off")
        try:
            clients.wait_round(k, timeout=MISSED_S)
        except RuntimeError:
            pass
        got = clients.arrivals[k]
        latencies += [(at - t0) * 1000 for at in got]
        missed += clients.n - len(got)
        gevent.sleep(max(0.0, SPACING_S - (time.perf_counter() - t0)))
    return latencies, missed


def summary(latencies: list[float], missed: int) -> dict:
    return {"p50_ms": round(pct(latencies, 50), 1) if latencies else None,
            "p99_ms": round(pct(latencies, 99), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None, "missed": missed}


def all_logged(url: str, published: int, limit_s: float = 120.0) -> tuple[float | None, int]:
    """Seconds from the flapper's end until each of its reports has its log row (None: not
    within ``limit_s``), and how many had one then."""
    import psycopg2

    began, logged = time.monotonic(), 0
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            while time.monotonic() - began < limit_s:
                cur.execute("SELECT count(*) FROM device_log WHERE device_id = 1")
                logged = cur.fetchone()[0]
                if logged >= published:
                    return round(time.monotonic() - began, 1), logged
                gevent.sleep(0.2)
    finally:
        conn.close()
    return None, logged


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure(n_clients: int, rate: float, seconds: float, profile: bool = False, n_changes: int = CHANGES) -> dict:
    from pumplink.devices.simulator import SimulatedPump
    from harness import MQTT_URL, Server, create_database, drop_database, run_id, server_env

    name = f"pumplink_bench_flapping_{run_id()}"
    url = create_database(name)
    prefix = f"bench-flap-{run_id()}"
    env = server_env(url, prefix, PUMPLINK_LOG_LEVEL="WARNING", PUMPLINK_MAX_WS_PER_USER=str(n_clients + 10),
                     PUMPLINK_MANUAL_RUNS_PER_HOUR="1000000")
    server = Server(env, Path(f"/tmp/{name}.log"))
    pump = clients = None
    try:
        server.start()
        auth = {"Authorization": "Bearer " + requests.post(
            f"{server.base}/api/v1/login", json=dict(zip(("email", "password"), ADMIN)), timeout=15).json()["access_token"]}
        other = requests.post(f"{server.base}/api/v1/devices", json={"name": "Other"}, headers=auth, timeout=15).json()["id"]
        pump = SimulatedPump(MQTT_URL, prefix, other, legacy_base=env["PUMPLINK_LEGACY_BASE"]).start()
        deadline = time.monotonic() + 15
        while requests.get(f"{server.base}/api/v1/devices/{other}", headers=auth, timeout=5).json()["state"] != "off":
            if time.monotonic() > deadline:
                raise RuntimeError("the other pump never reported off")
            gevent.sleep(0.05)
        ws_url = server.base.replace("http://", "ws://") + "/api/v1/ws"
        clients = Clients(n_clients, ws_url, [f"Authorization: {auth['Authorization']}"],
                          f'"device_id":{other},"state"')
        clients.connect(first_frame=True)
        from bench.common import Profile, worker_pid

        worker = worker_pid(server.proc.pid)
        health: list[float] = []
        poller = gevent.spawn(health_poller, server.base, health)

        began, cpu0 = time.monotonic(), cpu_s(worker)
        calm, calm_missed = changes(pump, clients, 0, n_changes)
        calm_cpu = 100 * (cpu_s(worker) - cpu0) / (time.monotonic() - began)
        calm_health = list(health)
        health.clear()
        host, port = "127.0.0.1", "1883"
        flapper = subprocess.Popen([sys.executable, "-c", FLAPPER, host, port, f"{prefix}/devices/1/state", str(rate),
                                    str(seconds)], stdout=subprocess.PIPE, text=True)
        spy = None
        if profile:
            spy = Profile(worker, Path(f"/tmp/{name}.pyspy"), seconds - 0.5)
            spy.__enter__()  # py-spy attaches (0.3 s) while the flapping starts
        else:
            gevent.sleep(0.3)  # the flapping is under way
        began, cpu0 = time.monotonic(), cpu_s(worker)
        flapping, flap_missed = changes(pump, clients, n_changes, n_changes)
        flap_cpu = 100 * (cpu_s(worker) - cpu0) / (time.monotonic() - began)
        out, _ = flapper.communicate(timeout=120)
        if spy is not None:
            spy.__exit__(None, None, None)
        flap_health = list(health)
        poller.kill()
        published = json.loads(out.strip().splitlines()[-1])
        behind_s, logged = all_logged(url, published["published"])
        metrics = requests.get(f"{server.base}/metrics", timeout=10).text
        def total(name: str) -> float:
            return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))

        debounced = total("pumplink_live_state_events_debounced_total")
        units = total("pumplink_device_unit_messages_count")  # 0 before devices handled units
        return {
            **({"profile": spy.summary} if spy is not None else {}),
            "clients": n_clients, "changes": n_changes,
            "worker_cpu_percent": {"flapping": round(flap_cpu), "calm": round(calm_cpu)}, "flap_rate_per_s": round(published["published"] / published["seconds"]),
            "flap_published": published["published"], "flap_logged": logged,
            "all_logged_s_after_flapping": behind_s, "debounced_events": int(debounced),
            "messages_per_unit": round(total("pumplink_device_unit_messages_sum") / units, 2) if units else None,
            "flapping": summary(flapping, flap_missed), "calm": summary(calm, calm_missed),
            "health_flapping_ms": {"p99": round(pct(flap_health, 99), 1), "max": round(max(flap_health), 1)},
            "health_calm_ms": {"p99": round(pct(calm_health, 99), 1), "max": round(max(calm_health), 1)},
        }
    finally:
        if clients is not None:
            clients.close()
        if pump is not None:
            pump.stop()
        server.stop()
        drop_database(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=600)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--changes", type=int, default=CHANGES, help="the other pump's changes per phase")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker while the pump flaps")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 256)), hard))
    r = measure(args.clients, args.rate, args.seconds, args.profile, args.changes)
    f, c = r["flapping"], r["calm"]
    r["ratio_p99"] = round(f["p99_ms"] / c["p99_ms"], 2) if f["p99_ms"] and c["p99_ms"] else None
    r["pass"] = bool(f["p99_ms"] is not None and f["p99_ms"] <= P99_TARGET_MS and f["missed"] == 0
                     and r["health_flapping_ms"]["max"] < HEALTH_TARGET_MS)
    r.update({"benchmark": "bench_flapping", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}})
    print(f"\none pump flapping at {r['flap_rate_per_s']}/s; another pump's {args.changes} changes to {args.clients} JSON clients")
    print(f"  flapping: p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, max {f['max_ms']} ms, missed {f['missed']}; "
          f"/health p99 {r['health_flapping_ms']['p99']} ms, max {r['health_flapping_ms']['max']} ms")
    print(f"  calm:     p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms, missed {c['missed']}")
    print(f"  worker CPU: {r['worker_cpu_percent']['flapping']} % flapping, {r['worker_cpu_percent']['calm']} % calm; "
          f"debounced state events: {r['debounced_events']}; device messages per unit: {r['messages_per_unit']}")
    print(f"  the flapping pump's {r['flap_published']} reports: {r['flap_logged']} logged, all of them "
          f"{r['all_logged_s_after_flapping']} s after it stopped")
    print(f"  verdict {'PASS' if r['pass'] else 'FAIL'}")
    (HERE / "results_flapping.json").write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
