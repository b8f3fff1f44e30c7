"""Background threads that build the next batches while the device runs the current step.

Building a batch (reading frames, neighbour lists, padding, the copy to the devices) is
host work; the training step releases the GIL while XLA runs, so a few threads keep
`depth` batches ready and the device does not wait. Order is kept: batch k is yielded
k-th whatever thread built it. Memory: at most `depth` batches exist at once.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator


class Prefetcher:
    """Iterate over ``build(item)`` for `items`, built `depth` ahead by `threads` threads.

    ``waited_s`` accumulates the time the consumer spent waiting for a batch: zero when the
    pipeline keeps up. An exception in `build` is raised where its batch is consumed.
    """

    def __init__(self, build: Callable, items: Iterable, depth: int = 2, threads: int = 2):
        self.build, self.items = build, iter(items)
        self.depth, self.threads = max(1, depth), max(1, threads)
        self.waited_s = 0.0

    def __iter__(self) -> Iterator:
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mace-ase-batches")
        pending: deque = deque()
        try:
            for item in self.items:
                pending.append(pool.submit(self.build, item))
                if len(pending) > self.depth:
                    yield self._take(pending)
            while pending:
                yield self._take(pending)
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _take(self, pending: deque):
        future = pending.popleft()
        start = time.perf_counter()
        result = future.result()
        self.waited_s += time.perf_counter() - start
        return result
