"""Cursor pages for every list that can grow.

A list resource builds its query as before (its filters, what the caller may see) and hands
it to ``keyset``, which only orders it, cuts it after the cursor and says where the next page
starts. A cursor is the sort key of the last row given (opaque to clients: base64url JSON), so
a walk returns every row once even while rows are inserted, unlike an offset.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime as dt
import json
from typing import Sequence

import peewee

from pumplink.errors import BadRequest

MAX_CURSOR_CHARS = 200


def _bad(why: str) -> BadRequest:
    return BadRequest(f"The cursor is not one this server gave out ({why}); start again without it.", "bad_cursor")


def encode(values: Sequence) -> str:
    plain = [v.isoformat() if isinstance(v, dt.datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(text: str, kinds: Sequence[type]) -> list:
    """The sort key a cursor carries, each value of its kind (``int`` or ``datetime``); 400 otherwise."""
    if not isinstance(text, str) or not text or len(text) > MAX_CURSOR_CHARS:
        raise _bad("empty or too long")
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad("not readable") from None
    if not isinstance(values, list) or len(values) != len(kinds):
        raise _bad("wrong shape")
    out = []
    for value, kind in zip(values, kinds):
        if kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**31 - 1:
                raise _bad("not an id")
            out.append(value)
        else:
            try:
                when = dt.datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise _bad("not a time") from None
            if when.tzinfo is not None:
                raise _bad("not a stored time")
            out.append(when)
    return out


def _kind(field: peewee.Field) -> type:
    return dt.datetime if isinstance(field, peewee.DateTimeField) else int


def _after(keys: Sequence[peewee.Field], values: list, descending: bool):
    """Rows strictly past ``values`` in the order of ``keys`` (lexicographic, written out: portable)."""
    condition = None
    for i in reversed(range(len(keys))):
        past = keys[i] < values[i] if descending else keys[i] > values[i]
        condition = past if condition is None else (past | ((keys[i] == values[i]) & condition))
    return condition


def keyset(query: peewee.ModelSelect, keys: Sequence[peewee.Field], cursor: str | None, limit: int, *,
           offset: int = 0, descending: bool = True) -> tuple[list, str | None]:
    """``(rows, next_cursor)``: up to ``limit`` rows of ``query`` after ``cursor`` in ``keys`` order
    (the last key must be unique); ``next_cursor`` is None on the last page."""
    order = [k.desc() if descending else k.asc() for k in keys]
    query = query.order_by(*order)
    if cursor is not None:
        if offset:
            raise BadRequest("A cursor and an offset cannot be combined; use the cursor alone.", "bad_cursor")
        query = query.where(_after(keys, decode(cursor, [_kind(k) for k in keys]), descending))
    rows = list(query.offset(offset or None).limit(limit + 1))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode([getattr(last, k.name) for k in keys])


def id_page(ids: Sequence[int], cursor: str | None, limit: int) -> tuple[list[int], str | None]:
    """The same over ids held in memory (sorted ascending), e.g. the devices the supervisor runs."""
    start = bisect.bisect_right(ids, decode(cursor, [int])[0]) if cursor is not None else 0
    page = list(ids[start:start + limit])
    more = start + limit < len(ids)
    return page, encode([page[-1]]) if more and page else None
