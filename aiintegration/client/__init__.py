"""The Python client of aiintegration (SPEC §5), for other services:

    from aiintegration.client import Client

    with Client("http://127.0.0.1:8000", token) as aii:
        task = aii.submit(request_content={"prompt": "Hello"}, requested_by="billing-service")
        done = aii.wait(task["id"], timeout=60)          # the succeeded record, or raises
        print(done["result"]["text"])
        for event in aii.events(task["id"]):              # {"id", "event", "data"}, resumes by itself
            print(event["event"])
        chat = aii.chat(user_id="u1", item_id="sku-42", initial_context={"item": "blue kettle"})
        print("".join(chat.send("Is it steel?")))        # the answer's text deltas, as they stream
        chat.close("done")

`AsyncClient` has the same API, awaited (`async for` over `list`, `events` and an answer).
`CeleryClient(broker_url)` submits, cancels and retries by task name over the broker.
Failures raise the `aiintegration.errors` tree (see `aiintegration/client/protocol.py`).
"""

from aiintegration.client.aio import AsyncChatReply, AsyncChatSession, AsyncClient
from aiintegration.client.broker import CeleryClient
from aiintegration.client.protocol import RetryPolicy
from aiintegration.client.sse import Event
from aiintegration.client.sync import ChatReply, ChatSession, Client

__all__ = ["AsyncChatReply", "AsyncChatSession", "AsyncClient", "CeleryClient", "ChatReply", "ChatSession",
           "Client", "Event", "RetryPolicy"]
