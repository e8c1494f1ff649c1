"""The gateway's cluster side (docs/cluster.md): is a device this node's, and if not, its call
forwarded to the owner. With no cluster (``router`` None) every device is this node's.

A mixin of ``gateway.Gateway``, which uses it before asking an actor; kazoo and the forwarding
client are imported only in cluster mode.
"""

from __future__ import annotations

import copy
from typing import Any, Callable


class Routed:
    router = None  # cluster.routing.Router in cluster mode

    def _route_from(self, supervisor, config) -> None:
        if getattr(supervisor, "cluster", None) is not None:
            from pumplink.cluster.routing import router_for  # kazoo: cluster mode only

            self.router = router_for(supervisor.cluster, config, supervisor.rt.metrics)

    def _release_connection(self) -> None:  # the gateway's: the request's database connection
        raise NotImplementedError

    def _remote(self, device_id: int) -> bool:
        """Whether another node owns the device (a retryable 503 while nobody does)."""
        return self.router is not None and not self.router.is_local(device_id)

    def _forward(self, device_id: int, op: str, user, **args) -> Any:
        address = self.router.address(device_id)
        self._release_connection()  # as before waiting on an actor: the owner's answer takes a while
        return self.router.forwarder.call(address, op, user.id if user is not None else None, device_id=device_id,
                                          **args)

    def as_owner(self):
        """This gateway for a call another node forwarded: it answers for its own devices only."""
        other = copy.copy(self)
        other.router = self.router.as_owner() if self.router is not None else None
        return other

    def _each_node(self, local: Callable[[], list], op: str, user=None, **args) -> list:
        """``local()`` here and ``op`` on every other node (each for the devices it owns), joined."""
        if self.router is None:
            return local()
        return self.router.each_node(local, op, user and user.id, self._release_connection, **args)

    def _split(self, ids: list[int], local: Callable[[list[int]], list], op: str) -> list:
        """Per-device answers for ``ids``: ours from ``local``, the others' from their owners, in order."""
        return local(ids) if self.router is None else self.router.split(ids, local, op, self._release_connection)
