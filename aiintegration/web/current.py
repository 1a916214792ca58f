"""The context of the app handling the current request (set up by `create_app`)."""

from __future__ import annotations

from flask import current_app

from aiintegration.commands.context import Context


def context() -> Context:
    ctx: Context = current_app.extensions["aiintegration"]
    return ctx
