"""Credentials without state: email and password rules, password hashing, access tokens (JWT)
and reading a Bearer token. It imports nothing of PumpLink but errors and blocking, so config.py
can check the admin's email and password with it (no accounts <-> config cycle)."""

from __future__ import annotations

import bcrypt
import jwt
from email_validator import EmailNotValidError, validate_email

from pumplink.blocking import offload
from pumplink.errors import Unauthorized, Unprocessable

PASSWORD_MIN = 8
PASSWORD_MAX_BYTES = 72  # bcrypt ignores everything past 72 bytes
MAX_TOKEN = 4096  # our access tokens are ~250 characters
ALGORITHM = "HS256"


# --- emails and passwords -----------------------------------------------------------------
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


# --- access tokens ------------------------------------------------------------------------
def encode_access(claims: dict, secret: str) -> str:
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_access(token: str, secret: str) -> dict:
    """The claims of a token we signed and that has not expired; else ``Unauthorized``."""
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub", "jti"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The access token has expired; refresh it or log in again.", "token_expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("The access token is not valid; log in again.", "invalid_token") from None


def bearer_token(header: str | None) -> str | None:
    """The token of ``Bearer <token>`` (HTTP header or a WebSocket's first message), else None."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def well_formed(token: str) -> bool:
    """No token we issue is longer or has spaces: refused before the JWT library parses it."""
    return len(token) <= MAX_TOKEN and not any(c.isspace() for c in token)
