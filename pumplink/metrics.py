"""Prometheus metrics, in a registry of the service's own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# Outcomes of forwarded calls (cluster/forward.py sends, api/internal.py receives): /ready shows each, 0 included.
FORWARDED_SENT = ("ok", "error", "unreachable", "timeout", "refused")
FORWARDED_RECEIVED = ("ok", "error", "invalid", "refused")


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.activations = Counter("pumplink_activations", "Activations that reached an end, by state and reason",
                                   ["state", "reason"], registry=r)
        self.activations_accepted = Counter("pumplink_activations_accepted", "Activations accepted", ["source"],
                                            registry=r)
        self.ack_latency = Histogram("pumplink_command_ack_seconds", "Time from a command to its ack", ["action"],
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                     registry=r)
        self.queued = Gauge("pumplink_queued_activations", "Activations waiting in device queues", registry=r)
        self.devices = Gauge("pumplink_devices", "Devices by state", ["state"], registry=r)
        self.ws_clients = Gauge("pumplink_websocket_clients", "Connected WebSocket clients", registry=r)
        self.broker_connected = Gauge("pumplink_broker_connected", "1 while the MQTT link is up", registry=r)
        self.mqtt_messages = Counter("pumplink_mqtt_messages", "Device messages received, by kind", ["kind"],
                                     registry=r)
        self.mqtt_malformed = Counter("pumplink_mqtt_malformed", "Device messages dropped as malformed", registry=r)
        self.mqtt_dropped = Counter("pumplink_mqtt_dropped", "Inbound MQTT messages dropped, by reason", ["reason"],
                                    registry=r)
        self.mqtt_restarts = Counter("pumplink_mqtt_link_restarts",
                                     "MQTT clients replaced by the watchdog, by reason", ["reason"], registry=r)
        self.mqtt_retained = Counter("pumplink_mqtt_retained", "Retained device messages received, by kind", ["kind"],
                                     registry=r)
        self.retained_fetch_pending = Gauge("pumplink_mqtt_retained_fetch_pending",
                                            "Devices whose retained state is still being fetched after a (re)connect",
                                            registry=r)
        self.retained_fetch_seconds = Gauge("pumplink_mqtt_retained_fetch_seconds",
                                            "How long the last fetch of every device's retained state took", registry=r)
        self.flapping_live = Gauge("pumplink_devices_flapping_live",
                                   "Devices changing state faster than PUMPLINK_LIVE_CHANGES_PER_S (live events debounced)",
                                   registry=r)
        self.live_debounced = Counter("pumplink_live_state_events_debounced",
                                      "Device state events held back from WebSocket clients by debouncing", registry=r)
        self.scheduler_heap = Gauge("pumplink_scheduler_heap_size", "Schedules waiting in the scheduler's heap",
                                    registry=r)
        self.schedule_lateness = Histogram("pumplink_schedule_lateness_seconds",
                                           "How late due schedule runs were handed to their device",
                                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300), registry=r)
        self.commit_batch = Histogram("pumplink_group_commit_batch_size",
                                      "Device units (a device's messages handled together) per transaction",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.device_unit = Histogram("pumplink_device_unit_messages",
                                     "A device's waiting messages handled as one unit, with one commit",
                                     buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.commit_wait = Histogram("pumplink_group_commit_wait_seconds",
                                     "From a device handing its rows to the writer until they were durable",
                                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
                                     registry=r)
        # Cluster mode (docs/cluster.md): calls this node sent to a device's owner, and those it served.
        self.forwarded = Counter("pumplink_forwarded_requests",
                                 "Gateway calls forwarded to the node owning the device, by operation and outcome",
                                 ["op", "outcome"], registry=r)
        self.forwarded_served = Counter("pumplink_forwarded_served",
                                        "Forwarded calls received from other nodes, by outcome", ["outcome"],
                                        registry=r)
        self.cluster_events = Counter("pumplink_cluster_events",
                                      "Live events sent to or received from other nodes, by direction",
                                      ["direction"], registry=r)

    def enable_cluster(self) -> None:
        """Cluster mode's metrics (docs/cluster.md); a single node does not show them."""
        r = self.registry
        self.cluster_partitions = Gauge("pumplink_cluster_partitions_owned", "Partitions this node owns", registry=r)
        self.cluster_session = Gauge("pumplink_cluster_session", "1 for this node's ZooKeeper session state",
                                     ["state"], registry=r)
        self.cluster_handovers = Counter("pumplink_cluster_handovers",
                                         "Partitions taken or given up by this node, by how", ["change"], registry=r)
        self.cluster_withheld = Counter("pumplink_cluster_commands_withheld",
                                        "Commands not sent because this node may not send them now", ["action"],
                                        registry=r)

    def device_state(self, previous: str | None, new: str | None) -> None:
        if previous is not None:
            self.devices.labels(previous).dec()
        if new is not None:
            self.devices.labels(new).inc()

    def forwarded_counts(self) -> dict[str, dict[str, int]]:
        """Forwarded calls this node sent (to owners) and received (as owner), by outcome, from the
        counters /metrics shows (summed over operations): /ready's ``cluster.forwarded``."""
        return {"sent": _by_outcome(self.forwarded, FORWARDED_SENT),
                "received": _by_outcome(self.forwarded_served, FORWARDED_RECEIVED)}

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _by_outcome(counter: Counter, outcomes: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(outcomes, 0)
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                outcome = sample.labels["outcome"]
                out[outcome] = out.get(outcome, 0) + int(sample.value)
    return out
