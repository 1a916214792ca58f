"""sentinel:// URLs as the store, kombu and Celery's result backend read them (no server: the
Sentinel deployment itself is in tests/reliability/test_sentinel_failover.py)."""

from __future__ import annotations

import kombu

from aiintegration.kombu_transport import SentinelTransport, Transport, use_for_redis_urls
from aiintegration.store.redis_client import SentinelUrl

URL = "sentinel://127.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://h3/2?master_name=cache"


def test_a_sentinel_url_names_every_sentinel_the_database_and_the_primary():
    parsed = SentinelUrl.parse(URL)
    assert parsed.hosts == [("127.0.0.1", 26379), ("10.0.0.2", 26380), ("h3", 26379)]
    assert parsed.db == 2 and parsed.master_name == "cache" and parsed.login == {}


def test_the_primary_defaults_to_mymaster_and_the_database_to_0():
    parsed = SentinelUrl.parse("sentinel://127.0.0.1:26379")
    assert (parsed.master_name, parsed.db) == ("mymaster", 0)


def test_kombu_gets_the_database_and_the_login_on_every_sentinel_and_no_query():
    """kombu reads the database and the password from the first URL only, and refuses a
    query there; the primary's name goes in transport options (celeryconfig)."""
    parsed = SentinelUrl.parse("sentinel://:s%40cret@127.0.0.1:1;sentinel://127.0.0.1:2/3?master_name=m")
    assert parsed.for_kombu() == "sentinel://:s%40cret@127.0.0.1:1/3;sentinel://127.0.0.1:2/3"
    assert parsed.login == {"username": "", "password": "s@cret"}
    conn = kombu.Connection(parsed.for_kombu(), transport_options={"master_name": parsed.master_name})
    assert (conn.hostname, conn.port, conn.virtual_host, conn.password) == ("127.0.0.1", 1, "3", "s@cret")


def test_redis_and_sentinel_urls_resolve_to_our_transports():
    use_for_redis_urls()
    assert type(kombu.Connection("redis://127.0.0.1:1/0").transport) is Transport
    assert type(kombu.Connection("sentinel://127.0.0.1:1/0").transport) is SentinelTransport
