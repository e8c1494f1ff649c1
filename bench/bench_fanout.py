"""How fast one device state change reaches 1,000 JSON WebSocket clients (a benchmark, not a test).

    .venv/bin/python -m bench.bench_fanout [--clients 1000] [--rounds 20]

Two servers are measured in the same run, with the same clients (greenlets of this process
running websocket-client):

* PumpLink: a real ``pumplink serve`` on a fresh PostgreSQL database; a simulated pump flips
  its switch (``manual`` on/off), the report travels MQTT -> DeviceActor -> EventBus ->
  BroadcasterActor -> each client's outbox -> its writer greenlet.
* bare: a minimal gevent-websocket server (``--bare-server``, below) that sends a frame of the
  same size to every client in a plain sequential loop when asked over HTTP. It has none of
  PumpLink's safety (a stuck client would stall it), so it is the floor to compare against.

Both servers are up at once and the rounds alternate between them, so other load on the
machine hits both alike. For every round the time from the trigger to the first, median and
last client is taken;
the table shows medians over the rounds (and the worst round), and the ratio PumpLink/bare.
Writes bench/results_fanout.json.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import requests  # noqa: E402
import websocket  # noqa: E402

HERE = Path(__file__).resolve().parent
ADMIN = ("admin@example.org", "admin-password-1")
# The size of a PumpLink device.state frame, so the bare loop sends as many bytes.
SAMPLE_EVENT = json.dumps({"type": "device.state", "id": 1, "device_id": 1, "state": "on", "previous": "off",
                           "available": True, "activation_id": None, "reason": "manual",
                           "at": "2026-11-29T10:00:00.000Z"}, separators=(",", ":"))


# --- the bare server (a subprocess) ---------------------------------------------------------------
def run_bare_server(port: int) -> None:
    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler

    clients = set()

    def app(environ, start_response):
        ws = environ.get("wsgi.websocket")
        if ws is not None:
            clients.add(ws)
            try:
                while ws.receive() is not None:
                    pass
            finally:
                clients.discard(ws)
            return []
        if environ["PATH_INFO"] == "/broadcast":
            message = environ["wsgi.input"].read().decode()
            for client in list(clients):
                client.send(message)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(len(clients)).encode()]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(clients)).encode()]

    WSGIServer(("127.0.0.1", port), app, handler_class=WebSocketHandler, log=None).serve_forever()


# --- measuring ------------------------------------------------------------------------------------
class Clients:
    """``n`` WebSocket clients; each records when it receives its k-th matching frame."""

    def __init__(self, n: int, url: str, header: list[str] | None, match: str):
        self.n, self.url, self.header, self.match = n, url, header, match
        self.arrivals: list[list[float]] = []  # per round: receive times
        self.done: list[gevent.event.Event] = []
        self.sockets: list[websocket.WebSocket] = []
        self.readers: list[gevent.Greenlet] = []

    def _slot(self, k: int) -> list[float]:
        while len(self.arrivals) <= k:
            self.arrivals.append([])
            self.done.append(gevent.event.Event())
        return self.arrivals[k]

    def connect(self, first_frame: bool) -> float:
        began = time.perf_counter()
        pool = gevent.pool.Pool(50)

        def one(_):
            ws = websocket.create_connection(self.url, timeout=60, header=self.header)
            if first_frame:
                ws.recv()  # the snapshot
            self.sockets.append(ws)

        pool.map(one, range(self.n))
        self.readers = [gevent.spawn(self._read, ws) for ws in self.sockets]
        return time.perf_counter() - began

    def _read(self, ws) -> None:
        k = 0
        try:
            while True:
                frame = ws.recv()
                at = time.perf_counter()
                if self.match in frame:
                    slot = self._slot(k)
                    slot.append(at)
                    if len(slot) == self.n:
                        self.done[k].set()
                    k += 1
        except (websocket.WebSocketException, OSError):
            return

    def wait_round(self, k: int, timeout: float = 30.0) -> list[float]:
        self._slot(k)
        if not self.done[k].wait(timeout):
            raise RuntimeError(f"round {k}: only {len(self.arrivals[k])} of {self.n} clients got the frame")
        return self.arrivals[k]

    def close(self) -> None:
        for ws in self.sockets:
            try:
                ws.close(timeout=1)
            except Exception:  # closing 1,000 sockets: one that is already gone does not matter
                pass
        gevent.killall(self.readers, block=True, timeout=5)


def summarize(rounds: list[tuple[float, list[float]]]) -> dict:
    firsts, medians, lasts, spreads = [], [], [], []
    for t0, times in rounds:
        times = sorted(times)
        firsts.append((times[0] - t0) * 1000)
        medians.append((statistics.median(times) - t0) * 1000)
        lasts.append((times[-1] - t0) * 1000)
        spreads.append((times[-1] - times[0]) * 1000)
    med = statistics.median
    return {"first_ms": round(med(firsts), 1), "median_ms": round(med(medians), 1),
            "last_ms": round(med(lasts), 1), "last_worst_ms": round(max(lasts), 1),
            "spread_ms": round(med(spreads), 1), "rounds": len(rounds),
            "last_ms_each": [round(x, 1) for x in lasts]}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker_pid(master: int) -> int:
    """gunicorn's one worker: the master's child."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for task in os.listdir(f"/proc/{master}/task"):
            children = Path(f"/proc/{master}/task/{task}/children").read_text().split()
            if children:
                return int(children[0])
        gevent.sleep(0.1)
    raise RuntimeError("no gunicorn worker found")


@contextlib.contextmanager
def pumplink_side(n: int):
    """A real server with ``n`` clients connected; yields (trigger, clients, rss KB per client)."""
    from pumplink.devices.simulator import SimulatedPump
    from harness import MQTT_URL, Server, create_database, drop_database, run_id, server_env

    name = f"pumplink_bench_fanout_{run_id()}"
    url = create_database(name)
    env = server_env(url, f"bench-fanout-{run_id()}", PUMPLINK_LOG_LEVEL="WARNING",
                     PUMPLINK_MAX_WS_PER_USER=str(n + 10))
    server = Server(env, Path(f"/tmp/{name}.log"))
    pump = clients = None
    try:
        server.start()
        token = requests.post(f"{server.base}/api/v1/login", json=dict(zip(("email", "password"), ADMIN)),
                              timeout=15).json()["access_token"]
        pump = SimulatedPump(MQTT_URL, env["PUMPLINK_MQTT_PREFIX"], 1, legacy_base=env["PUMPLINK_LEGACY_BASE"]).start()
        deadline = time.monotonic() + 15
        while requests.get(f"{server.base}/api/v1/devices/1", headers={"Authorization": f"Bearer {token}"},
                           timeout=5).json()["state"] != "off":
            if time.monotonic() > deadline:
                raise RuntimeError("device 1 never reported off")
            gevent.sleep(0.05)
        worker = worker_pid(server.proc.pid)
        rss_before = rss_kb(worker)
        ws_url = server.base.replace("http://", "ws://") + "/api/v1/ws"
        clients = Clients(n, ws_url, [f"Authorization: Bearer {token}"], '"type":"device.state"')
        clients.connect(first_frame=True)
        per_client = (rss_kb(worker) - rss_before) / n
        flips = iter(range(10**9))
        yield (lambda: pump.manual("on" if next(flips) % 2 == 0 else "off")), clients, per_client
    finally:
        if clients is not None:
            clients.close()
        if pump is not None:
            pump.stop()
        server.stop()
        drop_database(name)


@contextlib.contextmanager
def bare_side(n: int):
    """The bare gevent-websocket server with ``n`` clients; yields (trigger, clients, rss KB per client)."""
    from harness import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_fanout", "--bare-server", str(port)],
                            cwd=HERE.parent)
    clients = None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(base + "/count", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                gevent.sleep(0.05)
        rss_before = rss_kb(proc.pid)
        clients = Clients(n, f"ws://127.0.0.1:{port}/ws", None, '"type":"device.state"')
        clients.connect(first_frame=False)
        while int(requests.get(base + "/count", timeout=5).text) < n:
            gevent.sleep(0.05)
        per_client = (rss_kb(proc.pid) - rss_before) / n
        session = requests.Session()
        yield (lambda: session.post(base + "/broadcast", data=SAMPLE_EVENT, timeout=30)), clients, per_client
    finally:
        if clients is not None:
            clients.close()
        proc.terminate()
        proc.wait(10)


def measure(n: int, rounds: int) -> tuple[dict, dict]:
    """Both servers up at once, rounds alternating (and alternating order), so load elsewhere on
    the machine hits both alike."""
    with contextlib.ExitStack() as stack:
        sides = {"pumplink": stack.enter_context(pumplink_side(n)), "bare": stack.enter_context(bare_side(n))}
        measured = {name: [] for name in sides}
        for k in range(rounds + 1):
            order = ["pumplink", "bare"] if k % 2 == 0 else ["bare", "pumplink"]
            for name in order:
                trigger, clients, _ = sides[name]
                t0 = time.perf_counter()
                trigger()
                times = clients.wait_round(k)
                if k:  # round 0 warms up
                    measured[name].append((t0, list(times)))
        results = {}
        for name, (_, _, per_client) in sides.items():
            results[name] = summarize(measured[name])
            results[name]["rss_per_client_kb"] = round(per_client, 1)
        return results["pumplink"], results["bare"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        run_bare_server(args.bare_server)
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.clients + 256)), hard))

    pumplink, bare = measure(args.clients, args.rounds)
    ratio = {key: round(pumplink[key] / bare[key], 2) if bare[key] else None
             for key in ("first_ms", "median_ms", "last_ms", "spread_ms")}

    print(f"\nOne state change to {args.clients} JSON WebSocket clients; medians of {args.rounds} rounds "
          f"(ms from the trigger; spread = first to last client)\n")
    header = f"{'':34}{'first':>8}{'median':>8}{'last':>8}{'worst last':>12}{'spread':>8}{'KB/client':>11}"
    print(header)
    print("-" * len(header))
    for label, r in (("PumpLink (pump->MQTT->actors->WS)", pumplink), ("bare gevent-websocket loop", bare)):
        print(f"{label:34}{r['first_ms']:>8.1f}{r['median_ms']:>8.1f}{r['last_ms']:>8.1f}"
              f"{r['last_worst_ms']:>12.1f}{r['spread_ms']:>8.1f}{r['rss_per_client_kb']:>11.1f}")
    print(f"{'ratio PumpLink / bare':34}{ratio['first_ms']:>8}{ratio['median_ms']:>8}{ratio['last_ms']:>8}"
          f"{'':>12}{ratio['spread_ms']:>8}")
    results = {
        "benchmark": "bench_fanout", "clients": args.clients, "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pumplink": pumplink, "bare": bare, "ratio": ratio,
        "notes": "PumpLink's trigger is a simulated pump's MQTT state report (broker, device actor with its "
                 "database writes, event bus, broadcaster, per-client writer greenlets); the bare server's is "
                 "an HTTP request to a sequential ws.send loop. Clients are greenlets of the benchmark process, "
                 "so the time one Python process needs to read 1,000 frames is inside both numbers (it is most "
                 "of the bare spread); both servers are up at once and rounds alternate between them.",
    }
    (HERE / "results_fanout.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {HERE / 'results_fanout.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
