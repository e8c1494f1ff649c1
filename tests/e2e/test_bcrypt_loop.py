"""bcrypt (cost 12, ~250 ms a call) must not hold the server's event loop: /health stays quick."""

from __future__ import annotations

import concurrent.futures
import secrets
import threading
import time

import requests

from tests.conftest import ADMIN
import pytest

# They measure how fast the server answers while it is under attack: run alone (make test),
# not beside another test process competing for the same two cores.
pytestmark = pytest.mark.solo

LOGINS = 8
HEALTH_LIMIT_S = 0.2
PASSWORD = "password-123"


def test_health_answers_quickly_while_eight_logins_hash(server):
    # Eight accounts, so no per-account limit stands in the way; approved, since a pending
    # account's login is refused (after its bcrypt check all the same).
    emails = [f"bcrypt{secrets.token_hex(5)}@example.org" for _ in range(LOGINS)]
    with concurrent.futures.ThreadPoolExecutor(LOGINS) as pool:
        made = list(pool.map(lambda e: server.api().post("register", {"email": e, "password": PASSWORD}), emails))
    assert [r.status_code for r in made] == [201] * LOGINS
    admin = server.api(server.api().post("login", {"email": ADMIN[0], "password": ADMIN[1]}).json()["access_token"])
    for r in made:
        assert admin.patch(f"users/{r.json()['user']['id']}", {"role": "user"}).status_code == 200

    login_url = f"{server.base}/api/v1/login"
    health_url = f"{server.base}/api/v1/health"
    start = threading.Barrier(LOGINS + 1)
    statuses: list[int] = []
    in_flight = threading.Semaphore(0)  # released once per finished login

    def log_in(email):
        start.wait()
        try:
            r = requests.post(login_url, json={"email": email, "password": PASSWORD},
                              headers={"Connection": "close"}, timeout=30)
            statuses.append(r.status_code)
        finally:
            in_flight.release()

    threads = [threading.Thread(target=log_in, args=(email,)) for email in emails]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    latencies = []
    finished = 0
    while finished < LOGINS:
        t0 = time.monotonic()
        r = requests.get(health_url, headers={"Connection": "close"}, timeout=5)
        latencies.append(time.monotonic() - t0)
        assert r.status_code == 200
        while in_flight.acquire(blocking=False):
            finished += 1
        time.sleep(0.02)
    took = time.monotonic() - began
    for t in threads:
        t.join(5)

    assert statuses == [200] * LOGINS
    # The logins took a while (8 x ~250 ms of CPU on 2 cores), so /health was really asked meanwhile.
    assert took > 0.4 and len(latencies) >= 5, (took, latencies)
    print(f"\n{LOGINS} logins in {took:.2f} s; /health x{len(latencies)}: "
          f"max {max(latencies) * 1000:.1f} ms, median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")
    assert max(latencies) < HEALTH_LIMIT_S, [round(x * 1000, 1) for x in latencies]
