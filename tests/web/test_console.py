"""The console in a real browser: the journeys people make, against a real server and pumps."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.conftest import ADMIN


def test_smoke(console_server, world, tabs, shots):
    w = world.__class__(console_server)
    dev = w.device("Smoke pump")
    w.pump(dev)
    tab = tabs(console_server.base).open()
    tab.sign_in(*ADMIN)
    expect(tab.tile(dev)).to_be_visible()
    tab.page.screenshot(path=str(shots / "smoke.png"))
    tab.assert_clean()
    w.close()
