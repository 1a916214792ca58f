"""Webhook delivery against local receivers: it connects to the address it checked (no second
DNS lookup to rebind), and it never follows a redirect to a host nobody checked."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aiintegration.commands import webhooks
from aiintegration.commands.create import create_generation_task
from aiintegration.commands.webhooks import WebhookFailed, deliver
from tests.support import make_context

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
