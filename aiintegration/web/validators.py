"""Validators the route schemas share."""

from __future__ import annotations

from typing import Any

from marshmallow import exceptions, validate


class FullMatch(validate.Regexp):
    """`validate.Regexp` over the whole value: marshmallow's uses `re.match`, whose `$` also
    matches before a final newline ("acme\\n"). The pattern keeps its `^`/`$` for the OpenAPI
    document; give string patterns `re.ASCII` so `[0-9]` and friends mean ASCII only."""

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str | bytes) or self.regex.fullmatch(value) is None:  # type: ignore[arg-type]
            raise exceptions.ValidationError(self._format_error(value))
        return value
