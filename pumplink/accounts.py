"""Accounts: passwords, access tokens (JWT), rotating refresh tokens and login rate limits."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
import secrets
import threading
import uuid

import bcrypt
import jwt
import peewee as pw
from email_validator import EmailNotValidError, validate_email

from . import models as m
from .blocking import offload
from .clock import Clock, from_db, to_db
from .config import Config
from .errors import (
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)

log = logging.getLogger(__name__)

ROLES = ("pending", "user", "admin")
PASSWORD_MIN = 8
PASSWORD_MAX_BYTES = 72  # bcrypt ignores everything past 72 bytes


def normalize_email(raw: str) -> str:
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise Unprocessable(f"The email address is not valid: {exc}", "invalid_email") from None
    return info.normalized.lower()


def check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise Unprocessable(f"The password must be at least {PASSWORD_MIN} characters long.", "password_too_short")
    if len(password.encode("utf-8")) > PASSWORD_MAX_BYTES:
        raise Unprocessable(f"The password must be at most {PASSWORD_MAX_BYTES} bytes long.", "password_too_long")


def hash_password(password: str) -> str:
    return offload(lambda: bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode())


_dummy_hash: list[bytes] = []


def verify_password(password: str, hashed: str | None) -> bool:
    candidate = password.encode()
    if len(candidate) > PASSWORD_MAX_BYTES:
        # No stored password is that long (bcrypt 5 raises on it); fail like a wrong one, same cost.
        candidate, hashed = candidate[:PASSWORD_MAX_BYTES], None
    # An unknown email still costs one bcrypt check, so timing does not reveal which accounts exist.
    if not hashed and not _dummy_hash:
        _dummy_hash.append(hash_password("not-a-real-password").encode())
    target = hashed.encode() if hashed else _dummy_hash[0]
    ok = offload(lambda: bcrypt.checkpw(candidate, target))
    return ok and hashed is not None


def user_dict(user: m.User) -> dict:
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "approved": user.role in ("user", "admin"),
        "daily_quota_minutes": user.daily_quota_minutes,
        "created_at": from_db(user.created_at).isoformat().replace("+00:00", "Z"),
    }


class LoginLimiter:
    """Counts failed logins per client address and per email in a sliding window.

    Only failures count: a household behind one address should not lock itself out by
    logging in successfully, while guessing passwords is throttled. bcrypt makes each check
    take ~250 ms, so parallel guesses must not all pass the limit before the first one fails:
    attempts for one email take turns, and an attempt counts against its client from the
    moment it starts until it succeeds.
    """

    def __init__(self, config: Config, clock: Clock):
        self._limits = {"client": config.login_failures_per_client, "email": config.login_failures_per_email}
        self._window = config.login_window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], collections.deque] = {}
        self._turns: dict[str, list] = {}  # email -> [lock, waiters]
        self._lock = threading.Lock()

    def attempt(self, client: str, email: str, verify) -> bool:
        """Run ``verify()`` as one counted login attempt; 429 when a limit is reached."""
        turn = self._take_turn(email)
        try:
            with turn[0]:
                stamp = self._begin(client, email)
                try:
                    ok = verify()
                except BaseException:
                    # Not a guess that failed (the database is away, say): it must not count.
                    self._withdraw(client, email, stamp)
                    raise
                if ok:
                    self._succeeded(client, email, stamp)
                return ok
        finally:
            self._leave_turn(email, turn)

    def _take_turn(self, email: str) -> list:
        with self._lock:
            turn = self._turns.setdefault(email, [threading.Lock(), 0])
            turn[1] += 1
            return turn

    def _leave_turn(self, email: str, turn: list) -> None:
        with self._lock:
            turn[1] -= 1
            if turn[1] == 0:
                self._turns.pop(email, None)

    def _recent(self, key) -> int:
        q = self._failures.get(key)
        if q is None:
            return 0
        cutoff = self._clock.monotonic() - self._window
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            # Forget idle keys, or guessed emails would grow this dict without bound.
            del self._failures[key]
            return 0
        return len(q)

    def _begin(self, client: str, email: str) -> float:
        with self._lock:
            for kind, value in (("client", client), ("email", email)):
                key, limit = (kind, value), self._limits[kind]
                if self._recent(key) >= limit:
                    # The attempt that must leave the window before one more is allowed.
                    freed_at = self._failures[key][-limit] + self._window
                    retry = max(1, int(freed_at - self._clock.monotonic()) + 1)
                    raise TooManyRequests(
                        f"Too many failed logins from this {'address' if kind == 'client' else 'account'}; "
                        f"try again in {retry} seconds.",
                        "login_rate_limited",
                        retry_after=retry,
                    )
            now = self._clock.monotonic()
            for key in (("client", client), ("email", email)):
                self._failures.setdefault(key, collections.deque()).append(now)
            return now

    def _withdraw(self, client: str, email: str, stamp: float) -> None:
        with self._lock:
            for key in (("client", client), ("email", email)):
                q = self._failures.get(key)
                if q is not None:
                    try:
                        q.remove(stamp)
                    except ValueError:
                        pass
                    if not q:
                        del self._failures[key]

    def _succeeded(self, client: str, email: str, stamp: float) -> None:
        with self._lock:
            self._failures.pop(("email", email), None)
            q = self._failures.get(("client", client))
            if q is not None:
                try:
                    q.remove(stamp)
                except ValueError:  # already out of the window
                    pass
                if not q:
                    del self._failures[("client", client)]


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, config: Config, clock: Clock):
        self.config = config
        self.secret = config.require_jwt_secret() if config.jwt_secret else None
        self.clock = clock
        self.limiter = LoginLimiter(config, clock)

    # --- users -------------------------------------------------------------------------------
    def register(self, email: str, password: str) -> m.User:
        email = normalize_email(email)
        check_password(password)
        role = "user" if self.config.auto_approve else "pending"
        hashed = hash_password(password)
        try:
            return m.User.create(email=email, password_hash=hashed, role=role)
        except pw.IntegrityError:
            raise Conflict("An account with this email address already exists.", "email_taken") from None

    def ensure_admin(self, email: str, password: str) -> m.User:
        """Create the admin, or make the existing account an admin with this password."""
        email = normalize_email(email)
        check_password(password)
        hashed = hash_password(password)
        user = m.User.get_or_none(m.User.email == email)
        if user is None:
            return m.User.create(email=email, password_hash=hashed, role="admin")
        user.password_hash, user.role = hashed, "admin"
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
        return self._issue(found[0], family=str(uuid.uuid4()))

    def refresh(self, refresh_token: str) -> dict:
        now = self.clock.now()
        row = m.RefreshToken.get_or_none(m.RefreshToken.token_hash == _sha256(refresh_token))
        if row is None:
            raise Unauthorized("The refresh token is not valid; log in again.", "invalid_refresh_token")
        if row.used_at is None and row.revoked_at is not None:
            raise Unauthorized("This session has ended (logged out or revoked); log in again.",
                               "refresh_token_revoked")
        if row.used_at is not None:
            # A spent token came back: someone copied it. End the whole family.
            self.revoke_family(row.family)
            log.warning("refresh token reuse for user %s; family %s revoked", row.user_id, row.family)
            raise Unauthorized("The refresh token was already used; log in again.", "refresh_token_reused")
        if from_db(row.expires_at) <= now:
            raise Unauthorized("The refresh token has expired; log in again.", "refresh_token_expired")
        spent = (m.RefreshToken.update(used_at=to_db(now))
                 .where((m.RefreshToken.id == row.id) & m.RefreshToken.used_at.is_null()).execute())
        if spent != 1:
            self.revoke_family(row.family)
            raise Unauthorized("The refresh token was already used; log in again.", "refresh_token_reused")
        user = m.User.get_or_none(m.User.id == row.user_id)
        if user is None:
            raise Unauthorized("This account no longer exists.", "user_gone")
        return self._issue(user, family=row.family)

    def logout(self, refresh_token: str) -> None:
        row = m.RefreshToken.get_or_none(m.RefreshToken.token_hash == _sha256(refresh_token))
        if row is not None:
            self.revoke_family(row.family)

    def revoke_family(self, family: str) -> None:
        (m.RefreshToken.update(revoked_at=to_db(self.clock.now()))
         .where((m.RefreshToken.family == family) & m.RefreshToken.revoked_at.is_null()).execute())

    def _issue(self, user: m.User, family: str) -> dict:
        now = self.clock.now()
        access = self.access_token(user, now)
        refresh = secrets.token_urlsafe(32)
        m.RefreshToken.create(
            user=user.id, token_hash=_sha256(refresh), family=family, created_at=to_db(now),
            expires_at=to_db(now + dt.timedelta(seconds=self.config.refresh_token_ttl_s)),
        )
        return {
            "access_token": access,
            "token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.config.access_token_ttl_s,
            "user": user_dict(user),
        }

    def access_token(self, user: m.User, now: dt.datetime | None = None) -> str:
        now = now or self.clock.now()
        claims = {
            "sub": str(user.id),
            "role": user.role,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + self.config.access_token_ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    # --- requests ----------------------------------------------------------------------------
    def decode(self, token: str) -> dict:
        try:
            return jwt.decode(
                token, self.secret, algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The access token has expired; refresh it or log in again.", "token_expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The access token is not valid; log in again.", "invalid_token") from None

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
        if role is not None:
            if role not in ROLES:
                raise Unprocessable(f"role must be one of {', '.join(ROLES)}.", "invalid_role")
            if user.role == "admin" and role != "admin" and _admin_count() <= 1:
                raise Conflict("This is the only admin; make another account an admin first.", "last_admin")
            user.role = role
        if quota_given:
            user.daily_quota_minutes = quota
        user.save()
        return user

    def delete_user(self, user_id: int, by: m.User) -> None:
        if user_id == by.id:
            raise Conflict("You cannot delete your own account while logged in as it.", "cannot_delete_self")
        deleted = m.User.delete().where(m.User.id == user_id).execute()
        if not deleted:
            raise NotFound(f"There is no user {user_id}.", "user_not_found")


def _admin_count() -> int:
    return m.User.select().where(m.User.role == "admin").count()


def require_role(user: m.User, role: str) -> None:
    if role == "admin" and user.role != "admin":
        raise Forbidden("Only an admin may do this.", "admin_required")
    if role == "user" and user.role not in ("user", "admin"):
        raise Forbidden("Your account is waiting for an admin's approval.", "approval_required")
