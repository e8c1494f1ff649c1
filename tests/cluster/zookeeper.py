"""A standalone ZooKeeper server for the tests (harness.py, shared with bench/bench_cluster.py)."""

from harness import ZOOKEEPER_JAR as JAR, ZooKeeper  # noqa: F401 - re-exported
