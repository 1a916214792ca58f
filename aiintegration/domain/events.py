"""Event feeds: where a client resumes (`Last-Event-ID`) and what ends a feed."""

from __future__ import annotations

import re

from aiintegration.errors import ValidationError

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
FROM_START = "0-0"


def resume_point(last_event_id: str | None) -> str:
    """The stream id a feed continues after: the client's `Last-Event-ID`, or the start."""
    value = last_event_id or FROM_START
    if not STREAM_ID.match(value):
        raise ValidationError("Last-Event-ID must be a stream id such as 1732467600000-0",
                              details={"Last-Event-ID": value})
    return value
