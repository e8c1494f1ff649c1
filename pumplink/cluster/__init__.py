"""Running PumpLink as several nodes: the partition map and partition ownership on ZooKeeper.

Nothing here is imported by single-node serving but ``settings`` (how config reads the
cluster settings; no kazoo).
"""
