"""A TCP proxy on 127.0.0.1 in front of a real server, with faults a test turns on: cut an
event-stream answer in the middle of an event, drop requests to some paths unanswered, or
answer the next requests with a 503 itself. Everything else passes through byte for byte.

    with FaultyProxy(web_port) as proxy:
        proxy.cut_feeds(after_events=[2, 1])   # the next two feeds: cut mid-event after 2, then 1 events
        proxy.drop_requests("/events")         # requests to paths containing this: connection closed
        proxy.answer_503(2)                    # the next two requests: 503 from the proxy
        proxy.lose_answers(1)                  # the next request reaches the server, its answer is lost
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import deque

REQUEST_LINE = re.compile(rb"^(GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) (\S+) HTTP/1\.[01]\r\n")
EVENT_START = b"\nid: "


class FaultyProxy:
    def __init__(self, target_port: int, *, port: int = 0) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []  # "GET /v1/tasks/…" of every request seen
        self.cuts = 0  # feeds cut so far
        self._cut_plan: deque[int] = deque()
        self._drop: str | None = None
        self._answer_503 = 0
        self._lose = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_feeds(self, *, after_events: list[int]) -> None:
        with self._lock:
            self._cut_plan.extend(after_events)

    def drop_requests(self, path_part: str | None) -> None:
        self._drop = path_part

    def answer_503(self, count: int) -> None:
        with self._lock:
            self._answer_503 = count

    def lose_answers(self, count: int) -> None:
        with self._lock:
            self._lose = count

    def start(self) -> FaultyProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.listener.close()
        for sock in list(self._sockets):
            _close(sock)

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            state: dict[str, int | None] = {"cut_after": None, "fresh": 0, "lose": 0}
            threading.Thread(target=self._upstream, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(upstream, client, state), daemon=True).start()

    def _upstream(self, client: socket.socket, upstream: socket.socket, state: dict[str, int | None]) -> None:
        """Client → server; each request line is seen here first."""
        while data := _recv(client):
            line = REQUEST_LINE.match(data)
            if line:
                path = line.group(2).decode()
                self.requests.append(f"{line.group(1).decode()} {path}")
                with self._lock:
                    answer_503, self._answer_503 = self._answer_503 > 0, max(0, self._answer_503 - 1)
                    cut = self._cut_plan.popleft() if path.endswith("/events") and self._cut_plan else None
                    lose, self._lose = self._lose > 0, max(0, self._lose - 1)
                if answer_503:
                    body = json.dumps({"error": {"code": "store_unavailable", "message": "proxy says 503",
                                                 "details": {}}}).encode()
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                   b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    break
                if self._drop and self._drop in path:
                    break
                state["cut_after"], state["fresh"], state["lose"] = cut, 1, int(lose)
            try:
                upstream.sendall(data)
            except OSError:
                break
        _close(client)
        _close(upstream)

    def _downstream(self, upstream: socket.socket, client: socket.socket, state: dict[str, int | None]) -> None:
        """Server → client; an event-stream answer due to be cut is cut a few bytes into the
        event after the `cut_after`-th (its `id:` line whole, the rest missing)."""
        seen = bytearray()
        while data := _recv(upstream):
            if state["lose"]:  # the server answered; the client never hears it
                break
            cut_after = state["cut_after"]
            if state["fresh"]:  # a new request on this connection: count its answer's events
                state["fresh"] = 0
                seen.clear()
            if cut_after is None:
                _send(client, data)
                continue
            start = len(seen)
            seen += data
            at, found = -1, 0
            while found <= cut_after and (at := seen.find(EVENT_START, at + 1)) >= 0:
                found += 1
            if found <= cut_after:
                _send(client, data)
                continue
            limit = at + 40 - start
            if limit > len(data):
                _send(client, data)
                continue
            _send(client, data[:max(0, limit)])
            self.cuts += 1
            break
        _close(client)
        _close(upstream)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
