"""Push tokens that change hands, and the limit per account (issue 10, finding 14).

A token moved to another account (a shared phone's new user, or someone who got hold of the
token) is on the record and its old owner is told on their other phones; an account keeps its
newest tokens only.
"""

from __future__ import annotations

import pytest

from tests.conftest import World
from tests.e2e.test_push import expo_token, register

LIMIT = 3


@pytest.fixture(scope="module")
def token_server(server_factory, expo):
    return server_factory(PUMPLINK_PUSH_ENABLED="true", PUMPLINK_EXPO_URL=expo.url,
                          PUMPLINK_MAX_PUSH_TOKENS_PER_USER=str(LIMIT))


@pytest.fixture
def w(token_server):
    world = World(token_server)
    yield world
    world.close()


def owns(api, token: str) -> bool:
    """Whether the token is this account's (DELETE answers 404 for anyone else's); put back if so."""
    r = api.delete("push-token", json={"token": token})
    assert r.status_code in (200, 404), r.text
    if r.status_code == 200:
        register(api, token)
    return r.status_code == 200


def test_a_token_moved_from_another_account_is_audited_and_its_owner_is_told(w, expo):
    old, new = w.user(), w.user()
    shared_phone, old_owners_tablet = expo_token(), expo_token()
    assert register(old, shared_phone) == 201
    assert register(old, old_owners_tablet) == 201

    r = new.post("register-push-token", {"token": shared_phone})
    assert r.status_code == 200 and "moved from another account" in r.json()["message"]
    assert owns(new, shared_phone) and not owns(old, shared_phone)

    # On the record: who took it from whom (the token itself is shown only in part).
    entries = w.admin.get("audit", params={"limit": 50}).json()["items"]
    moved = [e for e in entries if e["action"] == "push_token.moved" and e["detail"]["to_user"] == new.user_id]
    assert len(moved) == 1, entries[:5]
    assert moved[0]["actor_id"] == new.user_id and moved[0]["detail"]["from_user"] == old.user_id
    assert shared_phone not in str(moved[0]["detail"])

    # The old owner's other phone is told, naming the account that now gets the notifications.
    told = expo.wait_for(lambda f: [msg for msgs in f.events_of("push_token_moved").values() for msg in msgs
                                    if msg["to"] == old_owners_tablet], what="the push to the old owner")
    assert new.email in told[0]["body"]
    assert all(msg["to"] != shared_phone for msgs in expo.events_of("push_token_moved").values() for msg in msgs)

    # Registering it again on the same account moves nothing and tells nobody.
    before = len(expo.events_of("push_token_moved"))
    r = new.post("register-push-token", {"token": shared_phone})
    assert r.status_code == 200 and "moved" not in r.json()["message"]
    entries = w.admin.get("audit", params={"limit": 50}).json()["items"]
    assert len([e for e in entries if e["action"] == "push_token.moved" and e["detail"]["to_user"] == new.user_id]) == 1
    assert len(expo.events_of("push_token_moved")) == before


def test_beyond_the_limit_the_least_recently_registered_token_is_dropped(w):
    user, other = w.user(), w.user()
    tokens = [expo_token() for _ in range(LIMIT)]
    for token in tokens:
        assert register(user, token) == 201
    others = expo_token()
    register(other, others)

    # The app registers its token at every start: the first phone is still in use.
    assert register(user, tokens[0]) == 200
    newest = expo_token()
    r = user.post("register-push-token", {"token": newest})
    assert r.status_code == 201 and "oldest push token was dropped" in r.json()["message"]
    assert not owns(user, tokens[1]), "the token not registered for longest is gone"
    assert all(owns(user, t) for t in (tokens[0], tokens[2], newest))
    assert owns(other, others), "another account's tokens are untouched"

    # A token moved in counts too.
    r = user.post("register-push-token", {"token": others})
    assert r.status_code == 200
    kept = [t for t in (tokens[0], tokens[2], newest, others) if owns(user, t)]
    assert len(kept) == LIMIT and others in kept
