"""A fresh database of each kind the server runs on: SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from pumplink.storage.db import make_database
from tests.support import create_database, drop_database, run_id


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = make_database(f"sqlite:///{tmp_path / 'pumplink.db'}")
        yield database
        database.close()
        return
    name = f"pumplink_unit_{run_id()}"
    database = make_database(create_database(name))
    try:
        yield database
    finally:
        if not database.is_closed():
            database.close()
        if hasattr(database, "close_all"):
            database.close_all()
        drop_database(name)
