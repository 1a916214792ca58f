"""The global event stream (`Keys.global_stream`, capped): events about no task in
particular — providers switched or reconfigured, breakers opening and closing. A task's
own events are appended by its transitions (`TaskStore`)."""

from __future__ import annotations

import time
from typing import Any

import redis

from aiintegration.domain.records import dumps, iso
from aiintegration.store.keys import Keys


class EventLog:
    def __init__(self, client: redis.Redis, *, keys: Keys, maxlen: int = 100000):
        self.r = client
        self.keys = keys
        self.maxlen = maxlen

    def append(self, event: str, **event_fields: Any) -> str:
        data = dumps({"type": event, "at": iso(time.time()), **event_fields})
        return str(self.r.xadd(self.keys.global_stream, {"type": event, "data": data}, maxlen=self.maxlen,
                               approximate=True))
