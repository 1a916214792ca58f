"""The context of the app handling the current request (set up by `create_app`), and who is
calling (set by `web/auth.py` for every `/v1` request)."""

from __future__ import annotations

from flask import current_app, g

from aiintegration.commands.context import Context
from aiintegration.domain.auth import Caller


def context() -> Context:
    ctx: Context = current_app.extensions["aiintegration"]
    return ctx


def caller() -> Caller:
    found: Caller = g.caller
    return found
