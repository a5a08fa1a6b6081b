"""The background sender of Monitor(mode="async").

The training thread only validates and copies a block (Generation.send) and appends it
to a queue bounded to queue_bytes; one worker thread per Monitor pre-sketches the blocks
and sends each finished share (Monitor._deliver: Ingest, else the offline spool).
Bound on the training thread: send() waits at most block_timeout seconds for room in a
full queue, then drops that block (counted in Monitor.dropped_rows, reported through
on_error); finish() never waits. Memory: at most queue_bytes of queued rows plus one
pre-sketch (n_A rows) per open generation.
Thread-safety: put_* from any thread; the worker is the only consumer.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Optional

import numpy as np

from .errors import SigmaError

log = logging.getLogger("sigma_client")

_STOP = object()


def _block_refusal(e: Exception) -> bool:
    """A refusal of one block's content (NaN, ...): that block is dropped, the share goes on."""
    return isinstance(e, SigmaError) and e.details.startswith("client: ")


class AsyncSender:
    def __init__(self, mon, queue_bytes: int, block_timeout: float):
        self.mon = mon
        self.queue_bytes = max(1, int(queue_bytes))
        self.block_timeout = float(block_timeout)
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._busy = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"sigma-async-{mon.job}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producer side
    def put_rows(self, gen, arr: np.ndarray, ids: np.ndarray) -> bool:
        """Queues one block; False (block dropped) when the queue stayed full for
        block_timeout seconds."""
        n = arr.nbytes + ids.nbytes
        deadline = time.monotonic() + self.block_timeout
        with self._cond:
            while self._bytes and self._bytes + n > self.queue_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._items.append(("rows", gen, arr, ids, n))
            self._bytes += n
            self._cond.notify_all()
        return True

    def put_finish(self, gen) -> None:
        with self._cond:
            self._items.append(("finish", gen, None, None, 0))
            self._cond.notify_all()

    def flush(self, timeout: Optional[float]) -> bool:
        """Waits until every queued item was handled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: Optional[float]) -> bool:
        """Handles what is queued, then tries once more to send this monitor's spooled
        shares (Monitor._last_drain), then stops the worker; False on timeout."""
        with self._cond:
            self._items.append(("drain", None, None, None, 0))
            self._cond.notify_all()
        done = self.flush(timeout)
        with self._cond:
            self._items.append((_STOP, None, None, None, 0))
            self._cond.notify_all()
        if done:
            self._thread.join(timeout)
        return done

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    # ------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                kind, gen, arr, ids, n = self._items.popleft()
                self._busy = kind is not _STOP
            if kind is _STOP:
                return
            try:
                if kind == "rows":
                    if gen._failed is None:
                        gen._add(arr, ids)
                elif kind == "drain":
                    self.mon._last_drain()
                else:
                    gen._finish_now()
            except Exception as e:  # reported through on_error; the worker goes on
                if kind == "rows" and not _block_refusal(e):
                    gen._failed = e  # e.g. a bad token: the share is not sent
                self.mon._fail(e, f"generation {gen.k}" if gen is not None else "close")
                if kind == "finish":
                    gen._mark_done()
            finally:
                with self._cond:
                    self._bytes -= n
                    self._busy = False
                    self._cond.notify_all()
