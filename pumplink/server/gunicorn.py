"""gunicorn settings and hooks for ``pumplink serve`` (``conf/gunicorn.conf.py`` re-exports them).

gevent is patched before anything else is imported: peewee, psycopg2, paho and pykka
imported first would keep real-thread state and real locks.
"""

from gevent import monkey

monkey.patch_all()

import psycogreen.gevent  # noqa: E402

psycogreen.gevent.patch_psycopg()

from pumplink.config import load as _load_config  # noqa: E402

_config = _load_config()

bind = [_config.bind]
# One worker: the actor system (device state, timers, MQTT link) lives in it.
workers = 1
worker_class = "pumplink.server.worker.PumpLinkWorker"
worker_connections = 4000
wsgi_app = "pumplink.server.process:make_wsgi_app()"
preload_app = False
timeout = 60
graceful_timeout = 10
keepalive = 5
accesslog = None
limit_request_line = 8190
# No runtime control socket: several servers (tests, demo) may run side by side.
control_socket_disable = True


def worker_exit(server, worker):
    # Under gevent nothing else runs the actors' on_stop at exit.
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "close"):
        app.close()

