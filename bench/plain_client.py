"""Another service calling a task by name, for bench/throughput.py's by-name paths.

A plain `Celery(broker=..., backend=...)`: kombu's stock Redis transport and Celery's
defaults, nothing imported from aiintegration (its transport and celeryconfig stay out of
this process). Reads a number N per line on stdin, sends N calls of the task by name
(`aiintegration.create_generation_task`, or raw Celery's `bench.noop`), waits for every
reply, and prints `<replies ok> <seconds>`.

    python bench/plain_client.py redis://127.0.0.1:PORT/2 aiintegration.create_generation_task
"""

from __future__ import annotations

import sys
import time

from celery import Celery


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    app = Celery("other-service", broker=url, backend=url)
    for line in sys.stdin:
        n = int(line)
        t0 = time.perf_counter()
        if name == "bench.noop":
            sent = [app.send_task(name, args=[i]) for i in range(n)]
            ok = sum(1 for i, result in enumerate(sent) if result.get(timeout=300) == i)
        else:
            sent = [app.send_task(name, kwargs={
                "task_type": "text_generation", "request_content": {"prompt": f"by name {i}"},
                "requested_by": "bench-by-name", "priority": 5}) for i in range(n)]
            ok = sum(1 for result in sent if result.get(timeout=300).get("ok"))
        print(ok, time.perf_counter() - t0, flush=True)


if __name__ == "__main__":
    main()
