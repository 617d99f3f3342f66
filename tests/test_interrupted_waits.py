"""Ctrl-C during the main thread's untimed waits: where the signal lands.

A Ctrl-C reaches any thread of the process, and one that reaches the main thread just before
its lock wait blocks (after Python's last look at its signals) interrupts nothing either: in
Python 3.11 an untimed wait (``Future.result()``, ``Condition.wait()``) then notices it only
when the wait ends by itself, which for a page task or a read on a stalled disk may be never.
Each test holds the work waited for until the interrupt has reached the main thread (or the
hang limit), and fails if the wait noticed the interrupt only once the work had ended. The
``main`` variants signal the main thread once it waits, the ``another`` ones another thread.

Waits that hold Ctrl-C on purpose (the run's last manifest wait, :func:`jobs.interrupts_held`)
are tested for delivering it right after."""

from __future__ import annotations

import contextlib
import linecache
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryotiff import convert, jobs
from cryotiff.convert import ConvertOptions
from cryotiff.io.mrc import open_mrc
from cryotiff.manifest import Manifest
from tests.helpers import HANG_SECONDS, sigint_handler_that_says_so

#: How long held work waits for the interrupt to reach the main thread before it gives up
#: (and the test fails): only a wait that never wakes takes that long.
HOLD_SECONDS = HANG_SECONDS

SIGNALLED_THREADS = ["main", "another"]


def main_thread_waits() -> bool:
    """The main thread waits in threading's Condition.wait, and not for a thread to start
    (``Thread.start()`` waits too: a Ctrl-C there is not what these tests are about)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None or frame.f_code.co_name != "wait" or frame.f_code.co_filename != threading.__file__:
        return False
    while frame is not None:
        if frame.f_code.co_name == "start" and frame.f_code.co_filename == threading.__file__:
            return False
        frame = frame.f_back
    return True


@contextlib.contextmanager
def ctrl_c_once_the_main_thread_waits(ready: threading.Event, signalled_thread: str):
    """A thread that, once ``ready`` is set and the main thread waits in threading's
    ``Condition.wait``, sends SIGINT to the main thread or to itself (another thread); the event
    yielded is set once it has."""
    stop, sent = threading.Event(), threading.Event()

    def interrupt():
        if not ready.wait(HANG_SECONDS):
            return
        deadline = time.monotonic() + HANG_SECONDS
        while not main_thread_waits() and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.001)
        if stop.is_set():
            return
        target = threading.main_thread().ident if signalled_thread == "main" else threading.get_ident()
        signal.pthread_kill(target, signal.SIGINT)
        sent.set()

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        yield sent
    finally:
        stop.set()
        ready.set()
        interrupter.join()


class HeldWork:
    """Work on a worker thread that holds until the interrupt has landed, and says whether it
    had landed before the work ended (``in_time``)."""

    def __init__(self, landed: threading.Event):
        self.landed = landed
        self.started = threading.Event()
        self.in_time: list[bool] = []

    def hold(self) -> None:
        self.started.set()
        self.in_time.append(self.landed.wait(HOLD_SECONDS))


@pytest.mark.parametrize("signalled_thread", SIGNALLED_THREADS)
def test_ctrl_c_while_the_main_thread_waits_for_a_page_task_in_order(signalled_thread):
    """convert.ordered_map: the writer waits for the next page, made on the pool."""
    with sigint_handler_that_says_so() as landed, ThreadPoolExecutor(2) as executor:
        work = HeldWork(landed)

        def page(index):
            work.hold()
            return index

        with ctrl_c_once_the_main_thread_waits(work.started, signalled_thread):
            with pytest.raises(KeyboardInterrupt):
                list(convert.ordered_map(page, 3, executor, 2))
    assert work.in_time and all(work.in_time), "the Ctrl-C was noticed only once the page task had ended"


class _HeldSource:
    """The few things of a PageSource that PageAhead and EncodedPage use, its page held."""

    dtype = np.dtype(np.int16)

    def __init__(self, work: HeldWork):
        self.work = work
        self.recycled = []

    def page(self, index):
        self.work.hold()
        return np.zeros((2, 3), dtype=self.dtype)

    def recycle(self, page):
        self.recycled.append(page)


@pytest.mark.parametrize("signalled_thread", SIGNALLED_THREADS)
def test_ctrl_c_while_the_main_thread_waits_for_the_page_made_ahead(signalled_thread):
    """convert.PageAhead.take: page 1, made on the pool while page 0 was encoded."""
    with sigint_handler_that_says_so() as landed, ThreadPoolExecutor(1) as executor:
        work = HeldWork(landed)
        source = _HeldSource(work)
        ahead = convert.PageAhead(source, executor)
        with ctrl_c_once_the_main_thread_waits(work.started, signalled_thread):
            with pytest.raises(KeyboardInterrupt):
                ahead.take(1)
        ahead.drop()
    assert work.in_time == [True], "the Ctrl-C was noticed only once the page had been made"


@pytest.mark.parametrize("signalled_thread", SIGNALLED_THREADS)
@pytest.mark.parametrize("waited_for", ["check", "digest"])
def test_ctrl_c_while_the_main_thread_waits_for_a_page_check_or_digest(signalled_thread, waited_for):
    """convert.EncodedPage.finish: the strips' check and the page's digest, made on the side
    thread of --j 1; the page goes back to its source once they have ended."""
    with sigint_handler_that_says_so() as landed, ThreadPoolExecutor(1) as beside:
        work = HeldWork(landed)
        source = _HeldSource(work)
        page = np.zeros((2, 3), dtype=np.int16)
        task = beside.submit(work.hold)
        encoded = convert.EncodedPage([b""], source, page)
        if waited_for == "check":
            encoded.checks.append(task)
        else:
            encoded.digest = task
        with ctrl_c_once_the_main_thread_waits(work.started, signalled_thread):
            with pytest.raises(KeyboardInterrupt):
                encoded.finish()
    assert work.in_time == [True], "the Ctrl-C was noticed only once the task had ended"
    assert source.recycled == [page]  # after the task that read it


def _descriptor_names(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


@pytest.mark.parametrize("signalled_thread", SIGNALLED_THREADS)
def test_ctrl_c_while_closing_a_movie_waits_for_a_read_then_the_read_closes_it(tmp_path, signalled_thread):
    """io.mrc.MrcMovie.close waits for the reads in progress (a read on a stalled disk may not
    end): a Ctrl-C ends the wait, and the last read then closes the descriptor (it stayed open
    for good when the wait was cut short)."""
    path = tmp_path / "movie.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    movie = open_mrc(path)
    fd = movie.fileno()
    real_read_into = movie._read_into
    with sigint_handler_that_says_so() as landed:
        work = HeldWork(landed)

        def held_read_into(buffer, offset):
            work.hold()
            return real_read_into(buffer, offset)

        movie._read_into = held_read_into
        frames = []
        reader = threading.Thread(target=lambda: frames.append(movie.read_frame(1)))
        reader.start()
        try:
            with ctrl_c_once_the_main_thread_waits(work.started, signalled_thread):
                with pytest.raises(KeyboardInterrupt):
                    movie.close()
        finally:
            landed.set()
            reader.join()
    assert work.in_time == [True], "the Ctrl-C was noticed only once the read had ended"
    assert np.array_equal(frames[0], np.arange(12, 24, dtype=np.int16).reshape(3, 4))
    assert not _descriptor_names(fd, path), "the movie's descriptor is still open"
    movie.close()  # closed already: nothing more to do


class _Warnings:
    def __init__(self):
        self.lines = []

    def warning(self, line):
        self.lines.append(line)


def main_thread_sleeps_between_two_looks() -> bool:
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return False
    if frame.f_code.co_name == "sleep_waking":
        return True
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return frame.f_code.co_name == "watch_and_convert" and "sleep(" in line


@pytest.mark.parametrize("signalled_thread", SIGNALLED_THREADS)
def test_ctrl_c_while_a_watch_sleeps_between_two_looks_at_its_inputs(tmp_path, monkeypatch, signalled_thread):
    """watch.watch_and_convert sleeps between two looks at its inputs (up to 5 s; here made as
    long as the hang limit): a Ctrl-C that reached another thread, or the main thread just
    before its sleep began, was acted upon only once the sleep had ended."""
    from cryotiff import watch

    monkeypatch.setattr(watch, "MAX_POLL_SECONDS", HANG_SECONDS)
    (tmp_path / "Movies").mkdir()
    options = ConvertOptions(output_dir=tmp_path / "out")
    settings = watch.WatchOptions(settle_seconds=4 * HANG_SECONDS)
    with sigint_handler_that_says_so() as landed:
        sent = threading.Event()

        def interrupt():
            deadline = time.monotonic() + HANG_SECONDS
            while not main_thread_sleeps_between_two_looks() and time.monotonic() < deadline:
                time.sleep(0.001)
            target = threading.main_thread().ident if signalled_thread == "main" else threading.get_ident()
            signal.pthread_kill(target, signal.SIGINT)
            sent.set()

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                watch.watch_and_convert([str(tmp_path / "Movies" / "*.mrc")], options, settings, jobs.Reporter())
        finally:
            interrupter.join()
        # A hang limit, not a timing: the sleep was as long as HANG_SECONDS.
        assert time.monotonic() - started < HANG_SECONDS, "the Ctrl-C was acted upon only once the sleep had ended"
    assert sent.is_set() and landed.is_set()


@pytest.mark.parametrize("signalled_thread", SIGNALLED_THREADS)
def test_ctrl_c_during_the_last_manifest_wait_is_held_then_delivered_right_after(tmp_path, signalled_thread):
    """jobs.manifest_waited holds Ctrl-C while the manifest lines of the TIFFs in place are
    written (deliberately: they must not be lost), and delivers it once they are."""
    manifest = Manifest(tmp_path)
    warnings = _Warnings()
    with sigint_handler_that_says_so() as landed:
        started, ended = threading.Event(), threading.Event()
        with ctrl_c_once_the_main_thread_waits(started, signalled_thread) as sent:

            def entry():  # an entry being hashed
                started.set()
                assert sent.wait(HANG_SECONDS)
                time.sleep(0.2)  # still hashing after the Ctrl-C
                ended.set()

            with pytest.raises(KeyboardInterrupt):
                with jobs.manifest_waited(manifest, warnings):
                    manifest._submit(entry, keep=True)
            assert ended.is_set(), "the Ctrl-C cut the manifest wait short"
            assert landed.is_set()
    assert warnings.lines == []
