"""Cluster settings: off by default, checked at start-up, and `serve` refuses half a cluster."""

from __future__ import annotations

import pytest

from pumplink.config import ConfigError, load
from tests.server.test_config import SECRET, _run_pumplink

PG = "postgresql://pl:pw@127.0.0.1:5432/pumplink"


def parse(**env):
    return load({f"PUMPLINK_{k.upper()}": v for k, v in env.items()}, env_file=None)


def test_single_node_is_the_default_and_needs_nothing():
    config = parse(bind="127.0.0.1:8123")
    assert not config.clustered
    assert (config.zookeeper, config.node_name, config.internal_url, config.cluster_secret) == (None, None, None, None)
    assert config.zk_session_timeout_s == 10.0
    config.require_cluster_settings()  # nothing to require
    assert config.node.endswith(":8123")
    assert config.internal_address == "http://127.0.0.1:8123"


def test_cluster_settings_are_parsed():
    config = parse(zookeeper="zk1:2181,zk2:2181/pumplink", node_name="a", internal_url="http://10.0.0.5:8080/",
                   cluster_secret=SECRET, zk_session_timeout_s="4", database_url=PG)
    assert config.clustered and config.zookeeper == "zk1:2181,zk2:2181/pumplink"
    assert (config.node, config.internal_address, config.zk_session_timeout_s) == ("a", "http://10.0.0.5:8080", 4.0)
    config.require_cluster_settings()


@pytest.mark.parametrize("var, raw", [
    ("zookeeper", "zk1:notaport"),
    ("zookeeper", "zk1:2181,"),
    ("zookeeper", "zk1:2181/"),
    ("node_name", "a/b"),
    ("internal_url", "10.0.0.5:8080"),
    ("cluster_secret", "short"),
    ("zk_session_timeout_s", "0"),
])
def test_a_bad_cluster_setting_is_named(var, raw):
    with pytest.raises(ConfigError) as err:
        parse(**{var: raw})
    assert str(err.value).startswith(f"PUMPLINK_{var.upper()}:")


def test_cluster_mode_requires_the_secret_and_postgresql():
    with pytest.raises(ConfigError, match="PUMPLINK_CLUSTER_SECRET"):
        parse(zookeeper="127.0.0.1:2181", database_url=PG).require_cluster_settings()
    with pytest.raises(ConfigError, match="PUMPLINK_DATABASE_URL"):
        parse(zookeeper="127.0.0.1:2181", cluster_secret=SECRET).require_cluster_settings()


def test_serve_in_cluster_mode_without_the_secret_exits_and_names_it(tmp_path):
    done = _run_pumplink(tmp_path, "serve", jwt_secret=SECRET, zookeeper="127.0.0.1:2181", database_url=PG,
                         bind="127.0.0.1:1")
    assert done.returncode != 0
    assert "PUMPLINK_CLUSTER_SECRET" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cluster_status_prints_the_map_from_zookeeper(zookeeper, zk_root, tmp_path):
    import json

    from pumplink.cluster.membership import Member
    from pumplink.cluster.partitions import PARTITIONS

    member = Member(zookeeper.hosts, "a:8080", "http://10.0.0.5:8080", root=zk_root, session_timeout_s=4).start()
    try:
        assert member.wait_for(lambda m: len(m.owned()) == PARTITIONS, 20)
        done = _run_pumplink(tmp_path, "cluster", "status", "--json", zookeeper=zookeeper.hosts + zk_root)
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
        assert found["members"] == {"a:8080": "http://10.0.0.5:8080"}
        assert {o["node"] for o in found["owners"].values()} == {"a:8080"} and len(found["owners"]) == PARTITIONS
        done = _run_pumplink(tmp_path, "cluster", "status", zookeeper=zookeeper.hosts + zk_root)
        assert done.returncode == 0 and "a:8080  http://10.0.0.5:8080  64 partition(s)" in done.stdout, done.stdout
    finally:
        member.stop()
    done = _run_pumplink(tmp_path, "cluster", "status")
    assert done.returncode == 2 and "PUMPLINK_ZOOKEEPER" in done.stderr
