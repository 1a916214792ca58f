"""Celery configuration for aiintegration (loaded by `aiintegration.celery_app`).

Every value can be tuned from the environment; the README lists the variables.
"""

import os

from kombu import Exchange, Queue

from aiintegration.config import get_settings
from aiintegration.kombu_transport import use_for_redis_urls
from aiintegration.store.redis_client import SentinelUrl

_s = get_settings()

broker_url = _s.redis_url
# redis:// means kombu's Redis transport minus a client object per command, and surviving a
# close after a lost connection (aiintegration/kombu_transport.py).
use_for_redis_urls()
result_backend = _s.redis_url
broker_connection_retry_on_startup = True

# JSON only: no pickle on the wire.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# At-least-once delivery: ack after the task body ran, give the message back if the worker
# process dies. Duplicates are harmless: the claim in Redis lets only one attempt run.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = False
task_ignore_result = True  # the task record in Redis is the result store
result_expires = _s.retention_s

# Redis transport: priority lists 0..9 served most urgent first (0 = most urgent on the
# broker; the API's 9 maps to 0). kombu's default list-name separator is kept on purpose: a
# plain `Celery(broker=...)` client of another service writes the same binding table, and
# its default priority steps (0, 3, 6, 9) land in lists this worker consumes. The visibility
# timeout is above the longest deadline so a slow task is never handed to a second worker
# while the first still runs it.
broker_transport_options = {
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
    "visibility_timeout": _s.visibility_timeout_s,
    # After a worker dies its unacked messages come back once the visibility timeout has
    # passed and a restore sweep runs (every interval × throttle seconds).
    "unacked_restore_interval": float(os.environ.get("AII_UNACKED_RESTORE_INTERVAL_S", "10")),
    "unacked_restore_throttle": int(os.environ.get("AII_UNACKED_RESTORE_THROTTLE", "10")),
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
# One result backend (and its connection pool) per process, not one per thread: Celery builds
# it lazily in every pool thread that finishes a task (`process_cleanup`), ~1-2 ms of CPU and
# a Redis connection each; a -c 1000 worker paid that 1,000 times in its first wave. Nothing in
# our processes waits on a result through it (the one thread-unsafe part, the result consumer).
result_backend_thread_safe = True
task_default_priority = 4  # API priority 5

if broker_url.startswith("sentinel://"):
    # kombu and Celery's result backend need the primary's name as a transport option (the
    # URL's ?master_name= alone: "'master_name' transport option must be specified"), and
    # read the database from the first Sentinel's URL only; the store reads the same URL.
    _sentinel = SentinelUrl.parse(broker_url)
    broker_url = result_backend = _sentinel.for_kombu()
    broker_transport_options["master_name"] = _sentinel.master_name
    result_backend_transport_options["master_name"] = _sentinel.master_name

task_default_queue = "celery"
# Webhook deliveries have a queue of their own, so that a separate worker can serve them
# (`-Q webhooks`) and a backlog of them never sits in front of generation work. A worker
# started without -Q consumes every queue listed here; the Procfile names both. The
# `celery` queue is declared exactly as a plain Celery client of another service declares
# it (direct exchange `celery`, routing key `celery`), so its send_task by name lands here.
task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ("celery", "webhooks")]
task_routes = {"aiintegration.deliver_webhook": {"queue": "webhooks"}}
worker_send_task_events = True
# task-sent events (Flower shows a task before a worker receives it) cost ~1 ms of CPU per
# submission and go through one process-wide lock; the task record already says `queued`.
task_send_sent_event = os.environ.get("AII_TASK_SENT_EVENTS", "0") == "1"
worker_hijack_root_logger = False
worker_cancel_long_running_tasks_on_connection_loss = False


def _sweep(task: str, every_s: float) -> dict[str, object]:
    """A beat entry: the sweep every `every_s`, ahead of generation work, and dropped if it
    waits longer than one period (the next one is on its way)."""
    return {"task": task, "schedule": every_s, "options": {"priority": 0, "expires": every_s}}


beat_schedule = {
    "process-pending-tasks": _sweep("aiintegration.process_pending_tasks", _s.pending_interval_s),
    "cleanup-timed-out-tasks": _sweep("aiintegration.cleanup_timed_out_tasks", _s.cleanup_interval_s),
    "process-dead-letter-queue": _sweep("aiintegration.process_dead_letter_queue", _s.dlq_interval_s),
    # the batch lane: submit what is due, poll what was submitted
    "collect-batches": _sweep("aiintegration.collect_batches", _s.batch_interval_s),
    "poll-batches": _sweep("aiintegration.poll_batches", _s.batch_interval_s),
}
