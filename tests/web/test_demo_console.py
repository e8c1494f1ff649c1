"""`pumplink demo` prints the console's address first, and opening it shows the demo's pumps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from playwright.sync_api import expect

from tests.support import PUMPLINK_BIN, free_port


def test_demo_prints_the_console_first_and_it_shows_the_pumps(tmp_path, tabs, shots):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUMPLINK_")}
    env["PUMPLINK_BIND"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen([PUMPLINK_BIN, "demo"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Ctrl-C stops everything" not in "".join(out):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(out)
            out.append(line)
        printed = [x for x in out if x.strip()]
        assert printed[0].startswith(f"PumpLink console: http://127.0.0.1:{port}/"), printed[:3]
        url = re.search(r"(http://\S+)", printed[0]).group(1)
        email, password = re.search(r"admin login: (\S+) / (\S+)", "".join(out)).groups()
        tab = tabs(url.rstrip("/")).open().sign_in(email, password)
        tiles = tab.page.locator("article.tile")
        expect(tiles).to_have_count(3)
        for i in range(3):
            expect(tiles.nth(i)).to_have_attribute("data-available", "true", timeout=15_000)
        tab.shot(shots, "demo-desktop")
        tab.assert_clean()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
