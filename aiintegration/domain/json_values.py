"""What a JSON value from a caller may be: UTF-8 text with no lone surrogates, numbers in a
sane range (integers within 64 bits, finite floats), nesting at most `MAX_DEPTH` deep.
`loads_strict` reads a request body under those rules (400 when it cannot be read);
`check_value` holds an already parsed value to them (422), for values that came another
way (a Celery message)."""

from __future__ import annotations

import json
import math
from typing import Any

from aiintegration.errors import MalformedRequest, ValidationError

MAX_DEPTH = 64
MAX_INT = 2**63 - 1
_MAX_INT_DIGITS = len(str(MAX_INT))


def _number_problem(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
        return "integers must fit in 64 bits"
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite (no NaN or Infinity)"
    return None


def _text_problem(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (no lone surrogates such as \\ud800)"
    return None


def problem(value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """What is wrong with a parsed value, or None. Walks it without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return f"nesting deeper than {max_depth} levels"
            children = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict):
                for key in item:
                    found = _text_problem(key) if isinstance(key, str) else "object keys must be text"
                    if found:
                        return found
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            found = _text_problem(item)
            if found:
                return found
        else:
            found = _number_problem(item)
            if found:
                return found
    return None


def check_value(value: Any, field: str) -> None:
    """422 naming `field` when the value breaks a rule."""
    found = problem(value)
    if found:
        raise ValidationError(f"{field}: {found}", details={field: found})


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:  # before int(): 5,000 digits cost time and then fail
        raise ValueError("integers must fit in 64 bits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_strict(raw: bytes | str) -> Any:
    """A request body → its value, or MalformedRequest (400) saying why it cannot be read."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedRequest("the request body is not valid JSON: nested too deep",
                               details={"body": f"nesting deeper than {MAX_DEPTH} levels"}) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise MalformedRequest("the request body is not valid JSON", details={"body": reason[:200]}) from None
    found = problem(value)
    if found:
        raise MalformedRequest(f"the request body is not acceptable JSON: {found}", details={"body": found})
    return value
