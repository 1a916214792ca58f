"""The one error tree of aiintegration.

Provider adapters translate SDK exceptions into it at their boundary; nothing above
them imports an SDK exception. The retry policy only ever asks "transient or not"::

    AIIntegrationError
    ├── TransientError            retried with backoff, then dead-lettered (retry_after: the
    │   │                         earliest retry worth making, when known)
    │   ├── RateLimited           429; retry_after from the provider's Retry-After
    │   ├── ProviderUnavailable   5xx, overloaded, connection refused or dropped, open breaker
    │   ├── ProviderTimeout       the provider did not answer in time
    │   ├── WebhookFailed         a webhook receiver did not accept a delivery
    │   ├── StoreUnavailable      our own store failed mid-attempt (never the provider's fault)
    │   └── ServiceUnavailable    (client side) our API unreachable, dropped, or 502/503/504
    ├── PermanentError            straight to the dead-letter queue
    │   ├── InvalidRequest        400/404/422, a request the provider will never accept
    │   ├── AuthenticationFailed  401/403
    │   ├── UnsupportedCapability the provider cannot do this task type
    │   └── ContentRejected       content policy
    ├── TaskTimedOut              an attempt ran past its deadline
    ├── TaskCancelled             the task was cancelled while it ran
    ├── ValidationError           bad input from a caller (HTTP 422)
    │   ├── PayloadTooLarge       over a size cap (HTTP 413)
    │   ├── MalformedRequest      not even readable: bad JSON, a junk Last-Event-ID (HTTP 400)
    │   ├── IdempotencyKeyReused  the same key came with a different request (HTTP 422)
    │   └── ApiKeyRequired        a provider's new base_url without its api_key (HTTP 422)
    ├── Forbidden                 the caller's role may not do this (HTTP 403)
    ├── TooManyRequests           a caller's own limit (open streams); retry_after (HTTP 429)
    │   └── BudgetExceeded        the tenant's budget for the day or month is spent (HTTP 429)
    ├── NotFound                  no such task, session, DLQ entry or provider (HTTP 404)
    ├── Conflict                  the thing exists but is in the wrong state (HTTP 409)
    ├── Unauthorized              (client side) our API refused the caller's token (HTTP 401)
    └── WaitTimedOut              (client side) a client stopped waiting; the task goes on

"(client side)": raised by `aiintegration.client` in the caller's process, never by the service.

`error_class(name)` finds a class by its code or class name (a record's `error`).
"""

from __future__ import annotations

from typing import Any


class AIIntegrationError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"
    http_status = 500
    retryable = False

    def __init__(self, message: str, *, provider: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The `error` object stored on a task record and sent to callers."""
        return {
            "code": self.code,
            "class": type(self).__name__,
            "message": self.message,
            "provider": self.provider,
            "retryable": self.retryable,
        }


class TransientError(AIIntegrationError):
    """A failure that may go away by itself: retried with backoff, and not before
    `retry_after` seconds when that is known (a provider's Retry-After, a breaker's reset)."""

    code = "transient_error"
    http_status = 503
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The provider asked us to slow down (HTTP 429)."""

    code = "rate_limited"
    http_status = 429


class ProviderUnavailable(TransientError):
    """The provider is down, overloaded, or the connection failed."""

    code = "provider_unavailable"


class ProviderTimeout(TransientError):
    """The provider did not answer within the attempt's time budget."""

    code = "provider_timeout"
    http_status = 504


class WebhookFailed(TransientError):
    """The receiver did not accept the webhook; delivery is retried with backoff."""

    code = "webhook_failed"


class StoreUnavailable(TransientError):
    """Our own store (Redis) failed during an attempt, e.g. while writing a chat answer's
    deltas: retried, and never counted against the provider's circuit breaker."""

    code = "store_unavailable"


class PermanentError(AIIntegrationError):
    """A failure that retrying will not fix: dead-lettered at once."""

    code = "permanent_error"
    http_status = 400


class InvalidRequest(PermanentError):
    """The provider rejected the request as malformed (400/404/422)."""

    code = "invalid_request"


class AuthenticationFailed(PermanentError):
    """The provider refused our credentials (401/403)."""

    code = "authentication_failed"
    http_status = 401


class UnsupportedCapability(PermanentError):
    """The provider cannot perform this task type (e.g. Anthropic images)."""

    code = "unsupported_capability"


class ContentRejected(PermanentError):
    """The provider refused the content under its usage policy."""

    code = "content_rejected"


class TaskTimedOut(AIIntegrationError):
    """An attempt was still running at its deadline."""

    code = "timed_out"
    http_status = 504
    retryable = True


class TaskCancelled(AIIntegrationError):
    """The task was cancelled while an attempt was running."""

    code = "cancelled"
    http_status = 409


class ValidationError(AIIntegrationError):
    """Caller input failed validation; `details` maps fields to messages."""

    code = "validation_error"
    http_status = 422


class PayloadTooLarge(ValidationError):
    """A caller's payload is over its size cap."""

    code = "payload_too_large"
    http_status = 413


class MalformedRequest(ValidationError):
    """The request cannot be read at all (malformed JSON, a junk resume point)."""

    code = "bad_request"
    http_status = 400


class IdempotencyKeyReused(ValidationError):
    """An idempotency key already named a task created from a different request."""

    code = "idempotency_key_reused"


class ApiKeyRequired(ValidationError):
    """A provider's base_url changes without a new api_key: the stored key stays with its host."""

    code = "api_key_required"


class Forbidden(AIIntegrationError):
    """The caller is known, but its role may not do this."""

    code = "forbidden"
    http_status = 403


class TooManyRequests(AIIntegrationError):
    """A limit of the caller's own (e.g. open event streams); `retry_after` seconds to wait."""

    code = "too_many_requests"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BudgetExceeded(TooManyRequests):
    """The tenant's budget for this day or month is spent; `retry_after` until it ends."""

    code = "budget_exceeded"


class NotFound(AIIntegrationError):
    """No such task, session, DLQ entry or provider."""

    code = "not_found"
    http_status = 404


class Conflict(AIIntegrationError):
    """The object exists but its current state forbids the operation."""

    code = "conflict"
    http_status = 409


# Raised by aiintegration.client on the caller's side (the service itself never raises them).


class Unauthorized(AIIntegrationError):
    """Our API refused the caller's bearer token (HTTP 401); not a provider's refusal."""

    code = "unauthorized"
    http_status = 401


class ServiceUnavailable(TransientError):
    """Our API could not be reached, dropped the connection, or answered 502/503/504."""

    code = "service_unavailable"


class WaitTimedOut(AIIntegrationError):
    """A client stopped waiting before the task or answer finished; the work goes on."""

    code = "wait_timed_out"
    http_status = 408


def error_class(name: str | None) -> type[AIIntegrationError] | None:
    """The class of the tree whose `code` or class name is `name` (a record's `error.code` or
    `error.class`), or None."""
    found: list[type[AIIntegrationError]] = [AIIntegrationError]
    for cls in found:
        if name in (cls.code, cls.__name__):
            return cls
        found.extend(cls.__subclasses__())
    return None
