"""Browser fixtures: Debian's Chromium driven by Playwright for Python, against real servers.

Chromium must be at /usr/bin/chromium (.ci/run installs it): a missing browser fails the tests,
it does not skip them. Each page records what the browser console and the page reported, and a
test ends by asserting there was no error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("PUMPLINK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
ZONE = "America/Sao_Paulo"


@pytest.fixture(scope="session")
def chromium():
    """One browser for the run; Playwright gives it a fresh temporary profile (user data dir)."""
    assert Path(CHROMIUM).exists(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def shots(log_dir) -> Path:
    """Screenshots of this run (the best are copied to docs/screenshots by hand)."""
    path = log_dir / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Tab:
    """One page of the console with what its console said."""

    def __init__(self, page, base: str):
        self.page, self.base = page, base
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        # Nothing the console loads or calls may come from anywhere but its server.
        origin = base.rstrip("/")
        ws_origin = origin.replace("http", "ws", 1)
        page.on("request", lambda req: req.url.startswith((origin + "/", ws_origin + "/", "data:"))
                or self.errors.append(f"request outside the server: {req.url}"))
        page.on("websocket", lambda ws: ws.url.startswith(ws_origin + "/")
                or self.errors.append(f"WebSocket outside the server: {ws.url}"))
        page.set_default_timeout(10_000)

    def open(self, screen: str = "pumps"):
        self.page.goto(f"{self.base}/#/{screen}")
        return self

    def go(self, screen: str):
        self.page.evaluate("s => { location.hash = '#/' + s; }", screen)
        self.page.locator("main h1").first.wait_for()
        return self

    def sign_in(self, email: str, password: str):
        page = self.page
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Sign out").wait_for()
        return self

    def tile(self, device_id: int):
        return self.page.locator(f'article.tile[data-device-id="{device_id}"]')

    def start(self, device_id: int, amount: str, unit: str = "s"):
        """Asks a pump's tile for a run, as a person does; returns the tile."""
        tile = self.tile(device_id)
        tile.get_by_label("Run for").fill(amount)
        tile.get_by_label("Unit").select_option(unit)
        tile.get_by_role("button", name="Start").click()
        return tile

    def axe(self, name: str):
        """axe-core (bundled by axe-playwright-python) on the page as it is: no serious or critical violation."""
        from axe_playwright_python.sync_playwright import Axe

        results = Axe().run(self.page)
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
               for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, f"{name}: accessibility violations {bad}"

    def shot(self, shots: Path, name: str):
        # Desktop pages whole; a phone's first screenful, as a person holding it sees it.
        phone = self.page.viewport_size["width"] < 700
        self.page.screenshot(path=str(shots / f"{name}.png"), full_page=not phone)

    def assert_clean(self, allow: tuple[str, ...] = ()):
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        assert not errors, f"the browser console reported errors: {errors}"


@pytest.fixture
def tabs(chromium):
    """Opens console pages, each in a context of its own (its own storage, like another browser)."""
    made = []

    def make(base: str, viewport: dict | None = None) -> Tab:
        # A zone far from the server's UTC, so a time shown in the wrong zone is visible.
        context = chromium.new_context(viewport=viewport or DESKTOP, timezone_id=ZONE, locale="en-GB")
        tab = Tab(context.new_page(), base)
        made.append(context)
        return tab

    yield make
    for context in made:
        context.close()


@pytest.fixture(scope="module")
def console_server(server_factory):
    """A server for the console: rotating refresh tokens, as a web client that stores them should get."""
    return server_factory(PUMPLINK_REFRESH_ROTATION="true")
