"""The Celery app: `celery -A aiintegration.celery_app worker|beat|flower`."""

from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, worker_ready

app = Celery("aiintegration", include=["aiintegration.tasks.generation", "aiintegration.tasks.sweeps",
                                       "aiintegration.tasks.providers", "aiintegration.tasks.webhooks",
                                       "aiintegration.tasks.chat"])
app.config_from_object("celeryconfig")


@after_setup_logger.connect
def _structured_logs(**_: Any) -> None:
    from aiintegration.config import get_settings
    from aiintegration.logs import configure

    configure(json_lines=get_settings().log_json)


@worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    from aiintegration.commands.context import get_context
    from aiintegration.commands.runner import start_liveness
    from aiintegration.store.redis_client import check_server_config

    ctx = get_context()
    check_server_config(ctx.redis)
    start_liveness(ctx, getattr(sender, "hostname", "worker"))
