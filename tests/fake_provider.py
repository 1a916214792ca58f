"""A fake provider HTTP server on 127.0.0.1 that speaks the OpenAI wire format (chat
completions with and without streaming, images, models, files and batches) and Anthropic's
(messages, message batches), and can be scripted per request: delays, 429 with Retry-After,
4xx/5xx with a provider-style error body, dropped connections.

    server = FakeProvider().start()
    server.script(Fault(status=429, retry_after=2), Fault(status=500), "ok")   # next requests, in order
    server.default = Behaviour(fail_rate={500: 0.3})                              # afterwards
    server.default = Behaviour(delay_s=1, delay_max_s=3)       # each answer after 1-3 s (uniform, seeded)
    base_url = server.base_url   # http://127.0.0.1:PORT/v1 (the anthropic SDK wants it without /v1)
    server.peak_in_flight        # the most POSTs answered at once (server.reset_peak() starts over)

Account rate limits (tests/fake_limits.py), off unless set, changeable at run time:

    server.limits = AccountLimits(rpm=5, tpm=2_000, window_s=2.0)   # a 2-second "minute"
    server.limiter.rejected        # requests answered 429 because of the account limit
    server.limiter.admitted_at     # monotonic time of every admitted request
    server.limiter.max_in_window(2.0) <= 5

Chat completions, images and messages count against it (one account for both providers);
over the limit they answer 429 with `retry-after` (whole seconds until the window has room) and
the provider's error body. Every answer on those routes carries the provider's headers while
limits are set: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets "120ms", "1s",
"6m0s") on OpenAI routes, `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
{limit,remaining,reset}` (reset: RFC 3339) on `/v1/messages`. Usage: `Behaviour(cached_tokens=N)`
puts a cached prompt prefix of N tokens in front of the messages — OpenAI counts it inside
`prompt_tokens` and reports `prompt_tokens_details.cached_tokens`; Anthropic reports it apart as
`cache_read_input_tokens` (and `cache_creation_tokens` as `cache_creation_input_tokens`).
The streamed usage chunk is sent whether or not `stream_options.include_usage` is set.

Batch APIs (tests/fake_batches/); each item answers what the realtime route would:

    server.batch = BatchBehaviour(delay_s=0.3, fail={"t-2": 400, "t-3": (500, "boom")},
                                  fail_rate={500: 0.1}, expire_after=None, cancel_delay_s=0.0)
    server.batch_limits = BatchLimits(openai_max_bytes=10_000)     # defaults: the real limits
    server.batch_records           # every batch created: provider, id, custom_ids, status, outcomes
    server.batch_successes()       # custom_id -> number of batches it succeeded in
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiintegration.domain.providers import ProviderConfig
from aiintegration.providers.local import tiny_png
from tests.fake_batches import (
    AnthropicBatches,
    BatchBehaviour,
    BatchLimits,
    BatchRecord,
    OpenAIBatches,
    anthropic_error,
    parse_multipart,
    successes,
)
from tests.fake_limits import (
    AccountLimiter,
    AccountLimits,
    Ticket,
    anthropic_headers,
    estimate_input_tokens,
    openai_headers,
    rate_limit_error,
    reserved_output_tokens,
    retry_after,
)

__all__ = ["AccountLimits", "BatchBehaviour", "BatchLimits", "BatchRecord", "Behaviour", "FakeProvider", "Fault",
           "anthropic_message", "chat_completion"]


@dataclass
class Fault:
    status: int = 500
    retry_after: float | None = None
    message: str = "injected failure"
    code: str | None = None
    drop: bool = False  # close the connection without an answer
    delay_s: float = 0.0
    malformed: bool = False  # 200 with a body that is not the provider's JSON
    drop_after: int | None = None  # stream this many chunks, then cut the connection
    error_after: int | None = None  # stream this many chunks, then an in-stream `{"error": …}` event
    garbage_after: int | None = None  # stream this many chunks, then a JSON event that is not a chunk


@dataclass
class Behaviour:
    delay_s: float = 0.0
    delay_max_s: float | None = None  # set: each answer waits a random time in [delay_s, delay_max_s]
    chunk_delay_s: float = 0.0
    fail_rate: dict[int, float] = field(default_factory=dict)
    words: int = 6
    stamp_words: bool = False  # each streamed word is the time it was sent (latency benchmarks)
    hang_rate: float = 0.0  # this share of requests get no answer for `hang_s`, then a dropped connection
    hang_s: float = 10.0
    cached_tokens: int = 0  # a cached prompt prefix of this many tokens (see the module docstring)
    cache_creation_tokens: int = 0  # Anthropic: tokens written to the cache by this request
    stop: str | None = None  # the finish/stop reason instead of "stop" / "end_turn" ("content_filter", "refusal")

    def delay(self, rng: random.Random) -> float:
        """Seconds before this answer: `delay_s`, or uniform up to `delay_max_s` when set."""
        if self.delay_max_s is None or self.delay_max_s <= self.delay_s:
            return self.delay_s
        return rng.uniform(self.delay_s, self.delay_max_s)


def _words(behaviour: Behaviour) -> list[str]:
    return [f"word{i}" for i in range(behaviour.words)]


def _prompt_words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


def chat_completion(body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    """The non-streaming chat completion the fake answers to `body` (realtime and in batches)."""
    words, prompt = _words(behaviour), _prompt_words(body) + behaviour.cached_tokens
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"), "choices": [
                {"index": 0, "finish_reason": behaviour.stop or "stop", "message": {"role": "assistant", "content": " ".join(words)}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words),
                      "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens}}}


def anthropic_message(body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    """The non-streaming Anthropic message the fake answers to `body` (realtime and in batches)."""
    words = _words(behaviour)
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
            "stop_reason": behaviour.stop or "end_turn", "stop_sequence": None, "content": [{"type": "text", "text": " ".join(words)}],
            "usage": {"input_tokens": _prompt_words(body), "output_tokens": len(words),
                      "cache_read_input_tokens": behaviour.cached_tokens,
                      "cache_creation_input_tokens": behaviour.cache_creation_tokens}}


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of connections from a busy worker pool
    # overflowed it, and the kernel reset them ("Connection reset by peer"), a failure no
    # real provider causes (bench/quota.py: 128 threads calling at once).
    request_queue_size = 1024
    daemon_threads = True


class FakeProvider:
    def __init__(self, *, seed: int = 1):
        self.default = Behaviour()
        self.limits: AccountLimits | None = None
        self.limiter = AccountLimiter()
        self.batch = BatchBehaviour()
        self.batch_limits = BatchLimits()
        self._batch_records: list[BatchRecord] = []  # both APIs, in creation order
        self.openai_batches = OpenAIBatches(lambda body: chat_completion(body, self.default), seed=seed,
                                            records=self._batch_records)
        self.anthropic_batches = AnthropicBatches(lambda body: anthropic_message(body, self.default), seed=seed + 1,
                                                  records=self._batch_records)
        self._script: deque[Any] = deque()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0  # POSTs being answered right now
        self.peak_in_flight = 0  # the most at once since the last reset_peak()
        self.server = _Server(("127.0.0.1", 0), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def configs(self, *, openai_key: str, anthropic_key: str, timeout_s: float = 5.0) -> tuple[ProviderConfig, ...]:
        """The `openai` and `anthropic` providers, both pointed at this server (the anthropic SDK
        appends /v1 itself)."""
        return (ProviderConfig("openai", "openai", api_key=openai_key, base_url=self.base_url, timeout_s=timeout_s),
                ProviderConfig("anthropic", "anthropic", api_key=anthropic_key,
                               base_url=self.base_url.removesuffix("/v1"), timeout_s=timeout_s))

    @property
    def batch_records(self) -> list[BatchRecord]:
        """Every batch created on either API, oldest first, advanced to now."""
        self.openai_batches.advance_all()
        self.anthropic_batches.advance_all()
        return list(self._batch_records)

    def batch_successes(self) -> Counter[str]:
        return successes(self.batch_records)

    def start(self) -> FakeProvider:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_in_flight = self.in_flight

    def _entered(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def script(self, *behaviours: Any) -> None:
        with self._lock:
            self._script.extend(behaviours)

    def call_delay(self) -> float:
        with self._lock:
            return self.default.delay(self._rng)

    def next_behaviour(self) -> Any:
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self.default.hang_rate and self._rng.random() < self.default.hang_rate:
                return Fault(delay_s=self.default.hang_s, drop=True)
            for status, rate in self.default.fail_rate.items():
                if self._rng.random() < rate:
                    return Fault(status=status, retry_after=1 if status == 429 else None)
            return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _begin(self, body: Any) -> None:
                """Per request (a keep-alive connection reuses this handler object)."""
                self._rate_headers: dict[str, str] = {}
                self._ticket: Ticket | None = None
                self._cut_after: int | None = None
                self._midstream: Fault | None = None
                self._route = urlsplit(self.path).path.rstrip("/")
                self._query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                with fake._lock:
                    fake.requests.append({"path": self.path, "body": body, "at": time.time(),
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})

            def _head(self, status: int, content_type: str, length: int | None = None,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length is None:
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(length))
                for k, v in {**self._rate_headers, **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()

            def _send(self, status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self._head(status, "application/octet-stream" if isinstance(body, bytes) else "application/json",
                           len(data), headers)
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._begin(None)
                if self._fault():
                    return
                route, q = self._route, self._query
                parts = route.split("/")
                if route.endswith("/messages/batches"):
                    self._send(*fake.anthropic_batches.list(q.get("after_id"), q.get("before_id"),
                                                            int(q.get("limit", 20))))
                elif "/messages/batches/" in route and route.endswith("/results"):
                    self._send(*fake.anthropic_batches.results(parts[-2]))
                elif "/messages/batches/" in route:
                    self._send(*fake.anthropic_batches.get(parts[-1]))
                elif route.endswith("/batches"):
                    self._send(*fake.openai_batches.list(q.get("after"), int(q.get("limit", 20))))
                elif "/batches/" in route:
                    self._send(*fake.openai_batches.get(parts[-1]))
                elif "/files/" in route and route.endswith("/content"):
                    self._send(*fake.openai_batches.content(parts[-2]))
                elif "/files/" in route:
                    self._send(*fake.openai_batches.file(parts[-1]))
                else:
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_DELETE(self) -> None:  # noqa: N802
                self._begin(None)
                if self._fault():
                    return
                batch_id = self._route.split("/")[-1]
                if "/messages/batches/" in self._route:
                    self._send(*fake.anthropic_batches.delete(batch_id))
                elif "/files/" in self._route:
                    self._send(*fake.openai_batches.delete_file(batch_id))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def do_POST(self) -> None:  # noqa: N802
                fake._entered(+1)
                try:
                    self._post()
                finally:
                    fake._entered(-1)

            def _post(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path.rstrip("/").endswith("/messages/batches") and length > fake.batch_limits.anthropic_max_bytes:
                    self._begin({"bytes": length})
                    while length > 0:  # read it all, or the client sees a broken pipe instead of the 413
                        chunk = self.rfile.read(min(length, 1 << 20))
                        length = length - len(chunk) if chunk else 0
                    self._send(413, anthropic_error("Request exceeds the maximum allowed number of bytes.", status=413))
                    return
                raw = self.rfile.read(length)
                content_type = self.headers.get("Content-Type") or ""
                upload = parse_multipart(content_type, raw) if content_type.startswith("multipart/") else None
                if upload is not None:
                    body = {k: v[1].decode() for k, v in upload.items() if v[0] is None}
                    body |= {k: {"filename": v[0], "bytes": len(v[1])} for k, v in upload.items() if v[0] is not None}
                else:
                    body = json.loads(raw or b"{}")
                self._begin(body)
                route = self._route
                metered = route.endswith(("/chat/completions", "/images/generations", "/v1/messages"))
                if metered and not self._admit(body):
                    return
                if self._fault():
                    fake.limiter.settle(self._ticket, 0)
                    return
                if route.endswith("/images/generations"):
                    fake.limiter.settle(self._ticket, 0)
                    png = base64.b64encode(tiny_png(b"fak")).decode()
                    self._send(200, {"created": int(time.time()), "data": [{"b64_json": png}]})
                elif route.endswith("/chat/completions"):
                    self._chat(body)
                elif route.endswith("/v1/messages"):
                    self._messages(body)
                else:
                    self._batch_post(route, body, upload)

            def _batch_post(self, route: str, body: dict[str, Any],
                            upload: dict[str, tuple[str | None, bytes]] | None) -> None:
                parts = route.split("/")
                if route.endswith("/messages/batches"):
                    base = f"http://127.0.0.1:{fake.server.server_address[1]}"
                    self._send(*fake.anthropic_batches.create(body, fake.batch, fake.batch_limits, base))
                elif "/messages/batches/" in route and route.endswith("/cancel"):
                    self._send(*fake.anthropic_batches.cancel(parts[-2]))
                elif route.endswith("/files") and upload is not None and "file" in upload:
                    filename, content = upload["file"]
                    self._send(*fake.openai_batches.upload(body.get("purpose", ""), filename or "upload.jsonl",
                                                           content, fake.batch_limits))
                elif route.endswith("/batches"):
                    self._send(*fake.openai_batches.create(body, fake.batch, fake.batch_limits))
                elif "/batches/" in route and route.endswith("/cancel"):
                    self._send(*fake.openai_batches.cancel(parts[-2]))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def _admit(self, body: dict[str, Any]) -> bool:
                """The account limit, when one is set: False once it has answered 429."""
                limits = fake.limits
                if limits is None:
                    return True
                anthropic = self._route.endswith("/v1/messages")
                input_tokens = estimate_input_tokens(body)
                output_tokens = 0 if self._route.endswith("/images/generations") else \
                    reserved_output_tokens(body, fake.default.words)
                decision = fake.limiter.admit(limits, input_tokens, output_tokens)
                self._ticket = decision.ticket
                self._rate_headers = anthropic_headers(decision.budgets, time.time()) if anthropic \
                    else openai_headers(decision.budgets)
                if decision.admitted:
                    return True
                self._send(429, rate_limit_error(decision, anthropic=anthropic, model=str(body.get("model", "fake")),
                                                 input_tokens=input_tokens, output_tokens=output_tokens),
                           {"retry-after": retry_after(decision.retry_after_s)})
                return False

            def _fault(self) -> bool:
                behaviour = fake.next_behaviour()
                time.sleep(fake.call_delay())
                if not isinstance(behaviour, Fault):
                    return False
                time.sleep(behaviour.delay_s)
                if behaviour.drop_after is not None or behaviour.error_after is not None \
                        or behaviour.garbage_after is not None:
                    self._cut_after, self._midstream = behaviour.drop_after, behaviour
                    return False
                if behaviour.malformed:
                    data = b"<html>upstream gateway error</html>"
                    self._head(200, "application/json", len(data))
                    self.wfile.write(data)
                    return True
                if behaviour.drop:
                    self.close_connection = True
                    self.connection.close()
                    return True
                headers = {"Retry-After": str(behaviour.retry_after)} if behaviour.retry_after is not None else {}
                self._send(behaviour.status, {"error": {"message": behaviour.message, "type": "fake_error",
                                                        "code": behaviour.code}}, headers)
                return True

            def _chat(self, body: dict[str, Any]) -> None:
                answer = chat_completion(body, fake.default)
                fake.limiter.settle(self._ticket, answer["usage"]["completion_tokens"])
                if not body.get("stream"):
                    self._send(200, answer)
                    return
                base = {k: answer[k] for k in ("id", "created", "model")}
                self._head(200, "text/event-stream")
                for i, word in enumerate(_words(fake.default)):
                    time.sleep(fake.default.chunk_delay_s)
                    if i == self._cut_after:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    midstream = self._midstream
                    if midstream is not None and i in (midstream.error_after, midstream.garbage_after):
                        bad = ({"error": {"message": midstream.message, "type": "server_error"}}
                               if i == midstream.error_after else {"choices": "none today"})
                        self.wfile.write(f"data: {json.dumps(bad)}\n\n".encode())
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if fake.default.stamp_words:
                        word = f"{time.time():.6f}"
                    delta = {"content": word if i == 0 else " " + word}
                    chunk = {**base, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                last = {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": answer["choices"][0]["finish_reason"]}]}
                tail = {**base, "object": "chat.completion.chunk", "choices": [], "usage": answer["usage"]}
                self.wfile.write(f"data: {json.dumps(last)}\n\ndata: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def _messages(self, body: dict[str, Any]) -> None:
                message = anthropic_message(body, fake.default)
                usage = message["usage"]
                fake.limiter.settle(self._ticket, usage["output_tokens"])
                if not body.get("stream"):
                    self._send(200, message)
                    return
                self._head(200, "text/event-stream")

                def event(kind: str, data: dict[str, Any]) -> None:
                    self.wfile.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())
                    self.wfile.flush()

                event("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                                     "usage": {**usage, "output_tokens": 0}}})
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                for i, word in enumerate(_words(fake.default)):
                    time.sleep(fake.default.chunk_delay_s)
                    event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                        "text": word if i == 0 else " " + word}})
                event("content_block_stop", {"index": 0})
                event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                        "usage": {"output_tokens": usage["output_tokens"]}})
                event("message_stop", {})
                self.close_connection = True

        return Handler


if __name__ == "__main__":  # a standalone server for benchmarks and manual runs: prints its base URL
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible provider on 127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--delay-max", type=float, help="each answer waits a random time from --delay to this")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--words", type=int, default=6, help="words per answer")
    parser.add_argument("--stamp-words", action="store_true", help="each streamed word is its send time")
    parser.add_argument("--rpm", type=int, help="account limit: requests per minute")
    parser.add_argument("--tpm", type=int, help="account limit: tokens per minute")
    args = parser.parse_args()
    server = FakeProvider().start()
    server.default = Behaviour(delay_s=args.delay, delay_max_s=args.delay_max, chunk_delay_s=args.chunk_delay,
                               words=args.words, stamp_words=args.stamp_words)
    if args.rpm or args.tpm:
        server.limits = AccountLimits(rpm=args.rpm, tpm=args.tpm)
    print(server.base_url, flush=True)
    threading.Event().wait()
