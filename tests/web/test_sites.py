"""A site's manager in the console: members, invitations, the site's audit log, tiles grouped by site,
and a new device's firmware credentials shown once. Real server, PostgreSQL, Mosquitto, a simulated pump."""

from __future__ import annotations

import secrets

from playwright.sync_api import expect

from tests.conftest import ADMIN, World
from tests.web.conftest import PHONE

PASSWORD = "password-123"


def test_a_manager_runs_members_invitations_and_reads_the_audit_log(console_server, tabs, shots):
    w = World(console_server)
    name = f"North farm {secrets.token_hex(2)}"
    r = w.admin.post("sites", {"name": name})
    assert r.status_code == 201, r.text
    site = r.json()["id"]
    manager, newcomer, joiner = w.user(), w.user(), w.user()
    r = w.admin.post(f"sites/{site}/members", {"email": manager.email, "role": "manager"})
    assert r.status_code in (200, 201), r.text
    r = w.admin.post("devices", {"name": "North well", "site_id": site})
    assert r.status_code == 201, r.text
    device = r.json()["id"]
    w.pump(device)
    try:
        tab = tabs(console_server.base).open().sign_in(manager.email, PASSWORD)
        # The pump's tile sits under its site's name.
        expect(tab.page.locator("section.site", has=tab.tile(device)).get_by_role("heading", level=2)).to_have_text(name)
        # A manager's controls only where the caller manages; the default site's pump (an operator there) has none.
        expect(tab.tile(device).get_by_role("button", name="Force shutdown")).to_be_visible()
        default_pump = tab.page.locator("section.site", has_text="Default site").locator("article.tile").first
        expect(default_pump.get_by_role("button", name="Start")).to_be_visible()
        expect(default_pump.get_by_role("button", name="Force shutdown")).to_have_count(0)

        tab.go("sites")
        page = tab.page
        page.on("dialog", lambda d: d.accept())
        expect(page.locator(f'[data-site="{site}"]')).to_contain_text(f"{name} — you are manager")
        # The last manager cannot be removed; the server's refusal is said in words.
        me = page.locator(f'tr[data-member="{manager.email}"]')
        me.get_by_role("button", name=f"Remove {manager.email}").click()
        expect(me.get_by_role("alert")).to_contain_text("last manager")

        page.get_by_label("Email", exact=True).fill(newcomer.email)
        page.get_by_label("Role", exact=True).first.select_option("viewer")
        page.get_by_role("button", name="Add member").click()
        row = page.locator(f'tr[data-member="{newcomer.email}"]')
        expect(row).to_be_visible()
        expect(row.get_by_label(f"Role of {newcomer.email}")).to_have_value("viewer")
        row.get_by_label(f"Role of {newcomer.email}").select_option("operator")
        expect(row.get_by_role("status")).to_have_text("Saved.")
        assert w.login(newcomer.email, PASSWORD).get(f"sites/{site}").json()["role"] == "operator"

        page.get_by_label("Role", exact=True).nth(1).select_option("viewer")
        page.get_by_role("button", name="Create invitation").click()
        code = page.locator(".invite-code")
        expect(code).to_be_visible()
        expect(page.locator(".once")).to_contain_text("shown only now")
        invitation = code.inner_text().strip()
        tab.axe("sites")
        tab.shot(shots, "sites-desktop")
        page.get_by_role("button", name="Done").click()
        expect(code).to_have_count(0)

        # A manager gets the firmware login of the site's pump, once.
        page.get_by_role("button", name="New firmware login for North well").click()
        once = page.locator(f'[data-credentials="{device}"]')
        expect(once.locator(".cred-line")).to_contain_text(f"device-{device}:$7$")
        expect(once.locator(".cred-acl")).to_contain_text(f"/devices/{device}/command")
        tab.axe("firmware login")
        tab.shot(shots, "site-firmware-login-desktop")
        once.get_by_role("button", name="Done").click()
        expect(once).to_have_count(0)

        # The site's audit log shows what the manager did.
        audit = page.locator(f'[data-site-audit="{site}"]')
        tab.go("pumps")
        tab.go("sites")
        for action in ("member.add", "member.update", "invitation.create", "device.broker_credentials"):
            expect(audit.locator("td.action", has_text=action).first).to_be_visible()

        page.set_viewport_size(PHONE)
        tab.shot(shots, "sites-manager-phone")
        page.get_by_role("button", name=f"Remove {newcomer.email}").click()
        expect(page.locator(f'tr[data-member="{newcomer.email}"]')).to_have_count(0)
        tab.assert_clean(allow=("409",))

        # Anyone signed in redeems a code; a code works once.
        other = tabs(console_server.base, PHONE).open("sites")
        other.sign_in(joiner.email, PASSWORD)
        other.go("sites")
        other.page.get_by_label("Invitation code", exact=True).fill(invitation)
        other.page.get_by_role("button", name="Join site").click()
        expect(other.page.get_by_role("status").filter(has_text="You joined")).to_have_text(f"You joined {name} as viewer.")
        other.axe("sites phone")
        other.shot(shots, "sites-phone")
        other.page.get_by_label("Invitation code", exact=True).fill(invitation)
        other.page.get_by_role("button", name="Join site").click()
        expect(other.page.get_by_role("alert")).to_be_visible()
        # A viewer watches the site's pump: no start form, no manager's controls.
        other.page.reload()
        other.go("pumps")
        tile = other.tile(device)
        expect(tile).to_contain_text("running it is for its site's operators")
        expect(tile.get_by_role("button")).to_have_count(0)
        other.assert_clean(allow=("404", "422"))
    finally:
        w.close()


def test_a_new_device_shows_its_firmware_credentials_once(console_server, tabs, shots):
    tab = tabs(console_server.base).open().sign_in(*ADMIN)
    tab.go("devices")
    name = f"South well {secrets.token_hex(2)}"
    tab.page.get_by_label("Name").fill(name)
    tab.page.get_by_role("button", name="Create device").click()
    once = tab.page.locator(".once")
    expect(once).to_contain_text(f"{name} was created")
    expect(once.locator(".cred-line")).to_contain_text("device-")
    expect(once.locator(".cred-line")).to_contain_text("$7$")
    expect(once.locator(".cred-acl")).to_contain_text("topic")
    password = once.locator(".cred-password").inner_text()
    assert len(password) >= 16
    assert password not in once.locator(".cred-line").inner_text()  # the line holds a hash, not the password
    tab.axe("device credentials")
    tab.shot(shots, "device-credentials-desktop")
    once.get_by_role("button", name="Done").click()
    expect(once).to_have_count(0)
    tab.go("pumps")
    tab.go("devices")
    expect(tab.page.locator(".cred-password")).to_have_count(0)
    tab.assert_clean()
