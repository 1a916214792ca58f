"""The Redis broker transports (redis:// and sentinel://): kombu's own, with one Redis client
object per channel.

kombu builds a new `redis.Redis` around the channel's connection pool for every command it
sends (publish, ack, QoS bookkeeping). With redis-py 8 each construction costs ~0.2 ms of
CPU, about an eighth of a submission. A `redis.Redis` is safe to share between threads and
greenlets (each command checks a connection out of the pool), so the channel keeps one.
It also survives a close after a lost connection that kombu's own does not (see below).
`use_for_redis_urls()` (called by celeryconfig) makes it what `redis://` means to kombu in
this process, so URLs keep their scheme: Flower's broker view and queue-length API switch
on it (`broker_transport = "module:Class"` made them answer "'redis' broker is not supported").
"""

from __future__ import annotations

from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis


class _SharedClient:  # kombu's private hooks: pinned by tests/integration/test_task_flow.py
    """What both channels below add to kombu's: the shared client, and a close that survives
    a lost connection."""

    _shared_client: Any = None
    _pool: Any
    _closing: bool
    pool: Any

    def _create_client(self, asynchronous: bool = False) -> Any:
        parent: Any = super()
        if asynchronous:  # the BRPOP/pub-sub client is per channel already
            return parent._create_client(asynchronous=True)
        client = self._shared_client
        if client is not None and getattr(self, "_pool", None) is None and getattr(self, "_closing", False):
            # Closing drops the pools, then restores the unacked messages through a new
            # client; when the broker connection was lost first, kombu cannot build one
            # (AttributeError on the released connection: "Unrecoverable error", the worker
            # exits). The old client's pool reconnects, or fails with a ConnectionError that
            # kombu expects and the visibility timeout covers.
            return client
        if client is None or client.connection_pool is not self.pool:  # the pool is rebuilt after a fork
            client = self._shared_client = parent._create_client()
        return client


class Channel(_SharedClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_SharedClient, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (finds the primary through the Sentinels) with the same fixes:
    without the close fix a worker exited with "Unrecoverable error" when its primary was
    killed (tests/reliability/test_sentinel_failover.py: 4 runs of 5)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def use_for_redis_urls() -> None:
    """`redis://` and `sentinel://` resolve to these transports from now on (rediss:// keeps
    kombu's own: its TLS defaults hang on the scheme name)."""
    cache: dict[str, Any] = getattr(kombu.transport, "_transport_cache", {})
    for scheme, transport in (("redis", "Transport"), ("sentinel", "SentinelTransport")):
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{transport}"
        cache.pop(scheme, None)  # in case something resolved it already
