"""The OpenAPI document, built from the routes and the pydantic schemas the resources validate with.

Each responder carries its description (``@doc``); bodies and answers are the same pydantic
models that validate requests, so the document cannot drift from the checks. A test walks
Falcon's router and fails when a route or method is missing here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic import BaseModel

from pumplink import __version__

ERROR_TEXT = {
    400: "Malformed JSON or wrong types",
    401: "Missing, invalid or expired access token",
    403: "Role or approval missing",
    404: "Unknown thing",
    409: "State conflict",
    413: "Body larger than 1 MiB",
    422: "Values out of range",
    429: "Too many requests or quota exhausted (see Retry-After)",
    503: "A dependency (database, broker, device actor) is down",
}


@dataclasses.dataclass(frozen=True)
class Op:
    summary: str
    body: type[BaseModel] | None = None
    status: int = 200
    answer: type[BaseModel] | dict | None = None
    errors: tuple[int, ...] = ()
    # None | "user" (any logged-in account) | "approved" | "admin" | "site viewer|operator|manager"
    auth: str | None = "user"
    query: type[BaseModel] | None = None
    content_type: str = "application/json"


def doc(summary: str, **kwargs):
    """Describe a responder for the OpenAPI document."""

    def mark(responder):
        responder.__openapi__ = Op(summary, **kwargs)
        return responder

    return mark


class ErrorBody(BaseModel):
    error: str
    code: str


class MessageBody(BaseModel):
    message: str


class _Components:
    def __init__(self):
        self.schemas: dict[str, Any] = {"ErrorBody": ErrorBody.model_json_schema()}

    def ref(self, model: type[BaseModel] | dict | None, mode: str) -> dict:
        if model is None:
            return {"type": "object"}
        if isinstance(model, dict):
            return model
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        name = model.__name__
        self.schemas.setdefault(name, schema)
        return {"$ref": f"#/components/schemas/{name}"}


def _operation(path: str, method: str, op: Op, comp: _Components) -> dict:
    operation: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{method}_{re.sub(r'[^a-zA-Z0-9]+', '_', path).strip('_')}",
        "tags": [path.split("/")[3] if path.startswith("/api/v1/") else "operations"],
    }
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
              for name in re.findall(r"{(\w+)}", path)]
    if op.query is not None:
        comp.ref(op.query, "validation")
        for name, prop in comp.schemas[op.query.__name__]["properties"].items():
            params.append({"name": name, "in": "query", "required": False, "schema": prop})
    if params:
        operation["parameters"] = params
    if op.body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": comp.ref(op.body, "validation")}}}
    if op.auth:
        operation["security"] = [{"bearer": []}]
        # Who may call it; out of the caller's sites it answers 404 (docs/decisions.md).
        operation["x-required-role"] = op.auth
    answer = {"description": "Success"}
    if op.content_type == "application/json":
        answer["content"] = {"application/json": {"schema": comp.ref(op.answer, "serialization")}}
    else:
        answer["content"] = {op.content_type: {"schema": {"type": "string"}}}
    errors = set(op.errors) | {500}
    if op.body is not None:
        errors |= {400, 413}
    if op.auth:
        errors |= {401}
    if op.auth in ("approved", "admin") or (op.auth or "").startswith("site "):
        errors |= {403}
    if params and any(p["in"] == "path" for p in params):
        errors |= {404}
    responses = {str(op.status): answer}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": ERROR_TEXT.get(status, "A bug; the body never carries a stack trace"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
    operation["responses"] = responses
    return operation


def build(routes: list[tuple[str, object]]) -> dict:
    comp = _Components()
    paths: dict[str, dict] = {}
    for path, resource in routes:
        for method in ("get", "post", "put", "patch", "delete"):
            responder = getattr(resource, f"on_{method}", None)
            op = getattr(responder, "__openapi__", None)
            if op is not None:
                paths.setdefault(path, {})[method] = _operation(path, method, op, comp)
    return {
        "openapi": "3.0.3",
        "info": {"title": "PumpLink", "version": __version__,
                 "description": "Safe, remotely controlled, scheduled pumps. Every error has the body "
                                "{\"error\", \"code\"}; times are ISO 8601 with a zone."},
        "paths": paths,
        "components": {
            "schemas": comp.schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


class OpenApi:
    def __init__(self, routes: list[tuple[str, object]]):
        self.routes = routes
        self._spec: dict | None = None

    @doc("This document", auth=None, answer={"type": "object"})
    def on_get(self, req, resp):
        if self._spec is None:
            self._spec = build(self.routes)
        resp.media = self._spec
