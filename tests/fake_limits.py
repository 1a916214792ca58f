"""Account rate limits for the fake provider: a sliding-window log of admitted requests and
the providers' rate-limit headers (OpenAI `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`).

Cost of a request, as the real providers count it: estimated input tokens (characters of the
messages and system prompt / 4, rounded up) plus the output it may produce (`max_tokens` /
`max_completion_tokens`), reserved at admission; once answered, `settle()` replaces the
reservation with the output tokens the answer reported. A request is admitted only if every
configured dimension still fits inside the last `window_s` seconds, so any window of that
length holds at most `rpm` admitted requests (what a test asserts with `max_in_window`).
The clock is injected: tests/unit/test_fake_limits.py drives it with plain numbers.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass
class AccountLimits:
    """One account's limits per `window_s` (60 s like the real "per minute"); None = unlimited."""

    rpm: int | None = None
    tpm: int | None = None  # input + output
    input_tpm: int | None = None  # Anthropic's ITPM; unset = tpm (then implied by it)
    output_tpm: int | None = None  # Anthropic's OTPM; unset = tpm
    window_s: float = 60.0

    def limit(self, dimension: str) -> int | None:
        return {"requests": self.rpm, "tokens": self.tpm, "input_tokens": self.input_tpm or self.tpm,
                "output_tokens": self.output_tpm or self.tpm}[dimension]


@dataclass
class Ticket:
    """One admitted request in the window; `output_tokens` is the reservation until settled."""

    at: float
    input_tokens: int
    output_tokens: int

    def amount(self, dimension: str) -> int:
        return {"requests": 1, "tokens": self.input_tokens + self.output_tokens,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}[dimension]


@dataclass(frozen=True)
class Budget:
    limit: int
    remaining: int
    reset_s: float  # until the window is back to its initial state (every charge has left it)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    ticket: Ticket | None
    retry_after_s: float  # until the window has room for this request (0 when admitted)
    reason: str  # the dimension that refused it ("requests", "tokens", ...), "" when admitted
    too_large: bool  # the request alone exceeds a limit: no wait will help
    budgets: dict[str, Budget]  # the configured dimensions, after this decision


class AccountLimiter:
    """Thread-safe; shared by every route of one fake server (one account, both providers)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._window: deque[Ticket] = deque()
        self.admitted_at: list[float] = []  # clock time of every admitted request, in order
        self.rejected = 0  # requests answered 429 because of the account limit

    def admit(self, limits: AccountLimits, input_tokens: int, output_tokens: int) -> Decision:
        wanted = Ticket(0.0, input_tokens, output_tokens)
        with self._lock:
            now = self._clock()
            self._prune(now, limits.window_s)
            waits: dict[str, float] = {}
            too_large = False
            for dimension in DIMENSIONS:
                limit, cost = limits.limit(dimension), wanted.amount(dimension)
                if limit is None:
                    continue
                if cost > limit:  # like OpenAI's "Request too large": it would never fit
                    waits[dimension], too_large = limits.window_s, True
                elif (wait := self._wait(dimension, limit, cost, now, limits.window_s)) > 0:
                    waits[dimension] = wait
            if waits:
                self.rejected += 1
                reason = max(waits, key=lambda d: waits[d])
                return Decision(False, None, waits[reason], reason, too_large, self._budgets(limits, now))
            ticket = Ticket(now, input_tokens, output_tokens)
            self._window.append(ticket)
            self.admitted_at.append(now)
            return Decision(True, ticket, 0.0, "", False, self._budgets(limits, now))

    def settle(self, ticket: Ticket | None, output_tokens: int) -> None:
        if ticket is not None:
            with self._lock:
                ticket.output_tokens = output_tokens

    def max_in_window(self, window_s: float) -> int:
        """The most admitted requests inside any `window_s`-long interval so far."""
        with self._lock:
            times = list(self.admitted_at)
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def _prune(self, now: float, window_s: float) -> None:
        while self._window and self._window[0].at <= now - window_s:
            self._window.popleft()

    def _wait(self, dimension: str, limit: int, cost: int, now: float, window_s: float) -> float:
        used = sum(t.amount(dimension) for t in self._window)
        if used + cost <= limit:
            return 0.0
        for ticket in self._window:  # oldest first: when enough of them have left the window
            used -= ticket.amount(dimension)
            if used + cost <= limit:
                return max(ticket.at + window_s - now, 1e-3)
        return window_s  # unreachable while cost <= limit

    def _budgets(self, limits: AccountLimits, now: float) -> dict[str, Budget]:
        budgets = {}
        for dimension in DIMENSIONS:
            limit = limits.limit(dimension)
            if limit is None:
                continue
            charged = [t for t in self._window if t.amount(dimension)]
            used = sum(t.amount(dimension) for t in charged)
            reset = max((t.at + limits.window_s - now for t in charged), default=0.0)
            budgets[dimension] = Budget(limit, max(0, limit - used), max(reset, 0.0))
        return budgets


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """~ characters / 4 of the messages, the system prompt and an image prompt."""
    chars = 0
    for part in [body.get("system"), body.get("prompt"), *[m.get("content") for m in body.get("messages") or []
                                                           if isinstance(m, dict)]]:
        if isinstance(part, str):
            chars += len(part)
        elif isinstance(part, list):  # content blocks
            chars += sum(len(str(block.get("text", ""))) for block in part if isinstance(block, dict))
    return math.ceil(chars / 4)


def reserved_output_tokens(body: dict[str, Any], default: int) -> int:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(value) if isinstance(value, int) and value > 0 else default


def go_duration(seconds: float) -> str:
    """OpenAI's reset format (Go's Duration.String at millisecond precision, rounded up):
    "120ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return text + f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def rfc3339(epoch_s: float) -> str:
    """Anthropic's reset format: an RFC 3339 UTC timestamp, whole seconds rounded up."""
    return datetime.fromtimestamp(math.ceil(epoch_s), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after(seconds: float) -> str:
    """`Retry-After` in whole seconds (never 0: a client that obeys it finds room)."""
    return str(max(1, math.ceil(seconds - 1e-6)))


def openai_headers(budgets: dict[str, Budget]) -> dict[str, str]:
    headers = {}
    for dimension in ("requests", "tokens"):
        if (budget := budgets.get(dimension)) is not None:
            headers[f"x-ratelimit-limit-{dimension}"] = str(budget.limit)
            headers[f"x-ratelimit-remaining-{dimension}"] = str(budget.remaining)
            headers[f"x-ratelimit-reset-{dimension}"] = go_duration(budget.reset_s)
    return headers


def anthropic_headers(budgets: dict[str, Budget], now_epoch_s: float) -> dict[str, str]:
    headers = {}
    for dimension, budget in budgets.items():
        name = dimension.replace("_", "-")
        headers[f"anthropic-ratelimit-{name}-limit"] = str(budget.limit)
        headers[f"anthropic-ratelimit-{name}-remaining"] = str(budget.remaining)
        headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(now_epoch_s + budget.reset_s)
    return headers


_LABELS = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)",
           "input_tokens": "input tokens per min (ITPM)", "output_tokens": "output tokens per min (OTPM)"}


def rate_limit_error(decision: Decision, *, anthropic: bool, model: str, input_tokens: int,
                     output_tokens: int) -> dict[str, Any]:
    """The provider's 429 body (OpenAI: `type` names the dimension, `code` rate_limit_exceeded)."""
    budget = decision.budgets[decision.reason]
    cost = Ticket(0.0, input_tokens, output_tokens).amount(decision.reason)
    label = _LABELS[decision.reason]
    if decision.too_large:
        message = (f"Request too large for {model} on {label}: Limit {budget.limit}, Requested {cost}. "
                   "The input or output tokens must be reduced in order to run successfully.")
    else:
        message = (f"Rate limit reached for {model} on {label}: Limit {budget.limit}, "
                   f"Used {budget.limit - budget.remaining}, Requested {cost}. "
                   f"Please try again in {go_duration(decision.retry_after_s)}.")
    if anthropic:
        return {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    kind = "requests" if decision.reason == "requests" else "tokens"
    return {"error": {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}}
