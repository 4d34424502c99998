"""Redis URLs (one server, Sentinel, Cluster, TLS) and cluster-safe key names (no servers)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis
import redis.cluster
from redis.crc import key_slot

from transactional_outbox._fields import mask_url
from transactional_outbox._redis_client import (
    async_client,
    has_hash_tag,
    parse_redis_url,
    tagged_base,
)
from transactional_outbox.consumer.redis_store import AsyncRedisStore, RedisStore
from transactional_outbox.exceptions import ConfigurationError
from transactional_outbox.relay.config import RelaySettings
from transactional_outbox.relay.leadership import LeaseKeys

SECRET = "S3cr3tPw"
CONN = {
    "mysql_url": "mysql+pymysql://outbox:pw@127.0.0.1:13306/outbox",
    "kafka_bootstrap_servers": "127.0.0.1:19092",
}


def test_one_server_forms_are_kept_as_given() -> None:
    for url in (
        "redis://h:6380/2",
        f"rediss://u:{SECRET}@h:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required",
        "unix:///run/redis.sock?db=1",
    ):
        target = parse_redis_url(url, setting="redis_url")
        assert (target.kind, target.cluster, target.url) == ("server", False, url)


def test_sentinel_url() -> None:
    target = parse_redis_url(
        f"redis+sentinel://:{SECRET}@s1:26380,s2,[::1]:26381/mymaster/3"
        "?socket_timeout=1.5&sentinel_password=sp",
        setting="redis_url",
    )
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (target.service, target.db) == ("mymaster", 3)
    assert target.kwargs["password"] == SECRET
    assert target.kwargs["socket_timeout"] == 1.5  # typed as redis-py types it
    assert target.sentinel_kwargs == {"socket_timeout": 1.5, "password": "sp"}
    assert SECRET not in repr(target) and SECRET not in target.shown
    # An @ in the query is not a login (the netloc ends at the first /).
    named = parse_redis_url("redis+cluster://n1:7000/?client_name=a@b", setting="redis_url")
    assert named.nodes == (("n1", 7000),) and named.kwargs["client_name"] == "a@b"
    assert "password" not in named.kwargs


def test_tls_sentinel_and_cluster_urls_carry_the_certificates() -> None:
    query = "ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_cert_reqs=required"
    sentinel = parse_redis_url(f"rediss+sentinel://s1/svc?{query}", setting="redis_url")
    cluster = parse_redis_url(f"rediss+cluster://n1:7000,n2:7001/?{query}", setting="redis_url")
    for target in (sentinel, cluster):
        assert target.kwargs["ssl"] is True
        assert target.kwargs["ssl_ca_certs"] == "/ca.pem"
        assert target.kwargs["ssl_keyfile"] == "/k.pem"
        assert target.kwargs["ssl_cert_reqs"] == "required"
    assert sentinel.sentinel_kwargs["ssl"] is True
    assert sentinel.sentinel_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert cluster.nodes == (("n1", 7000), ("n2", 7001)) and cluster.cluster


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379/0", "unknown scheme 'http'"),
        ("h:6379", "is not a Redis URL"),
        ("redis+mesh://h/", "unknown scheme 'redis+mesh'"),
        ("redis://h:port/0", "is not a valid Redis URL"),
        ("redis+sentinel://s1:26379/", "redis+sentinel://HOST:PORT/SERVICE[/DB]"),
        ("redis+sentinel://s1:26379/svc/x", "the database 'x' is not a number"),
        ("redis+sentinel://s1:99999/svc", "is not a port"),
        ("redis+cluster://n1:7000/2", "no database but 0"),
        ("redis+cluster://:7000/", "no host"),
    ],
)
def test_a_wrong_form_names_the_setting_and_masks_the_password(url: str, says: str) -> None:
    secret_url = url.replace("://", f"://user:{SECRET}@", 1) if "://" in url else url
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url(secret_url, setting="redis_url")
    assert caught.value.setting == "redis_url"
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


def test_relay_settings_check_the_url_form() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RelaySettings.from_env({}, **CONN, redis_url=f"redis+sentinel://:{SECRET}@s1/")
    assert caught.value.setting == "redis_url" and SECRET not in str(caught.value)
    ok = RelaySettings.from_env({}, **CONN, redis_url="redis+cluster://n1:7000/")
    assert ok.checkpoint_key == "outbox:relay:{default}:checkpoint"


def test_the_relay_cli_exits_2_naming_redis_url() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "transactional_outbox.relay"],
        env={
            "OUTBOX_MYSQL_URL": CONN["mysql_url"],
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": CONN["kafka_bootstrap_servers"],
            "OUTBOX_REDIS_URL": f"redis+cluster://:{SECRET}@n1:7000/5",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # one line (a deprecation WARNING may precede)
    assert last.startswith("configuration error: redis_url: ") and "no database but 0" in last
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr


def test_one_server_keys_keep_their_names() -> None:
    keys = LeaseKeys.for_relay("outbox:relay:", "billing")
    assert (keys.lease, keys.fence, keys.checkpoint) == (
        "outbox:relay:billing:leader",
        "outbox:relay:billing:fence",
        "outbox:relay:billing:checkpoint",
    )
    settings = RelaySettings.from_env({}, **CONN, redis_url="redis+sentinel://s1/svc/0")
    assert settings.checkpoint_key == "outbox:relay:default:checkpoint"


def test_cluster_keys_of_one_relay_share_a_slot() -> None:
    keys = LeaseKeys.for_relay("outbox:relay:", "billing", cluster=True)
    assert keys.lease == "outbox:relay:{billing}:leader"
    together = [keys.lease, keys.fence, keys.checkpoint, keys.checkpoint + ":token"]
    assert len({key_slot(k.encode()) for k in together}) == 1
    # Keys that held a tag already (the only ones that ran on a cluster before) keep it.
    tagged = LeaseKeys.for_relay("{outbox}:relay:", "billing", cluster=True)
    assert tagged.lease == "{outbox}:relay:billing:leader"


def test_an_empty_tag_cannot_be_fixed_and_names_key_prefix() -> None:
    assert not has_hash_tag("a{}b:")
    with pytest.raises(ConfigurationError) as caught:
        LeaseKeys.for_relay("a{}", "r", cluster=True)
    assert caught.value.setting == "key_prefix"
    with pytest.raises(ConfigurationError, match="key_prefix"):
        RelaySettings.from_env({}, **CONN, redis_url="redis+cluster://n/", key_prefix="a{}")


@pytest.mark.parametrize(
    ("prefix", "name", "cluster", "base"),
    [
        ("outbox:processed:", "orders", False, "outbox:processed:orders:"),
        ("outbox:processed:", None, False, "outbox:processed:"),
        ("outbox:processed:", "orders", True, "outbox:processed:{orders}:"),
        ("outbox:processed:", None, True, "{outbox:processed:}"),
        ("", None, True, "{outbox}"),
        ("{p}:", "orders", True, "{p}:orders:"),
        ("p:", "{orders}", True, "p:{orders}:"),
    ],
)
def test_store_key_bases(prefix: str, name: str | None, cluster: bool, base: str) -> None:
    assert tagged_base(prefix, name, cluster=cluster) == base


def _cluster_client() -> redis.cluster.RedisCluster:
    # A client object that has not connected: built without running its __init__.
    return redis.cluster.RedisCluster.__new__(redis.cluster.RedisCluster)


def test_a_store_on_a_cluster_client_tags_the_consumer_name() -> None:
    client = _cluster_client()
    client.register_script = lambda script: None  # type: ignore[method-assign]
    store = RedisStore(client)
    ids = [uuid.uuid4() for _ in range(50)]
    keys = [store.key(i, "orders") for i in ids]
    assert keys[0] == f"outbox:processed:{{orders}}:{ids[0]}"
    assert len({key_slot(k.encode()) for k in keys}) == 1
    plain = RedisStore(redis.Redis())
    assert plain.key(ids[0], "orders") == f"outbox:processed:orders:{ids[0]}"


def test_store_from_url_names_its_argument() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncRedisStore.from_url(f"redis+sentinel://:{SECRET}@s1/")
    assert caught.value.setting == "url" and SECRET not in str(caught.value)
    store = AsyncRedisStore.from_url("redis+sentinel://127.0.0.1:1/svc/0", prefix="p:")
    assert store.key(uuid.UUID(int=1), "c") == "p:c:00000000-0000-0000-0000-000000000001"


def test_unknown_cluster_client_setting_names_the_setting() -> None:
    target = parse_redis_url("redis+cluster://n1:7000/?no_such_option=1", setting="url")
    with pytest.raises(ConfigurationError, match=r"^url: .*not one the cluster client takes"):
        async_client(target)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            f"redis+sentinel://:{SECRET}@s1/svc/0?sentinel_password={SECRET}&socket_timeout=1",
            "redis+sentinel://:***@s1/svc/0?sentinel_password=***&socket_timeout=1",
        ),
        (f"unix:///run/r.sock?db=0&password={SECRET}", "unix:///run/r.sock?db=0&password=***"),
        ("redis://h/0?client_name=a@b", "redis://h/0?client_name=a@b"),
    ],
)
def test_query_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url(url.replace("://", "+mesh://", 1), setting="redis_url")
    assert SECRET not in str(caught.value)
