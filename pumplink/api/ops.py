"""Liveness and readiness."""

from __future__ import annotations

import falcon

from pumplink.api import answers as A
from pumplink.api.openapi import doc


class Health:
    @doc("Liveness", auth=None, answer=A.Health)
    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class Ready:
    def __init__(self, db, broker, cluster=None):
        self.db, self.broker = db, broker
        self.cluster = cluster  # cluster mode: its node's session and partitions are shown and checked

    @doc("Database and broker reachable, and the MQTT link working", auth=None, answer=A.Ready, errors=(503,))
    def on_get(self, req, resp):
        # The broker counts as up only when the link works (its loop alive, connected, carrying
        # messages), not merely when paho once said "connected".
        broker = self.broker.health()
        checks = {"database": "ok", "broker": "ok" if broker == "ok" else "down"}
        why = {"broker": broker.removeprefix("down: ")}
        try:
            with self.db.connection_context():
                self.db.execute_sql("SELECT 1")
        except Exception as exc:  # any failure means not ready; the reason is reported
            checks["database"] = f"down: {type(exc).__name__}"
            why["database"] = type(exc).__name__
        if self.cluster is not None:
            # Without a live ZooKeeper session this node may not start pumps: not ready.
            status = self.cluster.status()
            checks["cluster"] = "ok" if status["session"] == "connected" else "down"
            why["cluster"] = f"ZooKeeper session {status['session']}"
        ready = all(v == "ok" for v in checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        if self.cluster is not None:
            body["cluster"] = status
        if not ready:
            body.update(error="A dependency is down: " + ", ".join(f"{k} ({why[k]})" for k, v in checks.items()
                                                                  if v != "ok"),
                        code="not_ready")
        resp.media = body


class Metrics:
    def __init__(self, metrics):
        self.metrics = metrics

    @doc("Prometheus metrics", auth=None, content_type="text/plain")
    def on_get(self, req, resp):
        from pumplink.metrics import CONTENT_TYPE_LATEST

        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self.metrics.render()
