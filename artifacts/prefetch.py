"""Running an iterator on a background thread, `depth` items ahead of its consumer.

Decoding shards and collating batches happen while the consumer computes; an exception in the
producer is raised in the consumer; leaving the loop early stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_DONE = object()


def background(items: Iterable, depth: int = 4, name: str = "adpa-prefetch") -> Iterator:
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        """Wait for room unless the consumer has left (then every put, the last ones too, gives up)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()
