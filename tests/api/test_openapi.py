"""The OpenAPI document covers every route Falcon's router knows."""

import falcon.inspect
import falcon.testing

from pumplink.accounts.service import Accounts
from pumplink.api.app import create_app
from pumplink.clock import Clock
from pumplink.config import Config
from pumplink.storage.db import make_database
from pumplink.server.startup import ActorSystem


def build_app():
    config = Config(jwt_secret="x" * 40, database_url="sqlite:///:memory:")
    # The system is built but not started: only its routes are inspected.
    system = ActorSystem(config, make_database(config.database_url))
    return create_app(config, system, Accounts(config, Clock()))


def test_every_route_and_method_is_in_the_openapi_document():
    app = build_app()
    spec = falcon.testing.TestClient(app).simulate_get("/api/v1/openapi.json").json
    missing = []
    for route in falcon.inspect.inspect_routes(app):
        for method in route.methods:
            if method.internal:
                continue  # Falcon's own OPTIONS and 405 responders
            if method.method.lower() not in spec["paths"].get(route.path, {}):
                missing.append(f"{method.method} {route.path}")
    assert not missing, f"routes missing from openapi.json: {missing}"


def test_bodies_come_from_the_validating_schemas():
    spec = falcon.testing.TestClient(build_app()).simulate_get("/api/v1/openapi.json").json
    activate = spec["paths"]["/api/v1/activate"]["post"]
    ref = activate["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    props = spec["components"]["schemas"][ref]["properties"]
    assert {"device_id", "duration", "duration_s"} <= set(props)
    assert {"202", "401", "403", "409", "422", "429"} <= set(activate["responses"])
    assert spec["paths"]["/api/v1/login"]["post"].get("security") is None
