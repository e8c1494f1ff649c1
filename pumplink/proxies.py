"""Typed proxies of the actors the gateway calls, for type checkers only.

The gateway reaches an actor through a callable on its proxy (``lambda d: d.activate(...)``).
These protocols list what a proxy offers: each method is the actor's own, returning a pykka
future (``pykka.typing.proxy_method``), so mypy or pyright report a renamed method or a wrong
keyword. Protocols, not ``pykka.ActorProxy`` subclasses: its ``__getattr__`` accepts any name.
Only the gateway imports this module, and only when type checking (the device actor imports
the gateway).
"""

from __future__ import annotations

from typing import Protocol

from pykka.typing import proxy_method

from pumplink.devices.actor import DeviceActor
from pumplink.schedules.scheduler import SchedulerActor


class DeviceProxy(Protocol):
    activate = proxy_method(DeviceActor.activate)
    cancel = proxy_method(DeviceActor.cancel)
    cancel_queued_of = proxy_method(DeviceActor.cancel_queued_of)
    force_shutdown = proxy_method(DeviceActor.force_shutdown)
    reload = proxy_method(DeviceActor.reload)
    describe = proxy_method(DeviceActor.describe)
    view = proxy_method(DeviceActor.view)
    go_status = proxy_method(DeviceActor.go_status)
    summary = proxy_method(DeviceActor.summary)


class SchedulerProxy(Protocol):
    create = proxy_method(SchedulerActor.create)
    set_enabled = proxy_method(SchedulerActor.set_enabled)
    delete = proxy_method(SchedulerActor.delete)
