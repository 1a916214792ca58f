"""Webhook delivery against local receivers: it connects to the address it checked (no second
DNS lookup to rebind), it never follows a redirect to a host nobody checked, a receiver that
trickles or never stops answering is cut off at the delivery's time and size caps, and a
callback_url is refused at submission while the service has no secret to sign with."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aiintegration.commands import webhooks
from aiintegration.commands.create import create_generation_task
from aiintegration.commands.webhooks import WebhookFailed, deliver
from aiintegration.errors import ValidationError
from aiintegration.store.broker_queue import broker_lists
from aiintegration.web import create_app
from tests.conftest import TOKEN
from tests.support import make_context, wait_for
from tests.support.tarpit import SlowProxy, Tarpit

# A self-signed certificate for hooks.example.test (valid to 2126), made for these tests only.
TLS_CERT = Path(__file__).resolve().parents[1] / "support" / "hooks-tls.pem"
TLS_KEYCERT = TLS_CERT.with_name("hooks-tls-keycert.pem")


class Hooks:
    """A receiver on 127.0.0.1 that records requests and answers `status` (with `location`);
    with `tls`, over HTTPS as hooks.example.test."""

    def __init__(self, status: int = 204, location: str | None = None, tls: bool = False):
        self.requests: list[dict[str, str]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                hooks.requests.append({"path": self.path, "host": self.headers["Host"]})
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(TLS_KEYCERT)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hooks():
    made: list[Hooks] = []
    yield lambda **kw: made.append(Hooks(**kw)) or made[-1]
    for h in made:
        h.close()


@pytest.fixture(scope="module")
def private_ok(db):
    return make_context(db, webhook_allow_private=True)


def task_with_callback(ctx, url: str) -> str:
    task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "hook"},
                                        requested_by="hooks", options={"callback_url": url})
    return task_id


def test_a_redirect_is_an_answer_not_followed(private_ok, hooks):
    elsewhere = hooks()
    redirecting = hooks(status=302, location=f"http://127.0.0.1:{elsewhere.port}/internal")
    task_id = task_with_callback(private_ok, f"http://127.0.0.1:{redirecting.port}/hook?x=1")
    with pytest.raises(WebhookFailed, match="302"):
        deliver(private_ok, task_id)
    assert redirecting.requests == [{"path": "/hook?x=1", "host": f"127.0.0.1:{redirecting.port}"}]
    assert elsewhere.requests == []


def test_the_delivery_connects_to_the_address_it_checked(db, hooks, monkeypatch):
    """A name that resolves to a public address at the check and to an internal one right
    after (DNS rebinding) is delivered to the checked public address, looked up once. No
    packet leaves the machine: connections to that public address are sent to the local
    receiver instead, and recorded."""
    strict = make_context(db, webhook_allow_private=False)
    receiver = hooks()
    real_lookup, real_connect = socket.getaddrinfo, socket.create_connection
    lookups, connects = [], []

    def rebinding(host, port, *args, **kwargs):
        if host != "hooks.example.test":
            return real_lookup(host, port, *args, **kwargs)
        lookups.append(host)
        address = "8.8.8.8" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    def loopback_only(address, *args, **kwargs):
        connects.append(address[0])
        if address[0] == "8.8.8.8":
            address = ("127.0.0.1", receiver.port)
        assert address[0] in ("127.0.0.1", "hooks.example.test"), address
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket, "create_connection", loopback_only)
    task_id = task_with_callback(strict, f"http://hooks.example.test:{receiver.port}/hook")
    assert deliver(strict, task_id) == {"delivered": True, "status": 204}
    assert lookups == ["hooks.example.test"] and connects == ["8.8.8.8"]
    assert receiver.requests == [{"path": "/hook", "host": f"hooks.example.test:{receiver.port}"}]


def test_an_unreachable_receiver_is_a_transient_failure(private_ok):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task_id = task_with_callback(private_ok, f"http://127.0.0.1:{port}/hook")
    with pytest.raises(WebhookFailed, match="ConnectionRefusedError"):
        deliver(private_ok, task_id)


@pytest.mark.parametrize("name,delivered", [("hooks.example.test", True), ("other.example.test", False)])
def test_https_is_verified_against_the_url_host_while_connecting_to_the_checked_address(
        private_ok, hooks, monkeypatch, name, delivered):
    """Pinning the address keeps TLS honest: SNI and the certificate check use the URL's
    host name, so a certificate for another name is refused."""
    receiver = hooks(tls=True)
    real_lookup = socket.getaddrinfo

    def local_names(host, port, *args, **kwargs):
        if host.endswith(".example.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]
        return real_lookup(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_names)
    monkeypatch.setattr(webhooks, "tls_context", lambda: ssl.create_default_context(cafile=str(TLS_CERT)))
    task_id = task_with_callback(private_ok, f"https://{name}:{receiver.port}/hook")
    if delivered:
        assert deliver(private_ok, task_id) == {"delivered": True, "status": 204}
        assert receiver.requests == [{"path": "/hook", "host": f"{name}:{receiver.port}"}]
    else:
        with pytest.raises(WebhookFailed, match="SSLCertVerificationError"):
            deliver(private_ok, task_id)
        assert receiver.requests == []


@pytest.fixture()
def tarpit():
    receiver = Tarpit(interval_s=0.4)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def capped(db):
    """Private targets allowed (the receivers are local), one second per delivery."""
    return make_context(db, webhook_allow_private=True, webhook_timeout_s=1.0)


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_total_cap(capped, tarpit):
    """A byte every 0.4 s never lets a per-read timeout of 1 s expire; the 1 s cap on the
    whole delivery ends it, and the connection is closed then."""
    task_id = task_with_callback(capped, tarpit.url("/trickle"))
    started = time.monotonic()
    with pytest.raises(WebhookFailed, match="no answer within 1 s"):
        deliver(capped, task_id)
    assert 0.9 < time.monotonic() - started < 1.6
    held = wait_for(lambda: tarpit.held_s, what="the tarpit to see the connection closed")
    assert held[0][0] == "/trickle" and held[0][1] < 1.6


def test_an_endless_answer_is_read_up_to_the_size_cap_and_its_status_decides(capped, tarpit):
    """The status line and headers decide; at most 64 KiB of the body are read, so an endless
    body ends the delivery at once (reading it until the time cap would take the whole second)."""
    delivered = task_with_callback(capped, tarpit.url("/endless"))
    refused = task_with_callback(capped, tarpit.url("/endless-500"))
    started = time.monotonic()
    assert deliver(capped, delivered) == {"delivered": True, "status": 200}
    with pytest.raises(WebhookFailed, match="500"):
        deliver(capped, refused)
    assert time.monotonic() - started < 0.8
    held = wait_for(lambda: len(tarpit.held_s) == 2 and tarpit.held_s, what="both connections closed")
    assert all(seconds < 0.8 for _, seconds in held), held


def test_a_tls_handshake_trickled_a_byte_at_a_time_is_cut_off_at_the_total_cap(capped, hooks, monkeypatch):
    """The server's certificate arrives a byte every 50 ms: no single read waits long, the
    whole handshake would take a minute, and the 1 s cap ends it."""
    receiver = hooks(tls=True)
    proxy = SlowProxy(receiver.port)
    real_lookup = socket.getaddrinfo

    def local_names(host, port, *args, **kwargs):
        if host == "hooks.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]
        return real_lookup(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_names)
    monkeypatch.setattr(webhooks, "tls_context", lambda: ssl.create_default_context(cafile=str(TLS_CERT)))
    task_id = task_with_callback(capped, f"https://hooks.example.test:{proxy.port}/hook")
    started = time.monotonic()
    try:
        with pytest.raises(WebhookFailed, match="no answer within 1 s"):
            deliver(capped, task_id)
    finally:
        proxy.close()
    assert 0.9 < time.monotonic() - started < 1.6
    assert receiver.requests == []


def test_deliveries_say_which_attempt_they_are(capped, tarpit):
    task_id = task_with_callback(capped, tarpit.url("/endless"))
    deliver(capped, task_id, attempt=3)
    assert tarpit.attempts[task_id] == [3]


def test_a_callback_url_is_refused_at_submission_without_a_signing_secret(db):
    unsigned = make_context(db, webhook_secret="")
    before = unsigned.tasks.counts()
    with pytest.raises(ValidationError, match="AII_WEBHOOK_SECRET") as refused:
        task_with_callback(unsigned, "https://hooks.example.com/hook")
    assert "options.callback_url" in refused.value.details
    client = create_app({"AII_CONTEXT": unsigned, "TESTING": True}).test_client()
    body = {"task_type": "text_generation", "request_content": {"prompt": "hook"}, "requested_by": "hooks",
            "options": {"callback_url": "https://hooks.example.com/hook"}}
    resp = client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 422, resp.json
    assert "AII_WEBHOOK_SECRET" in resp.json["error"]["details"]["options.callback_url"]
    assert unsigned.tasks.counts() == before  # nothing stored
    del body["options"]
    assert client.post("/v1/tasks", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202


def test_deliveries_wait_on_the_webhooks_queue_and_generation_on_the_default_one(db):
    """Routing by task name (celeryconfig's task_routes): a backlog of deliveries never sits
    in front of generation work, and a worker can serve either queue alone."""
    ctx = make_context(db)

    def waiting(queue: str) -> int:
        return sum(ctx.tasks.r.llen(name) for name in broker_lists(queue))

    hooks, generation = waiting("webhooks"), waiting("celery")
    ctx.publisher.dispatch("aiintegration.deliver_webhook", {"task_id": "no-such-task"})
    ctx.enqueue("no-such-task", 5)
    assert (waiting("webhooks"), waiting("celery")) == (hooks + 1, generation + 1)
