"""Waits that wake for signals.

Python acts upon a Ctrl-C or SIGTERM in the main thread, between two bytecodes. A signal that
reached another thread, or the main thread just before its wait blocked (between Python's last
look at its signals and the lock's system call), is therefore acted upon only when the wait ends.
An untimed wait may end only when the disk or the input does (an fsync of minutes, a read from a
stalled file server), so the waits that a user's interrupt must be able to end wake every
:data:`SIGNAL_POLL_SECONDS` instead.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait

#: How often a wait that a Ctrl-C must end wakes.
SIGNAL_POLL_SECONDS = 0.05


def wait_for_event(event: threading.Event) -> None:
    """``event.wait()``, waking every :data:`SIGNAL_POLL_SECONDS`."""
    while not event.wait(SIGNAL_POLL_SECONDS):
        pass


def result_of(future: Future):
    """``future.result()``, waking every :data:`SIGNAL_POLL_SECONDS`. (Not ``result(timeout)``:
    a task's own TimeoutError would be taken for the wait's.)"""
    while not future.done():
        futures_wait((future,), timeout=SIGNAL_POLL_SECONDS)
    return future.result()


def sleep_waking(seconds: float) -> None:
    """``time.sleep(seconds)`` in pieces of :data:`SIGNAL_POLL_SECONDS`."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, SIGNAL_POLL_SECONDS))
