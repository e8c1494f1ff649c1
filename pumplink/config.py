"""One validated, frozen configuration built from ``PUMPLINK_*`` environment variables."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pumplink.cluster import settings as cluster_settings
from pumplink.errors import ConfigError

DEFAULT_EXPO_URL = "https://exp.host/--/api/v2/push/send"


@dataclasses.dataclass(frozen=True)
class Config(cluster_settings.ClusterSettings):
    database_url: str = "sqlite:///pumplink.db"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: str = "5"  # 5, or 3.1.1 for a broker without MQTT 5 (the demo's embedded one)
    mqtt_prefix: str = "pumplink"
    legacy_base: str = "device"
    bind: str = "127.0.0.1:8080"
    jwt_secret: str | None = None
    timezone: str = "UTC"
    ack_timeout_s: float = 10.0
    ack_retries: int = 2
    queue_limit: int = 10
    daily_quota_minutes: float = 60.0
    schedule_grace_s: float = 300.0
    auto_approve: bool = False
    join_default_site: bool = True  # newly approved accounts become operators of the default site
    legacy_device_id: int = 1
    push_enabled: bool = True
    expo_url: str = DEFAULT_EXPO_URL
    expo_access_token: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    login_failures_per_email: int = 5
    login_failures_per_client: int = 20
    login_window_s: int = 300
    login_per_client: int = 60  # every login, successful or not, per client address per login window
    ws_ping_s: float = 20.0
    # Hostile input and everyday limits (docs/decisions.md says why each default).
    refresh_rotation: bool = False  # strict rotation with reuse detection, for clients that store rotated tokens
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-For names the client
    register_per_client: int = 5  # registrations per client address per register window
    register_window_s: int = 3600
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    idle_timeout_s: float = 30.0  # a keep-alive connection with no new request is closed after this
    max_connections_per_client: int = 200  # open connections per client address (trusted proxies exempt)
    max_ws_per_user: int = 10  # at the limit the user's oldest socket is closed (4029)
    ws_role_recheck_s: float = 30.0  # backstop re-read of connected accounts' roles (changes made elsewhere)
    max_push_tokens_per_user: int = 10
    manual_runs_per_hour: int = 20  # controller-started ONs per device before it counts as flapping
    live_changes_per_s: int = 10  # state changes of one device within a second beyond which its live events are debounced
    min_run_s: int = 10  # shortest run a request or schedule may ask for
    schedule_min_gap_s: float = 300.0  # shortest time between two runs' starts of one schedule
    log_format: str = "text"
    log_level: str = "INFO"
    # Cluster mode (docs/cluster.md): on only when zookeeper is set.
    zookeeper: str | None = None  # hosts[/chroot], e.g. zk1:2181,zk2:2181/pumplink
    node_name: str | None = None  # default: hostname:port of bind
    internal_url: str | None = None  # how other nodes reach this one; default http://bind
    cluster_secret: str | None = None  # authenticates forwarded requests; required in cluster mode
    zk_session_timeout_s: float = 10.0

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def bind_host_port(self) -> tuple[str, int]:
        host, _, port = self.bind.rpartition(":")
        return host, int(port)

    def require_jwt_secret(self) -> str:
        if not self.jwt_secret:
            raise ConfigError(
                "PUMPLINK_JWT_SECRET: not set; the server signs access tokens with it "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return self.jwt_secret

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _number(kind):
    def parse(name: str, raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a {kind.__name__} number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {raw!r}")
        if value < 0:
            raise ConfigError(f"{name}: must not be negative, got {raw!r}")
        return value

    return parse


def _positive(kind):
    base = _number(kind)

    def parse(name: str, raw: str):
        value = base(name, raw)
        if value <= 0:
            raise ConfigError(f"{name}: must be greater than zero, got {raw!r}")
        return value

    return parse


def _optional(name: str, raw: str) -> str | None:
    return raw or None


# A JWT secret must be guessable by nobody: length alone lets "a" * 32 through.
SECRET_MIN_LENGTH = 32
SECRET_MIN_DISTINCT = 6
SECRET_MIN_BITS = 80  # see secret_bits: token_hex(16) gives 87 or more, token_urlsafe(48) ~350


def secret_bits(raw: str) -> float:
    """A rough entropy estimate: bits per character (Shannon, over the characters it uses) times
    the number of distinct three-character runs, so repeated words ("password" * 4) count once.
    It catches careless values, not a determined choice of a bad one."""
    counts = collections.Counter(raw)
    per_char = -sum(c / len(raw) * math.log2(c / len(raw)) for c in counts.values())
    runs = len({raw[i:i + 3] for i in range(len(raw) - 2)}) + 2
    return per_char * min(runs, len(raw))


def _secret(name: str, raw: str) -> str | None:
    if not raw:
        return None
    hint = "use a random value such as: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    if len(raw) < SECRET_MIN_LENGTH:
        raise ConfigError(f"{name}: must be at least {SECRET_MIN_LENGTH} characters long (got {len(raw)}); {hint}")
    distinct = len(set(raw))
    if distinct < SECRET_MIN_DISTINCT:
        raise ConfigError(f"{name}: has only {distinct} distinct characters (at least {SECRET_MIN_DISTINCT} "
                          f"needed), so it is easy to guess; {hint}")
    for unit in range(1, len(raw) // 2 + 1):
        if len(raw) % unit == 0 and raw[:unit] * (len(raw) // unit) == raw:
            raise ConfigError(f"{name}: is a short pattern repeated ({unit} characters), so it is easy to guess; {hint}")
    bits = secret_bits(raw)
    if bits < SECRET_MIN_BITS:
        raise ConfigError(f"{name}: carries an estimated {bits:.0f} bits of entropy (at least {SECRET_MIN_BITS} "
                          f"needed); {hint}")
    return raw


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: expected an http:// or https:// URL, got {raw!r}")
    return raw.strip()


def _admin_email(name: str, raw: str) -> str | None:
    if not raw.strip():
        return None
    # Late: a plain config load need not import bcrypt and email_validator.
    from pumplink.accounts.credentials import normalize_email
    from pumplink.errors import PumpLinkError

    try:
        return normalize_email(raw)
    except PumpLinkError as exc:
        raise ConfigError(f"{name}: {exc.message}") from None


def _admin_password(name: str, raw: str) -> str | None:
    if not raw:
        return None
    from pumplink.accounts.credentials import check_password
    from pumplink.errors import PumpLinkError

    try:
        check_password(raw)
    except PumpLinkError as exc:
        raise ConfigError(f"{name}: {exc.message}") from None
    return raw


def _optional_http_url(name: str, raw: str) -> str | None:
    return _http_url(name, raw).rstrip("/") if raw.strip() else None


def _mqtt_protocol(name: str, raw: str) -> str:
    if raw not in ("5", "3.1.1"):
        raise ConfigError(f"{name}: expected 5 or 3.1.1, got {raw!r}")
    return raw


def _database_url(name: str, raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(f"{name}: scheme must be sqlite:// or postgresql://, got {raw!r}")
    return raw


def _mqtt_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{name}: expected mqtt://host:port or mqtts://host:port, got {raw!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{name}: the port is not a number in {raw!r}") from None
    return raw


def _topic_part(name: str, raw: str) -> str:
    raw = raw.strip().strip("/")
    if not raw or any(c in raw for c in "+#"):
        raise ConfigError(f"{name}: must be a non-empty MQTT topic without + or #, got {raw!r}")
    return raw


def _bind(name: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: expected host:port such as 127.0.0.1:8080, got {raw!r}")
    return raw


def _timezone(name: str, raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name}: unknown time zone {raw!r} (use an IANA name such as Europe/Berlin)") from None
    return raw


def _networks(name: str, raw: str) -> tuple[str, ...]:
    import ipaddress

    nets = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is not an IP address or network such as 10.0.0.0/8") from None
    return tuple(nets)


def _choice(*choices):
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{name}: expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return value


# field name -> parser; the variable is PUMPLINK_<FIELD NAME IN CAPITALS>.
_PARSERS = {
    "database_url": _database_url,
    "mqtt_url": _mqtt_url,
    "mqtt_protocol": _mqtt_protocol,
    "mqtt_prefix": _topic_part,
    "legacy_base": _topic_part,
    "bind": _bind,
    "jwt_secret": _secret,
    "timezone": _timezone,
    "ack_timeout_s": _positive(float),
    "ack_retries": _number(int),
    "queue_limit": _positive(int),
    "daily_quota_minutes": _positive(float),
    "schedule_grace_s": _number(float),
    "auto_approve": _bool,
    "join_default_site": _bool,
    "legacy_device_id": _positive(int),
    "push_enabled": _bool,
    "expo_url": _http_url,
    "expo_access_token": _optional,
    "admin_email": _admin_email,
    "admin_password": _admin_password,
    "access_token_ttl_s": _positive(int),
    "refresh_token_ttl_s": _positive(int),
    "login_failures_per_email": _positive(int),
    "login_failures_per_client": _positive(int),
    "login_window_s": _positive(int),
    "login_per_client": _positive(int),
    "ws_ping_s": _positive(float),
    "refresh_rotation": _bool,
    "trusted_proxies": _networks,
    "register_per_client": _positive(int),
    "register_window_s": _positive(int),
    "header_timeout_s": _positive(float),
    "idle_timeout_s": _positive(float),
    "max_connections_per_client": _positive(int),
    "max_ws_per_user": _positive(int),
    "ws_role_recheck_s": _positive(float),
    "max_push_tokens_per_user": _positive(int),
    "manual_runs_per_hour": _positive(int),
    "live_changes_per_s": _positive(int),
    "min_run_s": _positive(int),
    "schedule_min_gap_s": _number(float),
    "log_format": _choice("text", "json"),
    "log_level": _log_level,
    "zookeeper": cluster_settings.zookeeper,
    "node_name": cluster_settings.node_name,
    "internal_url": _optional_http_url,
    "cluster_secret": _secret,
    "zk_session_timeout_s": _positive(float),
}


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file; comments and blank lines skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load(env: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Config:
    """Build the config; the process environment wins over a ``.env`` file."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update(read_env_file(env_file))
    merged.update(os.environ if env is None else env)
    values = {}
    for field, parse in _PARSERS.items():
        name = "PUMPLINK_" + field.upper()
        if name in merged:
            values[field] = parse(name, merged[name])
    if bool(values.get("admin_email")) != bool(values.get("admin_password")):
        raise ConfigError("PUMPLINK_ADMIN_EMAIL and PUMPLINK_ADMIN_PASSWORD: set both or neither")
    return Config(**values)
