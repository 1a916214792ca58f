"""Opening an event feed (a task's, or a chat session's) for a Server-Sent Events client:
the commands check the id, the caller's tenant and the resume point, and take one of the
tenant's open-feed slots (AII_SSE_MAX_PER_TENANT); the feed reads the events, says when the
last one was sent, and hands over what remains of a finished stream at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiintegration.commands.chat import get_session
from aiintegration.commands.context import Context
from aiintegration.commands.lifecycle import get_task
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.events import resume_point
from aiintegration.domain.states import terminal_event
from aiintegration.errors import TooManyRequests
from aiintegration.store.streams import OpenFeeds, Rows, StreamReader

RENEW_EVERY_S = 20.0  # the slot's lease is 60 s


@dataclass
class Feed:
    """One client's feed. `open()` takes its store connection (so a store that cannot give
    one fails the request before the stream starts); `close()` gives it and the tenant's slot
    back, and may be called any number of times."""

    after: str  # the stream id to continue after
    reader: StreamReader
    is_end: Callable[[str], bool]  # the event that ends the feed
    # None while more events may come; else the remaining events after an id, and the feed ends
    remaining: Callable[[str], Rows | None]
    slots: OpenFeeds
    tenant: str
    feed_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _renewed: float = field(default_factory=time.monotonic)
    _closed: bool = False

    def open(self) -> Feed:
        try:
            self.reader.__enter__()
        except BaseException:
            self.close()
            raise
        return self

    def read(self, after: str, block_ms: int) -> Rows | None:
        """Events after `after`, waiting up to `block_ms` ([] if none came; None: the store
        went away and the feed should end, its client resuming with Last-Event-ID)."""
        if time.monotonic() - self._renewed > RENEW_EVERY_S:
            self._renewed = time.monotonic()
            self.slots.renew(self.tenant, self.feed_id)
        return self.reader.read(after, block_ms)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.reader.__exit__(None, None, None)
        finally:
            self.slots.release(self.tenant, self.feed_id)


def _feed(ctx: Context, tenant: str, reader: StreamReader, after: str, is_end: Callable[[str], bool],
          remaining: Callable[[str], Rows | None]) -> Feed:
    feed = Feed(after, reader, is_end, remaining, ctx.feeds, tenant)
    limit = ctx.settings.sse_max_per_tenant
    if not ctx.feeds.acquire(tenant, feed.feed_id, limit=limit):
        raise TooManyRequests(f"this tenant already has {limit} event streams open", retry_after=5,
                              details={"open_streams": limit})
    return feed


def open_task_feed(ctx: Context, task_id: str, last_event_id: str | None, caller: Caller = TRUSTED) -> Feed:
    get_task(ctx, task_id, caller)  # 404 for unknown tasks and other tenants'
    after = resume_point(last_event_id)
    return _feed(ctx, caller.tenant, ctx.tasks.reader(task_id), after, terminal_event,
                 lambda last: ctx.tasks.final_events(task_id, last))


def open_session_feed(ctx: Context, session_id: str, last_event_id: str | None, caller: Caller = TRUSTED) -> Feed:
    get_session(ctx, session_id, caller)  # 404 for unknown sessions and other tenants'
    after = resume_point(last_event_id)
    return _feed(ctx, caller.tenant, ctx.chats.reader(session_id), after, lambda kind: kind == "chat.session_closed",
                 lambda last: ctx.chats.final_events(session_id, last))
