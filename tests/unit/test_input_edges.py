"""Input at the edges of the pure rules: a trailing newline, non-ASCII digits, a secret that
looks like a prefix, a request that would make its own 422 huge."""

from __future__ import annotations

import json

import pytest

from aiintegration.domain.auth import check_tenant, parse_tokens
from aiintegration.domain.events import resume_point
from aiintegration.domain.providers import redact_key
from aiintegration.domain.submission import LISTED_MESSAGE_ERRORS, validate_submission
from aiintegration.errors import MalformedRequest, ValidationError


@pytest.mark.parametrize("key,shown", [
    ("Zx9Qw7p-Lm3Nv8Rt", "…v8Rt"),  # no known prefix: its first segment is part of the secret
    ("abcdefgh-ijklmnopqrstuvwxyz", "…wxyz"),
    ("sk-test-LEAKCHECK-1234567890", "sk-…7890"),
    ("sk-proj-abcdefghijklmnopqrstuvwxyz", "sk-proj-…wxyz"),
    ("sk-ant-api03-abcdefghijklmnop", "sk-ant-…mnop"),
    ("sk-0123456789abcde", "…bcde"),  # 18 characters: too short for a prefix
    ("sk-short", "…"), ("sk-ant-x", "…"), ("tiny", "…"),
])
def test_a_redacted_key_shows_only_a_known_prefix_and_a_tail_of_a_long_key(key, shown):
    assert redact_key(key) == shown


def test_no_key_redacts_to_none():
    assert redact_key(None) is None and redact_key("") is None


@pytest.mark.parametrize("value", ["1-0\n", "1-0\r\n", "\u0661-\u0660", "1\u0660-0", "18446744073709551616-0",
                                   "0-18446744073709551616", " 1-0", "1-0 ", "1-", "-1"])
def test_a_resume_point_that_redis_would_refuse_is_a_400(value):
    with pytest.raises(MalformedRequest):
        resume_point(value)


def test_a_resume_point_up_to_the_64_bit_maximum_is_kept():
    top = f"{2**64 - 1}-{2**64 - 1}"
    assert resume_point(top) == top and resume_point("1732467600000-0") == "1732467600000-0"
    assert resume_point(None) == "0-0"


@pytest.mark.parametrize("name", ["acme\n", "acme\r\n", "acme\n\n", "\u0661acme", "acm\u00e9"])
def test_a_tenant_name_with_a_trailing_newline_or_non_ascii_is_refused(name):
    with pytest.raises(ValidationError):
        check_tenant(name)
    with pytest.raises(ValueError):
        parse_tokens(json.dumps({"token-0123456789abcdef": {"name": name, "role": "client"}}))


def test_a_plain_tenant_name_is_accepted():
    assert check_tenant("acme.eu_1-x") == "acme.eu_1-x"


def test_a_chat_request_with_many_bad_messages_lists_a_few_and_counts_the_rest():
    messages = [{"role": "robot", "content": 1}] * 5000
    with pytest.raises(ValidationError) as caught:
        validate_submission(task_type="chat_completion", request_content={"messages": messages}, requested_by="svc")
    details = caught.value.details
    listed = [k for k in details if k.startswith("request_content.messages[")]
    assert len(listed) == LISTED_MESSAGE_ERRORS and "request_content.messages[0]" in details
    assert str(5000 - LISTED_MESSAGE_ERRORS) in details["request_content.messages"]
    assert len(json.dumps(details)) < 4000


def test_a_chat_request_with_a_few_bad_messages_lists_each_of_them():
    messages = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}, {"role": "user"}]
    with pytest.raises(ValidationError) as caught:
        validate_submission(task_type="chat_completion", request_content={"messages": messages}, requested_by="svc")
    assert sorted(caught.value.details) == ["request_content.messages[1]", "request_content.messages[2]"]


@pytest.mark.parametrize("url,shown", [
    ("https://api.example.com/v1", "https://api.example.com/v1"),
    ("https://user:s3cret@llm.example.com/v1", "https://…@llm.example.com/v1"),
    ("https://llm.example.com/v1?api-key=s3cret&x=1", "https://llm.example.com/v1?…"),
    ("http://[zz]/v1", "…"),
    (None, None),
])
def test_a_base_url_shows_no_credentials(url, shown):
    from aiintegration.domain.providers import ProviderConfig, redact_url

    assert redact_url(url) == shown
    if url:
        assert ProviderConfig("p", "openai_compatible", base_url=url).public()["base_url"] == shown
