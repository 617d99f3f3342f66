"""SIGHUP: the terminal or ssh session a run was started from closes. The run stops as after
Ctrl-C: the half-written TIFF removed, movies.star and the --report written for the movies that
finished, exit status 130, also though every write to the closed terminal fails (EIO). Before,
SIGHUP killed the run where it stood: no movies.star, no report, the partial file left."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from .helpers import HANG_SECONDS, read_tiff_frames, start_process, temporary_files_of
from .test_interrupts import SLOW_CODEC, listed_in_movies_star, slow_movie, small_movie, wait_until_writing

COMMAND = [sys.executable, "-m", "cryotiff", "--i", "a.mrc", "big.mrc", "--o", "out", "--j", "2", *SLOW_CODEC,
           "--report", "report.json"]


def assert_stopped_after_the_first_movie(tmp: Path, first: np.ndarray) -> None:
    out = tmp / "out"
    np.testing.assert_array_equal(read_tiff_frames(out / "a.tif"), first)
    assert listed_in_movies_star(out / "movies.star") == ["out/a.tif"]
    assert not (out / "big.tif").exists() and temporary_files_of(out / "big.tif") == []
    document = json.loads((tmp / "report.json").read_text())
    assert (document["state"], document["exit_status"]) == ("interrupted", 130)
    assert [(m["source"], m["status"]) for m in document["movies"]] == [("a.mrc", "converted")]


def test_the_terminal_closing_stops_the_run_cleanly(in_tmp: Path) -> None:
    first = small_movie(in_tmp / "a.mrc", 1)
    slow_movie(in_tmp / "big.mrc")
    controller, terminal = pty.openpty()
    process = start_process(COMMAND, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    try:
        drained = []
        os.set_blocking(controller, False)

        def writing_big() -> None:
            wait_until_writing(process, in_tmp / "out", "big")

        writing_big()
        try:
            drained.append(os.read(controller, 1 << 16))
        except (BlockingIOError, OSError):
            pass
        os.close(controller)  # the terminal is gone: every write to it now fails with EIO
        process.send_signal(signal.SIGHUP)  # as the kernel sends it to a terminal's processes
        process.wait(timeout=HANG_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert_stopped_after_the_first_movie(in_tmp, first)


def test_sighup_with_output_into_a_file_keeps_the_summary(in_tmp: Path) -> None:
    first = small_movie(in_tmp / "a.mrc", 1)
    slow_movie(in_tmp / "big.mrc")
    process = start_process(COMMAND, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_writing(process, in_tmp / "out", "big")
        process.send_signal(signal.SIGHUP)
        stdout, stderr = process.communicate(timeout=HANG_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Movies converted: 1, skipped: 0, failed: 0" in stdout
    assert "big.mrc was being converted; its partial out/big.tif was removed" in stderr, stderr
    assert "Traceback" not in stderr
    assert_stopped_after_the_first_movie(in_tmp, first)


def test_a_run_under_nohup_outlives_the_hangup(in_tmp: Path) -> None:
    first = small_movie(in_tmp / "a.mrc", 1)
    big = slow_movie(in_tmp / "big.mrc", n_frames=6)
    process = start_process(["nohup", *COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_writing(process, in_tmp / "out", "big")
        process.send_signal(signal.SIGHUP)
        stdout, stderr = process.communicate(timeout=HANG_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    np.testing.assert_array_equal(read_tiff_frames(in_tmp / "out" / "a.tif"), first)
    np.testing.assert_array_equal(read_tiff_frames(in_tmp / "out" / "big.tif"), big)
