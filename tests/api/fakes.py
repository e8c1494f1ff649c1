"""An app around a fake gateway, on an in-memory SQLite database: the API's own work (parsing,
validation, error mapping) without a server, actors, PostgreSQL or a broker."""

from __future__ import annotations

import dataclasses
import datetime as dt

import falcon.testing

from pumplink.accounts.service import Accounts
from pumplink.api.app import create_app
from pumplink.clock import FakeClock
from pumplink.config import Config
from pumplink.events import EventBus
from pumplink.metrics import Metrics
from pumplink.runtime import BrokerStatus
from pumplink.sites import access
from pumplink.storage import migrations
from pumplink.storage import models as m
from pumplink.storage.db import make_database

# Real time: PyJWT checks a token's expiry against the wall clock.
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class FakeGateway:
    """Records what the API asked; answers with ``answer`` or raises ``error``."""

    def __init__(self, config: Config):
        self.config = config
        self.calls: list[tuple] = []
        self.error: Exception | None = None

    def _record(self, *call):
        self.calls.append(call)
        if self.error is not None:
            raise self.error

    def activate(self, user, device_id, duration_s):
        self._record("activate", user.id, device_id, duration_s)
        return {"id": 7, "device_id": device_id, "state": "queued", "duration_s": duration_s}

    def create_schedule(self, user, device_id, start, rrule, duration_s):
        self._record("create_schedule", user.id, device_id, start, rrule, duration_s)
        return {"id": 3, "device_id": device_id, "rrule": rrule, "duration_s": duration_s}

    def audit(self, *args, **kwargs):
        pass


@dataclasses.dataclass
class ApiWorld:
    client: falcon.testing.TestClient
    gateway: FakeGateway
    accounts: Accounts
    device: m.Device

    def token(self, role: str = "user") -> str:
        user = m.User.create(email=f"{role}{m.User.select().count()}@example.org", password_hash="x", role=role)
        if role == "user":  # as an approval does (PUMPLINK_JOIN_DEFAULT_SITE, on by default)
            access.join_default(user.id)
        return self.accounts.access_token(user, NOW)

    def post(self, path: str, body, role: str = "user") -> falcon.testing.Result:
        return self.client.simulate_post(f"/api/v1/{path}", json=body,
                                         headers={"Authorization": f"Bearer {self.token(role)}"})


def build(path=None, gateway=None):
    """The app with its parts; ``path``: a SQLite file (requests close their connection, which
    would forget an in-memory database); ``gateway`` defaults to a FakeGateway."""
    url = f"sqlite:///{path}" if path is not None else "sqlite:///:memory:"
    config = Config(jwt_secret="x" * 40, database_url=url, min_run_s=1, schedule_min_gap_s=0)
    db = make_database(config.database_url)
    migrations.migrate(db)
    m.bind_models(db)
    clock = FakeClock(NOW)
    accounts = Accounts(config, clock)
    gateway = gateway if gateway is not None else FakeGateway(config)
    app = create_app(config=config, gateway=gateway, accounts=accounts, db=db, clock=clock, bus=EventBus(),
                     metrics=Metrics(), broker=BrokerStatus())
    return app, gateway, accounts, db


def world(path) -> ApiWorld:
    app, gateway, accounts, db = build(path)
    with db.connection_context():
        device = m.Device.create(name="Well", max_run_minutes=5)
    return ApiWorld(falcon.testing.TestClient(app), gateway, accounts, device)
