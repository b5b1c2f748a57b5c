"""One event loop thread per device: it waits on eventfds and sockets with
epoll and runs the device's handlers, so guest I/O never runs on a vCPU
thread (a vCPU that exits for a notify only writes an eventfd, and with
ioeventfd not even that).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Callable

from kvmkit.kvm import eventfd

log = logging.getLogger(__name__)


class IoThread:
    """``add(fd, callback)`` and the thread calls ``callback()`` when fd is readable.

    Handlers run one at a time, in this thread.  ``call_later`` runs a
    function after a delay (balloon stats polling, vsock retries).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._epoll = select.epoll()
        self._handlers: dict[int, tuple[Callable[[], None], int]] = {}
        self._wake = eventfd()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False

    def add(self, fd: int, callback: Callable[[], None], events: int = select.EPOLLIN) -> None:
        with self._lock:
            if fd in self._handlers:
                self._epoll.modify(fd, events)
            else:
                self._epoll.register(fd, events)
            self._handlers[fd] = (callback, events)

    def remove(self, fd: int) -> None:
        with self._lock:
            if self._handlers.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            self._timers.append((time.monotonic() + delay, fn))
        os.eventfd_write(self._wake, 1)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"io-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def close(self) -> None:
        """Idempotent: a second close must not close whatever file has
        since been given the eventfd's number."""
        if self._wake < 0:
            return
        self.stop()
        self._epoll.close()
        os.close(self._wake)
        self._wake = -1

    def _next_timeout(self) -> float:
        with self._lock:
            if not self._timers:
                return -1
            return max(0.0, min(t for t, _ in self._timers) - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [fn for t, fn in self._timers if t <= now]
            self._timers = [(t, fn) for t, fn in self._timers if t > now]
        for fn in due:
            self._call(fn)

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:          # a handler bug must not kill the device's thread
            log.exception("%s: I/O handler failed", self.name)

    def _run(self) -> None:
        while not self._stop:
            try:
                events = self._epoll.poll(self._next_timeout())
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                entry = self._handlers.get(fd)
                if entry is not None:
                    self._call(entry[0])
            self._run_timers()


def drain(fd: int) -> None:
    """Consume an eventfd's count (non-blocking)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
