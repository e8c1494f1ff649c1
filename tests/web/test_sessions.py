"""The console carries on through an expired token and a server restart."""

from __future__ import annotations

import datetime as dt

from playwright.sync_api import expect

from tests.conftest import ADMIN, World

TTL_S = 4


def stored_refresh(tab) -> str:
    return tab.page.evaluate("() => JSON.parse(localStorage.getItem('pumplink.session')).refresh")


def test_a_token_expires_mid_session_and_the_console_carries_on(server_factory, tabs):
    server = server_factory(PUMPLINK_REFRESH_ROTATION="true", PUMPLINK_ACCESS_TOKEN_TTL_S=str(TTL_S))
    w = World(server)
    try:
        device = w.device("Token pump")
        w.pump(device)
        user = w.user()
        tab = tabs(server.base)
        # The page's clock is frozen after sign-in: its timers (the refresh ahead of expiry) stop,
        # as in a tab left asleep, while the server's time runs on and the token expires.
        tab.page.clock.install()
        tab.open().sign_in(user.email, "password-123")
        live = tab.page.locator("[data-live]")
        expect(live).to_have_attribute("data-live", "true")
        first = stored_refresh(tab)
        tab.page.clock.pause_at(dt.datetime.now() + dt.timedelta(seconds=1))
        # The server closes the live feed when its token expires: the console says it is offline.
        expect(live).to_have_attribute("data-live", "false", timeout=(TTL_S + 5) * 1000)
        expect(live).to_contain_text("Offline")
        # An action with the expired token: refused (401), refreshed with rotation, done.
        tile = tab.start(device, "2")
        expect(tile.get_by_role("status")).to_contain_text("started")
        rotated = stored_refresh(tab)
        assert rotated != first, "the rotated refresh token was not stored"
        # The tab wakes up: the feed reconnects with the fresh token and shows the run live.
        tab.page.clock.resume()
        expect(live).to_have_attribute("data-live", "true", timeout=15_000)
        w._admin = None  # the test's own admin token has expired too
        assert w.admin.post("activate", {"device_id": device, "duration_s": 2}).status_code == 202
        expect(tile).to_have_attribute("data-state", "on", timeout=10_000)
        expect(tile).to_have_attribute("data-state", "off", timeout=10_000)
        # Refreshes ahead of expiry keep it signed in and live for several token lifetimes.
        tab.page.wait_for_function(
            "before => JSON.parse(localStorage.getItem('pumplink.session')).refresh !== before",
            arg=stored_refresh(tab), timeout=(TTL_S + 5) * 1000)
        expect(live).to_have_attribute("data-live", "true")
        expect(tab.page.get_by_role("button", name="Sign out")).to_be_visible()
        tab.assert_clean(allow=("status of 401",))  # the expired token's refusal, then the retry
    finally:
        w.close()


def test_the_server_restarts_and_the_console_reconnects(server_factory, tabs, shots):
    server = server_factory(PUMPLINK_REFRESH_ROTATION="true")
    w = World(server)
    try:
        device = w.device("Restart pump")
        w.pump(device)
        tab = tabs(server.base).open().sign_in(*ADMIN)
        live = tab.page.locator("[data-live]")
        expect(live).to_have_attribute("data-live", "true")
        expect(tab.tile(device)).to_have_attribute("data-available", "true")
        server.stop()
        expect(live).to_have_attribute("data-live", "false")
        expect(live).to_contain_text("Offline")
        tab.shot(shots, "offline-desktop")
        server.start()
        expect(live).to_have_attribute("data-live", "true", timeout=20_000)
        assert w.admin.post("activate", {"device_id": device, "duration_s": 2}).status_code == 202
        expect(tab.tile(device)).to_have_attribute("data-state", "on", timeout=10_000)
        expect(tab.tile(device)).to_have_attribute("data-state", "off", timeout=10_000)
        # While the server was away the browser logged the failed connections; nothing else.
        tab.assert_clean(allow=("WebSocket connection to", "ERR_CONNECTION_REFUSED", "Failed to load resource"))
    finally:
        w.close()


def test_two_tabs_share_a_rotating_login(server_factory, tabs):
    """Rotation spends each refresh token once: two tabs of one browser take turns and both stay in."""
    from tests.web.conftest import Tab

    server = server_factory(PUMPLINK_REFRESH_ROTATION="true", PUMPLINK_ACCESS_TOKEN_TTL_S=str(TTL_S))
    w = World(server)
    try:
        device = w.device("Two-tab pump")
        w.pump(device)
        user = w.user()
        first = tabs(server.base).open().sign_in(user.email, "password-123")
        second = Tab(first.page.context.new_page(), server.base).open()
        second.page.get_by_role("button", name="Sign out").wait_for()
        # Three token lifetimes: each tab refreshes ahead of expiry, several rotations in all.
        seen = {stored_refresh(first)}
        deadline_ms = (TTL_S + 5) * 1000
        for _ in range(4):
            first.page.wait_for_function(
                "known => !known.includes(JSON.parse(localStorage.getItem('pumplink.session')).refresh)",
                arg=sorted(seen), timeout=deadline_ms)
            seen.add(stored_refresh(first))
        for tab in (first, second):
            expect(tab.page.locator("[data-live]")).to_have_attribute("data-live", "true")
        second.start(device, "2")
        expect(first.tile(device)).to_have_attribute("data-state", "on")
        # Signing out in one tab signs the other out too.
        first.page.get_by_role("button", name="Sign out").click()
        expect(second.page.get_by_text("You signed out in another tab.")).to_be_visible()
        for tab in (first, second):
            tab.assert_clean()
    finally:
        w.close()
