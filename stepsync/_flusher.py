"""The idle timer: a daemon thread that calls a function every interval until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("stepsync")


class IdleFlusher:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread, from ``start()`` to ``stop()``.

    ``start`` and ``stop`` are called with the manager's lock held.
    """

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self._interval = interval
        self._tick = tick
        self._wake: threading.Event | None = None

    def start(self) -> None:
        """Start the thread, unless it runs already (or the interval is 0: no timer)."""
        if self._wake is not None or self._interval <= 0:
            return
        self._wake = threading.Event()
        threading.Thread(
            target=self._loop, args=(self._wake,), name="stepsync-flusher", daemon=True
        ).start()

    def stop(self) -> None:
        """Stop the thread; it ends at its next wait."""
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def after_fork(self) -> None:
        """In a forked child the thread does not exist: the next ``start()`` makes one."""
        self._wake = None

    def _loop(self, wake: threading.Event) -> None:
        while not wake.wait(self._interval):
            try:
                self._tick()
            except Exception:  # bookkeeping must never end the thread silently
                logger.exception("stepsync: background flush failed")
