"""A standalone ZooKeeper server for the tests: Debian's jars, a free port, data in a temp dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from tests.support import free_port

JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest names the jars it needs
START_TIMEOUT_S = 60.0


class ZooKeeper:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.hosts = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (home / "data").mkdir(parents=True, exist_ok=True)
        # Session timeouts from 1 s to 30 s may be asked for; the tests choose theirs.
        (home / "zoo.cfg").write_text(
            f"tickTime=200\ndataDir={home / 'data'}\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
            "minSessionTimeout=1000\nmaxSessionTimeout=30000\nadmin.enableServer=false\n"
            "4lw.commands.whitelist=ruok\n"
            # A test server: no fsync and no 64 MB log preallocation, which a loaded disk makes slow.
            # A SIGKILLed server still keeps what it wrote (the page cache), so sessions survive a restart.
            "forceSync=no\npreAllocSize=1024\n"
        )

    def start(self) -> "ZooKeeper":
        if not JAR.exists() or shutil.which("java") is None:
            raise RuntimeError("ZooKeeper is not installed (apt-get install zookeeper); .ci/run installs it")
        log = open(self.home / "zookeeper.log", "ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-cp", str(JAR), "org.apache.zookeeper.server.ZooKeeperServerMain", str(self.home / "zoo.cfg")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:  # a process start-up: nothing to wait on but the port
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited: see {self.home / 'zookeeper.log'}")
            if self._ok() and self._takes_sessions(deadline - time.monotonic()):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"ZooKeeper did not answer in {START_TIMEOUT_S} s")

    def _ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"ruok")
                return s.recv(4) == b"imok"
        except OSError:
            return False

    def _takes_sessions(self, within: float) -> bool:
        # Ready means a session can be created (its first write), not just an open port.
        client = KazooClient(hosts=self.hosts, timeout=10)
        try:
            client.start(timeout=max(1.0, within))
            return True
        except KazooTimeoutError:
            return False
        finally:
            client.stop()
            client.close()

    def kill(self) -> None:
        """Gone at once, as after a crash: clients see their connection drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
