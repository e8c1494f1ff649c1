"""Three real `pumplink serve` nodes on one ZooKeeper, PostgreSQL and Mosquitto, 300 pumps.

While each test runs, a sampler reads every node's /ready every 100 ms: no partition (so no
device) may ever be claimed by two nodes at once. Slow (several server processes): `make test`
leaves them out, `make test-cluster` runs them.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import pytest
import requests

from pumplink.cluster.partitions import partition_of
from pumplink.devices.simulator import SimulatedPump
from tests.cluster.nodes import Sampler, pumped_cluster, sql
from tests.conftest import ADMIN
from tests.support import MQTT_URL, Server, wait_until

pytestmark = pytest.mark.slow

SESSION_S = 3.0  # short, so a dead node's partitions move within the test
PUMPS = 300
NODES = ("n1", "n2", "n3")


@pytest.fixture
def cluster(zookeeper, pg_factory, run_tag, log_dir):
    with pumped_cluster(NODES, url=pg_factory(), zookeeper=zookeeper, run_tag=run_tag, log_dir=log_dir,
                        pumps=PUMPS, session_s=SESSION_S, label="cluster") as cluster:
        yield cluster


_tokens: dict[str, str] = {}


def _admin(server: Server):
    # One login per server (bcrypt takes a while): runs of a few seconds start close together.
    if server.base not in _tokens:
        r = server.api().post("login", {"email": ADMIN[0], "password": ADMIN[1]})
        assert r.status_code == 200, r.text
        _tokens[server.base] = r.json()["access_token"]
    return server.api(_tokens[server.base])


def _owner(sampler: Sampler, device_id: int) -> str:
    owners = sampler.owners()[partition_of(device_id)]
    assert len(owners) == 1, owners
    return owners[0]


def _activate(nodes, sampler, device_id: int, duration_s: int) -> dict:
    owner = _owner(sampler, device_id)
    r = _admin(nodes[owner]).post("activate", {"device_id": device_id, "duration_s": duration_s})
    assert r.status_code in (200, 201, 202), (owner, r.status_code, r.text)
    return {"device": device_id, "owner": owner, "activation": r.json()["activation"]["id"]}


def test_three_nodes_share_300_pumps_and_an_activation_at_the_owner_starts_its_pump(cluster):
    nodes, sampler, fleet = cluster["nodes"], cluster["sampler"], cluster["fleet"]
    sizes = sorted(len(parts) for parts in sampler.last.values())
    assert sizes == [21, 21, 22]
    # Ten devices of each node.
    chosen = {name: [] for name in NODES}
    for d in cluster["ids"]:
        owner = _owner(sampler, d)
        if len(chosen[owner]) < 10:
            chosen[owner].append(d)
    started = [_activate(nodes, sampler, d, 2) for ds in chosen.values() for d in ds]
    fleet.wait_for(lambda: all(fleet.runs[s["device"]] for s in started), 15, "every chosen pump on")
    for s in started:
        on = next(c for c in fleet.commands[s["device"]] if c["action"] == "on")
        assert on["node"] == s["owner"] and isinstance(on["epoch"], int)  # who sent it, under which epoch
    fleet.wait_for(lambda: all(fleet.state[s["device"]] == "off" for s in started), 15, "every chosen pump off")
    # A device created while the nodes run (here straight in the database) starts on its owner only.
    (new,), = sql(cluster["url"], "INSERT INTO device (name, protocol, max_run_minutes, created_at, site_id) "
                                   "VALUES ('Late pump', 'pumplink', 60, now(), (SELECT id FROM site WHERE is_default)) "
                                   "RETURNING id")
    pump = SimulatedPump(MQTT_URL, fleet.prefix, new).start()
    try:
        owner = _owner(sampler, new)
        wait_until(lambda: _admin(nodes[owner]).get(f"devices/{new}").json().get("state") == "off", timeout=10,
                   what="the new device running on its owner")
        _activate(nodes, sampler, new, 1)
        pump.wait_for(lambda p: p.runs, 10, "the new pump on")
        assert pump.commands[0]["action"] == "on"
    finally:
        pump.stop()
    assert sampler.samples >= 20 and sampler.doubles == []


def test_a_killed_nodes_partitions_are_taken_over_and_its_runs_end_on_time(cluster):
    nodes, sampler, fleet, url = cluster["nodes"], cluster["sampler"], cluster["fleet"], cluster["url"]
    victim = "n2"
    theirs = [d for d in cluster["ids"] if _owner(sampler, d) == victim]
    short, long_, scheduled = theirs[:8], theirs[8:16], theirs[16:18]
    # The long runs' pumps keep no timer of their own: only a server's OFF ends them.
    fleet.no_timer.update(long_)
    runs = [_activate(nodes, sampler, d, 3) for d in short] + [_activate(nodes, sampler, d, 10) for d in long_]
    fleet.wait_for(lambda: all(fleet.runs[r["device"]] for r in runs), 15, "the victim's pumps on")
    assert all(fleet.state[r["device"]] == "on" for r in runs)  # none ended before the kill
    # Schedules of its devices: one due while nobody owns them, one after the takeover.
    for device_id, ahead in zip(scheduled, (1.5, SESSION_S + 6)):
        start = dt.datetime.fromtimestamp(time.time() + ahead, dt.timezone.utc).isoformat(timespec="milliseconds")
        r = _admin(nodes[victim]).post("schedules", {"device_id": device_id, "start_time": start, "duration_s": 1})
        assert r.status_code == 201, r.text
    nodes[victim].kill()
    killed = time.monotonic()
    sampler.dead.add(victim)
    survivors = [n for n in NODES if n != victim]
    wait_until(lambda: sampler.settled(survivors), timeout=SESSION_S + 10, interval=0.1, what="takeover")
    took = time.monotonic() - killed
    assert took <= SESSION_S + 3, f"partitions owned again {took:.1f}s after the kill"
    print(f"takeover after SIGKILL of {victim} (session timeout {SESSION_S:g}s): {took:.2f}s")
    # Runs that ended meanwhile are closed by the new owners' recovery.
    ids = [r["activation"] for r in runs]
    wait_until(lambda: not sql(url, "SELECT id FROM activation WHERE id = ANY(%s) AND state IN "
                                     "('queued', 'starting', 'running') AND ends_at < now() at time zone 'utc'",
                                (ids,)), timeout=5, interval=0.2, what="the ended runs closed")
    # The long ones end on time: a survivor's OFF, no pump on 2 s past its end.
    fleet.wait_for(lambda: all(fleet.state[d] == "off" for d in long_), 15, "the long runs' pumps off")
    for d in long_:
        run = fleet.runs[d][-1]
        assert run["off"] - run["planned_off"] <= 2.0, (d, run)
        off = [c for c in fleet.commands[d] if c["action"] == "off"]
        assert off and off[-1]["node"] in survivors, fleet.commands[d]
    # Both schedules fired, on a survivor (the one due in the gap late, within its grace).
    fleet.wait_for(lambda: all(any(c["action"] == "on" for c in fleet.commands[d]) for d in scheduled),
                   SESSION_S + 15, "the victim's schedules fired")
    for d in scheduled:
        assert next(c for c in fleet.commands[d] if c["action"] == "on")["node"] in survivors
    # No accepted activation is left without a final state.
    wait_until(lambda: not sql(url, "SELECT id FROM activation WHERE id = ANY(%s) AND state IN "
                                     "('queued', 'starting', 'running', 'stopping')", (ids,)),
               timeout=10, interval=0.2, what="every run final")
    assert sampler.doubles == []


def test_sigterm_hands_partitions_over_at_once_and_the_new_owner_ends_the_runs(cluster):
    nodes, sampler, fleet, url = cluster["nodes"], cluster["sampler"], cluster["fleet"], cluster["url"]
    leaving = "n3"
    theirs = [d for d in cluster["ids"] if _owner(sampler, d) == leaving][:6]
    fleet.no_timer.update(theirs)  # only a server's OFF ends these runs
    runs = [_activate(nodes, sampler, d, 6) for d in theirs]
    fleet.wait_for(lambda: all(fleet.state[r["device"]] == "on" for r in runs), 15, "the leaving node's pumps on")
    sampler.dead.add(leaving)
    began = time.monotonic()
    nodes[leaving].stop()  # SIGTERM
    stayed = [n for n in NODES if n != leaving]
    wait_until(lambda: sampler.settled(stayed), timeout=SESSION_S + 10, interval=0.1, what="handover")
    took = time.monotonic() - began
    # A planned leave does not wait for the session to expire.
    assert took < SESSION_S, f"handover took {took:.1f}s"
    print(f"clean handover (SIGTERM) of {leaving}'s partitions: {took:.2f}s")
    fleet.wait_for(lambda: all(fleet.state[d] == "off" for d in theirs), 15, "the runs ended")
    for d in theirs:
        run = fleet.runs[d][-1]
        assert run["off"] - run["planned_off"] <= 2.0, (d, run)
        assert fleet.commands[d][-1]["action"] == "off" and fleet.commands[d][-1]["node"] in stayed
    wait_until(lambda: not sql(url, "SELECT id FROM activation WHERE id = ANY(%s) AND state IN "
                                     "('queued', 'starting', 'running', 'stopping')",
                                ([r["activation"] for r in runs],)),
               timeout=10, interval=0.2, what="every run final")
    metrics = requests.get(f"{nodes[stayed[0]].base}/metrics", timeout=5).text
    assert "pumplink_cluster_partitions_owned" in metrics and 'pumplink_cluster_handovers_total{change="acquired"}' in metrics
    assert sampler.doubles == []


def test_a_frozen_node_is_replaced_and_after_waking_commands_nothing_under_its_old_epochs(cluster):
    nodes, sampler, fleet, url = cluster["nodes"], cluster["sampler"], cluster["fleet"], cluster["url"]
    frozen = "n1"
    before = requests.get(f"{nodes[frozen].base}/api/v1/ready", timeout=5).json()["cluster"]
    old_epochs = {int(p): e for p, e in before["epochs"].items()}
    theirs = [d for d in cluster["ids"] if _owner(sampler, d) == frozen][:6]
    first = [_activate(nodes, sampler, d, 3) for d in theirs]
    fleet.wait_for(lambda: all(fleet.state[d] == "on" for d in theirs), 15, "the frozen node's pumps on")
    sampler.dead.add(frozen)  # its /ready cannot answer while frozen, nor be believed right after
    pgid = nodes[frozen].proc.pid
    os.killpg(pgid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        survivors = [n for n in NODES if n != frozen]
        wait_until(lambda: sampler.settled(survivors), timeout=SESSION_S + 10, interval=0.1, what="takeover")
        print(f"takeover from a frozen {frozen}: {time.monotonic() - stopped:.2f}s")
        wait_until(lambda: not sql(url, "SELECT id FROM activation WHERE id = ANY(%s) AND state IN "
                                         "('queued', 'starting', 'running', 'stopping')",
                                    ([r["activation"] for r in first],)),
                   timeout=10, interval=0.2, what="the first runs closed by the new owners")
        # New runs by the new owners; the frozen node's OFF timers for the first runs are overdue.
        for d in theirs:
            _activate(nodes, sampler, d, 4)
        fleet.wait_for(lambda: all(fleet.state[d] == "on" for d in theirs), 15, "the new runs on")
    finally:
        os.killpg(pgid, signal.SIGCONT)
    woke = time.monotonic()
    fleet.wait_for(lambda: all(fleet.state[d] == "off" for d in theirs), 15, "the new runs ended")
    for d in theirs:
        run = fleet.runs[d][-1]
        assert run["off"] >= run["planned_off"] - 0.5, (d, run, fleet.commands[d][-4:])  # not cut short
    wait_until(lambda: (requests.get(f"{nodes[frozen].base}/api/v1/ready", timeout=5).json()
                        .get("cluster", {}).get("session") == "connected"), timeout=20, what="the woken node back")
    # Whatever it sent after waking carries a newer epoch than it held before (it owns again).
    late = [(d, c) for d in fleet.device_ids for c in fleet.commands[d] if c.get("node") == frozen and c["at"] >= woke]
    assert all(c["epoch"] > old_epochs.get(partition_of(d), -1) for d, c in late), late
    # The database holds newer epochs for its old partitions: a late write of its old epoch is refused.
    held = dict(sql(url, "SELECT partition, epoch FROM partition_epoch"))
    assert all(held[p] > e for p, e in old_epochs.items())
    after = requests.get(f"{nodes[frozen].base}/api/v1/ready", timeout=5).json()["cluster"]
    print(f"woken node's handovers: {after['handovers']}; commands it sent after waking: {len(late)}")


def test_seeded_rounds_of_sigkill_and_restart(cluster):
    """Each round (seeded: victim, devices, run lengths): runs on the victim's pumps, SIGKILL,
    takeover within the session timeout + 3 s, every run ends on time and final, the victim
    restarts and gets its share back. PUMPLINK_TEST_KILL_ROUNDS sets how many (the issue's
    figure is 10; the default keeps make test-cluster short)."""
    import random

    nodes, sampler, fleet, url = cluster["nodes"], cluster["sampler"], cluster["fleet"], cluster["url"]
    rounds = int(os.environ.get("PUMPLINK_TEST_KILL_ROUNDS", "3"))
    takeovers, over_runs = [], []
    used: set[int] = set()
    for seed in range(rounds):
        rng = random.Random(seed)
        victim = rng.choice(NODES)
        theirs = [d for d in cluster["ids"] if _owner(sampler, d) == victim and d not in used]
        chosen = rng.sample(theirs, 8)
        used.update(chosen)
        short, long_ = chosen[:4], chosen[4:]
        fleet.no_timer.update(long_)
        runs = ([_activate(nodes, sampler, d, rng.choice((2, 3))) for d in short]
                + [_activate(nodes, sampler, d, rng.choice((7, 8))) for d in long_])
        fleet.wait_for(lambda: all(fleet.runs[d] and fleet.state[d] == "on" for d in chosen), 15, "pumps on")
        nodes[victim].kill()
        killed = time.monotonic()
        sampler.dead.add(victim)
        survivors = [n for n in NODES if n != victim]
        wait_until(lambda: sampler.settled(survivors), timeout=SESSION_S + 10, interval=0.1, what="takeover")
        takeovers.append(time.monotonic() - killed)
        assert takeovers[-1] <= SESSION_S + 3, (seed, victim, takeovers[-1])
        fleet.wait_for(lambda: all(fleet.state[d] == "off" for d in chosen), 15, "the runs ended")
        over_runs += [fleet.runs[d][-1]["off"] - fleet.runs[d][-1]["planned_off"] for d in long_]
        assert max(over_runs) <= 2.0, (seed, victim, over_runs)
        ids = [r["activation"] for r in runs]
        wait_until(lambda: not sql(url, "SELECT id FROM activation WHERE id = ANY(%s) AND state IN "
                                         "('queued', 'starting', 'running', 'stopping')", (ids,)),
                   timeout=10, interval=0.2, what="every run final")
        nodes[victim].start(timeout=60)
        sampler.dead.discard(victim)
        wait_until(lambda: sampler.settled(NODES), timeout=30, interval=0.1, what="the victim's share back")
    print(f"{rounds} SIGKILL rounds: takeover {min(takeovers):.2f}–{max(takeovers):.2f}s; "
          f"longest over-run past a run's end {max(over_runs):.2f}s")
    assert sampler.doubles == []
