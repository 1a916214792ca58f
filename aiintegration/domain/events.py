"""Event feeds: where a client resumes (`Last-Event-ID`) and what ends a feed."""

from __future__ import annotations

import re

from aiintegration.errors import MalformedRequest

# ASCII digits only, nothing after them (not even a newline): Redis refuses anything else,
# and by then the 200 has been sent.
STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
FROM_START = "0-0"
MAX_ID_PART = 2**64 - 1  # a Redis stream id is two unsigned 64-bit numbers


def resume_point(last_event_id: str | None) -> str:
    """The stream id a feed continues after: the client's `Last-Event-ID`, or the start.
    Anything else is a 400 before the stream starts."""
    value = last_event_id or FROM_START
    match = STREAM_ID.fullmatch(value)
    if not match or any(int(part) > MAX_ID_PART for part in match.groups()):
        raise MalformedRequest("Last-Event-ID must be a stream id such as 1732467600000-0",
                               details={"Last-Event-ID": value[:100]})
    return value
