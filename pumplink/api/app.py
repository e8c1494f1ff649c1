"""The app factory: builds the Falcon app from the parts its resources use."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import peewee

from pumplink.accounts.service import Accounts
from pumplink.clock import Clock
from pumplink.config import Config
from pumplink.events import EventBus
from pumplink.gateway import Gateway
from pumplink.metrics import Metrics
from pumplink.runtime import BrokerStatus
from pumplink.api import accounts as acc
from pumplink.api import devices as dev
from pumplink.api import errors, internal, live, ops
from pumplink.api import schedules as sch
from pumplink.api import sites
from pumplink.api.openapi import OpenApi
from pumplink.api.query import QueryMiddleware
from pumplink.api.support import Auth, DatabaseMiddleware, RequestLogMiddleware
from pumplink.web import serving as console

log = logging.getLogger(__name__)

PREFIX = "/api/v1"


def create_app(*, config: Config, gateway: Gateway, accounts: Accounts, db: peewee.Database, clock: Clock,
               bus: EventBus, metrics: Metrics, broker: BrokerStatus, cluster=None) -> falcon.App:
    """The API around ``gateway`` (started actors, or a fake one in tests/api)."""
    # QueryMiddleware: no query value reaches a resource unchecked (NUL, control characters,
    # the responder's declared query model).
    app = falcon.App(middleware=[RequestLogMiddleware(), QueryMiddleware(), DatabaseMiddleware(db)])
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    auth = Auth(accounts)
    base: dict[str, Any] = dict(auth=auth, gateway=gateway, tz=config.tz, clock=clock)
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
        "/ready": ops.Ready(db, broker, cluster),
        **sch.routes(**base),
        **sites.routes(**base),
        **live.routes(auth, clock, bus, config.max_push_tokens_per_user),
    }
    registered = [(PREFIX + path, resource) for path, resource in routes.items()]
    if config.clustered:
        # Cluster mode: calls other nodes forward here, signed (not in the OpenAPI document).
        app.add_route(internal.PATH, internal.InternalCall(gateway, config.cluster_secret, metrics))
    # Paths older clients use (the seed's activation name, the app's WebSocket at the root),
    # probes at the root, and Prometheus's conventional path (keep it off the public proxy).
    registered += [
        ("/api/activate-device", routes["/activate"]),
        ("/ws", routes["/ws"]),
        ("/health", routes["/health"]),
        ("/ready", routes["/ready"]),
        ("/metrics", ops.Metrics(metrics)),
    ]
    # The web console at / (static files only; it speaks to the API above like any client).
    page = console.Index()
    registered.append(("/", page))
    registered.append((PREFIX + "/openapi.json", OpenApi(registered)))
    for path, resource in registered:
        app.add_route(path, resource)
    console.install_assets(app, page)
    return app
