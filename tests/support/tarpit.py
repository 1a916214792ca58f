"""A hostile webhook receiver on 127.0.0.1. It reads the request whole, then holds on:
`/trickle` sends its answer one byte every `interval_s`, `/endless` answers 200 with a body
that never ends, `/endless-500` the same with status 500. It records how long each
connection stayed open (until the client closed it), the most connections open at once,
and the delivery attempts it saw per task."""

from __future__ import annotations

import select
import socket
import threading
import time

TRICKLED_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
CHUNK = b"x" * 16384


class Tarpit:
    def __init__(self, *, interval_s: float = 1.5):
        self.interval_s = interval_s
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.held_s: list[tuple[str, float]] = []  # (path, seconds the client kept the connection)
        self.attempts: dict[str, list[int]] = {}  # task id -> X-AII-Delivery-Attempt values
        self.open = 0
        self.max_open = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        started = time.monotonic()
        with self._lock:
            self.open += 1
            self.max_open = max(self.max_open, self.open)
        path = "?"
        conn.settimeout(120)  # a client that never closes does not keep this thread past the test run
        try:
            path, headers = self._read_request(conn)
            task_id = headers.get("x-aii-task-id", "?")
            with self._lock:
                self.attempts.setdefault(task_id, []).append(int(headers.get("x-aii-delivery-attempt", "0")))
            if path == "/trickle":
                self._trickle(conn)
            else:
                status = b"500 Internal Server Error" if path == "/endless-500" else b"200 OK"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n\r\n")
                while True:  # until the client goes away (EPIPE / reset)
                    conn.sendall(CHUNK)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
                self.held_s.append((path, time.monotonic() - started))
            conn.close()

    def _trickle(self, conn: socket.socket) -> None:
        answer = TRICKLED_ANSWER
        while True:
            readable, _, _ = select.select([conn], [], [], self.interval_s)
            if readable and not conn.recv(1024):
                return  # the client closed
            if answer:
                conn.sendall(answer[:1])
                answer = answer[1:]

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[str, dict[str, str]]:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                raise ConnectionResetError("client closed before its request was complete")
            data += more
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        remaining = int(headers.get("content-length", "0")) - len(rest)
        while remaining > 0:
            more = conn.recv(min(remaining, 65536))
            if not more:
                raise ConnectionResetError("client closed before its body was complete")
            remaining -= len(more)
        return lines[0].split(" ")[1], headers


class SlowProxy:
    """A TCP proxy on 127.0.0.1 to `port` that passes the server's bytes on one at a time,
    every `interval_s` (a TLS handshake through it takes minutes); the client's at once."""

    def __init__(self, port: int, *, interval_s: float = 0.05):
        self.target = port
        self.interval_s = interval_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, 65536, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 1, self.interval_s), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, size: int, pause_s: float) -> None:
        try:
            while data := source.recv(size):
                sink.sendall(data)
                time.sleep(pause_s)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()
