"""A Server-Sent Events decoder (the WHATWG "event stream interpretation", line by line) and
the bookkeeping that lets a feed resume with `Last-Event-ID` losing and repeating nothing.

Written here instead of taking httpx-sse: the decoder is ~40 lines of a fixed algorithm, the
resume logic needs the id of the last event *handed to the caller* (not the parser's id
buffer, which a cut mid-event has already moved on), and a caller's process gets one
dependency fewer."""

from __future__ import annotations

import json
import time
from typing import Any, TypedDict

from aiintegration.errors import ServiceUnavailable, WaitTimedOut

# A feed sends a heartbeat comment every 15 s (AII_SSE_HEARTBEAT_S): a connection silent for
# two of them and a margin is dead, and is resumed.
FEED_READ_TIMEOUT_S = 40.0


class Event(TypedDict):
    """One event of a feed: the Redis stream id, the event name, the JSON data parsed."""

    id: str
    event: str
    data: Any


def stream_id(value: str | None) -> tuple[int, int]:
    """`1732467600000-3` → (1732467600000, 3), for ordering; anything else sorts first."""
    ms, _, seq = (value or "").partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return -1, -1


class Decoder:
    """Feed it the lines of one connection; it returns an `Event` when a blank line ends one,
    the text of a comment (the server's heartbeat: the connection is alive), else None.
    A partial event at a cut is never returned: make a new decoder per connection."""

    def __init__(self) -> None:
        self.retry_ms: int | None = None
        self._id = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | str | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return line[1:].strip()
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind = self._data, self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None
        text = "\n".join(data)
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return Event(id=self._id, event=kind, data=parsed)


class Cursor:
    """Where a followed feed stands across its connections: the last event handed out, whether
    the end was reached, connections in a row that brought nothing new, and the deadline."""

    def __init__(self, last_id: str | None, *, ends: frozenset[str], max_stalls: int,
                 deadline: float | None = None, what: str = "the event feed") -> None:
        self.last_id = last_id
        self.ends = ends
        self.ended = False
        self.max_stalls = max_stalls
        self.deadline = deadline
        self.what = what
        self._stalls = 0
        self._progress = False
        self._read_timeout = FEED_READ_TIMEOUT_S
        self._retry_s = 2.0  # until the feed's `retry:` field says

    def accept(self, event: Event) -> bool:
        """True if `event` is new (strictly after the last one handed out): hand it out."""
        if self.last_id is not None and stream_id(event["id"]) <= stream_id(self.last_id):
            return False
        self.last_id = event["id"] or self.last_id
        self.ended = event["event"] in self.ends
        self._progress = True
        return True

    @property
    def quiet(self) -> bool:
        """No new event since the last connection ended."""
        return not self._progress

    def read_timeout(self) -> float:
        """The read timeout of the next connection: never past the deadline. Raises
        `WaitTimedOut` once the deadline has passed."""
        self.check_deadline()
        left = FEED_READ_TIMEOUT_S if self.deadline is None else self.deadline - time.monotonic()
        self._read_timeout = max(0.01, min(FEED_READ_TIMEOUT_S, left))
        return self._read_timeout

    def check_deadline(self, cause: BaseException | None = None) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimedOut(f"gave up waiting for {self.what}", details={"last_event_id": self.last_id}) from cause

    def stale(self) -> bool:
        """True when one more read on this connection could wait past the deadline by over a
        second (its read timeout was set when the deadline was further away): reconnect with
        a shorter one. Not a stall; it happens only in a deadline's last 40 s."""
        if self.deadline is None:
            return False
        return time.monotonic() + self._read_timeout > self.deadline + 1.0

    def disconnected(self, cause: BaseException | None, retry_ms: int | None) -> float:
        """A connection ended before the feed did (`cause`: the error that cut it, None for a
        clean end): how long to pause before resuming. No pause after a cut that brought
        events; else the server's `retry:` delay, bounded by the deadline. Raises after
        `max_stalls` connections in a row that brought nothing new."""
        self.check_deadline(cause)
        if retry_ms is not None:
            self._retry_s = retry_ms / 1000
        progressed, self._progress = self._progress, False
        self._stalls = 0 if progressed else self._stalls + 1
        if self._stalls >= self.max_stalls:
            raise ServiceUnavailable(f"{self.what} ended {self._stalls} times in a row without a new event",
                                     details={"last_event_id": self.last_id}) from cause
        if progressed and cause is not None:
            return 0.0
        left = self._retry_s if self.deadline is None else self.deadline - time.monotonic()
        return max(0.0, min(self._retry_s, left))
