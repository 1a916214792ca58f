"""Webhooks on a task's terminal state: signed with HMAC-SHA256, delivered by their own
Celery task (never in the worker slot that ran the task), and only to public addresses
unless AII_WEBHOOK_ALLOW_PRIVATE is set (SSRF): the host is resolved once, every address
checked, the connection made to a checked address, and redirects are not followed."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlparse

from aiintegration.commands.context import Context
from aiintegration.domain.records import TaskRecord
from aiintegration.errors import ValidationError, WebhookFailed

TIMEOUT_S = 10.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"); receivers recompute it."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def check_target(url: str, *, allow_private: bool) -> list[str]:
    """Refuse non-http(s) URLs and, unless allowed, hosts resolving to private, loopback,
    link-local, multicast or reserved addresses. Returns the addresses the host resolved to,
    every one of them checked: the delivery connects to one of these and never resolves the
    name again, so a DNS answer that changes between check and connect (rebinding) cannot
    steer it to an internal address."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError("callback_url must be an http(s) URL", details={"callback_url": url})
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        infos = socket.getaddrinfo(parsed.hostname, port, proto=socket.IPPROTO_TCP)
    except ValueError as exc:  # a port out of range or not a number
        raise ValidationError("callback_url has an invalid port", details={"callback_url": url}) from exc
    except socket.gaierror as exc:
        raise WebhookFailed(f"cannot resolve {parsed.hostname}") from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not allow_private and (not ip.is_global or ip.is_multicast):
            raise ValidationError("callback_url points at a private or loopback address",
                                  details={"callback_url": "refused (set AII_WEBHOOK_ALLOW_PRIVATE to allow)"})
        if address not in addresses:
            addresses.append(address)
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to `address`, with the URL's host name in the Host header."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def tls_context() -> ssl.SSLContext:
    """The system's trust store, hostname checks on (tests trust their own CA through this)."""
    return ssl.create_default_context()


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `address`; the certificate is verified against the URL's host name (SNI)."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float):
        self._tls = tls_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _post(url: str, addresses: list[str], body: bytes, headers: dict[str, str]) -> int:
    """POST to the first of the checked addresses that accepts a connection; the status.
    Redirects are not followed (a 3xx is an answer like any other): following one would
    reach a host nobody checked."""
    parsed = urlparse(url)
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    kind = _PinnedHTTPS if parsed.scheme == "https" else _PinnedHTTP
    error: OSError | None = None
    for address in addresses:
        conn = kind(str(parsed.hostname), parsed.port, address, TIMEOUT_S)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except OSError as exc:  # refused, reset, timed out, TLS: try the next address
            error = exc
        finally:
            conn.close()
    raise WebhookFailed(f"webhook delivery failed: {type(error).__name__}") from error


def payload(record: TaskRecord) -> dict[str, Any]:
    return {"event": f"task.{record.status}", "task": record.public()}


def deliver(ctx: Context, task_id: str) -> dict[str, Any]:
    """POST the task's terminal record to its callback_url; raises WebhookFailed to retry."""
    record = ctx.tasks.get(task_id)
    if record is None:
        return {"delivered": False, "why": "task expired"}
    url = record.options.callback_url
    if not url:
        return {"delivered": False, "why": "no callback_url"}
    addresses = check_target(url, allow_private=ctx.settings.webhook_allow_private)
    body = json.dumps(payload(record), separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "aiintegration-webhook/1",
               "X-AII-Timestamp": stamp, "X-AII-Event": f"task.{record.status}", "X-AII-Task-Id": task_id}
    if ctx.settings.webhook_secret:
        headers["X-AII-Signature"] = sign(ctx.settings.webhook_secret, stamp, body)
    status = _post(url, addresses, body, headers)
    if status >= 300:
        raise WebhookFailed(f"webhook receiver answered {status}")
    return {"delivered": True, "status": status}


def notify_terminal(ctx: Context, record: TaskRecord) -> None:
    """Called after a task reached a terminal state: queue the webhook if one was asked for."""
    if record.options.callback_url:
        ctx.publisher.dispatch("aiintegration.deliver_webhook", {"task_id": record.id})
