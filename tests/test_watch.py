"""``--watch``: movies converted while they are still being written, each once and exactly,
after it settles; the watch ends by itself after ``--watch_timeout``; the same under a real
``mpirun``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.convert import ConvertOptions
from cryotiff.simulate.write import write_mrc_movie
from cryotiff.watch import MovieWatch, WatchOptions, why_incomplete

from .helpers import HANG_SECONDS, OutputSoFar, read_tiff_frames, start_process, wait_until

MPIRUN = Path(sys.executable).parent / "mpirun"
#: Only a hang must fail (helpers.HANG_SECONDS); what the tests wait for, they wait for as a
#: condition (a line of the watch's output, a file), never as a sleep of the usual time.
TIMEOUT_SECONDS = HANG_SECONDS
SETTLE = 1.5


def frames_of(seed: int, n_frames: int = 6, shape_yx: tuple[int, int] = (96, 80)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-5, 40, (n_frames, *shape_yx)).astype(np.int16)


def mrc_bytes(tmp: Path, frames: np.ndarray) -> bytes:
    write_mrc_movie(tmp, frames, 1, pixel_size_angstrom=1.1)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def aged(path: Path, seconds: float = 3600) -> None:
    """Make ``path`` look written ``seconds`` ago."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def movies_star_names(path: Path) -> list[str]:
    from cryotiff.io.star import read_movie_names

    return list(read_movie_names(path))


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    """The watch, its output read as it comes (``process.output``, :class:`~tests.helpers.OutputSoFar`),
    with SIGINT at its default action (:func:`~tests.helpers.start_process`), as the Ctrl-C tests need."""
    process = start_process(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    process.output = OutputSoFar(process)
    return process


def wait_for_line(process: subprocess.Popen, text: str) -> None:
    """Wait until the watch has printed ``text`` (fail if it ends first, or hangs)."""
    wait_until(lambda: text in process.output.text(), f"the watch printing {text!r}", process, TIMEOUT_SECONDS)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.output.finish(TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the watch did not end by itself\nstdout:\n{process.output.text()}\n"
                    f"stderr:\n{process.output.text('stderr')}")


def mpirun_prefix() -> list[str]:
    return [str(MPIRUN), "-np", "2", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def write_in_two_halves_during_the_watch(tmp_path: Path, program: list[str]) -> None:
    """The scenario both programs go through: ``a.mrc`` is there from the start; ``b.mrc`` is
    written in two halves with a pause longer than the settle time between them."""
    movies = tmp_path / "Movies"
    movies.mkdir()
    a = frames_of(1)
    write_mrc_movie(movies / "a.mrc", a, 1, pixel_size_angstrom=1.1)
    aged(movies / "a.mrc")
    b = frames_of(2, n_frames=9)
    b_bytes = mrc_bytes(tmp_path / "b-whole.mrc", b)
    half = 1024 + 4 * b[0].nbytes + 1000  # in the middle of frame 5

    # The watch ends 8 s after it last saw a change: the second half must come within that
    # after the first, which the test writes as soon as the watch has said it waits for it.
    process = start(program + ["--i", "Movies", "--o", "out", "--watch", "--settle_seconds", str(SETTLE),
                               "--watch_timeout", "8", "--report", "report.json"], tmp_path)
    out = tmp_path / "out"
    # a.mrc is converted at once, and movies.star and the report list it while the watch goes on.
    # (Both files are written whole, then renamed; the report after movies.star.)
    wait_until(lambda: (out / "movies.star").exists() and (tmp_path / "report.json").exists(),
               "movies.star and the report listing a.mrc", process, TIMEOUT_SECONDS)
    assert movies_star_names(out / "movies.star") == ["out/Movies/a.tif"]
    assert json.loads((tmp_path / "report.json").read_text())["state"] == "watching"

    with open(movies / "b.mrc", "wb") as handle:
        handle.write(b_bytes[:half])
    # Settled, but shorter than its header says: it waits (the line comes once the watch has
    # seen it unchanged for SETTLE seconds, however long the loaded machine takes to get there).
    wait_for_line(process, "Movies/b.mrc: unchanged for 1.5 s but not complete; waiting for it")
    assert not (out / "Movies" / "b.tif").exists()
    with open(movies / "b.mrc", "ab") as handle:
        handle.write(b_bytes[half:])
    completed_at = time.time()
    stdout, stderr = finish(process)

    assert process.returncode == 0, stderr
    assert stdout.count("Processing Movies/b.mrc into out/Movies/b.tif") == 1, stdout
    assert stdout.count("Processing Movies/a.mrc into out/Movies/a.tif") == 1, stdout
    assert "Movies/b.mrc: unchanged for 1.5 s but not complete; waiting for it" in stdout
    assert "the file is truncated" in stdout
    np.testing.assert_array_equal(read_tiff_frames(out / "Movies" / "a.tif"), a)
    np.testing.assert_array_equal(read_tiff_frames(out / "Movies" / "b.tif"), b)
    # Converted only once it had settled: not before SETTLE seconds after its last byte.
    assert (out / "Movies" / "b.tif").stat().st_mtime >= completed_at + SETTLE - 0.5
    assert movies_star_names(out / "movies.star") == ["out/Movies/a.tif", "out/Movies/b.tif"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["state"], report["totals"]["converted"], report["totals"]["failed"]) == ("finished", 2, 0)
    assert "Movies converted: 2, skipped: 0, failed: 0" in stdout


# --------------------------------------------------------------------------- convert-to-tiff


def test_a_movie_written_in_two_halves_is_converted_once_exactly_after_it_settles(tmp_path: Path) -> None:
    write_in_two_halves_during_the_watch(tmp_path, [sys.executable, "-m", "cryotiff", "--j", "2"])


def test_the_watch_stops_by_itself_after_the_timeout(tmp_path: Path) -> None:
    (tmp_path / "Movies").mkdir()  # nothing there yet: not an error while watching
    started = time.monotonic()
    process = start([sys.executable, "-m", "cryotiff", "--i", "Movies", "'Later/*.eer'", "--o", "out", "--watch",
                     "--watch_timeout", "1"], tmp_path)
    stdout, stderr = finish(process)
    assert process.returncode == 0, stderr
    assert 1.0 <= time.monotonic() - started < TIMEOUT_SECONDS
    assert "Watching for new movies; stopping after 1 s without any" in stdout
    assert "Movies converted: 0, skipped: 0, failed: 0" in stdout


def test_a_movie_never_completed_fails_when_the_watch_ends(tmp_path: Path) -> None:
    (tmp_path / "Movies").mkdir()
    data = mrc_bytes(tmp_path / "whole.mrc", frames_of(3))
    (tmp_path / "Movies" / "c.mrc").write_bytes(data[: len(data) - 100])
    aged(tmp_path / "Movies" / "c.mrc")
    process = start([sys.executable, "-m", "cryotiff", "--i", "Movies", "--o", "out", "--watch", "--settle_seconds",
                     "0.2", "--watch_timeout", "1"], tmp_path)
    stdout, stderr = finish(process)
    assert process.returncode == 1
    assert "c.mrc: unchanged for 0.2 s but not complete; waiting for it" in stdout
    assert "not converted: incomplete when the watch ended: Movies/c.mrc: the file is truncated" in stderr
    assert not (tmp_path / "out" / "Movies" / "c.tif").exists()


def test_watch_with_the_gain_of_float_movies_that_arrive_later(tmp_path: Path) -> None:
    """The gain is loaded when the first float movie arrives (none was there at the start), and
    the TIFF x gain-reference gives back the float frames."""
    import mrcfile

    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(5)
    detector = make_detector((48, 40), rng, defect_fraction=0.002, cold_fraction=0.001)
    write_mrc_movie(tmp_path / "first.mrc", detector.movie(40, rng).frames, 2)
    subprocess.run([sys.executable, "-m", "cryotiff", "--i", "first.mrc", "--o", "Est", "--estimate_gain"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=TIMEOUT_SECONDS)
    (tmp_path / "Movies").mkdir()
    process = start([sys.executable, "-m", "cryotiff", "--i", "Movies", "--o", "out", "--gain",
                     "Est/gain_estimate.bin", "--watch", "--settle_seconds", "0.5", "--watch_timeout", "5"],
                    tmp_path)
    wait_for_line(process, "Watching for new movies")  # started, with no movie: the gain is not loaded yet
    assert not (tmp_path / "out" / "gain-reference.mrc").exists()
    later = detector.movie(10, rng).frames
    write_mrc_movie(tmp_path / "Movies" / "later.mrc", later, 2)
    stdout, stderr = finish(process)
    assert process.returncode == 0, stderr
    assert "Written out/gain-reference.mrc" in stdout
    with mrcfile.open(tmp_path / "out" / "gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    stored = read_tiff_frames(tmp_path / "out" / "Movies" / "later.tif")
    np.testing.assert_array_equal((stored * gain_reference).astype(np.float32), later)


@pytest.mark.parametrize("argv, message", [
    (["--settle_seconds", "5"], "--settle_seconds needs --watch"),
    (["--watch", "--dry_run"], "cannot be combined with --dry_run"),
    (["--watch", "--estimate_gain"], "cannot be combined with --estimate_gain"),
    (["--watch", "--watch_timeout", "0"], "--watch_timeout must be more than 0"),
])
def test_watch_options_are_checked(in_tmp: Path, capsys, argv: list[str], message: str) -> None:
    from cryotiff.cli import main

    assert main(["--i", "x.mrc", "--o", "out", *argv]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- the rules, on a fake clock


class FakeClocks:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return time.time() + (self.now - 1000.0)


def test_a_new_movie_waits_until_it_has_not_changed_for_the_settle_time(tmp_path: Path) -> None:
    clocks = FakeClocks()
    movie = tmp_path / "m.mrc"
    write_mrc_movie(movie, frames_of(4), 1)
    watch = MovieWatch([str(tmp_path)], ConvertOptions(output_dir=tmp_path / "out"), WatchOptions(settle_seconds=10),
                       clock=clocks.monotonic, wall_clock=clocks.wall)
    assert watch.look().ready == []  # just written
    clocks.now += 9
    assert watch.look().ready == []
    os.utime(movie)  # touched again: the settle time starts again
    clocks.now += 5
    assert watch.look().ready == []
    clocks.now += 10
    assert [job.source for job in watch.look().ready] == [movie]
    clocks.now += 100
    assert watch.look().ready == []  # once only


def test_an_old_movie_is_ready_at_first_sight(tmp_path: Path) -> None:
    write_mrc_movie(tmp_path / "m.mrc", frames_of(4), 1)
    aged(tmp_path / "m.mrc")
    watch = MovieWatch([str(tmp_path)], ConvertOptions(output_dir=tmp_path / "out"), WatchOptions(settle_seconds=60))
    assert [job.source.name for job in watch.look().ready] == ["m.mrc"]


def test_a_tiff_is_complete_when_it_reads_to_its_last_ifd(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, frames_of(5, n_frames=8), photometric="minisblack")
    data = whole.read_bytes()
    with tifffile.TiffFile(whole) as tif:
        last_ifd = tif.pages[-1].offset
        last_strip = tif.pages[-1].dataoffsets[0]
    partial = tmp_path / "partial.tif"
    # in the data; in the last IFD (tifffile writes the later IFDs after the data); in the last strip
    for cut in (len(data) // 3, last_ifd + 20, last_strip + 100):
        partial.write_bytes(data[:cut])
        assert why_incomplete(partial) is not None, cut
    partial.write_bytes(data)
    assert why_incomplete(partial) is None


def test_an_eer_is_complete_when_it_reads_to_its_last_ifd(tmp_path: Path) -> None:
    from cryotiff.simulate.eer import random_events, write_eer

    whole = tmp_path / "whole.eer"
    write_eer(whole, random_events(np.random.default_rng(1), 2048, 4, 0.001), 2048)
    data = whole.read_bytes()
    partial = tmp_path / "partial.eer"
    partial.write_bytes(data[: len(data) // 2])
    assert why_incomplete(partial) is not None
    partial.write_bytes(data)
    assert why_incomplete(partial) is None


# --------------------------------------------------------------------------- convert-to-tiff-mpi


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_the_same_under_mpirun(tmp_path: Path) -> None:
    write_in_two_halves_during_the_watch(tmp_path, mpirun_prefix() + [sys.executable, "-m", "cryotiff.mpi"])


# --------------------------------------------------------------------------- a watch that stops


def watching_with_a_report(tmp_path: Path) -> subprocess.Popen:
    """A --watch (no timeout) that has converted a.mrc and written its report (``watching``)."""
    movies = tmp_path / "Movies"
    movies.mkdir()
    write_mrc_movie(movies / "a.mrc", frames_of(1), 1, pixel_size_angstrom=1.1)
    aged(movies / "a.mrc")
    process = start([sys.executable, "-m", "cryotiff", "--i", "Movies", "--o", "out", "--watch",
                     "--settle_seconds", str(SETTLE), "--report", "report.json"], tmp_path)
    wait_until(lambda: (tmp_path / "report.json").exists(), "the report listing a.mrc", process, TIMEOUT_SECONDS)
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_watch_stopped_by_a_signal_ends_its_report_as_interrupted(tmp_path: Path, signum: int) -> None:
    """Ctrl-C or SIGTERM on a --watch: the report ends in state ``interrupted`` (not
    ``watching``), with the movies converted, and the exit status is 130."""
    process = watching_with_a_report(tmp_path)
    try:
        wait_for_line(process, "Watching for new movies")
        process.send_signal(signum)
        stdout, stderr = finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["state"], report["exit_status"]) == ("interrupted", 130)
    assert [m["source"] for m in report["movies"]] == ["Movies/a.mrc"]
    assert report.get("watch_process") is None  # no longer a live watch's report


def test_a_killed_watch_is_not_taken_for_a_live_one(tmp_path: Path) -> None:
    """A --watch killed with SIGKILL leaves its report in state ``watching``: the report names
    the process (pid and host), so that it can be told dead; report.current_state says
    ``stopped (process gone)``, and the next run given that --report says so and marks the
    report so at once, before its own first movie."""
    import socket

    from cryotiff.report import current_state

    process = watching_with_a_report(tmp_path)
    report_path = tmp_path / "report.json"
    report = json.loads(report_path.read_text())
    assert report["state"] == "watching"
    assert (report["watch_process"]["pid"], report["watch_process"]["host"]) == (process.pid, socket.gethostname())
    assert current_state(report_path) == "watching"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert current_state(report_path) == "stopped (process gone)"

    # The next run (a dry run: it writes its own report only at its end) says so at its start.
    completed = subprocess.run([sys.executable, "-m", "cryotiff", "--i", "Movies", "--o", "out", "--dry_run",
                                "--report", "report.json"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr
    assert (f"report.json: the --watch that wrote it (process {process.pid} on {socket.gethostname()}) is gone; "
            "its state is now 'stopped (process gone)'") in completed.stdout + completed.stderr
