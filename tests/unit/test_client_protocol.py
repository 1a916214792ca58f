"""The client's pure parts with plain values: the SSE decoder, the resume cursor, and how
answers, records and replies become the error tree."""

from __future__ import annotations

import json
import time

import pytest

from aiintegration.client.broker import broker_priority, reply_error
from aiintegration.client.protocol import answer_failure, error_from_answer, outcome, retry_on, task_failure
from aiintegration.client.sse import Cursor, Decoder, stream_id
from aiintegration.errors import (
    AIIntegrationError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProviderUnavailable,
    RateLimited,
    ServiceUnavailable,
    TaskCancelled,
    TaskTimedOut,
    TransientError,
    Unauthorized,
    ValidationError,
    WaitTimedOut,
    error_class,
)

ENDS = frozenset({"task.succeeded"})


def decode(lines: list[str]) -> list[object]:
    decoder = Decoder()
    return [out for line in lines if (out := decoder.feed(line)) is not None]


def test_the_decoder_returns_an_event_at_each_blank_line_with_its_data_parsed():
    assert decode(["retry: 2000", "", "id: 1-0", "event: task.created", 'data: {"n": 1}', "",
                   "id: 1-1", "event: task.started", "data:{\"n\": 2}", ""]) == [
        {"id": "1-0", "event": "task.created", "data": {"n": 1}},
        {"id": "1-1", "event": "task.started", "data": {"n": 2}}]


def test_the_decoder_joins_multi_line_data_and_keeps_text_that_is_not_json():
    assert decode(["data: first", "data:  second", ""]) == [{"id": "", "event": "message", "data": "first\n second"}]
    assert decode(["data: {", 'data: "a": 1}', ""]) == [{"id": "", "event": "message", "data": {"a": 1}}]


def test_comments_are_heartbeats_and_retry_sets_the_reconnect_delay():
    decoder = Decoder()
    assert decoder.feed(": heartbeat") == "heartbeat"
    assert decoder.feed("retry: 1500") is None and decoder.retry_ms == 1500
    assert decoder.feed("retry: soon") is None and decoder.retry_ms == 1500


def test_an_event_cut_before_its_blank_line_is_never_returned():
    assert decode(["id: 5-0", "event: task.started", 'data: {"cut": true}']) == []
    assert decode(["id: 5-0", "event: nothing", ""]) == []  # no data: no event


def test_stream_ids_order_by_time_then_sequence():
    assert stream_id("1700000000000-2") > stream_id("1700000000000-1") > stream_id("999-9") > stream_id("junk")


def test_the_cursor_hands_out_each_event_once_and_in_order():
    cursor = Cursor("5-0", ends=ENDS, max_stalls=3)
    assert not cursor.accept({"id": "5-0", "event": "task.started", "data": {}})
    assert not cursor.accept({"id": "4-9", "event": "task.started", "data": {}})
    assert cursor.accept({"id": "5-1", "event": "task.started", "data": {}}) and cursor.last_id == "5-1"
    assert cursor.accept({"id": "6-0", "event": "task.succeeded", "data": {}}) and cursor.ended


def test_a_cut_after_progress_resumes_at_once_and_empty_connections_give_up():
    cursor = Cursor(None, ends=ENDS, max_stalls=2)
    cursor.accept({"id": "1-0", "event": "task.created", "data": {}})
    assert cursor.disconnected(OSError("cut"), 3000) == 0.0
    assert cursor.disconnected(OSError("cut"), None) == 3.0  # nothing new: the server's retry delay
    with pytest.raises(ServiceUnavailable) as raised:
        cursor.disconnected(None, None)
    assert raised.value.details == {"last_event_id": "1-0"}


def test_the_cursor_stops_at_its_deadline_and_bounds_reads_by_it():
    cursor = Cursor(None, ends=ENDS, max_stalls=5, deadline=time.monotonic() + 5, what="task t")
    assert 4 < cursor.read_timeout() <= 5 and not cursor.stale()
    far = Cursor(None, ends=ENDS, max_stalls=5, deadline=time.monotonic() + 20)
    far._read_timeout = 40.0  # a connection opened when the deadline was further away
    assert far.stale()
    late = Cursor(None, ends=ENDS, max_stalls=5, deadline=time.monotonic() - 1, what="task t")
    with pytest.raises(WaitTimedOut, match="task t"):
        late.read_timeout()


@pytest.mark.parametrize(("status", "cls"), [(400, ValidationError), (401, Unauthorized), (404, NotFound),
                                             (409, Conflict), (413, PayloadTooLarge), (422, ValidationError),
                                             (503, ServiceUnavailable), (504, ServiceUnavailable)])
def test_an_error_answer_becomes_the_class_of_its_status_with_its_code(status, cls):
    body = b'{"error": {"code": "some_code", "message": "why", "details": {"field": "bad"}}}'
    exc = error_from_answer(status, body)
    assert isinstance(exc, cls) and exc.code == "some_code" and exc.http_status == status
    assert exc.message == "why" and exc.details == {"field": "bad"}


def test_a_429_carries_retry_after_and_a_proxys_page_still_maps():
    limited = error_from_answer(429, b'{"error": {"code": "budget_exceeded", "message": "spent"}}', "7")
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0 and limited.code == "budget_exceeded"
    page = error_from_answer(502, b"<html>Bad Gateway</html>")
    assert isinstance(page, ServiceUnavailable) and page.code == "http_502" and "Bad Gateway" in page.message


def test_retries_go_to_unreachable_or_503_answers_and_never_resend_what_is_not_idempotent():
    sent, unsent = ServiceUnavailable("cut", details={"request_sent": True}), ServiceUnavailable(
        "refused", details={"request_sent": False})
    idempotent, once_only = retry_on(idempotent=True), retry_on(idempotent=False)
    assert idempotent(sent) is True and idempotent(unsent) is True and idempotent(Conflict("no")) is False
    assert once_only(unsent) is True and once_only(sent) is False
    assert idempotent(ServiceUnavailable("busy", retry_after=2.5)) == 2.5


def test_a_dead_lettered_record_raises_the_class_its_worker_raised():
    record = {"id": "t1", "status": "dead_lettered", "error": {"code": "invalid_request", "class": "InvalidRequest",
                                                              "message": "bad model", "provider": "openai",
                                                              "retryable": False}}
    exc = task_failure(record)
    assert isinstance(exc, InvalidRequest) and exc.code == "invalid_request" and exc.message == "bad model"
    assert exc.provider == "openai" and exc.details["task"] is record
    unknown = task_failure({**record, "error": {"code": "new_thing", "class": "NewThing", "retryable": True}})
    assert type(unknown) is TransientError and unknown.code == "new_thing"
    timed_out = task_failure({**record, "error": {"code": "timed_out", "class": "TaskTimedOut"}})
    assert isinstance(timed_out, TaskTimedOut)


def test_a_cancelled_record_raises_task_cancelled_and_a_succeeded_one_is_returned():
    with pytest.raises(TaskCancelled, match="the customer left"):
        outcome({"id": "t2", "status": "cancelled", "error": None}, {"reason": "the customer left"})
    record = {"id": "t3", "status": "succeeded"}
    assert outcome(record) is record


def test_an_incomplete_answer_names_why_it_stopped():
    assert isinstance(answer_failure({"reason": "cancelled"}), TaskCancelled)
    assert isinstance(answer_failure({"reason": "ProviderUnavailable"}), ProviderUnavailable)
    odd = answer_failure({"reason": "gremlins", "message_id": "m"})
    assert type(odd) is AIIntegrationError and odd.code == "gremlins" and odd.details["message_id"] == "m"


def test_error_classes_are_found_by_code_or_name():
    assert error_class("rate_limited") is RateLimited and error_class("Unauthorized") is Unauthorized
    assert error_class("no_such_code") is None and error_class(None) is None


def test_a_refusal_by_name_keeps_its_code_status_and_details_and_priorities_flip():
    exc = reply_error({"code": "validation_error", "class": "ValidationError", "message": "bad",
                       "details": {"task_type": "unknown"}, "status": 422})
    assert isinstance(exc, ValidationError) and exc.http_status == 422 and exc.details == {"task_type": "unknown"}
    assert [broker_priority(p) for p in (9, 5, 0)] == [0, 4, 9]


def test_a_client_calling_an_operator_route_gets_forbidden():
    body = json.dumps({"error": {"code": "forbidden", "message": "operators only", "details": {}}}).encode()
    denied = error_from_answer(403, body)
    assert isinstance(denied, Forbidden) and denied.code == "forbidden" and denied.http_status == 403
