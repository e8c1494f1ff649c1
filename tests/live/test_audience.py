"""Who may see a live event: the pure rule the broadcaster applies to every receiver."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from pumplink.live.frames import ADMINS, EVERYONE, audience_of, lost_access, may_see
from pumplink.events import ActivationChanged, DeviceStateChanged, ScheduleChanged

AT = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
ROLES = st.sampled_from(["admin", "user", "pending", None])
IDS = st.one_of(st.none(), st.integers(min_value=-3, max_value=3))
OWNERS = st.one_of(st.none(), st.integers(min_value=-3, max_value=3), st.text(max_size=3), st.booleans())


def activation(owner) -> ActivationChanged:
    return ActivationChanged(activation={"id": 1, "device_id": 1, "user_id": owner}, at=AT)


def schedule(owner, detail_owner=None) -> ScheduleChanged:
    detail = {"id": 1} if detail_owner is None else {"id": 1, "user_id": detail_owner}
    return ScheduleChanged(schedule_id=1, device_id=1, change="fired", detail=detail, at=AT, user_id=owner)


@given(role=ROLES, user_id=IDS, owner=OWNERS, kind=st.sampled_from(["activation", "schedule"]))
def test_only_admins_and_the_owner_see_an_activation_or_schedule(role, user_id, owner, kind):
    event = activation(owner) if kind == "activation" else schedule(owner if isinstance(owner, int) else None)
    seen = may_see(role, user_id, audience_of(event))
    is_owner = isinstance(owner, int) and not isinstance(owner, bool) and user_id == owner
    assert seen == (role == "admin" or is_owner)


@given(role=ROLES, user_id=IDS)
def test_every_account_sees_device_state(role, user_id):
    event = DeviceStateChanged(device_id=1, state="on", previous="off", available=True, activation_id=3,
                               reason="ack", at=AT)
    assert audience_of(event) == EVERYONE
    assert may_see(role, user_id, EVERYONE)


def test_a_schedule_event_without_an_owner_goes_to_admins_or_to_the_one_found():
    assert audience_of(schedule(None)) == ADMINS
    assert audience_of(schedule(None), lambda e: 7) == 7
    assert audience_of(schedule(None), lambda e: None) == ADMINS
    assert audience_of(schedule(5), lambda e: 7) == 5  # the publisher's word wins
    assert not may_see("user", None, ADMINS) and not may_see("pending", 1, ADMINS)


def test_lost_access_is_deletion_or_demotion_to_pending():
    assert lost_access("user", None) and lost_access("admin", None) and lost_access(None, None)
    assert lost_access("user", "pending") and lost_access("admin", "pending")
    assert not lost_access("pending", "pending")  # connected while pending: nothing changed
    assert not lost_access("user", "admin") and not lost_access("admin", "user")
    assert not lost_access("pending", "user")


def test_a_boolean_is_not_an_owner():
    assert not may_see("user", 1, audience_of(activation(True)))
    assert not may_see("user", 0, audience_of(activation(False)))
