"""SIGHUP: the terminal, or the ssh session, that a run was started from has closed.

The run then stops as it does after Ctrl-C (the half-written TIFF removed, ``movies.star`` and
the ``--report`` written for the movies that finished, exit status 130), instead of dying where
it stands with neither. The terminal that hung up fails every write (EIO), so from the signal
on, what the run prints to it goes to ``/dev/null``; output into a file or a pipe is kept. A run
started with SIGHUP ignored (``nohup``) keeps ignoring it.

Used by the ``convert-to-tiff`` command only (under ``mpirun`` the ranks print into pipes, and
``mpirun`` itself takes the hangup).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

#: The standard descriptors (1, 2) that were a terminal when :func:`stop_on_hangup` ran.
_TERMINAL_DESCRIPTORS: list[int] = []


def stop_on_hangup() -> None:
    """In the main thread, where SIGHUP is not ignored: SIGHUP raises KeyboardInterrupt after
    :func:`silence_hung_up_terminal`. Which of stdout and stderr are a terminal is noted now: a
    terminal that has hung up no longer says it is one."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return  # nohup: the user asked for the run to outlive the terminal
    _TERMINAL_DESCRIPTORS[:] = [fd for fd in (1, 2) if _is_terminal(fd)]
    signal.signal(signal.SIGHUP, _hang_up_like_ctrl_c)


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def silence_hung_up_terminal() -> None:
    """Point the standard descriptors that were a terminal at ``/dev/null`` (idempotent)."""
    for fd in _TERMINAL_DESCRIPTORS:
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
    _TERMINAL_DESCRIPTORS.clear()


def _hang_up_like_ctrl_c(signum, frame) -> None:
    silence_hung_up_terminal()
    raise KeyboardInterrupt


def while_held(signum, frame) -> None:
    """SIGHUP's handler while the end of an interrupted run is written (its summary, movies.star,
    the report): the terminal is silenced and the writing goes on."""
    silence_hung_up_terminal()
