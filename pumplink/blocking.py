"""Run CPU-heavy C calls (bcrypt) off the gevent loop when the process is patched."""

from __future__ import annotations


def offload(fn, *args):
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return fn(*args)
    if monkey.is_module_patched("socket"):
        import gevent

        # bcrypt releases the GIL, so a real thread keeps the loop free (~1 ms instead of ~250 ms).
        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)
