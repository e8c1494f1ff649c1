"""The console in a real browser: the journeys people make, against a real server, PostgreSQL,
Mosquitto and simulated pumps. Each journey ends with no error in the browser's console."""

from __future__ import annotations

import datetime as dt
import secrets
from zoneinfo import ZoneInfo

from playwright.sync_api import expect

from tests.conftest import ADMIN, World
from tests.web.conftest import PHONE, ZONE

PASSWORD = "console-password-1"


def register_in_browser(tab, email):
    page = tab.page
    page.get_by_role("button", name="Create an account").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()


def test_register_wait_for_approval_then_an_admin_approves(console_server, tabs, shots):
    email = f"ana{secrets.token_hex(4)}@example.org"
    user = tabs(console_server.base).open()
    expect(user.page.get_by_role("heading", name="Sign in to PumpLink")).to_be_visible()
    user.axe("sign in")
    user.shot(shots, "signin-desktop")
    register_in_browser(user, email)
    expect(user.page.get_by_role("heading", name="Waiting for approval")).to_be_visible()
    expect(user.page.get_by_role("status")).to_contain_text("waiting for an administrator's approval")
    user.axe("waiting for approval")
    user.shot(shots, "pending-desktop")
    # Signing in before approval says the same, plainly.
    user.page.get_by_role("button", name="Back to sign in").click()
    user.page.get_by_label("Email").fill(email)
    user.page.get_by_label("Password").fill(PASSWORD)
    user.page.get_by_role("button", name="Sign in").click()
    expect(user.page.get_by_role("heading", name="Waiting for approval")).to_be_visible()

    admin = tabs(console_server.base).open("accounts").sign_in(*ADMIN).go("accounts")
    row = admin.page.locator(f'tr[data-user="{email}"]')
    expect(row.locator(".role")).to_have_text("waiting for approval")
    admin.axe("accounts")
    admin.shot(shots, "accounts-desktop")
    row.get_by_role("button", name=f"Approve {email}").click()
    expect(row.locator(".role")).to_have_text("user")
    row.get_by_label(f"Daily quota of {email} in minutes").fill("45")
    row.get_by_role("button", name=f"Save quota of {email}").click()
    expect(row.get_by_role("status")).to_have_text("Quota saved.")

    user.page.get_by_role("button", name="Back to sign in").click()
    user.sign_in(email, PASSWORD)
    expect(user.page.locator(".who")).to_contain_text(f"{email} (user)")
    user.assert_clean(allow=("status of 403",))  # the pending sign-in's answer, shown in words
    admin.assert_clean()


def test_a_user_runs_a_pump_live_and_a_recurring_schedule_fires(console_server, tabs, shots):
    w = World(console_server)
    try:
        device = w.device("North field")
        w.pump(device)
        user = w.user()
        tab = tabs(console_server.base).open().sign_in(user.email, "password-123")
        tile = tab.tile(device)
        expect(tile).to_have_attribute("data-available", "true")
        tab.axe("pumps")
        # Which tiles the live updates touch: only the running pump's. (Style attributes are
        # left out: Playwright's screenshots hide the text caret with one.)
        tab.page.evaluate("""() => { window.__touched = new Set();
          new MutationObserver((rs) => rs.forEach((r) => {
            if (r.attributeName === 'style') return;
            const t = (r.target.closest ? r.target : r.target.parentElement).closest('article.tile');
            if (t) window.__touched.add(Number(t.dataset.deviceId)); }))
          .observe(document.querySelector('main'), { subtree: true, childList: true, attributes: true, characterData: true }); }""")
        tab.start(device, "3")
        # On, with a countdown, then off: all from the live feed (the page is never reloaded).
        expect(tile).to_have_attribute("data-state", "on")
        expect(tile.get_by_role("timer")).to_be_visible()
        tab.shot(shots, "pumps-running-desktop")
        expect(tile).to_have_attribute("data-state", "off", timeout=10_000)
        expect(tile.locator(".quota")).not_to_contain_text("0 min used")
        assert tab.page.evaluate("[...window.__touched]") == [device]

        tab.go("schedules")
        first = dt.datetime.now(ZoneInfo(ZONE)) + dt.timedelta(seconds=4)
        tab.page.get_by_label("Pump").select_option(str(device))
        tab.page.get_by_label(f"First run ({ZONE})").fill(first.strftime("%Y-%m-%dT%H:%M:%S"))
        tab.page.get_by_label("Length", exact=True).fill("2")
        tab.page.locator("#s-unit").select_option("s")
        tab.page.get_by_label("Repeat").select_option("minutely")
        tab.page.get_by_label("Every how many minutes").fill("10")
        expect(tab.page.locator(".rule code")).to_have_text("FREQ=MINUTELY;INTERVAL=10")
        tab.page.get_by_role("button", name="Create schedule").click()
        expect(tab.page.get_by_role("status").filter(has_text="created")).to_be_visible()
        card = tab.page.locator(".schedule").first
        expect(card).to_contain_text("Every 10 minutes")
        # Next runs in the user's zone: the first is the time they typed.
        expect(card).to_contain_text(first.strftime("%H:%M"))
        tab.axe("schedules")
        tab.shot(shots, "schedules-desktop")
        # It fires: the outcome arrives over the live feed and the list shows it.
        card.get_by_text("Past runs").click()
        expect(card.locator("td.outcome").first).to_have_text("started", timeout=15_000)
        card.get_by_role("button", name="Disable Schedule").click()
        expect(card).to_contain_text("Status: disabled")
        expect(card).to_contain_text("No runs ahead")
        card.get_by_role("button", name="Enable Schedule").click()
        expect(card).to_contain_text("Status: active")
        tab.page.once("dialog", lambda d: d.accept())
        card.get_by_role("button", name="Delete Schedule").click()
        expect(tab.page.locator(".schedule")).to_have_count(0)
        tab.go("pumps")
        expect(tile).to_have_attribute("data-state", "off", timeout=10_000)
        tab.go("history")
        tab.page.get_by_label("Pump", exact=True).select_option(str(device))
        expect(tab.page.locator("table.sessions tbody tr")).to_have_count(2, timeout=10_000)
        expect(tab.page.locator(".timeline .run")).to_have_count(2)
        expect(tab.page.locator(".chart canvas")).to_be_visible()
        tab.axe("history")
        tab.shot(shots, "history-desktop")
        tab.assert_clean()
    finally:
        w.close()


def test_errors_and_alerts_are_said_in_words(console_server, tabs, shots):
    w = World(console_server)
    try:
        device = w.device("Quota pump", daily_quota_minutes=0.05, max_run_minutes=1)
        offline = w.device("Silent pump")
        w.pump(device)
        leaving = w.pump(offline)
        user = w.user()
        tab = tabs(console_server.base).open().sign_in(user.email, "password-123")
        tile = tab.tile(device)
        expect(tile).to_have_attribute("data-available", "true")

        def refusal(device_id, amount):
            return tab.start(device_id, amount).get_by_role("alert")

        expect(refusal(device, "120")).to_contain_text("Check the values:")    # 422: over the longest run
        expect(refusal(device, "10")).to_contain_text("daily quota")           # 429 with the time left
        expect(tile.get_by_role("alert")).to_contain_text("Try again in")
        expect(tab.tile(offline)).to_have_attribute("data-available", "true")
        leaving.stop()  # says it is offline: the tile shows it, an alert is raised
        expect(tab.tile(offline)).to_have_attribute("data-available", "false")
        expect(tab.page.locator(".toast")).to_contain_text("Silent pump is offline")
        expect(refusal(offline, "2")).to_contain_text("Not now:")              # 409: offline
        tab.go("alerts")
        expect(tab.page.locator(".alert.offline")).to_contain_text("Silent pump is offline")
        tab.shot(shots, "alerts-desktop")
        tab.assert_clean(allow=("status of 4",))  # the refusals above, each shown in words
    finally:
        w.close()


def test_an_admin_uses_emergency_stop(console_server, tabs, shots):
    w = World(console_server)
    try:
        devices = [w.device(f"Stop pump {i}") for i in range(2)]
        for d in devices:
            w.pump(d)
            assert w.admin.post("activate", {"device_id": d, "duration_s": 60}).status_code == 202
        tab = tabs(console_server.base).open().sign_in(*ADMIN)
        for d in devices:
            expect(tab.tile(d)).to_have_attribute("data-state", "on")
        tab.page.get_by_role("button", name="Emergency stop").click()
        dialog = tab.page.get_by_role("dialog", name="Stop every pump?")
        expect(dialog).to_be_visible()
        tab.axe("emergency stop")
        tab.shot(shots, "emergency-stop-desktop")
        dialog.get_by_role("button", name="Stop every pump").click()
        expect(dialog.get_by_role("status")).to_contain_text("OFF sent to")
        dialog.get_by_role("button", name="Close").click()
        for d in devices:
            expect(tab.tile(d)).to_have_attribute("data-state", "off")
        tab.assert_clean()
    finally:
        w.close()


def test_devices_and_the_audit_log(console_server, tabs, shots):
    hostile = '<img src=x onerror="document.title=1">\u202e ٣ pump'
    r = World(console_server).admin.post("devices", {"name": hostile})
    assert r.status_code == 201, r.text
    tab = tabs(console_server.base).open().sign_in(*ADMIN)
    # A name is text, never markup.
    expect(tab.tile(r.json()["id"]).get_by_role("heading")).to_have_text(hostile)
    assert tab.page.locator("main img").count() == 0 and tab.page.title() == "PumpLink"
    tab.go("devices")
    name = f"East well {secrets.token_hex(2)}"
    tab.page.get_by_label("Name").fill(name)
    tab.page.get_by_label("Longest run (minutes)").fill("30")
    tab.page.get_by_role("button", name="Create device").click()
    once = tab.page.locator(".once")
    expect(once).to_contain_text(f"{name} was created")
    expect(once).to_contain_text("pumplink device-credentials")
    tab.axe("devices")
    tab.shot(shots, "devices-desktop")
    once.get_by_role("button", name="Done").click()
    row = tab.page.locator("tr", has_text=name)
    row.get_by_role("button", name=f"Edit {name}").click()
    tab.page.get_by_label("Name").nth(1).fill(name + " (deep)")
    tab.page.get_by_role("button", name="Save").click()
    expect(tab.page.locator("tr", has_text=name + " (deep)")).to_be_visible()
    tab.go("pumps")
    expect(tab.page.locator("article.tile", has_text=name + " (deep)")).to_be_visible()

    tab.go("audit")
    expect(tab.page.locator("td.action", has_text="device.create").first).to_be_visible()
    tab.page.get_by_label("Action contains").fill("device.update")
    expect(tab.page.locator("td.action").first).to_have_text("device.update")
    expect(tab.page.locator("td.action", has_text="device.create")).to_have_count(0)
    tab.axe("audit")
    tab.shot(shots, "audit-desktop")
    tab.go("system")
    expect(tab.page.locator("[data-ready]")).to_have_attribute("data-ready", "ready")
    tab.axe("system")
    tab.shot(shots, "system-desktop")
    tab.go("alerts")
    tab.axe("alerts")
    tab.assert_clean()


def test_phone_layout(console_server, tabs, shots):
    w = World(console_server)
    try:
        device = w.device("Phone pump")
        w.pump(device)
        tab = tabs(console_server.base, PHONE).open().sign_in(*ADMIN)
        expect(tab.tile(device)).to_be_visible()
        nav = tab.page.get_by_role("navigation", name="Screens")
        expect(nav).to_be_hidden()
        tab.page.get_by_role("button", name="Menu").click()
        expect(nav).to_be_visible()
        tab.axe("phone menu")
        tab.shot(shots, "menu-phone")
        nav.get_by_role("link", name="Pumps").click()
        expect(nav).to_be_hidden()
        tab.axe("phone pumps")
        tab.shot(shots, "pumps-phone")
        tab.go("schedules")
        tab.shot(shots, "schedules-phone")
        # No screen is wider than the phone (wide tables scroll inside their own box).
        for screen in ("pumps", "schedules", "history", "alerts", "accounts", "devices", "audit", "system"):
            tab.go(screen)
            expect(tab.page.locator("main")).not_to_contain_text("Loading")
            width = tab.page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{screen} is {width} px wide on a {PHONE['width']} px phone"
        tab.assert_clean()
    finally:
        w.close()


def test_the_rule_builder_writes_rrule(console_server, tabs):
    tab = tabs(console_server.base).open()
    src = tab.page.evaluate("[...document.scripts].find((s) => s.type === 'module').src")
    cases = tab.page.evaluate("""async (src) => {
      const { buildRule, ruleInWords } = await import(src.replace('app.js', 'schedules.js'));
      const rules = [
        buildRule({ repeat: 'none', every: 1, days: [], hours: '' }),
        buildRule({ repeat: 'daily', every: 1, days: [], hours: '' }),
        buildRule({ repeat: 'daily', every: 3, days: [], hours: '18, 6' }),
        buildRule({ repeat: 'weekly', every: 1, days: ['MO', 'TH'], hours: '' }),
        buildRule({ repeat: 'hourly', every: 6, days: [], hours: '' }),
        buildRule({ repeat: 'minutely', every: 30, days: [], hours: '' }),
      ];
      return rules.map((r) => [r, ruleInWords(r)]);
    }""", src)
    assert cases == [
        [None, "Once"],
        ["FREQ=DAILY", "Every day"],
        ["FREQ=DAILY;INTERVAL=3;BYHOUR=6,18", "Every 3 days at 6:00, 18:00 (hour)"],
        ["FREQ=WEEKLY;BYDAY=MO,TH", "Every week on Mon, Thu"],
        ["FREQ=HOURLY;INTERVAL=6", "Every 6 hours"],
        ["FREQ=MINUTELY;INTERVAL=30", "Every 30 minutes"],
    ]


def test_lists_follow_cursors_and_tiles_group_by_site(console_server, tabs):
    """What the console does with fields the server may add: a cursor, a device's site."""
    tab = tabs(console_server.base).open()
    src = tab.page.evaluate("[...document.scripts].find((s) => s.type === 'module').src")
    got = tab.page.evaluate("""async (src) => {
      const { nextPage } = await import(src.replace('app.js', 'api.js'));
      const { siteOf } = await import(src.replace('app.js', 'pumps.js'));
      return [nextPage('/devices', { next: 'a b/c' }), nextPage('/schedules?limit=5', { next_offset: 5 }),
              nextPage('/devices', { devices: [] }),
              siteOf({ id: 1 }), siteOf({ site: 'North farm' }), siteOf({ site: { id: 3, name: 'Village' } }),
              siteOf({ site: { id: 4 } })];
    }""", src)
    assert got == ["/devices?cursor=a%20b%2Fc", "/schedules?limit=5&offset=5", None,
                   None, "North farm", "Village", "Site 4"]


def test_every_error_answer_is_said_in_words(console_server, tabs):
    tab = tabs(console_server.base).open()
    src = tab.page.evaluate("[...document.scripts].find((s) => s.type === 'module').src")
    said = tab.page.evaluate("""async (src) => {
      const { describe } = await import(src.replace('app.js', 'api.js'));
      const body = (error) => ({ error, code: 'x' });
      return {
        0: describe(0, null),
        401: describe(401, body('Your token expired.')),
        403: describe(403, body('Admins only.')),
        404: describe(404, body('There is no device 9.')),
        409: describe(409, body('The pump is offline.')),
        422: describe(422, body('duration must be more than 0.')),
        429: describe(429, body('This would pass your daily quota.'), 7380),
        '429s': describe(429, body('Too many logins.'), 1),
        503: describe(503, body('The database is not reachable.')),
      };
    }""", src)
    assert said == {
        "0": "The server cannot be reached. Check the network; the console keeps trying.",
        "401": "Please sign in again: Your token expired.",
        "403": "Not allowed: Admins only.",
        "404": "Not found: There is no device 9.",
        "409": "Not now: The pump is offline.",
        "422": "Check the values: duration must be more than 0.",
        "429": "This would pass your daily quota. Try again in 2 h 3 min.",
        "429s": "Too many logins. Try again in 1 second.",
        "503": "The server cannot do this right now (a part of it is down): The database is not reachable.",
    }


def test_a_flapping_pump_raises_an_alert(server_factory, tabs):
    server = server_factory(PUMPLINK_MANUAL_RUNS_PER_HOUR="2")
    w = World(server)
    try:
        device = w.device("Flapping pump")
        pump = w.pump(device)
        tab = tabs(server.base).open().sign_in(*ADMIN)
        tile = tab.tile(device)
        expect(tile).to_have_attribute("data-available", "true")
        for _ in range(3):  # switched at the controller, more often than allowed
            pump.manual("on")
            expect(tile).to_have_attribute("data-state", "on")
            pump.manual("off")
            expect(tile).to_have_attribute("data-state", "off")
        expect(tile.get_by_text("Switched often")).to_be_visible()
        tab.go("alerts")
        expect(tab.page.locator(".alert.flapping")).to_contain_text("Flapping pump was switched on and off too often")
        tab.assert_clean()
    finally:
        w.close()


def test_the_console_works_from_the_keyboard(console_server, tabs):
    w = World(console_server)
    try:
        device = w.device("Keyboard pump")
        w.pump(device)
        tab = tabs(console_server.base).open()
        page = tab.page
        page.get_by_label("Email").wait_for()
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.get_by_label("Email").focus()
        page.keyboard.type(ADMIN[0])
        page.keyboard.press("Tab")
        page.keyboard.type(ADMIN[1])
        page.keyboard.press("Enter")
        tile = tab.tile(device)
        expect(tile).to_have_attribute("data-available", "true")
        tile.get_by_label("Run for").focus()
        page.keyboard.press("Control+A")
        page.keyboard.type("2")
        page.keyboard.press("Enter")  # two minutes
        expect(tile).to_have_attribute("data-state", "on")
        # The emergency dialog opens from the keyboard and Escape closes it without stopping anything.
        page.get_by_role("button", name="Emergency stop").focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="Stop every pump?")
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(tile).to_have_attribute("data-state", "on")
        tile.get_by_role("button", name="Stop").focus()
        page.keyboard.press("Enter")
        expect(tile).to_have_attribute("data-state", "off")
        # Moving between screens puts the focus on the new screen's heading.
        page.get_by_role("link", name="Schedules").focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Schedules", level=1)).to_be_focused()
        tab.assert_clean()
    finally:
        w.close()
