"""A site's members and invitations: adding by email, codes redeemed once, roles, removal.

Every function here runs inside the caller's transaction and returns what changed; the caller
writes the audit entry and tells the live feed (``Gateway.sites_changed``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import peewee as pw

from pumplink.clock import iso, to_db
from pumplink.errors import Conflict, NotFound, Unprocessable
from pumplink.sites.access import MANAGE, SITE_ROLES
from pumplink.storage import models as m

CODE_BYTES = 15  # 20 characters of token_urlsafe: unguessable, still typeable from a message


def create_site(name: str) -> m.Site:
    name = name.strip()
    if not name:
        raise Unprocessable("A site needs a name.", "invalid_site_name", field="name")
    if m.Site.select().where(pw.fn.LOWER(m.Site.name) == name.lower()).exists():
        raise Conflict(f"A site named {name!r} exists already.", "site_exists")
    try:
        with m.Site._meta.database.atomic():
            return m.Site.create(name=name)
    except pw.IntegrityError:
        raise Conflict(f"A site named {name!r} exists already.", "site_exists") from None


def _role(role: str) -> str:
    if role not in SITE_ROLES:
        raise Unprocessable(f"role must be one of {', '.join(SITE_ROLES)}.", "invalid_site_role", field="role")
    return role


def add_by_email(site_id: int, email: str, role: str) -> tuple[m.User, bool]:
    """The account with this email becomes a member with ``role`` (its role changes if it is one)."""
    user = m.User.get_or_none(m.User.email == email.strip().lower())
    if user is None:
        raise NotFound("There is no account with this email address; ask them to register first.",
                       "user_not_found")
    return user, set_member(site_id, user.id, _role(role), allow_last_manager=True)


def set_member(site_id: int, user_id: int, role: str, *, allow_last_manager: bool) -> bool:
    """Make or change a membership; True if it is new. The last manager is not demoted unless allowed."""
    _role(role)
    current = membership(site_id, user_id)
    if current is None:
        m.Membership.insert(site=site_id, user=user_id, role=role).on_conflict(
            conflict_target=[m.Membership.site, m.Membership.user], update={m.Membership.role: role}).execute()
        return True
    if current.role == MANAGE and role != MANAGE and not allow_last_manager:
        _not_last_manager(site_id)
    m.Membership.update(role=role).where(m.Membership.id == current.id).execute()
    return False


def set_member_quota(site_id: int, user_id: int, minutes: float | None) -> None:
    m.Membership.update(daily_quota_minutes=minutes).where(
        (m.Membership.site == site_id) & (m.Membership.user == user_id)).execute()


def remove_member(site_id: int, user_id: int, *, allow_last_manager: bool) -> m.Membership:
    current = membership(site_id, user_id)
    if current is None:
        raise NotFound(f"User {user_id} is not a member of this site.", "member_not_found")
    if current.role == MANAGE and not allow_last_manager:
        _not_last_manager(site_id)
    current.delete_instance()
    return current


def membership(site_id: int, user_id: int) -> m.Membership | None:
    return m.Membership.get_or_none((m.Membership.site == site_id) & (m.Membership.user == user_id))


def _not_last_manager(site_id: int) -> None:
    # Rows locked: two managers removing each other at once cannot both succeed.
    query = m.Membership.select(m.Membership.id).where((m.Membership.site == site_id) & (m.Membership.role == MANAGE))
    if isinstance(m.Membership._meta.database, pw.PostgresqlDatabase):
        query = query.for_update()
    if len(list(query)) <= 1:
        raise Conflict("This is the site's last manager; make another member a manager first "
                       "(or ask a server admin).", "last_manager")


def members(site_id: int) -> list[dict]:
    rows = (m.Membership.select(m.Membership.user, m.User.email, m.Membership.role, m.User.role.alias("account"),
                                m.Membership.daily_quota_minutes)
            .join(m.User, on=(m.Membership.user == m.User.id))
            .where(m.Membership.site == site_id).order_by(m.Membership.id).tuples())
    return [{"user_id": uid, "email": email, "role": role, "account_role": account, "daily_quota_minutes": quota}
            for uid, email, role, account, quota in rows]


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


def invite(site_id: int, role: str, by: m.User, now: dt.datetime, valid_for: dt.timedelta) -> tuple[str, m.Invitation]:
    """A new code (returned once; only its hash is stored)."""
    code = secrets.token_urlsafe(CODE_BYTES)
    row = m.Invitation.create(site=site_id, code_hash=_hash(code), role=_role(role), created_by=by.id,
                              created_at=to_db(now), expires_at=to_db(now + valid_for))
    return code, row


def redeem(code: str, user: m.User, now: dt.datetime) -> m.Invitation:
    """Use a code once: the first to redeem it joins; expired, used or unknown codes are all 404."""
    claimed = (m.Invitation.update(used_at=to_db(now), used_by=user.id)
               .where((m.Invitation.code_hash == _hash(code)) & m.Invitation.used_at.is_null()
                      & (m.Invitation.expires_at > to_db(now))).execute())
    if not claimed:
        raise NotFound("This invitation code is not valid: it is unknown, used or expired.", "invitation_not_found")
    invitation = m.Invitation.get(m.Invitation.code_hash == _hash(code))
    current = membership(invitation.site_id, user.id)
    # An invitation never lowers a role someone already holds.
    if current is None or SITE_ROLES.index(current.role) < SITE_ROLES.index(invitation.role):
        set_member(invitation.site_id, user.id, invitation.role, allow_last_manager=True)
    return invitation


def invitation_view(row: m.Invitation) -> dict:
    return {"id": row.id, "site_id": row.site_id, "role": row.role,
            "expires_at": iso(row.expires_at),
            "used": row.used_at is not None}
