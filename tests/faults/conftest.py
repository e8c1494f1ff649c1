"""Tools of the fault tests: pumps that remember what each command was for, a private PostgreSQL."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from pumplink.devices.simulator import SimulatedPump
from tests.support import free_port, wait_until

TERMINAL = ("completed", "stopped", "failed", "cancelled")


class RecordingPump(SimulatedPump):
    """A SimulatedPump that also keeps each command's body, so its runs can be judged
    against the activations the server recorded (``activation_id``, ``sent_at``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bodies: dict[str, dict] = {}

    def _on_message(self, client, userdata, msg):
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            body = json.loads(msg.payload)
            self.bodies[body["id"]] = body
        super()._on_message(client, userdata, msg)

    def first_ons(self) -> dict:
        """activation id -> when the pump first heard an ON for it (monotonic seconds)."""
        first: dict = {}
        seen: set = set()
        with self._cond:
            commands = list(self.commands)
        for c in commands:
            if c["action"] != "on" or c["id"] in seen:
                continue  # a re-sent command (same id) does not restart the pump's timer
            seen.add(c["id"])
            first.setdefault(self.bodies.get(c["id"], {}).get("activation_id"), c["at"])
        return first


def start_pump(world, device_id: int, mqtt_url: str) -> RecordingPump:
    pump = RecordingPump(mqtt_url, world.server.prefix, device_id, legacy_base=world.server.legacy_base).start()
    world.pumps.append(pump)
    return pump


def overruns(pump: RecordingPump, durations: dict[int, float], slack_s: float) -> list[str]:
    """Runs of ``pump`` that went on more than ``slack_s`` past their intended end.

    A run's intended end is the latest (first ON for an activation + that activation's
    duration, as the user asked for it) among the activations whose ON reached the pump
    during the run: a server that sent a second ON for one activation would show here.
    """
    first = pump.first_ons()
    problems = []
    with pump._cond:
        runs = [dict(r) for r in pump.runs]
    for run in runs:
        off = run["off"] if run["off"] is not None else math.inf
        served = {aid: t for aid, t in first.items() if run["on"] - 0.05 <= t <= off}
        if not served or any(aid not in durations for aid in served):
            problems.append(f"pump {pump.device_id}: run {run} served activations {served} that are not on record")
            continue
        intended_end = max(t + durations[aid] for aid, t in served.items())
        if off - intended_end > slack_s:
            problems.append(f"pump {pump.device_id}: run of activations {sorted(served)} ended "
                            f"{off - intended_end:.2f}s past its intended end ({run})")
    return problems


def all_pages(api, path: str, **params) -> list[dict]:
    items, offset = [], 0
    while True:
        query = "&".join([f"limit=500&offset={offset}"] + [f"{k}={v}" for k, v in params.items()])
        r = api.get(f"{path}?{query}")
        assert r.status_code == 200, r.text
        page = r.json()["items"]
        items.extend(page)
        if len(page) < 500:
            return items
        offset += 500


def wait_state(api, device_id: int, state: str, timeout: float = 10.0) -> dict:
    return wait_until(lambda: (d := api.get(f"devices/{device_id}").json()).get("state") == state and d,
                      timeout=timeout, what=f"device {device_id} {state}")


def wait_activation(api, activation_id: int, states, timeout: float = 10.0) -> dict:
    states = (states,) if isinstance(states, str) else tuple(states)
    return wait_until(lambda: (a := api.get(f"activations/{activation_id}").json()).get("state") in states and a,
                      timeout=timeout, what=f"activation {activation_id} in {states}")


# --- a PostgreSQL cluster of the test's own ----------------------------------------------------
def _pg_bin() -> Path | None:
    configured = os.environ.get("PUMPLINK_TEST_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """initdb + pg_ctl in a temp dir, on a free port: stopping it disturbs nobody else's tests.

    PostgreSQL refuses to run as root, so as root its binaries run as the ``postgres`` user.
    """

    def __init__(self, bin_dir: Path, root: Path):
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(self.as_user + [str(self.bin / args[0]), *args[1:]], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> "PrivatePostgres":
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        return self

    def start(self) -> None:
        # -l: pg_ctl must not keep our stdout open; -w: return once it accepts connections.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "postgres.log").read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def running_postgres():
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed; set PUMPLINK_TEST_PG_BIN")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root needs runuser to start PostgreSQL as the postgres user")
    root = Path(tempfile.mkdtemp(prefix="pumplink-pg-"))
    pg = PrivatePostgres(bin_dir, root)
    try:
        pg.init().start()
        yield pg
    finally:
        if pg.running():
            with contextlib.suppress(subprocess.SubprocessError):
                pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres():
    """A PostgreSQL cluster of the module's own, which its tests may stop and start."""
    with running_postgres() as pg:
        yield pg
