"""Generated requests from /openapi.json (schemathesis) find no 5xx on a server of their own."""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import ADMIN

EXAMPLES_PER_OPERATION = 8


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    return server_factory()


def test_generated_requests_get_no_server_errors(fuzz_server):
    # schemathesis's pytest plugin does not run under this pytest; its Python API does.
    r = requests.post(f"{fuzz_server.base}/api/v1/login", json={"email": ADMIN[0], "password": ADMIN[1]}, timeout=10)
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base}/api/v1/openapi.json")
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ("/ws", "/api/v1/ws"):
            continue  # WebSockets are tested over real WebSockets

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case):
            response = case.call(base_url=fuzz_server.base, headers=headers, timeout=15)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r}: {response.status_code} "
                                f"{response.text[:200]}")
            elif response.status_code >= 400 and not {"error", "code"} <= set(response.json()):
                failures.append(f"{case.method} {case.formatted_path}: error body {response.text[:200]}")

        exercise()
        operations += 1
    assert operations >= 30, f"only {operations} operations were exercised"
    assert not failures, "\n".join(failures[:20])
