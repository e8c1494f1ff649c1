"""Accounts through a real server: the mobile app's path, tokens, roles, limits, admin tools."""

from __future__ import annotations

import concurrent.futures
import os
import pty
import secrets
import select
import subprocess
import time
import uuid

import jwt
import pytest

from tests.conftest import ADMIN
from tests.support import PUMPLINK_BIN, Api, wait_until

PASSWORD = "password-123"


class ClosingApi(Api):
    """Asks the server to close each connection: a live Response keeps its socket open
    otherwise, and a dedicated server's graceful stop would wait 10 s for it."""

    def request(self, method, path, json=None, token=None, **kw):
        kw.setdefault("headers", {}).setdefault("Connection", "close")
        return super().request(method, path, json=json, token=token, **kw)


def unique_email(tag: str = "u") -> str:
    return f"{tag}{secrets.token_hex(5)}@example.org"


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def register(api, email: str, password: str = PASSWORD):
    return api.post("register", {"email": email, "password": password})


def login(api, email: str, password: str = PASSWORD):
    return api.post("login", {"email": email, "password": password})


@pytest.fixture(scope="module")
def member(server):
    """One approved user for the tests that only need some account."""
    api = server.api()
    email = unique_email("member")
    r = register(api, email)
    assert r.status_code == 201, r.text
    uid = r.json()["user"]["id"]
    admin = server.api(login(api, *ADMIN).json()["access_token"])
    assert admin.patch(f"users/{uid}", {"role": "user"}).status_code == 200
    return {"id": uid, "email": email}


def test_mobile_app_path_register_wait_for_approval_then_activate(world):
    device_id = world.device("Approval pump")
    pump = world.pump(device_id)
    anonymous = world.server.api()
    email = unique_email("app")

    r = register(anonymous, email)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["message"] and body["user"]["email"] == email
    assert body["user"]["role"] == "pending" and body["user"]["approved"] is False

    # A pending account's login is refused with a sentence the app shows, and its status.
    r = login(anonymous, email)
    refused = assert_error(r, 403, "approval_required")
    assert "approval" in refused["error"] and refused["user"]["role"] == "pending"
    assert "access_token" not in refused and "refresh_token" not in refused
    assert pump.commands == []
    wait_until(lambda: world.admin.get(f"devices/{device_id}").json()["state"] == "off", what="pump reported off")

    r = world.admin.patch(f"users/{body['user']['id']}", {"role": "user"})
    assert r.status_code == 200 and r.json()["role"] == "user", r.text
    r = login(anonymous, email)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["access_token"] and tokens["refresh_token"]
    assert tokens["token"] == tokens["access_token"]  # the Go server's field name, read by the app
    user = world.server.api(tokens["access_token"])
    assert user.get("me").json()["role"] == "user"

    # Sent back to pending: the same access token still says who it is, and controls nothing.
    assert world.admin.patch(f"users/{body['user']['id']}", {"role": "pending"}).status_code == 200
    assert user.get("me").json()["role"] == "pending"
    assert_error(user.post("activate", {"device_id": device_id, "duration": 0.02}), 403, "approval_required")
    assert pump.commands == []

    # Approved again: the same access token works at once, since roles are read on every request.
    assert world.admin.patch(f"users/{body['user']['id']}", {"role": "user"}).status_code == 200
    r = user.post("activate", {"device_id": device_id, "duration": 0.02})
    assert r.status_code == 202, r.text
    cmd = pump.wait_for(lambda p: p.commands and p.commands[0], what="ON command")
    assert cmd["action"] == "on" and cmd["duration_s"] == 1


@pytest.fixture(scope="module")
def rotating(server_factory):
    """A server with strict rotation, for clients (a web console) that store each new token."""
    srv = server_factory(PUMPLINK_REFRESH_ROTATION="true")
    yield srv
    srv.stop()


def test_with_rotation_on_refresh_rotates_and_reusing_a_spent_token_ends_the_family(rotating):
    api = ClosingApi(rotating.base)
    first = login(api, *ADMIN).json()

    r = api.post("refresh-token", {"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["access_token"] and second["refresh_token"] != first["refresh_token"]
    assert ClosingApi(rotating.base, second["access_token"]).get("me").json()["email"] == ADMIN[0]

    r = api.post("refresh-token", {"refresh_token": second["refresh_token"]})
    assert r.status_code == 200, r.text
    third = r.json()

    # Someone replays the first token: the whole family ends, the newest token included.
    assert_error(api.post("refresh-token", {"refresh_token": first["refresh_token"]}), 401, "refresh_token_reused")
    assert_error(api.post("refresh-token", {"refresh_token": third["refresh_token"]}), 401)
    assert_error(api.post("refresh-token", {"refresh_token": "never-issued"}), 401, "invalid_refresh_token")


def test_by_default_the_login_refresh_token_keeps_working_until_revoked(server, member):
    api = server.api()
    first = login(api, member["email"]).json()
    for _ in range(3):  # the app refreshes with the token from login, every time
        r = api.post("refresh-token", {"refresh_token": first["refresh_token"]})
        assert r.status_code == 200, r.text
        fresh = r.json()
        assert fresh["refresh_token"] == first["refresh_token"]  # nothing rotated to lose
        assert fresh["access_token"] != first["access_token"]
        assert server.api(fresh["access_token"]).get("me").json()["id"] == member["id"]
    assert_error(api.post("refresh-token", {"refresh_token": "never-issued"}), 401, "invalid_refresh_token")

    # Logging out still ends it.
    assert api.post("logout", {"refresh_token": first["refresh_token"]}).status_code == 200
    assert_error(api.post("refresh-token", {"refresh_token": first["refresh_token"]}), 401, "refresh_token_revoked")


def test_demotion_and_deletion_end_the_refresh_tokens(world):
    api = world.server.api()
    user = world.user()
    phone = login(api, user.email).json()
    assert api.post("refresh-token", {"refresh_token": phone["refresh_token"]}).status_code == 200

    assert world.admin.patch(f"users/{user.user_id}", {"role": "pending"}).status_code == 200
    # While pending, a refresh says why, as a login would.
    refused = assert_error(api.post("refresh-token", {"refresh_token": phone["refresh_token"]}), 403,
                           "approval_required")
    assert refused["user"]["role"] == "pending" and "approval" in refused["error"]
    # Approved again, the old session stays ended: a demotion revoked it.
    assert world.admin.patch(f"users/{user.user_id}", {"role": "user"}).status_code == 200
    assert_error(api.post("refresh-token", {"refresh_token": phone["refresh_token"]}), 401, "refresh_token_revoked")

    tablet = login(api, user.email).json()
    assert api.post("refresh-token", {"refresh_token": tablet["refresh_token"]}).status_code == 200
    assert world.admin.delete(f"users/{user.user_id}").status_code == 200
    assert_error(api.post("refresh-token", {"refresh_token": tablet["refresh_token"]}), 401)


def test_logout_with_only_the_access_token_ends_that_login(server, member):
    api = server.api()
    phone = login(api, member["email"]).json()
    tablet = login(api, member["email"]).json()

    r = server.api(phone["access_token"]).post("logout", {})
    assert r.status_code == 200, r.text
    assert_error(api.post("refresh-token", {"refresh_token": phone["refresh_token"]}), 401, "refresh_token_revoked")
    # The other login carries on.
    assert api.post("refresh-token", {"refresh_token": tablet["refresh_token"]}).status_code == 200
    # An access token from a refresh belongs to the same login, and logs it out too.
    refreshed = api.post("refresh-token", {"refresh_token": tablet["refresh_token"]}).json()
    assert server.api(refreshed["access_token"]).post("logout", {}).status_code == 200
    assert_error(api.post("refresh-token", {"refresh_token": tablet["refresh_token"]}), 401, "refresh_token_revoked")
    assert_error(api.post("logout", {}, token="garbage"), 401, "invalid_token")


def test_logout_revokes_that_session_only_and_works_with_an_expired_access_token(server, member):
    api = server.api()
    phone = login(api, member["email"]).json()
    tablet = login(api, member["email"]).json()

    r = server.api(phone["access_token"]).post("logout", {"refresh_token": phone["refresh_token"]})
    assert r.status_code == 200, r.text
    assert_error(api.post("refresh-token", {"refresh_token": phone["refresh_token"]}), 401, "refresh_token_revoked")
    assert api.post("refresh-token", {"refresh_token": tablet["refresh_token"]}).status_code == 200

    # Without a usable access token the refresh token itself is the authority to log out.
    other = login(api, member["email"]).json()
    r = api.post("logout", {"refresh_token": other["refresh_token"]}, token="expired.or.garbage")
    assert r.status_code == 200, r.text
    assert_error(api.post("refresh-token", {"refresh_token": other["refresh_token"]}), 401)
    assert_error(api.post("logout", {}), 401, "missing_token")


def _claims(user_id: int, **changes) -> dict:
    now = int(time.time())
    claims = {"sub": str(user_id), "role": "admin", "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    claims.update(changes)
    return claims


def test_forged_expired_and_unsigned_tokens_are_refused(server, member):
    secret = server.env["PUMPLINK_JWT_SECRET"]
    api = server.api()
    genuine = jwt.encode(_claims(member["id"]), secret, algorithm="HS256")
    assert api.get("me", token=genuine).status_code == 200  # the test signs the way the server does

    now = int(time.time())
    expired = jwt.encode(_claims(member["id"], iat=now - 1200, exp=now - 600), secret, algorithm="HS256")
    assert_error(api.get("me", token=expired), 401, "token_expired")

    forged = jwt.encode(_claims(member["id"]), "not-the-server-secret-" + "x" * 20, algorithm="HS256")
    assert_error(api.get("me", token=forged), 401, "invalid_token")
    assert_error(api.get("users", token=forged), 401)

    unsigned = jwt.encode(_claims(member["id"]), None, algorithm="none")
    assert_error(api.get("me", token=unsigned), 401, "invalid_token")
    # Hand-made 'alg: none' with an empty signature, as an attacker would send it.
    header, payload, _ = genuine.split(".")
    none_header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    assert_error(api.get("me", token=f"{none_header}.{payload}."), 401, "invalid_token")

    other_alg = jwt.encode(_claims(member["id"]), secret, algorithm="HS512")
    assert_error(api.get("me", token=other_alg), 401, "invalid_token")
    assert_error(api.get("me", token="not-a-jwt"), 401, "invalid_token")
    assert_error(api.get("me", token=""), 401, "missing_token")
    assert_error(api.get("me", headers={"Authorization": f"Basic {genuine}"}), 401, "missing_token")


def test_demotion_and_deletion_apply_to_the_very_next_request(world):
    device_id = world.device("Demotion pump")
    second_admin = world.user("admin")
    assert second_admin.get("users").status_code == 200

    r = world.admin.patch(f"users/{second_admin.user_id}", {"role": "user"})
    assert r.status_code == 200, r.text
    assert_error(second_admin.get("users"), 403, "admin_required")
    assert_error(second_admin.get("audit"), 403, "admin_required")

    r = world.admin.patch(f"users/{second_admin.user_id}", {"role": "pending"})
    assert r.status_code == 200, r.text
    assert_error(second_admin.post("activate", {"device_id": device_id, "duration_s": 1}), 403, "approval_required")
    assert second_admin.get("me").json()["role"] == "pending"

    r = world.admin.delete(f"users/{second_admin.user_id}")
    assert r.status_code == 200, r.text
    assert_error(second_admin.get("me"), 401, "user_gone")
    assert_error(world.admin.delete(f"users/{second_admin.user_id}"), 404, "user_not_found")
    assert all(u["id"] != second_admin.user_id for u in world.admin.get("users?limit=500").json()["items"])


def test_the_only_admin_cannot_be_demoted_or_delete_itself(world):
    me = world.admin.get("me").json()
    admins = [u for u in world.admin.get("users?limit=500").json()["items"] if u["role"] == "admin"]
    if len(admins) == 1:
        assert_error(world.admin.patch(f"users/{me['id']}", {"role": "user"}), 409, "last_admin")
    assert_error(world.admin.delete(f"users/{me['id']}"), 409, "cannot_delete_self")
    assert world.admin.get("me").json()["role"] == "admin"


def test_emails_are_compared_case_insensitively(server):
    api = server.api()
    token = secrets.token_hex(4)
    r = register(api, f"Mixed.Case{token}@Example.ORG")
    assert r.status_code == 201, r.text
    assert r.json()["user"]["email"] == f"mixed.case{token}@example.org"

    # The right password for a pending account: 403 approval_required (a wrong one is 401).
    assert_error(login(api, f"mixed.case{token}@example.org"), 403, "approval_required")
    assert_error(login(api, f"MIXED.Case{token}@EXAMPLE.org"), 403, "approval_required")
    assert_error(register(api, f"MIXED.CASE{token}@example.org"), 409, "email_taken")
    assert_error(register(api, "not-an-email"), 422, "invalid_email")


def test_password_length_limits(server):
    api = server.api()
    assert_error(register(api, unique_email(), "short"), 422, "password_too_short")
    # 37 characters but 74 bytes: bcrypt would silently ignore the tail, so it is refused.
    assert_error(register(api, unique_email(), "é" * 37), 422, "password_too_long")

    email, longest = unique_email(), "é" * 36  # exactly 72 bytes
    assert register(api, email, longest).status_code == 201
    assert_error(login(api, email, longest), 403, "approval_required")  # the right password; pending
    # Longer than any stored password: a plain wrong password, not a server error.
    assert_error(login(api, email, longest + "x"), 401, "invalid_credentials")
    assert_error(login(api, email, "x" * 500), 401, "invalid_credentials")


@pytest.fixture(scope="module")
def email_limited(server_factory):
    srv = server_factory(PUMPLINK_LOGIN_FAILURES_PER_EMAIL="3",
                         PUMPLINK_ADMIN_EMAIL="Boot.Admin@Example.org", PUMPLINK_ADMIN_PASSWORD="boot-password-1")
    yield srv
    srv.stop()


def test_env_bootstrap_creates_the_admin(email_limited):
    api = ClosingApi(email_limited.base)
    r = login(api, "boot.admin@example.org", "boot-password-1")
    assert r.status_code == 200, r.text
    admin = ClosingApi(email_limited.base, r.json()["access_token"])
    assert admin.get("me").json()["role"] == "admin"
    assert admin.get("users").status_code == 200


def test_repeated_failed_logins_for_one_email_get_429(email_limited):
    api = ClosingApi(email_limited.base)
    victim = unique_email("victim")
    assert register(api, victim).status_code == 201
    for _ in range(3):
        assert_error(login(api, victim, "wrong-guess-1"), 401, "invalid_credentials")
    r = login(api, victim)  # even the right password waits now
    assert_error(r, 429, "login_rate_limited")
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 300
    # Other accounts from the same address are not locked out by it.
    assert_error(login(api, unique_email(), "wrong-guess-1"), 401, "invalid_credentials")

    # Guesses sent in parallel cannot slip past the limit while bcrypt is busy.
    target = unique_email("parallel")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(lambda _: login(ClosingApi(email_limited.base), target, "guess-guess").status_code, range(6)))
    assert codes.count(401) == 3 and codes.count(429) == 3, codes


def test_repeated_failed_logins_from_one_client_get_429_with_doubling_backoff(server_factory):
    window = 10
    srv = server_factory(PUMPLINK_LOGIN_FAILURES_PER_CLIENT="3", PUMPLINK_LOGIN_WINDOW_S=str(window))
    try:
        api = ClosingApi(srv.base)
        for _ in range(3):
            assert_error(login(api, unique_email(), "wrong-guess-1"), 401, "invalid_credentials")
        r = login(api, *ADMIN)
        assert_error(r, 429, "login_rate_limited")
        assert int(r.headers["Retry-After"]) == 1
        # Each wait, once passed, allows one more guess; a failed one doubles the next wait.
        for expected in (2, 4):
            wait_until(lambda: login(api, unique_email(), "wrong-guess-1").status_code == 401, timeout=expected + 3,
                       interval=0.2, what="the next guess allowed")
            r = login(api, *ADMIN)
            assert_error(r, 429, "login_rate_limited")
            retry = int(r.headers["Retry-After"])
            assert expected - 1 <= retry <= expected, (expected, retry)
        limited_at = time.monotonic()
        # A forwarded-for header does not buy a fresh allowance.
        r = api.post("login", {"email": ADMIN[0], "password": ADMIN[1]}, headers={"X-Forwarded-For": "203.0.113.9"})
        assert_error(r, 429, "login_rate_limited")

        # Retry-After tells the truth: the address may log in once the wait has passed.
        wait_until(lambda: login(api, *ADMIN).status_code == 200, timeout=window + 5, interval=0.25,
                   what="login allowed again")
        assert time.monotonic() - limited_at >= retry - 1.5
    finally:
        srv.stop()


def from_address(api: ClosingApi, address: str) -> ClosingApi:
    """A client at ``address`` behind the trusted proxy (the test process at 127.0.0.1)."""

    class Behind(ClosingApi):
        def request(self, method, path, json=None, token=None, **kw):
            kw.setdefault("headers", {}).setdefault("X-Forwarded-For", address)
            return super().request(method, path, json=json, token=token, **kw)

    return Behind(api.base, api.token)


@pytest.fixture(scope="module")
def proxied(server_factory):
    """Behind a trusted reverse proxy: each client is told apart by X-Forwarded-For."""
    srv = server_factory(PUMPLINK_TRUSTED_PROXIES="127.0.0.1", PUMPLINK_LOGIN_FAILURES_PER_EMAIL="2",
                         PUMPLINK_REGISTER_PER_CLIENT="3", PUMPLINK_REGISTER_WINDOW_S="600")
    yield srv
    srv.stop()


def approved_on(server, owner: ClosingApi) -> str:
    email = unique_email("owner")
    r = register(owner, email)
    assert r.status_code == 201, r.text
    admin = ClosingApi(server.base, login(ClosingApi(server.base), *ADMIN).json()["access_token"])
    assert admin.patch(f"users/{r.json()['user']['id']}", {"role": "user"}).status_code == 200
    return email


def test_the_owner_logs_in_while_someone_hammers_their_email(proxied):
    base = ClosingApi(proxied.base)
    owner, attacker = from_address(base, "198.51.100.7"), from_address(base, "203.0.113.66")
    email = approved_on(proxied, owner)

    statuses = [login(attacker, email, f"guess-{n}-guess").status_code for n in range(8)]
    assert statuses[:3] == [401, 401, 429], statuses
    # Backoff, not a wall: a guess gets through only once each wait (1, 2, 4 … s) has passed,
    # and these eight came far faster than that.
    assert statuses.count(401) <= 3 and statuses[-1] == 429, statuses
    r = login(attacker, email, "guess-last-guess")
    if r.status_code == 429:
        assert 1 <= int(r.headers["Retry-After"]) <= 300 and "Try again in" in r.json()["error"]

    # The owner, from their own address, is not locked out by any of it.
    r = login(owner, email)
    assert r.status_code == 200, r.text
    assert login(owner, email, "a-typo-by-the-owner").status_code == 401  # and has their own allowance


def test_many_addresses_guessing_one_account_slow_strangers_not_its_owner(proxied):
    base = ClosingApi(proxied.base)
    owner = from_address(base, "198.51.100.8")
    email = approved_on(proxied, owner)
    assert login(owner, email).status_code == 200  # the owner's address is now known for this account

    # Ten addresses, two guesses each: 20 failures, ten times the per-address limit.
    botnet = [from_address(base, f"192.0.2.{n}") for n in range(1, 11)]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda bot: [login(bot, email, "wrong-guess-1").status_code for _ in range(2)], botnet))
    assert all(c == [401, 401] for c in codes), codes
    # A new address gets backoff at once (one guess may slip through if the first wait passed).
    stranger = from_address(base, "192.0.2.200")
    tries = [login(stranger, email, "wrong-guess-1") for _ in range(2)]
    refused = [r for r in tries if r.status_code == 429]
    assert refused and refused[0].json()["code"] == "login_rate_limited", [r.text for r in tries]
    # The owner's known address still gets in.
    assert login(owner, email).status_code == 200


def test_registration_is_limited_per_client_address(proxied):
    base = ClosingApi(proxied.base)
    farm = from_address(base, "203.0.113.80")
    taken = unique_email("taken")
    assert register(farm, taken).status_code == 201
    assert_error(register(farm, taken), 409, "email_taken")  # counts: it answers whether an account exists
    assert register(farm, unique_email()).status_code == 201
    r = register(farm, unique_email())
    body = assert_error(r, 429, "register_rate_limited")
    retry = int(r.headers["Retry-After"])
    assert 590 <= retry <= 600, retry
    assert "try again" in body["error"].lower()
    # A hop the client wrote itself, left of what the proxy appended, buys nothing.
    spoofed = from_address(base, "10.9.8.7, 203.0.113.80")
    assert_error(register(spoofed, unique_email()), 429, "register_rate_limited")
    # Someone else behind the same proxy still registers.
    assert register(from_address(base, "198.51.100.99"), unique_email()).status_code == 201


@pytest.fixture(scope="module")
def direct(server_factory):
    """No trusted proxy: X-Forwarded-For is whatever the client says, so it is ignored."""
    srv = server_factory(PUMPLINK_REGISTER_PER_CLIENT="2", PUMPLINK_LOGIN_PER_CLIENT="4")
    yield srv
    srv.stop()


def test_forwarded_for_is_ignored_without_a_trusted_proxy(direct):
    base = ClosingApi(direct.base)
    for n in range(2):
        assert register(from_address(base, f"198.51.100.{n + 1}"), unique_email()).status_code == 201
    r = register(from_address(base, "198.51.100.3"), unique_email())
    assert_error(r, 429, "register_rate_limited")


def test_successful_logins_are_limited_per_client_too(direct):
    base = ClosingApi(direct.base)
    for _ in range(4):
        assert login(base, *ADMIN).status_code == 200
    r = login(from_address(base, "198.51.100.4"), *ADMIN)
    assert_error(r, 429, "login_rate_limited")
    assert int(r.headers["Retry-After"]) >= 1


def _pumplink(server, *args, timeout=60):
    return subprocess.run([PUMPLINK_BIN, *args], env=server.env, capture_output=True, text=True, timeout=timeout)


def test_create_admin_command(server):
    email = f"CLI.{secrets.token_hex(4)}@Example.org"
    done = _pumplink(server, "create-admin", "--email", email, "--password", "cli-password-1")
    assert done.returncode == 0, done.stderr
    assert email.lower() in done.stdout

    r = login(server.api(), email.lower(), "cli-password-1")
    assert r.status_code == 200, r.text
    admin = server.api(r.json()["access_token"])
    assert admin.get("me").json()["role"] == "admin"
    assert admin.get("audit").status_code == 200

    bad = _pumplink(server, "create-admin", "--email", unique_email(), "--password", "short")
    assert bad.returncode != 0
    assert "at least 8 characters" in bad.stderr and "Traceback" not in bad.stderr


def test_user_list_and_audit_are_for_admins_only(world, member):
    user = world.login(member["email"], PASSWORD)
    assert_error(user.get("users"), 403, "admin_required")
    assert_error(user.get("audit"), 403, "admin_required")
    assert_error(world.server.api().get("users"), 401, "missing_token")
    assert_error(world.server.api().get("audit"), 401, "missing_token")

    users = world.admin.get("users?limit=500")
    assert users.status_code == 200
    assert member["id"] in [u["id"] for u in users.json()["items"]]
    assert all("password_hash" not in u for u in users.json()["items"])
    # The approval of ``member`` was recorded, with who did it.
    entries = wait_until(lambda: [a for a in world.admin.get("audit?limit=500").json()["items"]
                                  if a["action"] == "user.update" and a["target"] == f"user:{member['id']}"],
                         what="audit entry of the approval")
    assert entries[0]["detail"] == {"role": "user"} and entries[0]["actor_id"] is not None


def test_create_admin_reads_the_password_from_stdin_and_a_reset_ends_old_sessions(server):
    email = unique_email("stdin")
    done = subprocess.run([PUMPLINK_BIN, "create-admin", "--email", email, "--password-stdin"], env=server.env,
                          input="stdin-password-1\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "stdin-password-1" not in done.stdout + done.stderr
    api = server.api()
    old = login(api, email, "stdin-password-1").json()
    assert server.api(old["access_token"]).get("me").json()["role"] == "admin"

    # "--password -" reads stdin too; a new password ends the sessions of the old one.
    done = subprocess.run([PUMPLINK_BIN, "create-admin", "--email", email, "--password", "-"], env=server.env,
                          input="stdin-password-2\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_error(api.post("refresh-token", {"refresh_token": old["refresh_token"]}), 401, "refresh_token_revoked")
    assert_error(login(api, email, "stdin-password-1"), 401, "invalid_credentials")
    assert login(api, email, "stdin-password-2").status_code == 200

    # Neither a password nor a terminal to ask on: a clear refusal, not a hang.
    done = subprocess.run([PUMPLINK_BIN, "create-admin", "--email", unique_email()], env=server.env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--password-stdin" in done.stderr and "Traceback" not in done.stderr


def test_create_admin_asks_for_the_password_on_a_terminal(server):
    """The prompt path, through a pseudo-terminal as a person at a shell would use it."""
    email = unique_email("tty")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, with the pty as its terminal
        os.execve(PUMPLINK_BIN, [PUMPLINK_BIN, "create-admin", "--email", email], server.env)
    seen = b""

    def read_until(token: bytes, timeout: float = 30.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while token not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 1024)
                except OSError:  # the child closed the terminal
                    break
        assert token in seen, seen

    try:
        read_until(b"Password for the admin:")
        os.write(fd, b"tty-password-1\n")
        read_until(b"again:")
        os.write(fd, b"tty-password-1\n")
        read_until(b"is ready")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"tty-password-1" not in seen  # not echoed
    assert login(server.api(), email, "tty-password-1").status_code == 200
