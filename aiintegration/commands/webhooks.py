"""Webhooks on a task's terminal state: signed with HMAC-SHA256, delivered by their own
Celery task (never in the worker slot that ran the task), and only to public addresses
unless AII_WEBHOOK_ALLOW_PRIVATE is set (SSRF)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
import urllib.request
from typing import Any
from urllib.parse import urlparse

from aiintegration.commands.context import Context
from aiintegration.domain.records import public
from aiintegration.errors import TransientError, ValidationError

TIMEOUT_S = 10.0


class WebhookFailed(TransientError):
    """The receiver did not accept the webhook; delivery is retried with backoff."""

    code = "webhook_failed"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"); receivers recompute it."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and, unless allowed, hosts resolving to private, loopback,
    link-local, multicast or reserved addresses."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError("callback_url must be an http(s) URL", details={"callback_url": url})
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise WebhookFailed(f"cannot resolve {parsed.hostname}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global or addr.is_multicast:
            raise ValidationError("callback_url points at a private or loopback address",
                                  details={"callback_url": "refused (set AII_WEBHOOK_ALLOW_PRIVATE to allow)"})


def payload(record: dict[str, Any]) -> dict[str, Any]:
    return {"event": f"task.{record['status']}", "task": public(record)}


def deliver(ctx: Context, task_id: str) -> dict[str, Any]:
    """POST the task's terminal record to its callback_url; raises WebhookFailed to retry."""
    record = ctx.tasks.get(task_id)
    if record is None:
        return {"delivered": False, "why": "task expired"}
    url = (record.get("options") or {}).get("callback_url")
    if not url:
        return {"delivered": False, "why": "no callback_url"}
    check_target(url, allow_private=ctx.settings.webhook_allow_private)
    body = json.dumps(payload(record), separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "aiintegration-webhook/1",
               "X-AII-Timestamp": stamp, "X-AII-Event": f"task.{record['status']}", "X-AII-Task-Id": task_id}
    if ctx.settings.webhook_secret:
        headers["X-AII-Signature"] = sign(ctx.settings.webhook_secret, stamp, body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310 - checked above
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        raise WebhookFailed(f"webhook delivery failed: {type(exc).__name__}") from exc
    if status >= 300:
        raise WebhookFailed(f"webhook receiver answered {status}")
    return {"delivered": True, "status": status}


def notify_terminal(ctx: Context, record: dict[str, Any]) -> None:
    """Called after a task reached a terminal state: queue the webhook if one was asked for."""
    if (record.get("options") or {}).get("callback_url"):
        ctx.dispatch("aiintegration.deliver_webhook", {"task_id": record["id"]})
