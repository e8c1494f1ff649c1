"""The account service: users, logins, refresh tokens (kept or rotated), roles. The stateless rules
(passwords, JWT, Bearer) are in credentials.py, the limits on guessing in limits.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import uuid

import peewee as pw

from pumplink.accounts import roles
from pumplink.sites import access
from pumplink.storage import models as m
from pumplink.clock import Clock, from_db, to_db
from pumplink.config import Config
from pumplink.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unprocessable,
)
from pumplink.accounts.credentials import (
    check_password,
    decode_access,
    encode_access,
    hash_password,
    normalize_email,
    verify_password,
)
from pumplink.accounts.limits import LoginLimiter, RegisterLimiter
from pumplink.views import user_view


log = logging.getLogger(__name__)



def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


PENDING_MESSAGE = roles.PENDING_MESSAGE


def pending_approval(user: m.User) -> Forbidden:
    """The answer to a pending account's login or refresh; ``user`` tells a client its status."""
    return Forbidden(PENDING_MESSAGE, "approval_required", user=user_view(user))


class Accounts:
    def __init__(self, config: Config, clock: Clock):
        self.config = config
        self.secret = config.require_jwt_secret() if config.jwt_secret else None
        self.clock = clock
        self.limiter = LoginLimiter(config, clock)
        self.register_limiter = RegisterLimiter(config, clock)

    # --- users -------------------------------------------------------------------------------
    def register(self, email: str, password: str, client: str = "local") -> m.User:
        email = normalize_email(email)
        check_password(password)
        # Counted before the email check and the hash: both are what a flood of these costs.
        self.register_limiter.take(client)
        taken = Conflict("An account with this email address already exists.", "email_taken")
        if m.User.select().where(m.User.email == email).exists():
            raise taken
        role = "user" if self.config.auto_approve else "pending"
        hashed = hash_password(password)
        try:
            with m.User._meta.database.atomic():
                user = m.User.create(email=email, password_hash=hashed, role=role)
                if roles.approved(role) and self.config.join_default_site:
                    access.join_default(user.id)
                return user
        except pw.IntegrityError:
            raise taken from None

    def ensure_admin(self, email: str, password: str) -> m.User:
        """Create the admin, or make the existing account an admin with this password.

        A new password ends the account's sessions (their refresh tokens); the same password
        again (the env bootstrap at every start) changes nothing."""
        email = normalize_email(email)
        check_password(password)
        user = m.User.get_or_none(m.User.email == email)
        if user is None:
            return m.User.create(email=email, password_hash=hash_password(password), role="admin")
        if not verify_password(password, user.password_hash):
            user.password_hash = hash_password(password)
            self.revoke_user(user.id)
            log.info("password of %s reset; its sessions are revoked", email)
        user.role = "admin"
        user.save()
        return user

    def login(self, email: str, password: str, client: str) -> dict:
        try:
            email = normalize_email(email)
        except Unprocessable:
            raise Unauthorized("Wrong email or password.", "invalid_credentials") from None
        found: list[m.User | None] = []

        def verify() -> bool:
            found.append(m.User.get_or_none(m.User.email == email))
            return verify_password(password, found[0].password_hash if found[0] else None)

        if not self.limiter.attempt(client, email, verify):
            raise Unauthorized("Wrong email or password.", "invalid_credentials")
        user = found[0]
        if user.role == "pending":
            # Only after the password is right: nobody else learns the account's status.
            raise pending_approval(user)
        return self._issue(user, family=str(uuid.uuid4()))

    def refresh(self, refresh_token: str) -> dict:
        """A new access token for a refresh token.

        By default the refresh token stays usable until it expires or its session is revoked
        (the app keeps only the token from login). With ``refresh_rotation`` each refresh token
        is spent on use, and a spent one presented again ends its whole family."""
        now = self.clock.now()
        row = m.RefreshToken.get_or_none(m.RefreshToken.token_hash == _sha256(refresh_token))
        if row is None:
            raise Unauthorized("The refresh token is not valid; log in again.", "invalid_refresh_token")
        if from_db(row.expires_at) <= now:
            raise Unauthorized("The refresh token has expired; log in again.", "refresh_token_expired")
        user = m.User.get_or_none(m.User.id == row.user_id)
        if user is None:
            raise Unauthorized("This account no longer exists.", "user_gone")
        if user.role == "pending":
            raise pending_approval(user)
        if not self.config.refresh_rotation:
            if row.revoked_at is not None:
                raise Unauthorized("This session has ended (logged out or revoked); log in again.",
                                   "refresh_token_revoked")
            return self._access_only(user, row.family, refresh_token)
        if row.used_at is None and row.revoked_at is not None:
            raise Unauthorized("This session has ended (logged out or revoked); log in again.",
                               "refresh_token_revoked")
        if row.used_at is not None:
            # A spent token came back: someone copied it. End the whole family.
            self.revoke_family(row.family)
            log.warning("refresh token reuse for user %s; family %s revoked", row.user_id, row.family)
            raise Unauthorized("The refresh token was already used; log in again.", "refresh_token_reused")
        spent = (m.RefreshToken.update(used_at=to_db(now))
                 .where((m.RefreshToken.id == row.id) & m.RefreshToken.used_at.is_null()).execute())
        if spent != 1:
            self.revoke_family(row.family)
            raise Unauthorized("The refresh token was already used; log in again.", "refresh_token_reused")
        return self._issue(user, family=row.family)

    def logout(self, refresh_token: str) -> None:
        row = m.RefreshToken.get_or_none(m.RefreshToken.token_hash == _sha256(refresh_token))
        if row is not None:
            self.revoke_family(row.family)

    def logout_access(self, access_token: str) -> m.User:
        """Logout with only an access token: end the login it came from (its ``sid`` claim)."""
        user, claims = self.user_for_token(access_token)
        sid = claims.get("sid")
        if isinstance(sid, str) and sid:
            self.revoke_family(sid, user_id=user.id)
        return user

    def revoke_family(self, family: str, user_id: int | None = None) -> None:
        query = (m.RefreshToken.family == family) & m.RefreshToken.revoked_at.is_null()
        if user_id is not None:
            query &= m.RefreshToken.user == user_id
        m.RefreshToken.update(revoked_at=to_db(self.clock.now())).where(query).execute()

    def revoke_user(self, user_id: int) -> None:
        """Every session of an account ends (password reset, demotion to pending)."""
        (m.RefreshToken.update(revoked_at=to_db(self.clock.now()))
         .where((m.RefreshToken.user == user_id) & m.RefreshToken.revoked_at.is_null()).execute())

    def _issue(self, user: m.User, family: str) -> dict:
        now = self.clock.now()
        refresh = secrets.token_urlsafe(32)
        m.RefreshToken.create(
            user=user.id, token_hash=_sha256(refresh), family=family, created_at=to_db(now),
            expires_at=to_db(now + dt.timedelta(seconds=self.config.refresh_token_ttl_s)),
        )
        return self._answer(user, family, refresh, now)

    def _access_only(self, user: m.User, family: str, refresh: str) -> dict:
        # The same refresh token comes back, so a client that stores "the latest" one works too.
        return self._answer(user, family, refresh, self.clock.now())

    def _answer(self, user: m.User, family: str, refresh: str, now: dt.datetime) -> dict:
        access = self.access_token(user, now, sid=family)
        return {
            "access_token": access,
            "token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.config.access_token_ttl_s,
            "user": user_view(user),
        }

    def access_token(self, user: m.User, now: dt.datetime | None = None, sid: str | None = None) -> str:
        now = now or self.clock.now()
        claims = {
            "sub": str(user.id),
            "role": user.role,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + self.config.access_token_ttl_s,
            "jti": uuid.uuid4().hex,
        }
        if sid:
            claims["sid"] = sid  # the login (refresh family) it belongs to: logout by access token
        return encode_access(claims, self.secret)

    # --- requests ----------------------------------------------------------------------------
    def decode(self, token: str) -> dict:
        return decode_access(token, self.secret)

    def user_for_token(self, token: str) -> tuple[m.User, dict]:
        """The user as the database has it now: a role change or deletion applies at once."""
        claims = self.decode(token)
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError):
            raise Unauthorized("The access token is not valid; log in again.", "invalid_token") from None
        user = m.User.get_or_none(m.User.id == user_id)
        if user is None:
            raise Unauthorized("This account no longer exists.", "user_gone")
        return user, claims

    # --- admin -------------------------------------------------------------------------------
    def update_user(self, user_id: int, role: str | None, quota: float | None, quota_given: bool) -> m.User:
        user = m.User.get_or_none(m.User.id == user_id)
        if user is None:
            raise NotFound(f"There is no user {user_id}.", "user_not_found")
        demoted = False
        if role is not None:
            if role not in roles.ROLES:
                raise Unprocessable(f"role must be one of {', '.join(roles.ROLES)}.", "invalid_role")
            if user.role == "admin" and role != "admin" and _admin_count() <= 1:
                raise Conflict("This is the only admin; make another account an admin first.", "last_admin")
            demoted = role == "pending" and user.role != "pending"
            approved_now = roles.approved(role) and not roles.approved(user.role)
            user.role = role
            if approved_now and self.config.join_default_site:
                access.join_default(user.id)
        if quota_given:
            user.daily_quota_minutes = quota
        user.save()
        if demoted:
            # Sent back to waiting: no refresh token of theirs may mint another access token.
            self.revoke_user(user.id)
        return user

    def delete_user(self, user_id: int, by: m.User) -> None:
        if user_id == by.id:
            raise Conflict("You cannot delete your own account while logged in as it.", "cannot_delete_self")
        # Explicit, not only the foreign key's cascade: SQLite enforces it only when asked to.
        m.RefreshToken.delete().where(m.RefreshToken.user == user_id).execute()
        deleted = m.User.delete().where(m.User.id == user_id).execute()
        if not deleted:
            raise NotFound(f"There is no user {user_id}.", "user_not_found")


def _admin_count() -> int:
    return m.User.select().where(m.User.role == "admin").count()


def require_role(user: m.User, role: str) -> None:
    if role == "admin" and user.role != "admin":
        raise Forbidden("Only an admin may do this.", "admin_required")
    if role == "user" and not roles.approved(user.role):
        raise Forbidden(PENDING_MESSAGE, "approval_required")
