"""Settings: every PUMPLINK_* variable is parsed, and a bad one is named in the error."""

from __future__ import annotations

import os
import subprocess

import pytest

from pumplink.config import DEFAULT_EXPO_URL, Config, ConfigError, load
from tests.support import PUMPLINK_BIN

SECRET = "kT9-vQ2_xLm4Rw8ZpB3nYc7HsJ5dFg1A"  # random-looking: a constant one is refused


def parse(**env) -> Config:
    return load({f"PUMPLINK_{k.upper()}": v for k, v in env.items()}, env_file=None)


def test_defaults_match_the_documented_table():
    config = load({}, env_file=None)
    assert config.database_url == "sqlite:///pumplink.db"
    assert config.mqtt_url == "mqtt://127.0.0.1:1883"
    assert config.mqtt_prefix == "pumplink"
    assert config.bind == "127.0.0.1:8080"
    assert config.jwt_secret is None
    assert config.timezone == "UTC"
    assert (config.ack_timeout_s, config.ack_retries) == (10.0, 2)
    assert config.queue_limit == 10
    assert config.daily_quota_minutes == 60.0
    assert config.schedule_grace_s == 300.0
    assert config.auto_approve is False
    assert config.legacy_device_id == 1
    assert (config.push_enabled, config.expo_url, config.expo_access_token) == (True, DEFAULT_EXPO_URL, None)
    assert (config.admin_email, config.admin_password) == (None, None)


# variable (without PUMPLINK_), raw value, Config field, parsed value
GOOD = [
    ("database_url", "postgresql://pl:pw@db.example:5432/pumplink", "database_url",
     "postgresql://pl:pw@db.example:5432/pumplink"),
    ("database_url", "sqlite:////var/lib/pumplink.db", "database_url", "sqlite:////var/lib/pumplink.db"),
    ("mqtt_url", "mqtts://dev:secret@broker.example:8883", "mqtt_url", "mqtts://dev:secret@broker.example:8883"),
    ("mqtt_prefix", "/farm/pumps/", "mqtt_prefix", "farm/pumps"),
    ("legacy_base", "device", "legacy_base", "device"),
    ("bind", "0.0.0.0:9000", "bind", "0.0.0.0:9000"),
    ("jwt_secret", SECRET, "jwt_secret", SECRET),
    ("timezone", "Europe/Berlin", "timezone", "Europe/Berlin"),
    ("ack_timeout_s", "2.5", "ack_timeout_s", 2.5),
    ("ack_retries", "0", "ack_retries", 0),
    ("queue_limit", "3", "queue_limit", 3),
    ("daily_quota_minutes", "90.5", "daily_quota_minutes", 90.5),
    ("schedule_grace_s", "0", "schedule_grace_s", 0.0),
    ("auto_approve", "TRUE", "auto_approve", True),
    ("auto_approve", "no", "auto_approve", False),
    ("legacy_device_id", "7", "legacy_device_id", 7),
    ("push_enabled", "0", "push_enabled", False),
    ("expo_url", "http://127.0.0.1:9999/--/api/v2/push/send", "expo_url", "http://127.0.0.1:9999/--/api/v2/push/send"),
    ("expo_access_token", "expo-token", "expo_access_token", "expo-token"),
    ("access_token_ttl_s", "60", "access_token_ttl_s", 60),
    ("refresh_token_ttl_s", "3600", "refresh_token_ttl_s", 3600),
    ("login_failures_per_email", "3", "login_failures_per_email", 3),
    ("login_failures_per_client", "50", "login_failures_per_client", 50),
    ("login_window_s", "60", "login_window_s", 60),
    ("ws_ping_s", "5", "ws_ping_s", 5.0),
    ("login_per_client", "30", "login_per_client", 30),
    ("refresh_rotation", "true", "refresh_rotation", True),
    ("trusted_proxies", "127.0.0.1, 10.0.0.0/8,::1", "trusted_proxies", ("127.0.0.1/32", "10.0.0.0/8", "::1/128")),
    ("register_per_client", "3", "register_per_client", 3),
    ("register_window_s", "600", "register_window_s", 600),
    ("log_format", "JSON", "log_format", "json"),
    ("log_level", "debug", "log_level", "DEBUG"),
]


@pytest.mark.parametrize("var, raw, field, expected", GOOD, ids=[f"{g[0]}={g[1]}" for g in GOOD])
def test_each_variable_is_parsed(var, raw, field, expected):
    value = getattr(parse(**{var: raw}), field)
    assert value == expected and type(value) is type(expected)


def test_admin_bootstrap_variables_are_parsed_together():
    config = parse(admin_email="Root@Example.ORG", admin_password="long-enough-1")
    assert (config.admin_email, config.admin_password) == ("root@example.org", "long-enough-1")


BAD = [
    ("database_url", "mysql://db/pumplink"),
    ("mqtt_url", "http://broker:1883"),
    ("mqtt_url", "mqtt://broker:port"),
    ("mqtt_prefix", "pumps/#"),
    ("mqtt_prefix", "  "),
    ("legacy_base", "a/+/b"),
    ("bind", "8080"),
    ("bind", "127.0.0.1:99999"),
    ("jwt_secret", "too-short"),
    ("timezone", "Mars/Olympus_Mons"),
    ("ack_timeout_s", "ten"),
    ("ack_timeout_s", "0"),
    ("ack_timeout_s", "nan"),
    ("ack_timeout_s", "inf"),
    ("ack_retries", "-1"),
    ("ack_retries", "1.5"),
    ("queue_limit", "0"),
    ("daily_quota_minutes", "-5"),
    ("schedule_grace_s", "soon"),
    ("auto_approve", "maybe"),
    ("legacy_device_id", "0"),
    ("push_enabled", "2"),
    ("expo_url", "exp.host/push"),
    ("access_token_ttl_s", "0"),
    ("refresh_token_ttl_s", "forever"),
    ("login_failures_per_email", "0"),
    ("login_failures_per_client", "-3"),
    ("login_window_s", "1e9999"),
    ("ws_ping_s", "0"),
    ("login_per_client", "0"),
    ("refresh_rotation", "sometimes"),
    ("trusted_proxies", "proxy.example"),
    ("register_per_client", "-1"),
    ("jwt_secret", "a" * 32),
    ("log_format", "xml"),
    ("log_level", "LOUD"),
]


@pytest.mark.parametrize("var, raw", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_a_bad_value_raises_config_error_naming_the_variable(var, raw):
    name = f"PUMPLINK_{var.upper()}"
    with pytest.raises(ConfigError) as err:
        parse(**{var: raw})
    message = str(err.value)
    assert message.startswith(name + ":"), message
    assert len(message) > len(name) + 10  # says what is wrong, not just where


@pytest.mark.parametrize("env, named", [
    ({"admin_email": "root@example.org"}, "PUMPLINK_ADMIN_PASSWORD"),
    ({"admin_password": "long-enough-1"}, "PUMPLINK_ADMIN_EMAIL"),
    ({"admin_email": "not an email", "admin_password": "long-enough-1"}, "PUMPLINK_ADMIN_EMAIL"),
    ({"admin_email": "root@example.org", "admin_password": "short"}, "PUMPLINK_ADMIN_PASSWORD"),
    ({"admin_email": "root@example.org", "admin_password": "é" * 40}, "PUMPLINK_ADMIN_PASSWORD"),
])
def test_admin_bootstrap_is_checked_at_start_up(env, named):
    # Checked here, so a bad value stops start-up with its name instead of crashing the worker later.
    with pytest.raises(ConfigError, match=named):
        parse(**env)


def test_short_secret_is_refused_and_a_missing_one_is_named():
    with pytest.raises(ConfigError, match="PUMPLINK_JWT_SECRET: must be at least 32 characters"):
        parse(jwt_secret=SECRET[:31])
    assert parse(jwt_secret=SECRET[:32]).require_jwt_secret() == SECRET[:32]
    with pytest.raises(ConfigError, match="PUMPLINK_JWT_SECRET"):
        parse().require_jwt_secret()


@pytest.mark.parametrize("secret, why", [
    ("a" * 32, "distinct characters"),
    ("ab" * 40, "distinct characters"),
    ("0123456789abcdef" * 2, "pattern repeated"),
    ("password" * 4 + "1234", "entropy"),  # 8 letters + 4 digits, mostly the same few
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaabcdefg", "entropy"),
])
def test_low_entropy_secrets_are_refused_with_the_variable_named(secret, why):
    with pytest.raises(ConfigError) as err:
        parse(jwt_secret=secret)
    message = str(err.value)
    assert message.startswith("PUMPLINK_JWT_SECRET:") and why in message, message
    assert "token_urlsafe" in message  # says how to make a good one
    assert secret not in message  # never echoes the secret into logs


def test_random_secrets_of_every_usual_kind_are_accepted():
    import secrets

    for _ in range(200):
        for secret in (secrets.token_hex(16), secrets.token_hex(32), secrets.token_urlsafe(32),
                       secrets.token_urlsafe(48)):
            assert parse(jwt_secret=secret).jwt_secret == secret
    assert parse(jwt_secret="correct horse battery staple on the pump").jwt_secret


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# local settings\nPUMPLINK_QUEUE_LIMIT=4\nPUMPLINK_TIMEZONE='Europe/Berlin'\n\n"
                        "PUMPLINK_BIND=127.0.0.1:9999\n")
    config = load({"PUMPLINK_BIND": "127.0.0.1:7000"}, env_file=env_file)
    assert (config.queue_limit, config.timezone, config.bind) == (4, "Europe/Berlin", "127.0.0.1:7000")
    env_file.write_text("PUMPLINK_QUEUE_LIMIT=lots\n")
    with pytest.raises(ConfigError, match="PUMPLINK_QUEUE_LIMIT"):
        load({}, env_file=env_file)


def _run_pumplink(tmp_path, *args, **env):
    # A scrubbed environment, in an empty directory (no .env to fall back on).
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    clean.update({f"PUMPLINK_{k.upper()}": v for k, v in env.items()})
    return subprocess.run([PUMPLINK_BIN, *args], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_serve_without_a_jwt_secret_exits_and_names_it(tmp_path):
    done = _run_pumplink(tmp_path, "serve", bind="127.0.0.1:1")
    assert done.returncode != 0
    assert "PUMPLINK_JWT_SECRET" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_serve_with_a_short_secret_or_a_bad_setting_exits_and_names_it(tmp_path):
    done = _run_pumplink(tmp_path, "serve", jwt_secret="short", bind="127.0.0.1:1")
    assert done.returncode != 0
    assert "PUMPLINK_JWT_SECRET" in done.stderr and "32 characters" in done.stderr, done.stderr
    done = _run_pumplink(tmp_path, "serve", jwt_secret="a" * 32, bind="127.0.0.1:1")
    assert done.returncode != 0
    assert "PUMPLINK_JWT_SECRET" in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = _run_pumplink(tmp_path, "serve", jwt_secret=SECRET, timezone="Nowhere/Town")
    assert done.returncode != 0
    assert "PUMPLINK_TIMEZONE" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_migrate_with_an_unreachable_database_names_the_setting(tmp_path):
    done = _run_pumplink(tmp_path, "migrate", database_url="postgresql://nobody@127.0.0.1:1/none")
    assert done.returncode != 0
    assert "PUMPLINK_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr, done.stderr
