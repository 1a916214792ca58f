"""The Celery app: `celery -A aiintegration.celery_app worker|beat|flower`."""

from celery import Celery

app = Celery("aiintegration", include=["aiintegration.tasks.generation", "aiintegration.tasks.sweeps",
                                     "aiintegration.tasks.providers"])
app.config_from_object("celeryconfig")
