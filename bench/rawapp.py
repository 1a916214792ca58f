"""Raw Celery baseline for bench/throughput.py: a no-op task on the same broker settings."""

from celery import Celery

app = Celery("rawbench")
app.config_from_object("celeryconfig")
app.conf.task_ignore_result = False  # a plain Celery user stores results and waits on them
app.conf.beat_schedule = {}


@app.task(name="bench.noop")
def noop(i: int) -> int:
    return i


@app.task(name="bench.sleep")
def sleep(seconds: float) -> tuple[float, float]:
    """An I/O-bound call (bench/io_concurrency.py): when it started and ended."""
    import time

    start = time.time()
    time.sleep(seconds)
    return start, time.time()
