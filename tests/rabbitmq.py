"""A private RabbitMQ node with its MQTT plugin, for the second-broker smoke test.

Debian's rabbitmq-server, started from its own scripts (the /usr/sbin wrapper switches to the
``rabbitmq`` user and that user's cookie). Everything of this node is its own: name, ports, epmd,
Erlang cookie (HOME is its temp dir), config, plugins file, data and logs. /etc/rabbitmq's files,
which describe the machine's shared node, are not read, and that node is never touched.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support import free_port

RABBITMQ_SERVER = Path("/usr/sbin/rabbitmq-server")  # what the package installs; its presence is the test's condition
SCRIPTS = Path("/usr/lib/rabbitmq/bin")  # the scripts the wrapper calls, run here as the calling user
EPMD = "epmd"
START_TIMEOUT_S = 90.0  # a first boot takes 10-15 s here; more on a loaded machine
STOP_TIMEOUT_S = 30.0


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:  # four binds in a row may, rarely, be handed the same port
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class RabbitMQ:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.node = f"pumplink-{secrets.token_hex(4)}@localhost"
        self.amqp_port, self.mqtt_port, self.dist_port, self.epmd_port = _free_ports(4)
        self.url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.proc: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        home.mkdir(parents=True, exist_ok=True)
        (home / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"  # as the test Mosquitto: no credentials (the guest user)
            "log.console = false\n"
        )
        (home / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq's, which names the shared node

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.home),  # the node writes its own .erlang.cookie here; rabbitmqctl reads it
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.home / "advanced.config"),  # absent: none
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # An epmd of its own: the shared node's stays untouched, and nothing outlives the test.
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def start(self) -> "RabbitMQ":
        if not RABBITMQ_SERVER.exists():
            raise RuntimeError("RabbitMQ is not installed (apt-get install rabbitmq-server); .ci/run installs it")
        log = open(self.home / "rabbitmq.log", "ab")
        self.epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # Its own process group: the script, the Erlang VM and the helpers it spawns stop together.
        self.proc = subprocess.Popen([str(SCRIPTS / "rabbitmq-server")], env=self.env(), cwd=self.home,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:  # a process start-up: nothing to wait on but the port
            if (code := self.proc.poll()) is not None:
                self.stop()
                raise RuntimeError(f"RabbitMQ exited with {code}: see {self.home / 'rabbitmq.log'} and log/")
            if self._connack():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"RabbitMQ's MQTT listener did not answer in {START_TIMEOUT_S} s: see {self.home / 'log'}")

    def _connack(self) -> bool:
        """Ready means an MQTT 3.1.1 client is accepted (CONNACK 0), not just an open port."""
        client_id = b"pumplink-ready"
        body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=2) as s:
                s.sendall(bytes([0x10, len(body)]) + body)
                answer = s.recv(4)
                s.sendall(b"\xe0\x00")  # DISCONNECT
                return answer == b"\x20\x02\x00\x00"
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the node's process group (RabbitMQ stops gracefully on it), SIGKILL if it hangs."""
        if self.proc is not None:
            pgid = self.proc.pid
            for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                if self._group_gone(pgid, wait):
                    break
            self.proc = None
        if self.epmd is not None:
            self.epmd.terminate()
            try:
                self.epmd.wait(10)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait(10)
            self.epmd = None

    def _group_gone(self, pgid: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.proc.poll()  # reaps the script once it exits
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False
