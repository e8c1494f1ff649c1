"""Pages by cursor for lists that grow: every item once, stable under inserts, opt-in for /devices."""

from __future__ import annotations

import pytest


def walk(api, path: str, key: str, limit: int, during=None) -> list[int]:
    """Every id a cursor walk returns; ``during(page_number)`` may insert rows between pages."""
    seen, cursor, page = [], None, 0
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = api.get(path, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body[key]) <= limit
        seen += [item["id"] for item in body[key]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        page += 1
        assert page < 100, "the walk never ends"
        if during is not None:
            during(page)


def test_devices_are_listed_whole_unless_a_page_is_asked_for(world):
    ids = [world.device(f"Paged {n}") for n in range(7)]
    whole = world.admin.get("devices").json()
    assert set(whole) == {"devices"}, "the app's answer shape is unchanged"
    assert set(ids) <= {d["id"] for d in whole["devices"]}

    added = []
    seen = walk(world.admin, "devices", "devices", 3,
                during=lambda page: added.append(world.device(f"Added {page}")) if page <= 2 else None)
    assert len(seen) == len(set(seen)), "no device twice"
    assert set(ids) <= set(seen), "every device that existed when the walk began"
    assert seen == sorted(seen)
    first = world.admin.get("devices", params={"limit": 2}).json()
    assert len(first["devices"]) == 2 and first["limit"] == 2 and first["next_cursor"]


def test_audit_walk_returns_each_entry_once_while_entries_are_added(world):
    for n in range(5):
        world.device(f"Audited {n}")  # each creation is audited
    before = [a["id"] for a in world.admin.get("audit", params={"limit": 500}).json()["items"]]
    seen = walk(world.admin, "audit", "items", 4, during=lambda page: world.device(f"During {page}") if page <= 3 else None)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, reverse=True), "newest first, as without a cursor"
    assert set(before) <= set(seen)


@pytest.mark.parametrize("path", ["devices", "audit", "activations", "users", "schedules", "devices/{d}/logs",
                                  "devices/{d}/sessions"])
@pytest.mark.parametrize("cursor", ["%%%", "bm90IGpzb24", "WzEsMl0", "WyJ4Il0", "x" * 300, "Wy0xXQ", "WzEuNV0"])
def test_a_bad_cursor_is_a_400_with_a_code(world, path, cursor):
    device_id = world.devices[0] if world.devices else world.device("Cursor target")
    r = world.admin.get(path.format(d=device_id), params={"cursor": cursor})
    assert r.status_code == 400, (path, cursor, r.status_code, r.text)
    body = r.json()
    assert set(body) >= {"error", "code"} and body["code"] in ("bad_cursor", "invalid_field"), body


def test_a_cursor_with_an_offset_is_refused(world):
    world.device("Offset")
    cursor = world.admin.get("audit", params={"limit": 1}).json()["next_cursor"]
    r = world.admin.get("audit", params={"cursor": cursor, "offset": 3})
    assert r.status_code == 400 and r.json()["code"] == "bad_cursor", r.text
