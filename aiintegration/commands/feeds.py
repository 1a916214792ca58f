"""Opening an event feed (a task's, or a chat session's) for a Server-Sent Events client:
the commands check the id and the resume point; the feed reads the events, says when the
last one was sent, and hands over what remains of a finished stream at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from aiintegration.commands.chat import get_session
from aiintegration.commands.context import Context
from aiintegration.commands.lifecycle import get_task
from aiintegration.domain.events import resume_point
from aiintegration.domain.states import terminal_event
from aiintegration.store.streams import Rows, StreamReader


@dataclass
class Feed:
    """One client's feed: `with feed:` holds its store connection while it is followed."""

    after: str  # the stream id to continue after
    reader: StreamReader
    is_end: Callable[[str], bool]  # the event that ends the feed
    # None while more events may come; else the remaining events after an id, and the feed ends
    remaining: Callable[[str], Rows | None]

    def __enter__(self) -> Feed:
        self.reader.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.reader.__exit__(kind, exc, tb)

    def read(self, after: str, block_ms: int) -> Rows | None:
        """Events after `after`, waiting up to `block_ms` ([] if none came; None: the store
        went away and the feed should end, its client resuming with Last-Event-ID)."""
        return self.reader.read(after, block_ms)


def open_task_feed(ctx: Context, task_id: str, last_event_id: str | None) -> Feed:
    get_task(ctx, task_id)  # 404 for unknown tasks
    after = resume_point(last_event_id)
    return Feed(after, ctx.tasks.reader(task_id), terminal_event,
                lambda last: ctx.tasks.final_events(task_id, last))


def open_session_feed(ctx: Context, session_id: str, last_event_id: str | None) -> Feed:
    get_session(ctx, session_id)  # 404 for unknown sessions
    after = resume_point(last_event_id)
    return Feed(after, ctx.chats.reader(session_id), lambda kind: kind == "chat.session_closed",
                lambda last: ctx.chats.final_events(session_id, last))
