"""One worker's PumpLink: database, migrations, accounts, actors and the WSGI app.

``make_wsgi_app`` is gunicorn's app factory; it runs inside the worker, after gevent is
patched, and returns only when crash recovery is done, so no request sees unreconciled state.
"""

from __future__ import annotations

import logging

from pumplink import logs
from pumplink.storage import migrations
from pumplink.storage import models as m
from pumplink.accounts.service import Accounts
from pumplink.api.app import create_app
from pumplink.live.socket import LiveSocket
from pumplink.clock import Clock
from pumplink.config import Config, load
from pumplink.storage.db import make_database
from pumplink.server.startup import ActorSystem

log = logging.getLogger(__name__)


def bootstrap_admin(config: Config, accounts: Accounts) -> None:
    if config.admin_email and config.admin_password:
        user = accounts.ensure_admin(config.admin_email, config.admin_password)
        log.info("admin %s is ready", user.email)


class PumpLinkService:
    def __init__(self, config: Config, clock: Clock | None = None):
        config.require_jwt_secret()
        config.require_cluster_settings()
        self.config = config
        # Cluster mode: a frozen node's open transaction ends with its session, not never (fencing.py).
        self.db = make_database(config.database_url,
                                idle_in_transaction_s=config.zk_session_timeout_s if config.clustered else None)
        migrations.migrate(self.db)
        m.bind_models(self.db)
        clock = clock or Clock()
        self.accounts = Accounts(config, clock)
        with self.db.connection_context():
            bootstrap_admin(config, self.accounts)
        # Actors first: the app is built around the started gateway (no late binding).
        self.system = ActorSystem(config, self.db, clock).start()
        rt = self.system.rt
        self.app = create_app(config=config, gateway=self.system.gateway, accounts=self.accounts, db=self.db,
                              clock=rt.clock, bus=rt.bus, metrics=rt.metrics, broker=rt.broker,
                              cluster=self.system.cluster)
        self.ws = LiveSocket(config, self.system, self.accounts)  # upgraded requests (/api/v1/ws, /ws)
        log.info("PumpLink is serving on %s", config.bind)

    def __call__(self, environ, start_response):
        if self.ws is not None and environ.get("wsgi.websocket") is not None:
            return self.ws(environ, start_response)
        return self.app(environ, start_response)

    def begin_shutdown(self) -> None:
        """On SIGTERM (pumplink.server.worker): hand this node's partitions over at once (cluster
        mode), and close every WebSocket with 1001, so the graceful stop need not wait on them."""
        self.system.leave_cluster()
        if self.ws is not None:
            self.ws.close_all(1001, "The server is shutting down.")

    def close(self) -> None:
        self.begin_shutdown()
        self.system.stop()
        if hasattr(self.db, "close_all"):
            self.db.close_all()


def make_wsgi_app() -> PumpLinkService:
    config = load()
    logs.setup(config.log_level, config.log_format)
    return PumpLinkService(config)
