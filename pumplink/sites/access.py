"""What a user may do with a device or a site: the one place REST, the live feed and push ask.

A server admin may do everything everywhere. Anyone else acts through memberships: a site
role (viewer < operator < manager) on an approved account. An account sent back to pending
keeps only a viewer's sight of its sites (it cannot log in; a token it still holds lives
minutes) and may do nothing. What a user may not even see answers 404, exactly as if it did
not exist (docs/decisions.md); what they see but may not do answers 403.
"""

from __future__ import annotations

import peewee as pw

from pumplink.accounts import roles
from pumplink.errors import Forbidden, NotFound
from pumplink.storage import models as m

SITE_ROLES = ("viewer", "operator", "manager")
_RANK = {role: n for n, role in enumerate(SITE_ROLES, start=1)}

SEE, RUN, MANAGE = "viewer", "operator", "manager"


def at_least(role: str | None, need: str) -> bool:
    return role is not None and _RANK.get(role, 0) >= _RANK[need]


def is_admin(user: m.User) -> bool:
    return user.role == "admin"


def site_roles(user_id: int) -> dict[int, str]:
    """The user's role in each site they belong to."""
    return dict(m.Membership.select(m.Membership.site, m.Membership.role)
                .where(m.Membership.user == user_id).tuples())


def role_in(user: m.User, site_id: int) -> str | None:
    """The user's effective role in a site: admins manage every site, a pending member views."""
    if is_admin(user):
        return MANAGE
    return _effective(user, m.Membership.select(m.Membership.role)
                      .where((m.Membership.user == user.id) & (m.Membership.site == site_id)).scalar())


def _effective(user: m.User, role: str | None) -> str | None:
    return role if role is None or roles.approved(user.role) else SEE


def sites_of(user: m.User, need: str = SEE):
    """A subquery of the site ids where the user holds at least ``need`` (admins: not used)."""
    wanted = [r for r in SITE_ROLES if at_least(r, need)]
    return (m.Membership.select(m.Membership.site)
            .where((m.Membership.user == user.id) & m.Membership.role.in_(wanted)))


def device_filter(user: m.User, field: pw.Field = m.Device.site, need: str = SEE):
    """A WHERE clause keeping the rows of devices the user may see (``field``: a site column).

    List queries and the live feed both use it, so what is listed and what is streamed agree."""
    if is_admin(user):
        return pw.SQL("1 = 1")
    if not roles.approved(user.role) and need != SEE:
        return pw.SQL("1 = 0")
    return field.in_(sites_of(user, need))


def visible_devices(user: m.User, need: str = SEE) -> set[int] | None:
    """Ids of live devices the user may see; None for an admin (every device)."""
    if is_admin(user):
        return None
    query = (m.Device.select(m.Device.id)
             .where(m.Device.deleted_at.is_null() & device_filter(user, m.Device.site, need)))
    return {i for (i,) in query.tuples()}


def rows_of_visible_devices(query, model, user: m.User):
    """Rows (activations, schedules, sessions...) restricted to devices the user may see."""
    if is_admin(user):
        return query
    return query.where(model.device.in_(
        m.Device.select(m.Device.id).where(device_filter(user, m.Device.site))))


# Every device request asks this; written out because peewee took longer to build the join than
# the database to answer it (docs/decisions.md, "Hand-written SQL on the activation path").
_DEVICE_AND_ROLE = ('SELECT d.*, ms.role AS member_role FROM device d LEFT JOIN membership ms'
                    ' ON ms.site_id = d.site_id AND ms.user_id = {p} WHERE d.id = {p} AND d.deleted_at IS NULL')


def device_for(user: m.User, device_id: int, need: str = SEE) -> m.Device:
    """The device if the user may ``need`` on it; 404 when they may not see it, 403 when they see
    it but their role is too low. The device and the user's membership in one query."""
    param = m.Device._meta.database.param
    device = next(iter(m.Device.raw(_DEVICE_AND_ROLE.format(p=param), user.id, device_id)), None)
    role = None if device is None else MANAGE if is_admin(user) else _effective(user, device.member_role)
    _check(user, role, need, NotFound(f"There is no device {device_id}.", "device_not_found"))
    return device


def site_for(user: m.User, site_id: int, need: str = SEE) -> m.Site:
    """The site if the user may ``need`` there; 404 when they are not a member, 403 when the role is too low."""
    site = m.Site.get_or_none(m.Site.id == site_id)
    _check(user, role_in(user, site.id) if site is not None else None, need,
           NotFound(f"There is no site {site_id}.", "site_not_found"))
    return site


def _check(user: m.User, role: str | None, need: str, missing: NotFound) -> None:
    if role is None:
        raise missing  # out of reach looks exactly like not there
    if need != SEE and not roles.approved(user.role):
        raise Forbidden(roles.PENDING_MESSAGE, "approval_required")
    if not at_least(role, need):
        raise Forbidden(f"Your role at this site ({role}) may not do this; a site {need} may.",
                        "site_role_required", role=role, required=need)


def sees_device(user: m.User, device_id: int) -> bool:
    """Whether the device (deleted or not: its history stays) is in one of the user's sites."""
    return role_in(user, m.Device.select(m.Device.site).where(m.Device.id == device_id).scalar()) is not None


def may_run(user_id: int, device_id: int) -> tuple[bool, str | None]:
    """Whether an account (by id, e.g. a schedule's owner) may still run the device, and why not."""
    user = m.User.get_or_none(m.User.id == user_id)
    if user is None:
        return False, "owner_deleted"
    device = m.Device.get_or_none(m.Device.id == device_id)
    if device is None:
        return False, "device_deleted"
    role = role_in(user, device.site_id)
    if role is None:
        return False, "owner_not_member" if roles.approved(user.role) else "owner_not_approved"
    if not at_least(role, RUN):
        return False, f"owner_is_{role}"
    return True, None


def join(site_id: int, user_id: int, role: str) -> bool:
    """Make the user a member (no change when they are one already); True if they joined now."""
    inserted = (m.Membership.insert(site=site_id, user=user_id, role=role)
                .on_conflict_ignore().execute())
    return bool(inserted)


def join_default(user_id: int) -> None:
    """A newly approved account joins the default site as an operator (PUMPLINK_JOIN_DEFAULT_SITE)."""
    site_id = m.default_site_id()
    if site_id is not None:
        join(site_id, user_id, RUN)
