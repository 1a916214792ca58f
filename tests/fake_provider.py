"""A fake provider HTTP server on 127.0.0.1 that speaks the OpenAI wire format (chat
completions with and without streaming, images, models) and can be scripted per request:
delays, 429 with Retry-After, 4xx/5xx with a provider-style error body, dropped connections.

    server = FakeProvider().start()
    server.script(Fault(status=429, retry_after=2), Fault(status=500), "ok")   # next requests, in order
    server.default = Behaviour(fail_rate={500: 0.3})                              # afterwards
    base_url = server.base_url   # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiintegration.providers.local import tiny_png


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
    chunk_delay_s: float = 0.0
    fail_rate: dict[int, float] = field(default_factory=dict)
    words: int = 6
    stamp_words: bool = False  # each streamed word is the time it was sent (latency benchmarks)
    hang_rate: float = 0.0  # this share of requests get no answer for `hang_s`, then a dropped connection
    hang_s: float = 10.0


class FakeProvider:
    def __init__(self, *, seed: int = 1):
        self.default = Behaviour()
        self._script: deque[Any] = deque()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

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

    def script(self, *behaviours: Any) -> None:
        with self._lock:
            self._script.extend(behaviours)

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

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": None})
                if self._fault():
                    return
                self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if self._fault():
                    return
                if self.path.endswith("/images/generations"):
                    png = base64.b64encode(tiny_png(b"fak")).decode()
                    self._send(200, {"created": int(time.time()), "data": [{"b64_json": png}]})
                elif self.path.endswith("/chat/completions"):
                    self._chat(body)
                elif self.path.endswith("/v1/messages"):
                    self._messages(body)
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

            def _fault(self) -> bool:
                behaviour = fake.next_behaviour()
                time.sleep(fake.default.delay_s)
                if not isinstance(behaviour, Fault):
                    return False
                time.sleep(behaviour.delay_s)
                if behaviour.drop_after is not None or behaviour.error_after is not None \
                        or behaviour.garbage_after is not None:
                    self._cut_after, self._midstream = behaviour.drop_after, behaviour
                    return False
                if behaviour.malformed:
                    data = b"<html>upstream gateway error</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
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
                words = [f"word{i}" for i in range(fake.default.words)]
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                         "total_tokens": prompt_tokens + len(words)}
                base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model", "fake")}
                if not body.get("stream"):
                    self._send(200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                        {"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": " ".join(words)}}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, word in enumerate(words):
                    time.sleep(fake.default.chunk_delay_s)
                    if i == getattr(self, "_cut_after", None):
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    midstream = getattr(self, "_midstream", None)
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
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                tail = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                self.wfile.write(f"data: {json.dumps(last)}\n\ndata: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def _messages(self, body: dict[str, Any]) -> None:
                words = [f"word{i}" for i in range(fake.default.words)]
                usage = {"input_tokens": sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])),
                         "output_tokens": len(words)}
                message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
                           "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
                           "content": [{"type": "text", "text": " ".join(words)}]}
                if not body.get("stream"):
                    self._send(200, message)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()

                def event(kind: str, data: dict[str, Any]) -> None:
                    self.wfile.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode())
                    self.wfile.flush()

                event("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                                     "usage": {"input_tokens": usage["input_tokens"],
                                                               "output_tokens": 0}}})
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                for i, word in enumerate(words):
                    time.sleep(fake.default.chunk_delay_s)
                    event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                        "text": word if i == 0 else " " + word}})
                event("content_block_stop", {"index": 0})
                event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": len(words)}})
                event("message_stop", {})
                self.close_connection = True

        return Handler


if __name__ == "__main__":  # a standalone server for benchmarks and manual runs: prints its base URL
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible provider on 127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--words", type=int, default=6, help="words per answer")
    parser.add_argument("--stamp-words", action="store_true", help="each streamed word is its send time")
    args = parser.parse_args()
    server = FakeProvider().start()
    server.default = Behaviour(delay_s=args.delay, chunk_delay_s=args.chunk_delay, words=args.words,
                               stamp_words=args.stamp_words)
    print(server.base_url, flush=True)
    threading.Event().wait()
