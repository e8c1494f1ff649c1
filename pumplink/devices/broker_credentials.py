"""Broker logins for controllers: Mosquitto password-file lines and ACL stanzas.

Each controller gets its own login, allowed to publish only its own ``{prefix}/devices/{id}/``
topics and to read only its own ``command`` (MQTT.md, "Broker security").
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from pathlib import Path

ITERATIONS = 101  # mosquitto_passwd's default for its "$7$" (PBKDF2-SHA512) format


def username(device_id: int) -> str:
    return f"device-{device_id}"


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """A line of a Mosquitto 2 password file, as ``mosquitto_passwd`` writes it."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return f"{user}:$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_stanza(device_id: int, prefix: str) -> str:
    base = f"{prefix}/devices/{device_id}"
    return "\n".join([
        f"user {username(device_id)}",
        f"topic write {base}/ack",
        f"topic write {base}/state",
        f"topic write {base}/availability",
        f"topic read {base}/command",
    ])


def server_acl(user: str, prefix: str, legacy_base: str) -> str:
    return "\n".join([f"user {user}", f"topic readwrite {prefix}/#", f"topic readwrite {legacy_base}/#"])


def new_password() -> str:
    return secrets.token_urlsafe(18)


def upsert_password(path: Path, user: str, line: str) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [entry for entry in lines if not entry.startswith(f"{user}:")] + [line]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def upsert_acl(path: Path, user: str, stanza: str) -> None:
    text = path.read_text() if path.exists() else ""
    # Stanzas are separated by blank lines; replace this user's, keep the rest.
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b and not b.startswith(f"user {user}\n")]
    path.write_text("\n\n".join(blocks + [stanza]) + "\n")
