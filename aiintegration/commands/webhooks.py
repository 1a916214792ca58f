"""Webhooks on a task's terminal state: signed with HMAC-SHA256, delivered by their own
Celery task on their own queue (never in the worker slot that ran the task), and only to
public addresses unless AII_WEBHOOK_ALLOW_PRIVATE is set (SSRF, `addresses.py`): the host is
resolved once, every address checked, the connection made to a checked address, and
redirects are not followed.

A receiver cannot hold the worker: one delivery takes at most AII_WEBHOOK_TIMEOUT_S from
the name lookup to the last byte read (a deadline checked before every read, each socket
operation given only the time left: a per-operation timeout alone lets a receiver that
sends a byte every few seconds keep a thread for ever); at most 64 KiB of the answer's
body are read (the status line decides); and at most AII_WEBHOOK_CONCURRENCY deliveries run
at once in a worker process (`try_deliver`), so hanging receivers hold that many pool
threads at most and generation keeps the rest."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from aiintegration.commands.addresses import public_addresses
from aiintegration.commands.context import Context
from aiintegration.domain.records import TaskRecord
from aiintegration.errors import WebhookFailed

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAX_RESPONSE_BYTES = 64 * 1024


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"); receivers recompute it."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def check_target(url: str, *, allow_private: bool) -> list[str]:
    """The checked addresses of a callback URL (`addresses.public_addresses`); a name that
    does not resolve is a transient failure (retried), a refused target a ValidationError."""
    try:
        return public_addresses(url, allow_private=allow_private, field="callback_url",
                                setting="AII_WEBHOOK_ALLOW_PRIVATE")
    except OSError as exc:
        raise WebhookFailed(f"cannot resolve {urlparse(url).hostname}") from exc


class Deadline:
    """The end of one delivery: `left()` is what a socket operation may still take."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._at = clock() + seconds

    def left(self) -> float:
        """Seconds left; TimeoutError (an OSError, like a socket timeout) once there are none."""
        left = self._at - self._clock()
        if left <= 0:
            raise TimeoutError(f"no answer within {self.seconds:g} s")
        return left

    def passed(self) -> bool:
        return self._clock() >= self._at


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, every recv given only the time left before the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)


class _CappedResponse(http.client.HTTPResponse):
    """http.client's parser of the answer (status line, headers, chunked or sized body),
    reading through the delivery's deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        super().__init__(sock, method="POST")
        self.fp.close()
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to `address`, with the URL's host name in the Host header; connect and send
    within the deadline."""

    def __init__(self, host: str, port: int | None, address: str, deadline: Deadline):
        super().__init__(host, port, timeout=None)
        self._address = address
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self._deadline.left())
        self.sock.settimeout(self._deadline.left())  # sendall: the whole request within it


def tls_context() -> ssl.SSLContext:
    """The system's trust store, hostname checks on (tests trust their own CA through this)."""
    return ssl.create_default_context()


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `address`; the certificate is verified against the URL's host name (SNI).
    The handshake shares the deadline (the ssl module bounds a whole handshake by the
    socket's timeout, not each read)."""

    def __init__(self, host: str, port: int | None, address: str, deadline: Deadline):
        self._tls = tls_context()
        super().__init__(host, port, timeout=None, context=self._tls)
        self._address = address
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self._deadline.left())
        try:
            sock.settimeout(self._deadline.left())
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock.settimeout(self._deadline.left())


def _post(url: str, addresses: list[str], body: bytes, headers: dict[str, str], deadline: Deadline) -> int:
    """POST to the first of the checked addresses that accepts a connection; the status.
    Redirects are not followed (a 3xx is an answer like any other): following one would
    reach a host nobody checked."""
    parsed = urlparse(url)
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    kind = _PinnedHTTPS if parsed.scheme == "https" else _PinnedHTTP
    error: Exception | None = None
    for address in addresses:
        conn = kind(str(parsed.hostname), parsed.port, address, deadline)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = _CappedResponse(conn.sock, deadline)
            response.begin()
            _read_some(response)
            return response.status
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS, not HTTP
            error = exc
            if deadline.passed():
                break
        finally:
            conn.close()
    why = f"no answer within {deadline.seconds:g} s" if isinstance(error, TimeoutError) else type(error).__name__
    raise WebhookFailed(f"webhook delivery failed: {why}") from error


def _read_some(response: http.client.HTTPResponse) -> None:
    """Read at most MAX_RESPONSE_BYTES of the body, within the deadline, and stop: the
    status has decided already; reading lets a receiver finish its answer before we close."""
    try:
        response.read(MAX_RESPONSE_BYTES)
    except (OSError, http.client.HTTPException):
        pass


def payload(record: TaskRecord) -> dict[str, Any]:
    return {"event": f"task.{record.status}", "task": record.public()}


def deliver(ctx: Context, task_id: str, *, attempt: int = 1) -> dict[str, Any]:
    """POST the task's terminal record to its callback_url; raises WebhookFailed to retry.
    `attempt` (1 for the first delivery) is sent as X-AII-Delivery-Attempt."""
    record = ctx.tasks.get(task_id)
    if record is None:
        return {"delivered": False, "why": "task expired"}
    url = record.options.callback_url
    if not url:
        return {"delivered": False, "why": "no callback_url"}
    deadline = Deadline(ctx.settings.webhook_timeout_s)  # the name lookup counts too
    addresses = check_target(url, allow_private=ctx.settings.webhook_allow_private)
    body = json.dumps(payload(record), separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "aiintegration-webhook/1", "Connection": "close",
               "X-AII-Timestamp": stamp, "X-AII-Event": f"task.{record.status}", "X-AII-Task-Id": task_id,
               "X-AII-Delivery-Attempt": str(attempt)}
    if ctx.settings.webhook_secret:
        headers["X-AII-Signature"] = sign(ctx.settings.webhook_secret, stamp, body)
    status = _post(url, addresses, body, headers, deadline)
    if status >= 300:
        raise WebhookFailed(f"webhook receiver answered {status}")
    return {"delivered": True, "status": status}


_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def _delivery_slots(limit: int) -> threading.BoundedSemaphore:
    """This process's delivery slots (one set per limit: tests build contexts with several)."""
    with _slots_lock:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


def try_deliver(ctx: Context, task_id: str, *, attempt: int = 1) -> dict[str, Any] | None:
    """`deliver` if one of this process's AII_WEBHOOK_CONCURRENCY slots is free; None, at
    once, if not: the caller puts the delivery back on the queue (`busy_delay`) instead of
    pinning a pool thread while it waits. Waiting deliveries take free slots in no
    particular order."""
    slots = _delivery_slots(ctx.settings.webhook_concurrency)
    if not slots.acquire(blocking=False):
        return None
    try:
        return deliver(ctx, task_id, attempt=attempt)
    finally:
        slots.release()


def busy_delay(rand: Callable[[], float] = random.random) -> float:
    """Seconds before a delivery that found every slot taken is tried again: 1-2 s, spread
    so that waiting deliveries do not come back together."""
    return 1.0 + rand()


def notify_terminal(ctx: Context, record: TaskRecord) -> None:
    """Called after a task reached a terminal state: queue the webhook if one was asked for
    (on the `webhooks` queue: celeryconfig's task_routes)."""
    if record.options.callback_url:
        ctx.publisher.dispatch("aiintegration.deliver_webhook", {"task_id": record.id})
