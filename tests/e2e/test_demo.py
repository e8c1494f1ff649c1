"""`pumplink demo` as a newcomer runs it: serves, lists online pumps, turns one on, stops cleanly."""

import os
import re
import signal
import subprocess
import time

import psutil
import requests

from tests.support import PUMPLINK_BIN, free_port, wait_until


def test_demo_serves_pumps_and_leaves_nothing_behind(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUMPLINK_")}
    env["PUMPLINK_BIND"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen([PUMPLINK_BIN, "demo"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(out)
            out.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(out)
        assert f"http://127.0.0.1:{port}" in text, text
        email, password = re.search(r"admin login: (\S+) / (\S+)", text).groups()
        base = f"http://127.0.0.1:{port}/api/v1"
        token = requests.post(f"{base}/login", json={"email": email, "password": password}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        devices = wait_until(lambda: (d := requests.get(f"{base}/devices", headers=auth).json()["devices"])
                             and all(x["online"] for x in d) and d, what="simulated pumps online")
        assert len(devices) == 3
        # The printed activation line, as a user would paste it.
        line = next(x for x in out if "/activate" in x).strip()
        shell = f"T={token}; {line}"
        answer = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=10).stdout
        assert '"activation"' in answer, answer
        wait_until(lambda: requests.get(f"{base}/devices/1", headers=auth).json()["state"] == "on",
                   what="pump 1 on")
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {alive}"
