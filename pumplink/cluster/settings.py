"""Cluster-mode settings (docs/cluster.md): how they are read and what they require. Imported
by config.py on every node; it needs nothing of kazoo."""

from __future__ import annotations

import socket

from pumplink.errors import ConfigError


class ClusterSettings:
    """Mixin of ``Config``: its fields zookeeper, node_name, internal_url, cluster_secret."""

    @property
    def clustered(self) -> bool:
        return bool(self.zookeeper)

    @property
    def node(self) -> str:
        """This node's name in the cluster: PUMPLINK_NODE_NAME, else hostname:port."""
        if self.node_name:
            return self.node_name
        return f"{socket.gethostname()}:{self.bind_host_port[1]}"

    @property
    def internal_address(self) -> str:
        """Where other nodes forward requests: PUMPLINK_INTERNAL_URL, else http://<bind>."""
        return self.internal_url or f"http://{self.bind}"

    def require_cluster_settings(self) -> None:
        """Cluster mode needs the shared secret (nodes trust each other's forwarded requests only
        with it) and PostgreSQL (fencing takes row locks that SQLite cannot)."""
        if not self.clustered:
            return
        if not self.database_url.startswith(("postgresql:", "postgres:")):
            raise ConfigError("PUMPLINK_DATABASE_URL: cluster mode (PUMPLINK_ZOOKEEPER) needs PostgreSQL, "
                              "which every node shares and which fences stale owners' writes")
        if not self.cluster_secret:
            raise ConfigError(
                "PUMPLINK_CLUSTER_SECRET: not set, but PUMPLINK_ZOOKEEPER is; nodes authenticate "
                "forwarded requests with it (the same value on every node; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )


def zookeeper(name: str, raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    hosts, slash, chroot = raw.partition("/")
    for host in hosts.split(","):
        h, sep, port = host.strip().rpartition(":")
        if not host.strip() or (sep and (not h or not port.isdigit() or not 0 < int(port) < 65536)):
            raise ConfigError(f"{name}: expected host:port[,host:port...][/chroot], got {raw!r}")
    if slash and (not chroot or chroot.endswith("/") or "//" in chroot):
        raise ConfigError(f"{name}: the chroot after the hosts must be a path such as /pumplink, got {raw!r}")
    return raw


def node_name(name: str, raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    if "/" in raw or len(raw) > 200 or not raw.isprintable():
        raise ConfigError(f"{name}: must be printable, without '/', at most 200 characters, got {raw!r}")
    return raw
