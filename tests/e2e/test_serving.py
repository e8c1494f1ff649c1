"""Serving: SIGTERM lets requests finish and stops the actors without waiting on idle clients."""

import signal
import time

import requests


def test_sigterm_stops_cleanly_despite_an_idle_keepalive_client(server_factory):
    server = server_factory()
    idle = requests.Session()
    assert idle.get(f"{server.base}/api/v1/health").status_code == 200  # the socket stays open, idle
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    took = time.monotonic() - started
    assert took < 5, f"stop waited {took:.1f}s on an idle connection"
    log = server.log_text()
    assert "actor system stopped" in log, "worker_exit ran and stopped the actors"
    assert "graceful timeout" not in log
