"""The OpenAPI document covers every route Falcon's router knows."""

import falcon.inspect
import falcon.testing

from tests.api.fakes import build


def build_app():
    # No actors: only the routes are inspected.
    return build()[0]


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
