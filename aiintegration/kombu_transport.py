"""The Redis broker transport: kombu's own, with one Redis client object per channel.

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


class Channel(kombu_redis.Channel):  # kombu's private hooks: pinned by tests/integration/test_task_flow.py
    _shared_client: Any = None

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


class Transport(kombu_redis.Transport):
    Channel = Channel


def use_for_redis_urls() -> None:
    """`redis://` resolves to this transport from now on (rediss:// and sentinel:// keep
    kombu's own: its TLS defaults hang on the scheme name)."""
    kombu.transport.TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    cache: dict[str, Any] = getattr(kombu.transport, "_transport_cache", {})
    cache.pop("redis", None)  # in case something resolved it already
