"""One node against two on the same machine: activations/s, state reports/s, takeover time.

    .venv/bin/python -m bench.bench_cluster [--devices 1000] [--seconds 10] [--quick] [--profile]

Everything in one run, the baseline (one node, single-node mode, no ZooKeeper) first:

1. Activations accepted/s, 32 keep-alive clients (one gevent process) over 1,000 pumps (a
   ``PumpFleet`` acking). One node; then two cluster nodes sharing one database, broker prefix and
   a ZooKeeper started here: *mixed* = half the clients on each node, each over every device, so
   about half the requests are forwarded to the other node; *owner only* = each node's clients
   send only for the devices that node owns (no forwarding). ``GET /health`` on one and on both
   nodes shows what plain HTTP gains from a second process on these cores.
2. State reports ingested/s over 200 devices (bench_state_reports' method: a change counts when
   its log row is in PostgreSQL and a JSON WebSocket client has its ``device.state`` event). Two
   nodes: each ingests its own partitions' devices; the rows are counted in the shared database
   and the events at one client on each node, each counting the devices its node owns (its local
   events; the other node's come over the broker as well but are not counted twice).
3. Takeover: SIGKILL of one of two nodes (ZooKeeper session timeout 4 s) until the survivor's
   ``/ready`` (polled every 100 ms) lists all 64 partitions; the killed node restarts and takes
   its share back; then SIGTERM of it until the survivor owns all 64 again.

Results go to bench/results_cluster.json (and into results.json when run by ``python -m bench cluster``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid

import requests

from harness import MQTT_URL, PUMPLINK_BIN, Server, ZooKeeper, create_database, drop_database, free_port, server_env
from pumplink.cluster.partitions import PARTITIONS, partition_of

from . import bench_state_reports as reports
from .common import (ADMIN, HERE, UTC, BenchServer, Context, CpuMeter, Profile, PumpFleet, approved_user,
                     clear_retained, describe_machine, http_load, insert_devices, login, machine, print_profile,
                     sql_scalar, wait_device_states, worker_pid)

RESULTS = HERE / "results_cluster.json"
CONCURRENCY = 32  # the issue's; --clients 8 (half the database pool, see bench_throughput) is the other view
RUN_S = 3600  # runs outlast each phase; the emergency stop between phases ends them
QUEUE_LIMIT = 10
ANNOUNCE_BATCH = 250
SESSION_S = 4
SERVER_ENV = {"PUMPLINK_DAILY_QUOTA_MINUTES": 10_000_000, "PUMPLINK_QUEUE_LIMIT": QUEUE_LIMIT,
              "PUMPLINK_ACK_TIMEOUT_S": 30, "PUMPLINK_LOG_LEVEL": "INFO",
              "PUMPLINK_REGISTER_PER_CLIENT": 100000, "PUMPLINK_LOGIN_PER_CLIENT": 100000}


# --- two nodes -------------------------------------------------------------------------------------
def owned_partitions(server: Server) -> set[int] | None:
    """The partitions a node's /ready lists (None: no answer)."""
    try:
        body = requests.get(f"{server.base}/api/v1/ready", timeout=2).json()
        return set(body["cluster"]["partitions"])
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


class Cluster:
    """``pumplink serve`` nodes sharing a fresh database, topic prefix, JWT and cluster secret and a
    ZooKeeper root; ``prepare`` migrates so rows can be inserted before ``start``."""

    def __init__(self, ctx: Context, zk: ZooKeeper, names: list[str], **overrides):
        self.ctx, self.names = ctx, names
        self.db_name = f"pumplink_bench_{ctx.tag}_cluster"
        self.prefix = f"plbench-{ctx.tag}-cluster"
        self.zk_root = f"/plbench-{uuid.uuid4().hex[:12]}"
        self.zk, self.overrides = zk, overrides
        self.url: str | None = None
        self.envs: list[dict] = []
        self.nodes: list[Server] = []
        self.workers: list[int] = []
        self.starts = 0

    def prepare(self) -> "Cluster":
        self.url = create_database(self.db_name)
        shared = server_env(self.url, self.prefix, **self.overrides,
                            PUMPLINK_ZOOKEEPER=self.zk.hosts + self.zk_root,
                            PUMPLINK_CLUSTER_SECRET=secrets.token_urlsafe(48),
                            PUMPLINK_ZK_SESSION_TIMEOUT_S=SESSION_S)
        for name in self.names:
            env = {**shared, "PUMPLINK_NODE_NAME": name, "PUMPLINK_BIND": f"127.0.0.1:{free_port()}"}
            env["PUMPLINK_INTERNAL_URL"] = "http://" + env["PUMPLINK_BIND"]
            self.envs.append(env)
        subprocess.run([PUMPLINK_BIN, "create-admin", "--email", ADMIN[0], "--password", ADMIN[1]],
                       env=self.envs[0], check=True, capture_output=True, timeout=60)
        return self

    def start_node(self, i: int) -> Server:
        self.starts += 1
        node = Server(self.envs[i], self.ctx.log_dir / f"cluster_{self.names[i]}_{self.starts}.log")
        node.start(timeout=180)
        if i < len(self.nodes):
            self.nodes[i], self.workers[i] = node, worker_pid(node.proc.pid)
        else:
            self.nodes.append(node)
            self.workers.append(worker_pid(node.proc.pid))
        return node

    def start(self) -> "Cluster":
        for i in range(len(self.names)):
            self.start_node(i)
        self.wait_shared()
        return self

    def owners(self) -> dict[int, int]:
        """partition -> index of the node that lists it in /ready."""
        out = {}
        for i, node in enumerate(self.nodes):
            for p in owned_partitions(node) or ():
                out[p] = i
        return out

    def wait_shared(self, timeout: float = 120.0) -> float:
        """Until every partition is listed by one node and every node lists some; seconds taken."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            owned = [owned_partitions(n) or set() for n in self.nodes]
            if all(owned) and sum(len(o) for o in owned) == PARTITIONS and len(set().union(*owned)) == PARTITIONS:
                return time.monotonic() - began
            time.sleep(0.1)
        raise RuntimeError(f"the partitions were not shared by {self.names} within {timeout} s")

    def admin(self):
        return login(self.nodes[0])

    def close(self) -> None:
        try:
            for node in self.nodes:
                node.stop()
        finally:
            if self.url is not None:
                drop_database(self.db_name)


def metric(server: Server, line_start: str) -> float:
    try:
        for line in requests.get(server.base + "/metrics", timeout=5).text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    except requests.RequestException:
        pass
    return 0.0


FORWARDED = 'pumplink_forwarded_requests_total{op="activate",outcome="ok"}'


# --- load -----------------------------------------------------------------------------------------
def _bodies(devices: list[int]) -> list[dict]:
    return [{"device_id": d, "duration_s": RUN_S} for d in devices]


def _activations(targets: list[tuple[str, list[int]]], token: str, devices: int, seconds: float,
                 clients: int) -> dict:
    # Each device takes one run and QUEUE_LIMIT waiting; the emergency stop clears them between phases.
    return http_load(targets[0][0], "/api/v1/activate", method="POST", token=token, concurrency=clients,
                     targets=[(base, _bodies(ids)) for base, ids in targets],
                     max_requests=devices * QUEUE_LIMIT // 2, max_seconds=seconds, warmup_s=1.0)


def _health(bases: list[str], seconds: float, clients: int) -> dict:
    return http_load(bases[0], "/api/v1/health", concurrency=clients, max_requests=10_000_000,
                     max_seconds=seconds, warmup_s=1.0,
                     targets=[(b, []) for b in bases] if len(bases) > 1 else None)


def _phase(load: dict, cpus: list[CpuMeter], status: str) -> dict:
    return {"per_s": load["rate_per_s"].get(status, 0.0), "statuses": load["statuses"],
            "latency": load["latency"], "worker_cpu_percent": [c.percent for c in cpus],
            "client_cpu_percent": load["client_cpu_percent"]}


def _metered(workers: list[int], fn):
    cpus = [CpuMeter(w) for w in workers]
    for c in cpus:
        c.__enter__()
    try:
        return fn(), cpus
    finally:
        for c in cpus:
            c.__exit__(None, None, None)


def _stop_everything(admin) -> None:
    admin.post("admin/emergency-stop", timeout=120).raise_for_status()


def _online(fleet: PumpFleet, admin, ids: list[int]) -> None:
    for i in range(0, len(ids), ANNOUNCE_BATCH):
        fleet.announce(ids[i:i + ANNOUNCE_BATCH])
        wait_device_states(admin, ids[i:i + ANNOUNCE_BATCH], "off", timeout=90)


def _reports_two(cluster: Cluster, admin_token: str, devices: list[int], rounds: int, first_log_id: int) -> dict:
    """bench_state_reports._server_rate for two nodes: rows in the shared database, events at a
    client on each node counting that node's devices; the publisher's window on their sum."""
    owners = cluster.owners()
    mine = [{d for d in devices if owners.get(partition_of(d)) == i} for i in range(len(cluster.nodes))]
    rounds_msgs = reports._messages(cluster.prefix, devices, rounds)
    total = reports.Progress()
    counts = [0] * len(cluster.nodes)

    class Share:  # a client's progress, added into the publisher's
        def __init__(self, i):
            self.i = i

        def set(self, count):
            counts[self.i] = count
            total.set(sum(counts))

    lives = []
    try:
        for i, node in enumerate(cluster.nodes):
            live = reports._LiveClient(node.base, admin_token, mine[i], rounds * len(mine[i]))
            live.progress = Share(i)
            lives.append(live)
        began, publish_s = reports._publish(rounds_msgs, total)
        deadline = time.monotonic() + 120
        rows, rows_at = 0, None
        while time.monotonic() < deadline:
            rows = sql_scalar(cluster.url, "SELECT count(*) FROM device_log WHERE id > %s AND device_id = ANY(%s)",
                              (first_log_id, devices))
            if rows >= len(rounds_msgs) and rows_at is None:
                rows_at = time.monotonic()
            if rows_at is not None and all(lv.done.is_set() for lv in lives):
                break
            errors = [lv.error for lv in lives if lv.error]
            if errors:
                raise RuntimeError(f"a live client failed: {errors}")
            time.sleep(0.01)
        if rows_at is None or not all(lv.done.is_set() for lv in lives):
            raise RuntimeError(f"after 120 s: {rows} log rows and {[lv.count for lv in lives]} events "
                               f"of {len(rounds_msgs)} changes")
        last_event = max(lv.last for lv in lives)
        seconds = max(rows_at, last_event) - began
        return {"messages": len(rounds_msgs), "seconds": round(seconds, 3),
                "per_s": round(len(rounds_msgs) / seconds, 1), "publish_s": round(publish_s, 3),
                "log_rows": rows, "devices_per_node": [len(m) for m in mine],
                "events_received_per_node": [lv.count for lv in lives],
                "last_row_s": round(rows_at - began, 3), "last_event_s": round(last_event - began, 3)}
    finally:
        for lv in lives:
            lv.close()


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


# --- the phases -----------------------------------------------------------------------------------
def _one_node(ctx: Context, count: int, report_count: int, seconds: float, rounds: int, clients: int) -> dict:
    bs = BenchServer(ctx, "one", **SERVER_ENV)
    fleet, report_ids = None, []
    try:
        bs.prepare()
        ids = insert_devices(bs.url, count)
        report_ids = insert_devices(bs.url, report_count)
        bs.start(timeout=180)
        admin = bs.admin()
        user = approved_user(bs.server, admin)
        fleet = PumpFleet(MQTT_URL, bs.prefix, ids).start()
        _online(fleet, admin, ids)
        http_load(bs.base, "/api/v1/health", concurrency=CONCURRENCY, max_requests=500, max_seconds=5, warmup_s=0)
        # State reports first: the emergency stop between phases sends every device an OFF, and the
        # reporting devices have no pump to ack it (their reports would wait behind the retries).
        served, r_cpu = _metered([bs.worker], lambda: reports._server_rate(bs, report_ids, rounds, 0))
        health, h_cpu = _metered([bs.worker], lambda: _health([bs.base], seconds, clients))
        act, a_cpu = _metered([bs.worker], lambda: _activations([(bs.base, ids)], user.token, count, seconds, clients))
        out = {"health": _phase(health, h_cpu, "200"), "activations": _phase(act, a_cpu, "202"),
               "state_reports": {**served, "worker_cpu_percent": [c.percent for c in r_cpu]}}
        _stop_everything(admin)
        if ctx.profile:
            with Profile(bs.worker, ctx.log_dir / "profile_cluster_one.txt", seconds=seconds) as prof:
                _activations([(bs.base, ids)], user.token, count, seconds, clients)
            out["profile"] = prof.summary
            _stop_everything(admin)
        return out
    finally:
        try:
            if fleet is not None and bs.server is not None and bs.server.proc.poll() is None:
                bs.admin().post("admin/emergency-stop", timeout=120)
        except Exception:  # the figures are taken; a failed clean-up must not hide them
            pass
        if fleet is not None:
            fleet.close()
        bs.close()
        if report_ids:
            clear_retained(bs.prefix, report_ids, kinds=("state",))


def _two_nodes(ctx: Context, zk: ZooKeeper, count: int, report_count: int, seconds: float, rounds: int,
               clients: int) -> dict:
    cl = Cluster(ctx, zk, ["node-a", "node-b"], **SERVER_ENV)
    fleet, report_ids = None, []
    try:
        cl.prepare()
        ids = insert_devices(cl.url, count)
        report_ids = insert_devices(cl.url, report_count)
        began = time.monotonic()
        cl.start()
        out: dict = {"startup_s": round(time.monotonic() - began, 2)}
        a, b = cl.nodes
        admin = cl.admin()
        user = approved_user(a, admin)
        fleet = PumpFleet(MQTT_URL, cl.prefix, ids).start()
        _online(fleet, admin, ids)
        owners = cl.owners()
        by_node = [[d for d in ids if owners.get(partition_of(d)) == i] for i in range(2)]
        out["devices_per_node"] = [len(x) for x in by_node]
        out["partitions_per_node"] = [sum(1 for o in owners.values() if o == i) for i in range(2)]
        for node in cl.nodes:
            http_load(node.base, "/api/v1/health", concurrency=CONCURRENCY, max_requests=500, max_seconds=5,
                      warmup_s=0)
        served, r_cpu = _metered(cl.workers, lambda: _reports_two(cl, admin.token, report_ids, rounds, 0))
        out["state_reports"] = {**served, "worker_cpu_percent": [c.percent for c in r_cpu]}
        health, h_cpu = _metered(cl.workers, lambda: _health([a.base, b.base], seconds, clients))
        out["health"] = _phase(health, h_cpu, "200")

        fwd0 = sum(metric(n, FORWARDED) for n in cl.nodes)
        # Node b's clients start half-way round the devices, so the two nodes' clients do not ask for
        # the same device at the same moment (one pass of 32 clients on one node never does either).
        half = ids[len(ids) // 2:] + ids[:len(ids) // 2]
        act, a_cpu = _metered(cl.workers, lambda: _activations([(a.base, ids), (b.base, half)], user.token, count,
                                                               seconds, clients))
        out["mixed"] = _phase(act, a_cpu, "202")
        out["mixed"]["forwarded_ok"] = int(sum(metric(n, FORWARDED) for n in cl.nodes) - fwd0)
        _stop_everything(admin)

        fwd0 = sum(metric(n, FORWARDED) for n in cl.nodes)
        act, a_cpu = _metered(cl.workers, lambda: _activations([(a.base, by_node[0]), (b.base, by_node[1])],
                                                               user.token, count, seconds, clients))
        out["owner_only"] = _phase(act, a_cpu, "202")
        out["owner_only"]["forwarded_ok"] = int(sum(metric(n, FORWARDED) for n in cl.nodes) - fwd0)
        _stop_everything(admin)

        if ctx.profile:
            with Profile(cl.workers[0], ctx.log_dir / "profile_cluster_a.txt", seconds=seconds) as pa, \
                    Profile(cl.workers[1], ctx.log_dir / "profile_cluster_b.txt", seconds=seconds) as pb:
                _activations([(a.base, ids), (b.base, half)], user.token, count, seconds, clients)
            out["profile_a"], out["profile_b"] = pa.summary, pb.summary
            _stop_everything(admin)


        out["takeover"] = _takeover(cl)
        return out
    finally:
        try:
            live = [n for n in cl.nodes if n.proc is not None and n.proc.poll() is None]
            if fleet is not None and live:
                login(live[0]).post("admin/emergency-stop", timeout=120)
        except Exception:  # the figures are taken; a failed clean-up must not hide them
            pass
        if fleet is not None:
            fleet.close()
        cl.close()
        if report_ids:
            clear_retained(cl.prefix, report_ids, kinds=("state",))


def _until_all_owned(survivor: Server, t0: float, timeout: float = 60.0) -> float:
    while time.monotonic() - t0 < timeout:
        owned = owned_partitions(survivor)
        if owned is not None and len(owned) == PARTITIONS:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    raise RuntimeError(f"the survivor did not own every partition within {timeout} s")


def _takeover(cl: Cluster) -> dict:
    survivor = cl.nodes[0]
    moved = len(owned_partitions(cl.nodes[1]) or ())
    t0 = time.monotonic()
    cl.nodes[1].kill()  # SIGKILL of the whole process group
    killed_s = _until_all_owned(survivor, t0)
    began = time.monotonic()
    cl.start_node(1)
    rejoin_s = round(time.monotonic() - began + cl.wait_shared(), 2)
    moved_back = len(owned_partitions(cl.nodes[1]) or ())
    leaving = cl.nodes[1]
    t0 = time.monotonic()
    os.killpg(leaving.proc.pid, signal.SIGTERM)
    term_s = exited_s = None
    while time.monotonic() - t0 < 60 and (term_s is None or exited_s is None):
        if exited_s is None and leaving.proc.poll() is not None:
            exited_s = round(time.monotonic() - t0, 2)
        if term_s is None and len(owned_partitions(survivor) or ()) == PARTITIONS:
            term_s = round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    if term_s is None:
        raise RuntimeError("the survivor did not own every partition within 60 s of the SIGTERM")
    leaving.proc.wait(60)
    exited_s = exited_s if exited_s is not None else round(time.monotonic() - t0, 2)
    return {"session_timeout_s": SESSION_S, "partitions_moved_on_kill": moved, "sigkill_s": killed_s,
            "rejoin_s": rejoin_s, "partitions_moved_on_term": moved_back, "sigterm_s": term_s,
            "sigterm_process_exit_s": exited_s}


# --- run, report ----------------------------------------------------------------------------------
def run(ctx: Context, devices: int | None = None, seconds: float | None = None, report_devices: int | None = None,
        rounds: int | None = None, clients: int = CONCURRENCY) -> dict:
    count = devices or (200 if ctx.quick else 1000)
    seconds = seconds or (5.0 if ctx.quick else 10.0)
    report_count = report_devices or (100 if ctx.quick else 200)
    rounds = rounds or (10 if ctx.quick else 20)
    info = machine()
    one = _one_node(ctx, count, report_count, seconds, rounds, clients)
    zk = ZooKeeper(ctx.log_dir / "zookeeper").start()
    try:
        two = _two_nodes(ctx, zk, count, report_count, seconds, rounds, clients)
    finally:
        zk.stop()
    result = {
        "when": dt.datetime.now(UTC).isoformat(timespec="seconds"), "machine": info, "quick": ctx.quick,
        "devices": count, "report_devices": report_count, "rounds": rounds, "seconds": seconds,
        "concurrency": clients, "one": one, "two": two,
        "ratio_two_over_one": {
            "health": _ratio(two["health"]["per_s"], one["health"]["per_s"]),
            "activations_mixed": _ratio(two["mixed"]["per_s"], one["activations"]["per_s"]),
            "activations_owner_only": _ratio(two["owner_only"]["per_s"], one["activations"]["per_s"]),
            "state_reports": _ratio(two["state_reports"]["per_s"], one["state_reports"]["per_s"]),
        },
    }
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def report(result: dict) -> None:
    one, two, r = result["one"], result["two"], result["ratio_two_over_one"]
    print(f"\nOne node against two ({result['devices']} pumps, {result['concurrency']} clients, "
          f"{result['seconds']} s per phase; state reports: {result['report_devices']} devices x "
          f"{result['rounds']} rounds){' (quick)' if result['quick'] else ''}")
    print(f"  machine: {describe_machine(result['machine'])}")
    print(f"  {'':44}{'one node':>10}{'two nodes':>11}{'two/one':>9}   worker CPU % (one | two)")

    def row(label, o, t, ratio):
        print(f"  {label:44}{o['per_s']:>10}{t['per_s']:>11}{ratio!s:>9}   "
              f"{o['worker_cpu_percent']} | {t['worker_cpu_percent']}")

    row("GET /health/s", one["health"], two["health"], r["health"])
    row("activations accepted/s, mixed (~half fwd)", one["activations"], two["mixed"], r["activations_mixed"])
    row("activations accepted/s, owner only", one["activations"], two["owner_only"], r["activations_owner_only"])
    row("state reports ingested/s", one["state_reports"], two["state_reports"], r["state_reports"])
    for label, ph in (("one node", one["activations"]), ("two, mixed", two["mixed"]),
                      ("two, owner only", two["owner_only"])):
        lat = ph["latency"]
        fwd = f"; forwarded {ph['forwarded_ok']}" if "forwarded_ok" in ph else ""
        print(f"  activations {label}: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms; statuses {ph['statuses']}"
              f"{fwd}; load-generator CPU {ph['client_cpu_percent']} %")
    print(f"  two nodes: {two['partitions_per_node']} partitions, {two['devices_per_node']} pumps per node; "
          f"reports' events per node {two['state_reports']['events_received_per_node']}")
    t = two["takeover"]
    print(f"  takeover (session timeout {t['session_timeout_s']} s): SIGKILL -> survivor owns all 64 in "
          f"{t['sigkill_s']} s ({t['partitions_moved_on_kill']} partitions moved); restart + rejoin "
          f"{t['rejoin_s']} s; SIGTERM -> all 64 in {t['sigterm_s']} s ({t['partitions_moved_on_term']} moved; "
          f"process exited at {t['sigterm_process_exit_s']} s)")
    print_profile("one node under the activation load", one.get("profile"))
    print_profile("node a, two nodes, mixed activation load", two.get("profile_a"))
    print_profile("node b, two nodes, mixed activation load", two.get("profile_b"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None, help="pumps under the activation load (1000)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load phase (10)")
    parser.add_argument("--report-devices", type=int, default=None, help="devices reporting state (200)")
    parser.add_argument("--rounds", type=int, default=None, help="state changes per reporting device (20)")
    parser.add_argument("--clients", type=int, default=CONCURRENCY, help="keep-alive HTTP clients (32)")
    parser.add_argument("--quick", action="store_true", help="200 pumps, 5 s phases, 100 x 10 reports")
    parser.add_argument("--profile", action="store_true", help="py-spy the workers under an extra activation pass")
    args = parser.parse_args(argv)
    if args.profile and not Profile.available():
        print("--profile: py-spy is not installed (.venv/bin/pip install py-spy); profiling skipped")
    ctx = Context.make(quick=args.quick, profile=args.profile)
    result = run(ctx, args.devices, args.seconds, args.report_devices, args.rounds, args.clients)
    report(result)
    print(f"\nresults in {RESULTS}; server logs in {ctx.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
