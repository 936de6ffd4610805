"""Cooperative stopping: a stop is requested at any moment and honoured at safe points.

A signal handler (the CLI's) or any thread only *records* a stop with
:meth:`StopRequest.request`; it never raises into whatever code happens to run, where
an ``except BaseException`` in a library (Dask, tornado, asyncio, a finaliser) could
swallow it. Long-running code calls :meth:`StopRequest.check` where stopping is safe
(between chunks, between phases, before outputs are moved into place) and waits with
:meth:`StopRequest.wait`, which a request wakes at once. ``check`` raises
:class:`~rsscgeo.errors.RunInterrupted`; the run turns that into its own message
("interrupted after N of M chunks").

One process-wide request, :data:`STOP`, since signals are process-wide.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rsscgeo.errors import RunInterrupted

# The longest a waiting loop sleeps before it looks again at what it waits for, so a
# wake-up that races with the condition it waits on costs at most this long.
POLL_SECONDS = 0.1
# What a stop before any output was begun says.
NOTHING_WRITTEN = "interrupted before any output was begun; nothing was written"


class StopRequest:
    """A stop asked for by a signal (or by code), for long-running code to honour.

    Safe to call from a signal handler: the lock is re-entrant, so a handler that runs
    while the main thread holds it (inside :meth:`wait`) does not deadlock.
    """

    def __init__(self) -> None:
        self._signum: int | None = None
        self._changed = threading.Condition(threading.RLock())
        self._deferring = 0

    @property
    def deferring(self) -> bool:
        """Whether running code has begun work that a stop must leave whole.

        See :meth:`deferred`; before that, a process may simply exit on a stop.
        """
        return self._deferring > 0

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Mark work that keeps what it began whole: a stop waits for its safe points."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    @property
    def signum(self) -> int | None:
        """The signal that asked to stop (``None``: no stop was asked for)."""
        return self._signum

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask running code to stop at its next safe point (the first request wins)."""
        with self._changed:
            if self._signum is None:
                self._signum = signum
            self._changed.notify_all()

    def clear(self) -> None:
        """Forget a request (a new command starts)."""
        with self._changed:
            self._signum = None

    def wake(self) -> None:
        """Wake :meth:`wait`, e.g. from a callback when what it waits for has happened."""
        with self._changed:
            self._changed.notify_all()

    def wait(self, until: Callable[[], bool], timeout: float = POLL_SECONDS) -> bool:
        """Wait until ``until()`` holds, a stop is requested, or ``timeout`` passes.

        Returns:
            Whether ``until()`` held at the end.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._signum is not None or until(), timeout)
        return until()

    def check(self, what: str = NOTHING_WRITTEN) -> None:
        """Raise if a stop was requested; call only where stopping leaves things whole.

        Args:
            what: What the message says happened.

        Raises:
            RunInterrupted: If a stop was requested.
        """
        signum = self._signum
        if signum is not None:
            raise RunInterrupted(what, "call again.", cli_fix="rerun to start over", signum=signum)


STOP = StopRequest()


def stop_signal(interruption: KeyboardInterrupt | RunInterrupted) -> int:
    """The signal behind an interruption; a ``KeyboardInterrupt`` is Ctrl-C (SIGINT)."""
    if isinstance(interruption, RunInterrupted):
        return interruption.signum
    return signal.SIGINT
