"""The app factory: builds the Falcon app around an actor system, and the WSGI entry point."""

from __future__ import annotations

import logging

import falcon

from pumplink.accounts.service import Accounts
from pumplink.config import Config
from pumplink.server.startup import ActorSystem
from pumplink.api import accounts as acc
from pumplink.api import devices as dev
from pumplink.api import errors, ops
from pumplink.api.openapi import OpenApi
from pumplink.api.query import QueryMiddleware
from pumplink.api.support import Auth, DatabaseMiddleware, RequestLogMiddleware

log = logging.getLogger(__name__)

PREFIX = "/api/v1"


def create_app(config: Config, system: ActorSystem, accounts: Accounts) -> falcon.App:
    # QueryMiddleware: no query value reaches a resource unchecked (NUL, control characters,
    # the responder's declared query model).
    app = falcon.App(middleware=[RequestLogMiddleware(), QueryMiddleware(), DatabaseMiddleware(system.rt.db)])
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    auth = Auth(accounts)

    def gateway():
        return system.gateway

    base = dict(auth=auth, gateway_of=gateway, tz=config.tz, clock=system.rt.clock)
    routes = {
        "/register": acc.Register(accounts),
        "/login": acc.Login(accounts),
        "/refresh-token": acc.Refresh(accounts),
        "/refresh": acc.Refresh(accounts),
        "/logout": acc.Logout(accounts, auth),
        "/me": acc.Me(auth),
        "/users": acc.Users(auth),
        "/users/{user_id}": acc.User(accounts, auth, gateway),
        "/audit": acc.Audit(auth),
        "/devices": dev.Devices(**base),
        "/devices/{device_id}": dev.Device(**base),
        "/devices/{device_id}/sessions": dev.Sessions(**base),
        "/devices/{device_id}/logs": dev.Logs(**base),
        "/device/{device_id}/status": dev.DeviceStatus(**base),
        "/device/{device_id}/force-shutdown": dev.ForceShutdown(**base),
        "/devices/{device_id}/force-shutdown": dev.ForceShutdown(**base),
        "/admin/emergency-stop": dev.EmergencyStop(**base),
        "/activate": dev.Activate(**base),
        "/activate-device": dev.Activate(**base),
        "/activations": dev.Activations(**base),
        "/activations/{activation_id}": dev.Activation(**base),
        "/health": ops.Health(),
        "/ready": ops.Ready(system.rt.db, system.broker),
    }
    # --- schedules (issue 4) go here ---
    from pumplink.api import schedules as sch

    routes.update(sch.routes(**base))
    # --- push tokens (issue 5) go here ---
    from pumplink.api import live

    routes.update(live.routes(auth, system.rt.clock, system.rt.bus, config.max_push_tokens_per_user))
    registered = [(PREFIX + path, resource) for path, resource in routes.items()]
    # Paths older clients use (the seed's activation name, the app's WebSocket at the root),
    # probes at the root, and Prometheus's conventional path (keep it off the public proxy).
    registered += [
        ("/api/activate-device", routes["/activate"]),
        ("/ws", routes["/ws"]),
        ("/health", routes["/health"]),
        ("/ready", routes["/ready"]),
        ("/metrics", ops.Metrics(system.rt.metrics)),
    ]
    registered.append((PREFIX + "/openapi.json", OpenApi(registered)))
    for path, resource in registered:
        app.add_route(path, resource)
    return app
