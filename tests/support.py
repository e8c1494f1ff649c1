"""Test support: the shared harness (``harness.py`` at the repository's top, also used by bench/)."""

from harness import (  # re-exported: every test imports these from here
    MQTT_URL,
    PG_ADMIN_DSN,
    PUMPLINK_BIN,
    Api,
    Server,
    create_database,
    drop_database,
    free_port,
    run_id,
    server_env,
    wait_until,
)

__all__ = ["MQTT_URL", "PG_ADMIN_DSN", "PUMPLINK_BIN", "Api", "Server", "create_database", "drop_database",
           "free_port", "run_id", "server_env", "wait_until"]
