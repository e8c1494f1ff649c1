"""Sites through the real server: joining by email and by code, roles, the last manager, the
site's audit log, and schedules of owners who may no longer run the pump."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time

import pytest

from tests.conftest import World
from tests.support import wait_until


def later(seconds: float) -> str:
    return dt.datetime.fromtimestamp(time.time() + seconds, dt.timezone.utc).isoformat(timespec="milliseconds")


@pytest.fixture(scope="module")
def push_server(server_factory, expo):
    return server_factory(PUMPLINK_PUSH_ENABLED="true", PUMPLINK_EXPO_URL=expo.url)


@pytest.fixture
def w(push_server):
    world = World(push_server)
    yield world
    world.close()


def new_site(w: World, manager=None) -> int:
    r = w.admin.post("sites", {"name": f"Farm {secrets.token_hex(4)}"})
    assert r.status_code == 201, r.text
    site = r.json()["id"]
    if manager is not None:
        r = w.admin.post(f"sites/{site}/members", {"email": manager.email, "role": "manager"})
        assert r.status_code == 201, r.text
    return site


def test_a_member_made_viewer_has_their_schedule_skipped_and_is_told(w, expo):
    manager, owner = w.user(), w.user()
    site = new_site(w, manager)
    assert manager.post(f"sites/{site}/members", {"email": owner.email, "role": "operator"}).status_code == 201
    r = w.admin.post("devices", {"name": "Orchard pump", "site_id": site})
    device = r.json()["id"]
    pump = w.pump(device)
    token = f"ExponentPushToken[{secrets.token_hex(10)}]"
    assert owner.post("register-push-token", {"token": token}).status_code == 201
    r = owner.post("schedules", {"device_id": device, "start_time": later(2), "duration_s": 1})
    assert r.status_code == 201, r.text
    schedule = r.json()["schedule"]["id"]
    r = manager.patch(f"sites/{site}/members/{owner.user_id}", {"role": "viewer"})
    assert r.status_code == 200 and r.json()["role"] == "viewer", r.text

    runs = wait_until(lambda: owner.get(f"schedules/{schedule}").json()["runs"], timeout=10,
                      what="the schedule's due time")
    assert [run["outcome"] for run in runs] == ["skipped"]
    assert "owner_is_viewer" in runs[0]["detail"] and runs[0]["activation_id"] is None
    assert [c for c in pump.commands if c["action"] == "on"] == []
    told = expo.wait_for(lambda f: [msg for msg in f.messages if msg["to"] == token], what="the owner's push")
    assert told[0]["data"]["kind"] == "schedule_skipped" and told[0]["data"]["schedule_id"] == schedule
    # As a viewer they still see the pump, but may not run it.
    assert owner.get(f"devices/{device}").status_code == 200
    r = owner.post("activate", {"device_id": device, "duration_s": 5})
    assert r.status_code == 403 and r.json()["code"] == "site_role_required"


def test_invitation_codes_work_once_and_expire(w):
    manager, first, second = w.user(), w.user(), w.user()
    site = new_site(w, manager)
    r = manager.post(f"sites/{site}/invitations", {"role": "viewer"})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    assert len(code) >= 16 and r.json()["role"] == "viewer"
    assert first.get(f"sites/{site}").status_code == 404
    r = first.post("invitations/redeem", {"code": code})
    assert r.status_code == 200 and r.json() == {"id": site, "name": r.json()["name"], "is_default": False,
                                                   "role": "viewer"}, r.text
    assert first.get(f"sites/{site}").status_code == 200
    r = second.post("invitations/redeem", {"code": code})
    assert r.status_code == 404 and r.json()["code"] == "invitation_not_found"
    # Expired: a code valid for under a minute, redeemed after.
    r = manager.post(f"sites/{site}/invitations", {"role": "operator", "expires_in_hours": 0.0003})
    short = r.json()["code"]
    wait_until(lambda: second.post("invitations/redeem", {"code": short}).status_code == 404, timeout=5,
               what="the code to expire")
    assert second.get(f"sites/{site}").status_code == 404
    # The code itself is stored nowhere: only a hash of it.
    r = manager.get(f"sites/{site}/audit")
    assert code not in r.text and short not in r.text


def test_managers_add_change_and_remove_members_but_not_the_last_manager(w):
    manager, member = w.user(), w.user()
    site = new_site(w, manager)
    r = manager.post(f"sites/{site}/members", {"email": member.email, "role": "operator"})
    assert r.status_code == 201 and r.json()["role"] == "operator", r.text
    r = manager.post(f"sites/{site}/members", {"email": "nobody-" + member.email, "role": "operator"})
    assert r.status_code == 404 and r.json()["code"] == "user_not_found"
    r = manager.patch(f"sites/{site}/members/{member.user_id}", {"role": "manager"})
    assert r.status_code == 200, r.text
    # Two managers: one may go; the other, now the last, may neither leave nor be demoted by a manager.
    assert member.delete(f"sites/{site}/members/{manager.user_id}").status_code == 200
    r = member.delete(f"sites/{site}/members/{member.user_id}")
    assert r.status_code == 409 and r.json()["code"] == "last_manager", r.text
    r = member.patch(f"sites/{site}/members/{member.user_id}", {"role": "viewer"})
    assert r.status_code == 409 and r.json()["code"] == "last_manager", r.text
    # The removed manager no longer sees the site at all.
    assert manager.get(f"sites/{site}").status_code == 404
    # A server admin can still act.
    assert w.admin.delete(f"sites/{site}/members/{member.user_id}").status_code == 200
    actions = [e["action"] for e in w.admin.get(f"sites/{site}/audit").json()["items"]]
    assert actions.count("member.remove") == 2 and "site.create" in actions and "member.add" in actions


def test_a_manager_changes_device_settings_and_shuts_down_only_their_sites_pumps(w):
    manager, operator = w.user(), w.user()
    site = new_site(w, manager)
    assert manager.post(f"sites/{site}/members", {"email": operator.email, "role": "operator"}).status_code == 201
    device = w.admin.post("devices", {"name": "Village pump", "site_id": site}).json()["id"]
    w.pump(device)
    wait_until(lambda: operator.get(f"devices/{device}").json()["state"] == "off", what="the pump online")
    r = manager.patch(f"devices/{device}", {"max_run_minutes": 5, "daily_quota_minutes": 30})
    assert r.status_code == 200 and r.json()["max_run_minutes"] == 5, r.text
    r = manager.patch(f"devices/{device}", {"site_id": 1})
    assert r.status_code == 403 and r.json()["code"] == "admin_required"
    assert operator.post("activate", {"device_id": device, "duration_s": 30}).status_code == 202
    wait_until(lambda: operator.get(f"devices/{device}").json()["state"] == "on", what="the run")
    r = manager.post(f"devices/{device}/force-shutdown", {})
    assert r.status_code == 200, r.text
    wait_until(lambda: operator.get(f"devices/{device}").json()["state"] == "off", what="the shutdown")
    r = manager.post(f"devices/{device}/broker-credentials", {})
    assert r.status_code == 201, r.text
    login = r.json()
    assert login["username"] == f"device-{device}" and login["password_line"].startswith(f"device-{device}:$7$")
    assert f"topic read {w.server.prefix}/devices/{device}/command" in login["acl"]
    assert operator.post(f"devices/{device}/broker-credentials", {}).status_code == 403
    entries = w.admin.get(f"sites/{site}/audit").json()["items"]
    assert login["password"] not in str(entries)
    assert {"device.update", "device.force_shutdown", "device.broker_credentials"} <= {e["action"] for e in entries}
    assert all(e["site_id"] == site for e in entries)
    # Another site's device is out of the manager's reach: 404, as if it did not exist.
    other = w.admin.post("devices", {"name": "Someone else's pump", "site_id": new_site(w)}).json()["id"]
    w.devices.append(other)
    assert manager.post(f"devices/{other}/force-shutdown", {}).status_code == 404


def test_a_per_member_quota_holds_under_parallel_requests_on_two_devices(w):
    manager = w.user()
    site = new_site(w, manager)
    devices = []
    for name in ("North pump", "South pump"):
        r = w.admin.post("devices", {"name": name, "site_id": site})
        devices.append(r.json()["id"])
        w.pump(devices[-1])
    for device in devices:
        wait_until(lambda: manager.get(f"devices/{device}").json()["state"] == "off", what="the pumps online")
    for n in range(5):
        member = w.user()
        assert manager.post(f"sites/{site}/members", {"email": member.email, "role": "operator"}).status_code == 201
        # 1.5 s a day at this site: one 1 s run fits, two do not. The account itself has no quota.
        r = manager.patch(f"sites/{site}/members/{member.user_id}", {"daily_quota_minutes": 0.025})
        assert r.status_code == 200 and r.json()["daily_quota_minutes"] == 0.025, r.text
        barrier = threading.Barrier(2)
        answers = {}

        def ask(device_id):
            barrier.wait()
            answers[device_id] = member.post("activate", {"device_id": device_id, "duration_s": 1})

        threads = [threading.Thread(target=ask, args=(d,)) for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [202, 429], f"round {n}: {[(r.status_code, r.text) for r in answers.values()]}"
        refused = next(r for r in answers.values() if r.status_code == 429)
        assert refused.json()["code"] == "quota_exhausted" and refused.json()["quota"] == "member"
        accepted = next(r for r in answers.values() if r.status_code == 202).json()["activation"]["id"]
        member.delete(f"activations/{accepted}")  # both pumps free for the next round
    # The quota is the member's at this site only: elsewhere (the default site) they run freely.
    default_pump = w.device("Default site pump")
    w.pump(default_pump)
    wait_until(lambda: member.get(f"devices/{default_pump}").json()["state"] == "off", what="the pump online")
    r = member.post("activate", {"device_id": default_pump, "duration_s": 5})
    assert r.status_code == 202, r.text
    member.delete(f"activations/{r.json()['activation']['id']}")


def test_create_site_and_add_member_commands(w):
    import subprocess

    from tests.support import PUMPLINK_BIN

    def pumplink(*args):
        return subprocess.run([PUMPLINK_BIN, *args], env=w.server.env, capture_output=True, text=True, timeout=60)

    name = f"CLI farm {secrets.token_hex(3)}"
    done = pumplink("create-site", name)
    assert done.returncode == 0 and name in done.stdout, done.stderr
    again = pumplink("create-site", name)
    assert again.returncode == 2 and "exists already" in again.stderr
    member = w.user()
    done = pumplink("add-member", "--site", name, "--email", member.email, "--role", "manager")
    assert done.returncode == 0, done.stderr
    site = next(s for s in member.get("sites").json()["sites"] if s["name"] == name)
    assert site["role"] == "manager"
    assert member.get(f"sites/{site['id']}/members").status_code == 200
    bad = pumplink("add-member", "--site", name, "--email", "nobody@example.org")
    assert bad.returncode == 2 and "no account" in bad.stderr
    bad = pumplink("add-member", "--site", "no such site", "--email", member.email)
    assert bad.returncode == 2 and "no site" in bad.stderr


def test_a_removed_member_loses_their_queued_runs_and_the_site(w):
    manager, operator = w.user(), w.user()
    site = new_site(w, manager)
    assert manager.post(f"sites/{site}/members", {"email": operator.email, "role": "operator"}).status_code == 201
    device = w.admin.post("devices", {"name": "Shared pump", "site_id": site}).json()["id"]
    w.pump(device)
    wait_until(lambda: operator.get(f"devices/{device}").json()["state"] == "off", what="the pump online")
    running = operator.post("activate", {"device_id": device, "duration_s": 3}).json()["activation"]["id"]
    queued = operator.post("activate", {"device_id": device, "duration_s": 3}).json()["activation"]
    assert queued["state"] == "queued"
    assert manager.delete(f"sites/{site}/members/{operator.user_id}").status_code == 200
    cancelled = w.admin.get(f"activations/{queued['id']}").json()
    assert cancelled["state"] == "cancelled" and cancelled["reason"] == "owner_revoked", cancelled
    # The run already going finishes as asked: never cut short, never longer.
    assert w.admin.get(f"activations/{running}").json()["state"] in ("starting", "running")
    wait_until(lambda: w.admin.get(f"activations/{running}").json()["state"] == "completed", timeout=10,
               what="the running run to complete")
    # Out of the site: its pump is gone from the former member's view, as if it never was.
    assert device not in {d["id"] for d in operator.get("devices").json()["devices"]}
    assert operator.get(f"devices/{device}").status_code == 404
    assert operator.get(f"activations/{running}").status_code == 404
