"""The watchdog: deadlines for code that never reaches a sandbox hook.

A nested ``{% for %}`` over a prepared ``range`` with an empty body calls no sandbox hook, so only
an outside thread can stop it: this one raises ``Deadline`` inside the rendering thread.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Protocol

from templatefix.errors import RenderLimitExceeded
from templatefix.jinja.bounds import SECONDS_ENV


class Watched(Protocol):
    """What the watchdog needs of a render it watches (``templatefix.jinja.guard.Guard``)."""

    thread_id: int
    deadline: float
    fired: bool

    def __hash__(self) -> int: ...


class Deadline(RenderLimitExceeded):
    """Raised by the watchdog inside the rendering thread (built without arguments there)."""

    def __init__(
        self, message: str = f"render stopped: it ran longer than its time limit ({SECONDS_ENV})"
    ) -> None:
        super().__init__(message)


def _async_raise(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in thread ``thread_id`` at its next bytecode (``None`` cancels)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else ctypes.c_void_p(0)
    )


class _Watchdog:
    """One daemon thread that interrupts guards whose deadline passed.

    A nested ``{% for %}`` over a prepared ``range`` with an empty body calls no sandbox hook, so
    only an outside thread can stop it. It is started lazily and restarted after ``fork``
    (``audit`` uses a fork pool), since threads do not survive a fork.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # A lock held at fork time stays held in the child, and the thread is gone: start afresh.
        self._lock = threading.Condition()
        self._watched: set[Watched] = set()
        self._thread: threading.Thread | None = None

    def watch(self, state: Watched) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._lock,), daemon=True, name="templatefix-watchdog"
                )
                self._thread.start()
            self._watched.add(state)
            self._lock.notify()

    def unwatch(self, state: Watched) -> None:
        with self._lock:
            self._watched.discard(state)
            if state.fired:
                _async_raise(state.thread_id, None)  # drop it if not yet delivered

    def _run(self, lock: threading.Condition) -> None:
        while True:
            with lock:
                if lock is not self._lock:
                    return
                now = time.monotonic()
                for state in [s for s in self._watched if s.deadline <= now and not s.fired]:
                    # Still inside the guard (unwatch holds the lock), so the exception lands in it.
                    state.fired = True
                    _async_raise(state.thread_id, Deadline)
                pending = [s.deadline for s in self._watched if not s.fired]
                lock.wait(timeout=max(0.001, min(pending) - now) if pending else None)


watchdog = _Watchdog()
