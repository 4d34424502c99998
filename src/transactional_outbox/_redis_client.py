"""One place that turns a Redis URL into a redis-py client, for the relay and the stores.

Forms (``redis://`` and ``unix://`` as redis-py reads them, query parameters included):

- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS: ``ssl_ca_certs``,
  ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname`` as query
  parameters), ``unix:///path/to/socket?db=0``: one server.
- ``redis+sentinel://[user:password@]host:26379[,host2:26379]/SERVICE[/db][?...]``
  (``rediss+sentinel://`` for TLS to the sentinels and the primary): the primary that the
  sentinels name for ``SERVICE``, asked again after a failover. ``sentinel_username`` and
  ``sentinel_password`` in the query log in to the sentinels; the URL's own login is the
  primary's.
- ``redis+cluster://[user:password@]host:port[,host:port]/[?...]`` (``rediss+cluster://``):
  a Redis Cluster, found from any of the nodes listed.

A wrong form raises :class:`ConfigurationError` naming the setting and the URL, password
masked. :func:`probe` checks at startup that the server is what the URL says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as acluster
import redis.asyncio.sentinel as asentinel
import redis.cluster as scluster
import redis.sentinel as ssentinel
from redis.connection import parse_url as _untyped_parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

from ._fields import mask_url
from .exceptions import ConfigurationError

__all__ = [
    "AsyncClient",
    "RedisTarget",
    "SyncClient",
    "async_client",
    "has_hash_tag",
    "parse_redis_url",
    "probe",
    "sync_client",
    "tagged_base",
]

AsyncClient = aioredis.Redis | acluster.RedisCluster
SyncClient = redis.Redis | scluster.RedisCluster

_parse_url: Callable[[str], dict[str, Any]] = _untyped_parse_url
_DEFAULT_PORT = {"sentinel": 26379, "cluster": 6379}
_SERVER_SCHEMES = ("redis", "rediss", "unix")


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names: one server, a Sentinel service or a cluster."""

    url: str = dataclasses.field(repr=False)
    setting: str
    kind: str  # "server", "sentinel" or "cluster"
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    sentinel_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def shown(self) -> str:
        """The URL with its password masked, for messages."""
        return mask_url(self.url)

    @property
    def cluster(self) -> bool:
        """True for a Redis Cluster (keys a script touches together need one hash slot)."""
        return self.kind == "cluster"

    def error(self, message: str) -> ConfigurationError:
        """A configuration error naming the setting and the (masked) URL."""
        return ConfigurationError(self.setting, f"{self.shown!r}: {message}")


def _fail(url: str, setting: str, message: str) -> ConfigurationError:
    return ConfigurationError(setting, f"{mask_url(url)!r}: {message}")


def parse_redis_url(url: str, *, setting: str) -> RedisTarget:
    """Read ``url``; raise :class:`ConfigurationError` naming ``setting`` if it is no form
    this module knows (see the module's docstring)."""
    scheme, sep, rest = url.partition("://")
    forms = "redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
    if not sep:
        raise _fail(url, setting, f"is not a Redis URL: use {forms}")
    if scheme in _SERVER_SCHEMES:
        try:
            _parse_url(url)
        except ValueError as exc:
            raise _fail(url, setting, f"is not a valid Redis URL ({exc})") from None
        return RedisTarget(url=url, setting=setting, kind="server")
    base, plus, kind = scheme.partition("+")
    if not plus or base not in ("redis", "rediss") or kind not in _DEFAULT_PORT:
        raise _fail(url, setting, f"unknown scheme {scheme!r}: use {forms}")
    # As urlparse (and so redis-py) reads a URL: the netloc ends at the first / ? or #.
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, path_query = rest[:end], rest[end:].partition("#")[0]
    userinfo, at_sign, hosts = netloc.rpartition("@")
    path, _, query = path_query.partition("?")
    nodes = tuple(_node(h, _DEFAULT_PORT[kind], url, setting) for h in hosts.split(","))
    parts = [p for p in path.split("/") if p]
    service, db_text = "", "0"
    if kind == "sentinel":
        if not parts or len(parts) > 2:
            raise _fail(url, setting, "a Sentinel URL is redis+sentinel://HOST:PORT/SERVICE[/DB]")
        service, db_text = parts[0], parts[1] if len(parts) == 2 else "0"
    elif parts and parts != ["0"]:
        raise _fail(url, setting, "a Redis Cluster has no database but 0: end the URL in /")
    if not db_text.isdigit():
        raise _fail(url, setting, f"the database {db_text!r} is not a number")
    # redis-py reads the login and the query (typed: socket_timeout=1.5, ...) for us.
    login = f"{userinfo}@" if at_sign else ""
    try:
        kwargs = _parse_url(f"{base}://{login}placeholder/{db_text}?{query}")
    except ValueError as exc:
        raise _fail(url, setting, f"is not a valid Redis URL ({exc})") from None
    for key in ("host", "port", "connection_class"):
        kwargs.pop(key, None)
    if base == "rediss":
        kwargs["ssl"] = True
    db = int(kwargs.pop("db", db_text))
    sentinel_kwargs = {
        k: v for k, v in kwargs.items() if k.startswith(("ssl", "socket_")) and k != "ssl"
    }
    if base == "rediss":
        sentinel_kwargs["ssl"] = True
    for key in ("sentinel_username", "sentinel_password"):
        if key in kwargs:
            sentinel_kwargs[key.removeprefix("sentinel_")] = kwargs.pop(key)
    if kind == "cluster" and db != 0:
        raise _fail(url, setting, "a Redis Cluster has no database but 0")
    return RedisTarget(
        url=url,
        setting=setting,
        kind=kind,
        nodes=nodes,
        service=service,
        db=db,
        kwargs=kwargs,
        sentinel_kwargs=sentinel_kwargs,
    )


def _node(text: str, default_port: int, url: str, setting: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise _fail(url, setting, f"no host in {text!r}: list HOST:PORT,HOST:PORT")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise _fail(url, setting, f"the port in {text!r} is not a port")
    return host, int(port) if port else default_port


def async_client(target: RedisTarget) -> AsyncClient:
    """A ``redis.asyncio`` client for ``target`` (connects at its first command)."""
    if target.kind == "server":
        return aioredis.from_url(target.url)
    if target.kind == "sentinel":
        manager = asentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=dict(target.sentinel_kwargs), **target.kwargs
        )
        client = manager.master_for(target.service, redis_class=_AsyncSentinelMaster, db=target.db)
        return cast(aioredis.Redis, client)
    try:
        return _AsyncCluster(
            target, startup_nodes=[acluster.ClusterNode(h, p) for h, p in target.nodes]
        )
    except TypeError as exc:  # an unknown query parameter
        raise target.error(
            f"a setting in the URL is not one the cluster client takes ({exc})"
        ) from None


def sync_client(target: RedisTarget) -> SyncClient:
    """A ``redis`` (sync) client for ``target``. A cluster client connects at once."""
    if target.kind == "server":
        return redis.Redis.from_url(target.url)
    if target.kind == "sentinel":
        manager = ssentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=dict(target.sentinel_kwargs), **target.kwargs
        )
        return cast(redis.Redis, manager.master_for(target.service, db=target.db))  # type: ignore[no-untyped-call]
    try:
        nodes = [scluster.ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
        return scluster.RedisCluster(startup_nodes=nodes, **target.kwargs)
    except TypeError as exc:
        raise target.error(
            f"a setting in the URL is not one the cluster client takes ({exc})"
        ) from None
    except RedisClusterException as exc:
        if (err := _cluster_error(target, exc)) is exc:
            raise
        raise err from None


def _cluster_error(target: RedisTarget, exc: RedisClusterException) -> Exception:
    """What a cluster client's own exception means: a wrong URL, a retryable outage (no
    node reachable, slots not all covered or disagreed on: a failover under way), or
    else itself (a bug such as keys of one script in two slots: not to be retried)."""
    text = str(exc)
    if "Cluster mode is not enabled" in text:
        return target.error(
            "the server is not in cluster mode: use redis://HOST:PORT/DB for one server"
        )
    if any(s in text for s in ("cannot be connected", "not covered", "could not agree")):
        return RedisConnectionError(f"Redis Cluster: {text}")
    return exc


class _AsyncSentinelMaster(aioredis.Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        await super().aclose(close_connection_pool)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


class _AsyncCluster(acluster.RedisCluster):
    """The asyncio cluster client, with its own exceptions told apart: a node not in
    cluster mode is a :class:`ConfigurationError`; no node reachable is a redis
    ``ConnectionError`` (retried like any outage), not the bare ``RedisClusterException``
    that callers catching ``RedisError`` would miss."""

    def __init__(self, target: RedisTarget, **kwargs: Any) -> None:
        super().__init__(**kwargs, **target.kwargs)
        self._target = target

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            if (err := _cluster_error(self._target, exc)) is exc:
                raise
            raise err from None


async def probe(client: AsyncClient, target: RedisTarget) -> None:
    """Check that the server is what ``target`` says, once at startup.

    Raises :class:`ConfigurationError` (naming ``target.setting``) for a Sentinel that
    does not monitor the service, a ``redis+cluster://`` node not in cluster mode, or a
    cluster node given as ``redis://``; a redis ``ConnectionError`` when nothing answered
    (retry). Checks a managed Redis refuses (``INFO`` renamed or not granted) are skipped.
    """
    if target.kind == "cluster":
        await client.ping()  # reads the slots first: a node not in cluster mode fails here
        return
    if target.kind == "sentinel":
        await _probe_sentinels(client, target)
    try:
        info = await client.info("cluster")
    except NoPermissionError:
        return
    except ResponseError as exc:  # a proxy or a managed Redis without INFO: not checked
        if "DB index" in str(exc) or str(exc).startswith(("NOAUTH", "WRONGPASS")):
            raise  # the login or the db index: the caller names the setting
        return
    if str(info.get("cluster_enabled", "0")) == "1":
        raise target.error(
            "the server is a Redis Cluster node: use redis+cluster://HOST:PORT[,HOST:PORT]/"
        )


async def _probe_sentinels(client: AsyncClient, target: RedisTarget) -> None:
    pool = getattr(client, "connection_pool", None)
    manager: asentinel.Sentinel = getattr(pool, "sentinel_manager")  # noqa: B009
    known: set[str] = set()
    answered = 0
    errors: list[str] = []
    for sentinel in manager.sentinels:
        try:
            masters = await sentinel.sentinel_masters()
        except (RedisConnectionError, OSError, TimeoutError) as exc:
            errors.append(str(exc))
            continue
        answered += 1
        known.update(str(name) for name in masters)
        if target.service in masters:
            return
    if not answered:
        raise RedisConnectionError(f"no Sentinel of {target.shown} answered: {'; '.join(errors)}")
    listed = ", ".join(sorted(known)) or "none"
    raise target.error(
        f"the Sentinel(s) do not monitor a service named {target.service!r} (they monitor: "
        f"{listed})"
    )


def has_hash_tag(base: str) -> bool:
    """True if every key ``base + suffix`` (suffix without braces) hashes by a tag in ``base``.

    Redis hashes only the text between the first ``{`` and the next ``}`` when it is not
    empty; keys that share it share a slot.
    """
    start = base.find("{")
    if start < 0:
        return False
    end = base.find("}", start + 1)
    return end > start + 1


def tagged_base(prefix: str, name: str | None, *, cluster: bool) -> str:
    """The start of the keys of one relay or consumer name: ``{prefix}{name}:`` (``prefix``
    alone when ``name`` is None).

    Unchanged on one server (existing keys keep their names) and when it already holds a
    hash tag (a ``{...}`` in the prefix or the name). On a cluster otherwise the name is
    made the tag, ``{prefix}{{name}}:`` (the prefix when there is no name), so every key a
    script touches together lies in one slot. ``ValueError`` if no tag can do that.
    """
    base = prefix if name is None else f"{prefix}{name}:"
    if not cluster or has_hash_tag(base):
        return base
    if name:
        tagged = f"{prefix}{{{name}}}:"
    else:
        tagged = f"{{{prefix or 'outbox'}}}" + ("" if name is None else ":")
    if not has_hash_tag(tagged):
        raise ValueError(f"no hash tag makes the keys under {base!r} share a slot")
    return tagged
