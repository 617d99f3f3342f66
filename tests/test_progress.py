"""The run's progress: bars on a terminal (checked through a pseudo-terminal), plain lines in a
log, the whole run on MPI rank 0, and --estimate_gain's closing lines."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from cryotiff.progress import RunProgress, format_duration
from cryotiff.simulate.write import write_mrc_movie

from .helpers import HANG_SECONDS, read_tiff_frames

MPIRUN = Path(sys.executable).parent / "mpirun"
#: Only a hang must fail (helpers.HANG_SECONDS): a shared 2-core machine can be slow.
TIMEOUT_SECONDS = HANG_SECONDS


def movie(path: Path, seed: int, n_frames: int = 12, shape_yx: tuple[int, int] = (512, 512)) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 16, (n_frames, *shape_yx), dtype=np.int16)
    write_mrc_movie(path, frames, 1)
    return frames


def run_in_pty(arguments: list[str], cwd: Path, columns: int = 120) -> tuple[int, str]:
    """Run ``python -m cryotiff ARGS`` with stdout and stderr on a pseudo-terminal of
    ``columns`` columns; returns the exit status and everything written to the terminal."""
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "cryotiff", *arguments], cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=child_fd, stderr=child_fd, close_fds=True)
    os.close(child_fd)
    chunks = []
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    try:
        status = process.wait(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the conversion did not end")
    return status, b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- the counts


def test_progress_counts_bytes_rate_and_time_left(tmp_path: Path) -> None:
    now = [100.0]
    sources = []
    for name, size in (("a", 1000), ("b", 3000), ("c", 6000)):
        (tmp_path / name).write_bytes(b"x" * size)
        sources.append(tmp_path / name)
    progress = RunProgress.of(sources, clock=lambda: now[0])
    assert (progress.n_movies, progress.total_bytes, progress.seconds_left) == (3, 10000, None)
    now[0] += 2.0
    assert progress.movie_done(sources[0]) == 1000
    assert progress.pages_done(sources[1], 1, 2) == 1500  # half of b
    assert progress.bytes_so_far == 2500 and progress.bytes_per_second == 1250.0
    assert progress.seconds_left == pytest.approx(6.0)
    assert progress.line() == "Progress: 1 of 3 movies, 2.50 kB of 10.00 kB (25 %), 0.0 MB/s, about 0:00:06 left"
    assert progress.movie_done(sources[1]) == 1500  # the other half
    assert progress.movie_done(sources[2], skipped=True) == 0  # a skipped movie leaves the total
    assert (progress.total_bytes, progress.bytes_so_far) == (4000, 4000)
    assert progress.line().startswith("Progress: 3 of 3 movies, 4.00 kB of 4.00 kB (100 %)")
    assert "left" not in progress.line()
    assert format_duration(3725) == "1:02:05"


def test_failed_movies_and_watch_idle_time_do_not_count_as_throughput(tmp_path: Path) -> None:
    """A movie that fails (often at once, at its header) leaves the total and adds nothing to
    the bytes done; the time --watch waits with every known movie done is not in the rate."""
    now = [0.0]
    sources = []
    for name, size in (("a", 4000), ("big", 10**9), ("c", 4000)):
        (tmp_path / name).write_bytes(b"x" * min(size, 4000))
        sources.append(tmp_path / name)
    progress = RunProgress.of(sources[:2], clock=lambda: now[0])
    progress.nbytes_of[sources[1]] = 10**9  # a 1 GB movie, without writing one
    progress.total_bytes = 4000 + 10**9
    now[0] += 1.0
    assert progress.pages_done(sources[1], 1, 10) == 10**8  # a tenth written, then it fails
    assert progress.movie_done(sources[1], failed=True) == -(10**8)
    assert (progress.bytes_so_far, progress.total_bytes, progress.bytes_per_second) == (0, 4000, 0.0)
    now[0] += 1.0
    assert progress.movie_done(sources[0]) == 4000
    assert progress.bytes_per_second == 2000.0  # 4 kB in 2 s, not 1 GB/s
    now[0] += 1000.0  # --watch waits with nothing to do
    assert progress.seconds == 2.0 and progress.bytes_per_second == 2000.0
    progress.add([sources[2]])  # a new movie: the clock runs again
    now[0] += 2.0
    assert progress.movie_done(sources[2]) == 4000
    assert progress.seconds == 4.0 and progress.bytes_per_second == 2000.0
    assert progress.line() == "Progress: 3 of 3 movies, 8.00 kB of 8.00 kB (100 %), 0.0 MB/s"


# --------------------------------------------------------------------------- convert-to-tiff


def test_a_terminal_gets_bars_of_the_run_and_of_the_movie(tmp_path: Path) -> None:
    frames = {name: movie(tmp_path / f"{name}.mrc", seed) for seed, name in enumerate("abc")}
    status, screen = run_in_pty(["--i", "a.mrc", "b.mrc", "c.mrc", "--o", "out", "--compression", "deflate",
                                 "--deflate_level", "9"], tmp_path)
    assert status == 0, screen
    assert re.search(r"movies [12]/3: +\d+%\|", screen), screen  # the run: movies done of N and a bar
    assert re.search(r"of 18\.9MB, [\d.]+ MB/s, about \d+:\d\d:\d\d left", screen), screen  # bytes, MB/s, time left
    assert re.search(r"[abc]\.mrc: \d+/12 pages", screen), screen  # the current movie's pages
    assert "Progress:" not in screen  # no log lines on a terminal
    assert "Processing c.mrc into out/c.tif" in screen and "Movies converted: 3" in screen
    for name, expected in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / f"{name}.tif"), expected)


def test_a_log_gets_one_plain_line_per_movie(tmp_path: Path) -> None:
    for seed, name in enumerate("ab"):
        movie(tmp_path / f"{name}.mrc", seed, n_frames=3, shape_yx=(64, 64))
    completed = subprocess.run([sys.executable, "-m", "cryotiff", "--i", "a.mrc", "b.mrc", "--o", "out"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr
    assert "\r" not in completed.stdout + completed.stderr and "\x1b" not in completed.stdout + completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("Progress:")]
    assert len(lines) == 2
    assert re.fullmatch(r"Progress: 1 of 2 movies, 25\.6\d kB of 51\.\d\d kB \(50 %\), [\d.]+ MB/s, about "
                        r"\d+:\d\d:\d\d left", lines[0]), lines[0]
    assert lines[1].startswith("Progress: 2 of 2 movies, 51.") and "(100 %)" in lines[1]


def test_estimate_gain_keeps_relions_lines_and_says_what_next(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    gain = rng.uniform(0.8, 1.2, (16, 24)).astype(np.float32)
    for name in ("g0.mrc", "g1.mrc"):
        write_mrc_movie(tmp_path / name, (rng.poisson(2.0, (3, 16, 24)) * gain).astype(np.float32), 2)
    completed = subprocess.run([sys.executable, "-m", "cryotiff", "--estimate_gain", "--i", "g0.mrc", "g1.mrc",
                                "--o", "Est", "--thresh", "2"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert out.count(" Frame 00") == 6 and " g1.mrc Frame 003 #Changed" in out  # RELION's per-frame lines
    assert [line for line in out.splitlines() if line.startswith("Progress:")][-1].startswith(
        "Progress: 2 of 2 movies")
    from cryotiff.gain import GainEstimate

    n_unreliable = GainEstimate.load(tmp_path / "Est" / "gain_estimate.bin").n_unreliable(2)
    assert f"Unreliable pixels: {n_unreliable} of 384 (" in out
    assert "  convert-to-tiff --i g0.mrc g1.mrc --o Est --gain Est/gain_estimate.bin --thresh 2" in out


# --------------------------------------------------------------------------- convert-to-tiff-mpi


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_mpi_rank_zero_shows_the_whole_run(tmp_path: Path) -> None:
    for seed, name in enumerate("abcd"):
        movie(tmp_path / f"{name}.mrc", seed, n_frames=3, shape_yx=(64, 64))
    from .test_mpi import run_mpi  # a hang kills mpirun and every rank, and fails

    completed = run_mpi(["--i", "a.mrc", "b.mrc", "c.mrc", "d.mrc", "--o", "out"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("Progress:")]
    assert [line.split(",")[0] for line in lines] == [f"Progress: {k} of 4 movies" for k in range(1, 5)]
    assert "(100 %)" in lines[-1]
