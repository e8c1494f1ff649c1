"""``pumplink demo``: an embedded broker, the SQLite database, the server and simulated pumps.

Everything it starts it stops on Ctrl-C (or SIGTERM), leaving no process behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from pumplink.config import load
from pumplink.devices.simulator import SimulatedPump

BROKER_YAML = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class Demo:
    def __init__(self, devices: int):
        self.devices = devices
        self.workdir = Path(tempfile.mkdtemp(prefix="pumplink-demo-"))
        self.procs: list[subprocess.Popen] = []
        self.pumps: list[SimulatedPump] = []

    def start_broker(self) -> str:
        port = _free_port()
        conf = self.workdir / "broker.yaml"
        conf.write_text(BROKER_YAML.format(port=port))
        log_path = self.workdir / "broker.log"
        proc = subprocess.Popen([_bin("amqtt"), "-c", str(conf)], stdout=open(log_path, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        # amqtt stays alive even when it could not bind, so its log must say it is listening.
        ready = f"bind to 127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the embedded broker exited; see {log_path}")
            if ready in log_path.read_text(errors="replace"):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    return f"mqtt://127.0.0.1:{port}"
            time.sleep(0.1)
        raise RuntimeError(f"the embedded broker did not start listening; see {log_path}")

    def start_server(self, env: dict, base: str) -> None:
        log_path = self.workdir / "server.log"
        proc = subprocess.Popen([_bin("pumplink"), "serve"], env=env, stdout=open(log_path, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited; see {log_path}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within a minute; see {log_path}")

    def ensure_devices(self, base: str, token: str) -> list[int]:
        auth = {"Authorization": f"Bearer {token}"}
        ids = [d["id"] for d in requests.get(f"{base}/devices", headers=auth, timeout=10).json()["devices"]]
        while len(ids) < self.devices:
            r = requests.post(f"{base}/devices", json={"name": f"Pump {len(ids) + 1}"}, headers=auth, timeout=10)
            r.raise_for_status()
            ids.append(r.json()["id"])
        return ids[: self.devices]

    def stop(self) -> None:
        for pump in self.pumps:
            with contextlib.suppress(Exception):
                pump.stop()
        # The server first (it sends nothing more), then the broker.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def run_demo(args) -> int:
    config = load()  # validates what the user set
    demo = Demo(args.devices)
    stop = threading.Event()
    # Ctrl-C and SIGTERM both end the wait below, so the clean-up always runs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        mqtt_url = demo.start_broker()
        email = config.admin_email or "admin@example.org"
        password = config.admin_password or secrets.token_urlsafe(12)
        env = dict(os.environ)
        env.update({
            "PUMPLINK_MQTT_URL": mqtt_url,
            "PUMPLINK_MQTT_PROTOCOL": "3.1.1",  # the embedded broker (amqtt) speaks MQTT 3.1.1 only
            "PUMPLINK_BIND": config.bind,
            "PUMPLINK_DATABASE_URL": config.database_url,
            "PUMPLINK_AUTO_APPROVE": "true",
            "PUMPLINK_JWT_SECRET": config.jwt_secret or secrets.token_urlsafe(48),
            "PUMPLINK_ADMIN_EMAIL": email,
            "PUMPLINK_ADMIN_PASSWORD": password,
            "PUMPLINK_PUSH_ENABLED": os.environ.get("PUMPLINK_PUSH_ENABLED", "false"),
        })
        host, port = config.bind_host_port
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        base = f"{url}/api/v1"
        demo.start_server(env, base)
        token = requests.post(f"{base}/login", json={"email": email, "password": password}, timeout=10).json()["access_token"]
        for device_id in demo.ensure_devices(base, token):
            demo.pumps.append(SimulatedPump(mqtt_url, config.mqtt_prefix, device_id,
                                            legacy_base=config.legacy_base).start())
        print(f"""PumpLink console: {url}/   (open it in a browser)
  admin login: {email} / {password}
  simulated pumps: devices {', '.join(str(p.device_id) for p in demo.pumps)} (broker {mqtt_url})
  logs in {demo.workdir}

Or with curl:
  T=$(curl -s -XPOST {base}/login -d '{{"email":"{email}","password":"{password}"}}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["access_token"])')
  curl -s -XPOST {base}/activate -H "Authorization: Bearer $T" -d '{{"device_id":1,"duration":0.5}}'
  curl -s {base}/devices/1 -H "Authorization: Bearer $T"
  curl -s {base}/devices/1/sessions -H "Authorization: Bearer $T"

Ctrl-C stops everything.""", flush=True)
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in demo.procs):
                print("a demo process exited unexpectedly; stopping", file=sys.stderr)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"pumplink demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
        print("demo stopped", flush=True)
