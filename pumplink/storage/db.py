"""The database: PostgreSQL through a pooled psycopg2 connection, or SQLite for trying it out."""

from __future__ import annotations

import functools
import logging
import time
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

from pumplink.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


def make_database(url: str, idle_in_transaction_s: float | None = None) -> peewee.Database:
    """``idle_in_transaction_s`` (cluster mode): PostgreSQL ends a session that sits in an open
    transaction that long, so a frozen node's row locks cannot hold a takeover up for ever."""
    parts = urlsplit(url)
    extra = {}
    if idle_in_transaction_s:
        extra["options"] = f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)}"
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///"):] or ":memory:"
        return peewee.SqliteDatabase(
            path,
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10000, "synchronous": "normal"},
        )
    return _Pool(
        unquote(parts.path.lstrip("/")),
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname or None,
        port=parts.port or 5432,
        # One worker rarely needs more; PostgreSQL's default limit is 100 for every client together.
        max_connections=16,
        stale_timeout=60,
        # Without a timeout a full pool fails at once instead of waiting for a free connection.
        timeout=10,
        connect_timeout=3,
        **extra,
    )


PING_AFTER_S = 1.0  # a pooled connection idle for longer is pinged before it is handed out


class _Pool(PooledPostgresqlDatabase):
    """peewee's pool, pinging (``SELECT 1``) only a connection that idled for a while.

    The stock pool pings every connection it hands out: a round trip before every request and
    every device transaction (two of the dozen in an activation). A connection given back less
    than PING_AFTER_S ago was working then; if the server went away since, its first statement
    fails, which is the same DatabaseUnavailable an outage gives, and the idle ones are dropped.
    """

    def __init__(self, *args, **kwargs):
        self._returned: dict[int, float] = {}
        self._begin_owed: set[int] = set()  # connections whose BEGIN rides on their next statement
        super().__init__(*args, **kwargs)

    def _close(self, conn, close_conn=False):
        self._begin_owed.discard(self.conn_key(conn))
        self._returned[self.conn_key(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _close_raw(self, conn):
        self._begin_owed.discard(self.conn_key(conn))
        self._returned.pop(self.conn_key(conn), None)
        super()._close_raw(conn)

    # A transaction's BEGIN is sent in one round trip with its first statement ("BEGIN; ..."):
    # one round trip fewer for every transaction (docs/decisions.md, "BEGIN with the first
    # statement"). A transaction that sent nothing has nothing to commit or roll back.
    def begin(self, isolation_level=None):
        if isolation_level is not None or self._isolation_level or self._state.conn is None:
            return super().begin(isolation_level)
        self._begin_owed.add(self.conn_key(self._state.conn))

    def _owed_begin(self) -> bool:
        conn = self._state.conn
        if conn is None or not self._begin_owed:
            return False
        key = self.conn_key(conn)
        if key not in self._begin_owed:
            return False
        self._begin_owed.discard(key)
        return True

    def _execute_cursor(self, sql, params, **cursor_options):
        if self._owed_begin():
            sql = "BEGIN; " + sql
        return super()._execute_cursor(sql, params, **cursor_options)

    def commit(self):
        if not self._owed_begin():
            super().commit()

    def rollback(self):
        if not self._owed_begin():
            super().rollback()

    def _is_closed(self, conn):
        if conn.closed:
            return True
        returned = self._returned.get(self.conn_key(conn))
        if returned is not None and time.monotonic() - returned < PING_AFTER_S \
                and self._adapter.txn_status(conn) == self._adapter.txn_idle:
            return False
        return super()._is_closed(conn)


# A full pool is a dependency that is not there for us right now, like a database that is down.
OPERATIONAL_ERRORS = (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded)


def unit_of_work(method):
    """Run an actor method with its own connection, returned to the pool afterwards.

    A lost database connection becomes ``DatabaseUnavailable`` (503) instead of a crash.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        db = self.db
        try:
            with db.connection_context():
                return method(self, *args, **kwargs)
        except OPERATIONAL_ERRORS as exc:
            log.warning("database unavailable in %s: %s", method.__qualname__, exc)
            _drop_broken_connections(db)
            raise DatabaseUnavailable() from exc

    return wrapper


def _drop_broken_connections(db: peewee.Database) -> None:
    try:
        if hasattr(db, "close_idle"):
            db.close_idle()
    except Exception:  # a pool being emptied after a failure; nothing to save
        log.debug("closing pooled connections failed", exc_info=True)
