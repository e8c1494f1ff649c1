"""The PumpLink mobile app as people have it (issue 11): refresh and pending accounts.

The app cannot be changed from here, so these tests drive the server exactly as its
networking code does: the bodies it sends, the only fields it reads (``access_token`` and
``refresh_token`` from login, ``access_token`` from a refresh, ``error`` from any failure),
on a server whose access tokens live a few seconds. docs/api.md has the app's call table.
"""

from __future__ import annotations

import secrets
import time

import pytest
import requests

from pumplink.devices.simulator import SimulatedPump
from tests.conftest import ADMIN
from tests.support import MQTT_URL, wait_until

TTL_S = 3
APP_DEVICE = 1  # the app drives device 1, "Motor Pump", which a fresh install has


@pytest.fixture(scope="module")
def short_lived(server_factory):
    srv = server_factory(PUMPLINK_ACCESS_TOKEN_TTL_S=str(TTL_S))
    yield srv
    srv.stop()


class App:
    """The app's networking: what it sends, and the only fields of the answers it keeps."""

    def __init__(self, server):
        self.base = f"{server.base}/api/v1"
        self.access_token: str | None = None
        self.refresh_token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> requests.Response:
        headers = {"Connection": "close"}  # a dedicated server's graceful stop must not wait on us
        if auth and self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        return requests.request(method, f"{self.base}/{path}", json=body, headers=headers, timeout=15)

    def register(self, email: str, password: str) -> requests.Response:
        return self.call("POST", "register", {"email": email, "password": password}, auth=False)

    def login(self, email: str, password: str) -> requests.Response:
        r = self.call("POST", "login", {"email": email, "password": password}, auth=False)
        if r.status_code == 200:
            self.access_token, self.refresh_token = r.json()["access_token"], r.json()["refresh_token"]
        return r

    def refresh(self) -> requests.Response:
        # The app keeps only access_token from a refresh: its refresh token stays the login's.
        r = self.call("POST", "refresh-token", {"refresh_token": self.refresh_token}, auth=False)
        if r.status_code == 200:
            self.access_token = r.json()["access_token"]
        return r

    def go(self, minutes: float) -> requests.Response:
        return self.call("POST", "activate", {"device_id": APP_DEVICE, "duration": minutes})


def admin_call(server, method: str, path: str, body: dict | None = None) -> requests.Response:
    """An admin with a fresh token for each call: tokens on this server outlive no wait."""
    admin = App(server)
    assert admin.login(*ADMIN).status_code == 200
    return admin.call(method, path, body)


def approved_user(server) -> tuple[str, str]:
    email, password = f"app{secrets.token_hex(5)}@example.org", "app-password-1"
    r = App(server).register(email, password)
    assert r.status_code == 201, r.text
    assert admin_call(server, "PATCH", f"users/{r.json()['user']['id']}", {"role": "user"}).status_code == 200
    return email, password


def readable_error(r: requests.Response) -> str:
    """What the app shows in its alert: a sentence, not a code or a stack trace."""
    error = r.json().get("error")
    assert isinstance(error, str) and " " in error and "Traceback" not in error, r.text
    return error


@pytest.fixture
def app_pump(short_lived):
    pump = SimulatedPump(MQTT_URL, short_lived.prefix, APP_DEVICE, legacy_base=short_lived.legacy_base)
    pump.start()
    yield pump
    pump.stop()


def test_the_login_refresh_token_works_for_three_refreshes_past_expiry(short_lived, app_pump):
    email, password = approved_user(short_lived)
    app = App(short_lived)
    assert app.login(email, password).status_code == 200
    original, started = app.refresh_token, time.monotonic()

    for n in range(1, 4):
        # The access token the app holds expires first, so each refresh is one the app needs.
        r = wait_until(lambda: [r for r in [app.call("GET", "me")] if r.status_code == 401],
                       timeout=TTL_S + 5, interval=0.25, what=f"access token {n} to expire")[0]
        assert r.json()["code"] == "token_expired" and readable_error(r)
        assert app.go(0.02).status_code == 401  # what made the app refresh

        r = app.refresh()
        assert r.status_code == 200, r.text
        assert app.refresh_token == original  # the app never stored anything else
        assert app.call("GET", "me").json()["email"] == email
        r = app.go(0.02)  # GO: 1.2 s of pumping, with the fresh token
        assert r.status_code == 202, r.text
        app_pump.wait_for(lambda p: sum(c["action"] == "on" for c in p.commands) >= n, what=f"ON number {n}")
    print(f"\nthree refreshes with the login's refresh token, {time.monotonic() - started:.1f} s after login "
          f"(access tokens live {TTL_S} s)")


def test_a_pending_accounts_login_and_refresh_say_it_waits_for_approval(short_lived):
    app = App(short_lived)
    email, password = f"wait{secrets.token_hex(5)}@example.org", "app-password-1"
    r = app.register(email, password)
    assert r.status_code == 201, r.text

    r = app.login(email, password)
    assert r.status_code == 403, r.text
    assert "approval" in readable_error(r)
    assert r.json()["code"] == "approval_required" and r.json()["user"]["role"] == "pending"
    assert app.access_token is None  # nothing to show a pump screen with

    # Approved, logged in, then sent back to pending: the app's next refresh says the same.
    uid = r.json()["user"]["id"]
    assert admin_call(short_lived, "PATCH", f"users/{uid}", {"role": "user"}).status_code == 200
    assert app.login(email, password).status_code == 200
    assert admin_call(short_lived, "PATCH", f"users/{uid}", {"role": "pending"}).status_code == 200
    r = app.refresh()
    assert r.status_code == 403 and r.json()["code"] == "approval_required", r.text
    assert "approval" in readable_error(r)
    # A wrong password still says only that: nobody learns the account's status without it.
    r = app.login(email, "not-the-password")
    assert r.status_code == 401 and "approval" not in readable_error(r)


def test_the_apps_quirks_get_a_readable_answer(short_lived):
    email, password = approved_user(short_lived)
    app = App(short_lived)
    assert app.login(email, password).status_code == 200
    # The dial at rest sends duration 0: refused with an error the app can show.
    r = app.go(0)
    assert r.status_code == 422 and readable_error(r)
    # Untouched pickers send start_time "": never a 5xx, and any refusal says why.
    r = app.call("POST", "schedule", {"device_id": APP_DEVICE, "start_time": "", "duration": 5})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        readable_error(r)
