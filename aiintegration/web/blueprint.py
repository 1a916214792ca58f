"""The blueprint every `/v1` resource uses: flask-smorest's, reading JSON bodies under the
rules of `domain/json_values.py` (a lone surrogate, a 5,000-digit number, NaN, or nesting
past 64 levels is a 400 before any schema or command sees it)."""

from __future__ import annotations

from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from aiintegration.domain.json_values import loads_strict


class StrictJsonParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        raw = req.get_data(cache=True)
        return core.missing if not raw else loads_strict(raw)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictJsonParser()
