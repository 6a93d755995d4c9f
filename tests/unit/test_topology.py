"""Where a namespace lives, without a server: URLs, modes, the slot, CLUSTER SLOTS replies.
What a real cluster and a real Sentinel do is in tests/e2e/test_topologies.py and the
conformance matrix (every integration test, on each)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from coordinator._redis import topology
from coordinator._redis.topology import Mode, Resolved, TopologyPool, parse_sentinel_url
from coordinator.contract.keys import Keys
from coordinator.exceptions import ConfigError
from coordinator.settings import Settings, redact_url


def test_every_key_and_channel_of_a_namespace_hashes_to_one_slot() -> None:
    keys = Keys("chat")
    names = [keys.instance("web-1"), keys.instances, keys.leases, keys.admit,
             keys.phase_stats, keys.events, keys.instance_events("web-1")]
    assert all(name.startswith("{chat}:") for name in names)
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{chat}")}


def test_a_sentinel_url_names_its_sentinels_service_db_and_credentials() -> None:
    sentinels, service, master, own = parse_sentinel_url(
        "redis+sentinel://app:s3cret@10.0.0.1:26380,10.0.0.2,[::1]:5/mymaster/2"
        "?sentinel_password=sp&socket_timeout=3")
    assert sentinels == [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5)]
    assert service == "mymaster"
    assert (master["username"], master["password"], master["db"]) == ("app", "s3cret", 2)
    assert master["socket_timeout"] == 3.0 and "ssl" not in master
    assert own == {"password": "sp"}


def test_rediss_sentinel_is_tls_to_the_sentinels_and_the_master() -> None:
    _, _, master, own = parse_sentinel_url(
        "rediss+sentinel://h:26379/svc?ssl_ca_certs=/ca.pem")
    assert master["ssl"] is True and master["ssl_ca_certs"] == "/ca.pem"
    assert own == {"ssl": True, "ssl_ca_certs": "/ca.pem"}


@pytest.mark.parametrize("url", [
    "redis+sentinel://h:26379", "redis+sentinel://h:26379/", "redis+sentinel:///svc",
    "redis+sentinel://h:26379/svc/zero", "redis+sentinel://h:26379/svc/0/extra",
    "redis+sentinel://h:port/svc", "redis+sentinel://h,:1/svc"])
def test_a_bad_sentinel_url_stops_start_up_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match="COORD_REDIS_URL"):
        Settings(redis_url=url)


def test_the_mode_comes_from_the_url_scheme_or_coord_redis_mode() -> None:
    assert topology.mode_of("redis+sentinel://h/s") is Mode.SENTINEL
    assert topology.mode_of("REDISS+SENTINEL://h/s", "cluster") is Mode.SENTINEL
    assert topology.mode_of("redis://h", "cluster") is Mode.CLUSTER
    assert Settings.from_env({"COORD_REDIS_MODE": "Cluster"}).redis_mode == "cluster"
    with pytest.raises(ConfigError, match="COORD_REDIS_MODE"):
        Settings.from_env({"COORD_REDIS_MODE": "sentinel"})  # the URL says sentinel


def test_a_sentinel_password_in_the_query_is_redacted() -> None:
    url = "redis+sentinel://u:pw@h:26379/svc?sentinel_password=sp&socket_timeout=1"
    shown = redact_url(url)
    assert "pw" not in shown.replace("sentinel_password", "") and "sp&" not in shown
    assert shown.endswith("sentinel_password=***&socket_timeout=1")


def pool(namespace: str = "chat", mode: Mode = Mode.AUTO) -> TopologyPool:
    return TopologyPool(mode=mode, slot_key=f"{{{namespace}}}", host="10.0.0.9", port=7000)


def slots_reply(owner_of_chat: tuple[str, int]) -> list[object]:
    """CLUSTER SLOTS of three masters, ``owner_of_chat`` serving {chat}'s slot (as bytes,
    with one master announced by an empty host: "the node you asked")."""
    slot = key_slot(b"{chat}")
    host, port = owner_of_chat
    return [
        [0, slot - 1, [b"10.0.0.1", 7001, b"id1"], [b"10.0.0.4", 7004, b"id4"]],
        [slot, slot, [host.encode(), port, b"id2"]],
        [slot + 1, 16383, [b"", 7003, b"id3"]],
    ]


def test_the_owner_of_the_namespaces_slot_is_found_and_every_node_kept_as_a_seed() -> None:
    p = pool()
    assert p._owner(slots_reply(("10.0.0.2", 7002)), ("10.0.0.9", 7000)) == ("10.0.0.2", 7002)
    assert p.seeds == [("10.0.0.9", 7000), ("10.0.0.1", 7001), ("10.0.0.4", 7004),
                       ("10.0.0.2", 7002), ("10.0.0.9", 7003)]  # "" is the node asked


def test_a_slot_no_node_serves_is_cluster_down() -> None:
    from redis.exceptions import ClusterDownError
    with pytest.raises(ClusterDownError, match="slot"):
        pool("elsewhere")._owner([[0, 10, [b"h", 1, b"i"]]], ("h", 1))


def test_only_a_moved_reply_is_taken_for_a_cluster_where_hello_said_nothing() -> None:
    """A READONLY (a standalone master demoted: ElastiCache's or Memorystore's failover)
    once turned auto mode into cluster mode for good, so that the next connect asked a
    standalone server for CLUSTER SLOTS, refused, until a restart."""
    p = pool()
    p.resolved = Resolved(("10.0.0.9", 7000), Mode.STANDALONE, False)
    p.forget(moved=False)  # READONLY, TRYAGAIN, CLUSTERDOWN, ASK: ask again, that is all
    after: tuple[Resolved | None, bool, Mode] = (p.resolved, p.moved_seen, p.mode)
    assert after == (None, False, Mode.AUTO)
    p.forget(moved=True)
    assert p.moved_seen and p.mode is Mode.AUTO  # HELLO, when it answers, still decides


async def test_standalone_mode_asks_nothing_before_it_connects() -> None:
    forced = pool(mode=Mode.STANDALONE)  # 10.0.0.9 is nobody: a probe would time out
    assert await forced.resolve() == Resolved(("10.0.0.9", 7000), Mode.STANDALONE, False)


def test_a_pool_shows_without_recursing_through_its_own_proxy() -> None:
    slot = key_slot(b"{chat}")
    assert repr(pool()) == f"<TopologyPool(mode=auto, seed=10.0.0.9:7000, slot={slot})>"
