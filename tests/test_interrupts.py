"""Ctrl-C and SIGTERM in the middle of a run: the summary of what finished, ``movies.star`` and
the ``--report`` for those movies, the movie that was removed named, the hint to rerun with
``--only_do_unfinished``, exit status 130. From ``convert-to-tiff`` and from
``convert-to-tiff-mpi`` under a real ``mpirun``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from cryotiff.simulate.write import write_mrc_movie

from .helpers import HANG_SECONDS, OutputSoFar, read_tiff_frames, start_process, wait_until

BIN_DIR = Path(sys.executable).parent
MPIRUN = BIN_DIR / "mpirun"
#: Only a hang must fail (helpers.HANG_SECONDS): the rerun converts an 80 MB movie, which took
#: more than 120 s once on CI's loaded 2-core machine. What the tests wait for (a partial file,
#: rank 0 holding a result) they wait for as a condition, never as a sleep.
TIMEOUT_SECONDS = HANG_SECONDS
#: Slow enough (deflate level 12 on 2 x 1024 x 1024 int16 pages per second or so) that the run
#: is surely in the middle of the movie when the signal comes.
SLOW_CODEC = ("--compression", "deflate", "--deflate_level", "12")


def small_movie(path: Path, seed: int) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(-3, 9, (3, 16, 20)).astype(np.int16)
    write_mrc_movie(path, frames, 1)
    return frames


def slow_movie(path: Path, seed: int = 7, n_frames: int = 40) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 16, (n_frames, 1024, 1024), dtype=np.int16)
    write_mrc_movie(path, frames, 1)
    return frames


def wait_until_writing(process: subprocess.Popen, directory: Path, stem: str) -> None:
    """Wait until the partial output of ``stem`` (whatever its temporary name) holds a few pages."""
    def writing() -> bool:
        for path in directory.glob(f"{stem}.*") if directory.is_dir() else []:
            try:
                if path.name != f"{stem}.tif" and path.stat().st_size >= 1 << 20:
                    return True
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
        return False

    wait_until(writing, f"{stem} half written", process, TIMEOUT_SECONDS)


def listed_in_movies_star(path: Path) -> list[str]:
    from cryotiff.io.star import read_movie_names

    return list(read_movie_names(path))


def assert_interrupted_after_the_first_movie(out: Path, stdout: str, stderr: str, first: np.ndarray,
                                             report: Path | None = None) -> None:
    """``a.mrc`` finished, ``big.mrc`` was being written when the signal came."""
    assert "Movies converted: 1, skipped: 0, failed: 0" in stdout, stdout
    assert listed_in_movies_star(out / "movies.star") == [str(out / "a.tif")]
    np.testing.assert_array_equal(read_tiff_frames(out / "a.tif"), first)
    assert f"big.mrc was being converted; its partial {out / 'big.tif'} was removed" in stderr, stderr
    assert "1 movie was not converted: run the same command again with --only_do_unfinished" in stderr, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("big")) == []
    if report is not None:
        document = json.loads(report.read_text())
        assert (document["state"], document["exit_status"]) == ("interrupted", 130)
        assert [(m["source"], m["status"]) for m in document["movies"]] == [("a.mrc", "converted")]
        assert document["movies_star"] == str(out / "movies.star")


# --------------------------------------------------------------------------- convert-to-tiff


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_during_the_second_movie(in_tmp: Path, signum: int) -> None:
    first = small_movie(in_tmp / "a.mrc", 1)
    big = slow_movie(in_tmp / "big.mrc")
    process = start_process(
        [sys.executable, "-m", "cryotiff", "--i", "a.mrc", "big.mrc", "--o", "out", "--j", "2", *SLOW_CODEC,
         "--report", "report.json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until_writing(process, in_tmp / "out", "big")
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert_interrupted_after_the_first_movie(Path("out"), stdout, stderr, first, in_tmp / "report.json")
    from cryotiff.manifest import read_manifest

    assert list(read_manifest(Path("out"))) == ["a.tif"]  # the manifest holds the finished movie

    # The hint works: the rerun converts the rest exactly and keeps the finished movie.
    completed = subprocess.run([sys.executable, "-m", "cryotiff", "--i", "a.mrc", "big.mrc", "--o", "out",
                                "--only_do_unfinished", "--j", "2"], capture_output=True, text=True,
                               timeout=TIMEOUT_SECONDS)
    assert completed.returncode == 0, completed.stderr
    assert "Skipping already processed a.mrc" in completed.stdout
    np.testing.assert_array_equal(read_tiff_frames(Path("out/big.tif")), big)
    assert listed_in_movies_star(Path("out/movies.star")) == ["out/a.tif", "out/big.tif"]


def test_interrupt_between_movies_says_nothing_was_half_written(in_tmp: Path, monkeypatch, capsys) -> None:
    import cryotiff.jobs
    from cryotiff.cli import main

    first = small_movie(in_tmp / "a.mrc", 1)
    small_movie(in_tmp / "b.mrc", 2)
    real_check_finished = cryotiff.jobs.check_finished

    def interrupt_before_b(job, *args):
        if job.source.name == "b.mrc":
            raise KeyboardInterrupt
        return real_check_finished(job, *args)

    monkeypatch.setattr(cryotiff.jobs, "check_finished", interrupt_before_b)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--only_do_unfinished"]) == 130
    captured = capsys.readouterr()
    assert "Movies converted: 1, skipped: 0, failed: 0" in captured.out
    assert "Interrupted between movies: no file was half-written." in captured.err
    assert "1 movie was not converted" in captured.err
    assert listed_in_movies_star(Path("out/movies.star")) == ["out/a.tif"]
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), first)


def test_interrupted_gain_estimation_prints_its_summary(in_tmp: Path, monkeypatch, capsys) -> None:
    import cryotiff.jobs
    from cryotiff.cli import main

    rng = np.random.default_rng(3)
    for name in ("a.mrc", "b.mrc"):
        write_mrc_movie(Path(name), rng.poisson(2.0, (2, 8, 8)).astype(np.float32), 2)
    real = cryotiff.jobs.estimate_movie

    def interrupt_on_b(path, *args):
        if path.name == "b.mrc":
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(cryotiff.jobs, "estimate_movie", interrupt_on_b)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "Est", "--estimate_gain", "--report", "est.json"]) == 130
    captured = capsys.readouterr()
    assert "Movies estimated: 1, failed: 0" in captured.out
    assert "--gain Est/gain_estimate.bin" in captured.err
    report = json.loads(Path("est.json").read_text())
    assert (report["state"], report["exit_status"]) == ("interrupted", 130)
    assert [m["source"] for m in report["movies"]] == ["a.mrc"]


# --------------------------------------------------------------------------- convert-to-tiff-mpi


def start_mpirun(arguments: list[str], cwd: Path, n_ranks: int = 2, script: Path | None = None) -> subprocess.Popen:
    """``mpirun -np N python -m cryotiff.mpi ARGS`` (or ``python SCRIPT ARGS``) in ``cwd``."""
    command = [str(MPIRUN), "-np", str(n_ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    program = [sys.executable, str(script)] if script else [sys.executable, "-m", "cryotiff.mpi"]
    process = start_process(command + program + arguments, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    process.output = OutputSoFar(process)  # read as it comes: the tests wait for rank 0's lines
    return process


def wait_until_rank_0_has_the_first_result(process: subprocess.Popen) -> None:
    """Rank 0 prints a progress line when it has collected a movie's result (the other rank
    converts a.mrc while big.mrc is being written); a signal before that would find a.mrc's
    TIFF written but not yet counted."""
    wait_until(lambda: "Progress: 1 of 2 movies" in process.output.text(), "rank 0 collecting a.mrc's result",
               process, TIMEOUT_SECONDS)


def mpi_rank_of(pid: int) -> int:
    """The MPI rank of the process ``pid`` (Open MPI puts it in each rank's environment)."""
    for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if variable.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(variable.split(b"=", 1)[1])
    raise AssertionError(f"process {pid} is not an MPI rank of Open MPI")


@contextlib.contextmanager
def mpirun(arguments: list[str], cwd: Path, script: Path | None = None) -> Iterator[subprocess.Popen]:
    """:func:`start_mpirun` for a ``with`` block; a job still running at its end is killed."""
    process = start_mpirun(arguments, cwd, script=script)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def rank_pids(mpirun_pid: int, program: str = "cryotiff.mpi") -> list[int]:
    """The ranks: the processes among mpirun's children whose command line holds ``program``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command_line = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == mpirun_pid and any(program.encode() in part for part in command_line):
            pids.append(int(entry.name))
    return pids


def sigterm_the_ranks_while_big_is_written(in_tmp: Path, script: Path | None, *more_options: str) -> tuple[str, str]:
    """Under mpirun -np 2 (with ``script`` as the ranks' program, if given), convert a.mrc and big.mrc; once
    big.mrc is being written and rank 0 has a.mrc's result, SIGTERM every rank (as a scheduler
    may); the run must end with status 130. Returns its stdout and stderr."""
    with mpirun(["--i", "a.mrc", "big.mrc", "--o", "out", "--j", "2", *SLOW_CODEC, *more_options], in_tmp,
                script=script) as process:
        wait_until_writing(process, in_tmp / "out", "big")
        wait_until_rank_0_has_the_first_result(process)
        for pid in rank_pids(process.pid, script.name) if script is not None else rank_pids(process.pid):
            os.kill(pid, signal.SIGTERM)
        stdout, stderr = process.output.finish(TIMEOUT_SECONDS)
    assert process.returncode == 130, stdout + stderr
    return stdout, stderr


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_sigterm_to_the_ranks_during_the_second_movie(in_tmp: Path) -> None:
    """As a batch system stops a job (SIGTERM to every process): rank 0 prints the summary,
    writes movies.star and the report of the finished movie, names the removed one, and
    mpirun passes the exit status 130 on."""
    first = small_movie(in_tmp / "a.mrc", 1)
    slow_movie(in_tmp / "big.mrc")
    stdout, stderr = sigterm_the_ranks_while_big_is_written(in_tmp, None, "--report", "report.json")
    assert (in_tmp / "out" / "a.tif").exists()
    assert_interrupted_after_the_first_movie(Path("out"), stdout, stderr, first, in_tmp / "report.json")


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_ctrl_c_on_mpirun_ends_cleanly(in_tmp: Path) -> None:
    """Ctrl-C on mpirun: Open MPI sends SIGTERM to the ranks, SIGKILL a fraction of a second
    later, and exits with its own status (1, not 130). The partial file is removed, the finished
    movie is intact, and whatever rank 0 managed to write in that time is right."""
    first = small_movie(in_tmp / "a.mrc", 1)
    slow_movie(in_tmp / "big.mrc")
    with mpirun(["--i", "a.mrc", "big.mrc", "--o", "out", "--j", "2", *SLOW_CODEC,
                 "--report", "report.json"], in_tmp) as process:
        wait_until_writing(process, in_tmp / "out", "big")
        wait_until_rank_0_has_the_first_result(process)
        process.send_signal(signal.SIGINT)
        process.output.finish(TIMEOUT_SECONDS)
    assert process.returncode != 0
    np.testing.assert_array_equal(read_tiff_frames(in_tmp / "out" / "a.tif"), first)
    assert [p.name for p in (in_tmp / "out").iterdir() if p.name.startswith("big")] == []
    if (in_tmp / "out" / "movies.star").exists():
        assert listed_in_movies_star(in_tmp / "out" / "movies.star") == ["out/a.tif"]
    if (in_tmp / "report.json").exists():
        document = json.loads((in_tmp / "report.json").read_text())
        assert document["state"] == "interrupted"
        assert [m["source"] for m in document["movies"]] == ["a.mrc"]


#: A driver for convert-to-tiff-mpi whose manifest line for a.tif is still being made when the
#: run is stopped: its writing waits until the rank got the signal, and then takes a second more
#: (as hashing a TIFF of a few GB does).
MANIFEST_LINE_STILL_BEING_MADE = """
import sys
import time

import cryotiff.manifest as manifest
import cryotiff.mpi as mpi

real_add = manifest.Manifest.add


def add(self, entry):
    if entry.output == "a.tif":
        while not mpi.STOP.is_set():
            time.sleep(0.01)
        time.sleep(1.0)  # the hashing, not a wait for anything
    return real_add(self, entry)


manifest.Manifest.add = add
sys.exit(mpi.main())
"""



@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_sigterm_to_the_ranks_keeps_the_manifest_line_of_a_movie_just_finished(in_tmp: Path) -> None:
    """A movie converted just before the signal has its manifest line made in the background
    (hashing the TIFF and the original): convert-to-tiff waits for it before it exits; rank 0
    used to end the job (MPI_Abort) at once, killing the rank whose line was not yet written,
    so that a.tif, complete and listed in movies.star, was missing from the manifest for good
    (--only_do_unfinished skips it; --verify_only without --i cannot check it)."""
    from cryotiff.manifest import read_manifest

    small_movie(in_tmp / "a.mrc", 1)
    slow_movie(in_tmp / "big.mrc")
    script = in_tmp / "driver.py"
    script.write_text(MANIFEST_LINE_STILL_BEING_MADE)
    stdout, stderr = sigterm_the_ranks_while_big_is_written(in_tmp, script, "--report", "report.json")
    assert list(read_manifest(Path("out"))) == ["a.tif"], stdout + stderr
    assert not list(Path("out").glob("*.tmp"))


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_sigterm_to_rank_0_only_stops_the_other_rank_cleanly(in_tmp: Path) -> None:
    """``kill`` of rank 0 alone while both ranks are writing a movie: rank 0 tells the other
    rank to stop, which removes its partial file as an interrupted rank does; rank 0 used to end
    the job at once, killing that rank in the middle of its movie, and said its partial file may
    remain (it did, until a rerun removed it). The rerun converts exactly the two movies."""
    movies = {name: slow_movie(in_tmp / f"{name}.mrc", seed, n_frames=12) for seed, name in enumerate(("big0", "big1"))}
    arguments = ["--i", "big0.mrc", "big1.mrc", "--o", "out", "--j", "2"]
    with mpirun([*arguments, *SLOW_CODEC], in_tmp) as process:
        for name in movies:
            wait_until_writing(process, in_tmp / "out", name)
        ranks = {mpi_rank_of(pid): pid for pid in rank_pids(process.pid)}
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[0], signal.SIGTERM)
        stdout, stderr = process.output.finish(TIMEOUT_SECONDS)
    assert process.returncode == 130, stdout + stderr
    for name in movies:
        assert f"{name}.mrc was being converted; its partial out/{name}.tif was removed" in stderr, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in (in_tmp / "out").iterdir() if p.name.startswith("big")) == []

    completed = subprocess.run([str(MPIRUN), "-np", "2", "--oversubscribe"]
                               + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
                               + [sys.executable, "-m", "cryotiff.mpi", *arguments, "--only_do_unfinished"],
                               cwd=in_tmp, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                               start_new_session=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Removed " not in completed.stdout  # no stale temporary file was left
    for name, frames in movies.items():
        np.testing.assert_array_equal(read_tiff_frames(in_tmp / "out" / f"{name}.tif"), frames)


#: As MANIFEST_LINE_STILL_BEING_MADE, with rank 0 converting nothing itself (it only hands out
#: the movies, in the order given), so that the signal finds its main thread waiting for the
#: service thread to end.
RANK_0_IDLE_AND_MANIFEST_LINE_STILL_BEING_MADE = MANIFEST_LINE_STILL_BEING_MADE.replace("""
manifest.Manifest.add = add
""", """
manifest.Manifest.add = add
real_take = mpi.WorkQueue.take
mpi.WorkQueue.take = lambda self, rank=0: None if rank == 0 else real_take(self, rank)
mpi.largest_first = lambda jobs, indices: list(indices)
""")


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_sigterm_while_rank_0_waits_for_the_others_keeps_their_manifest_lines(in_tmp: Path) -> None:
    """Rank 0, done with its own movies, waits for the service thread to end; a signal then
    used to leave that thread marked as ended (Python 3.11's Thread.join, interrupted, marks a
    running thread stopped), so rank 0 did not wait for the other rank's manifest line."""
    from cryotiff.manifest import read_manifest

    small_movie(in_tmp / "a.mrc", 1)
    slow_movie(in_tmp / "big.mrc", n_frames=12)
    script = in_tmp / "driver.py"
    script.write_text(RANK_0_IDLE_AND_MANIFEST_LINE_STILL_BEING_MADE)
    stdout, stderr = sigterm_the_ranks_while_big_is_written(in_tmp, script)
    assert "Movies per MPI rank: 0: 0 (0 B), 1: 1 " in stdout, stdout  # rank 0 converted nothing
    assert list(read_manifest(Path("out"))) == ["a.tif"], stdout + stderr
    assert not list(Path("out").glob("*.tmp"))


# --------------------------------------------------------------------------- the manifest's last lines


def interrupted_while_the_line_is_made(monkeypatch, then) -> None:
    """Make a.tif's manifest line interrupt the run (SIGTERM to the main thread, as a scheduler
    sends it) once the run waits for its lines at its end, then ``then(real_add, self, entry)``."""
    import threading

    import cryotiff.manifest as manifest

    real_add, real_wait = manifest.Manifest.add, manifest.Manifest.wait
    main_thread = threading.main_thread().ident
    waiting = threading.Event()

    def wait(self):
        waiting.set()
        return real_wait(self)

    def add(self, entry):
        if entry.output == "a.tif":
            assert waiting.wait(HANG_SECONDS)
            signal.pthread_kill(main_thread, signal.SIGTERM)
            return then(real_add, self, entry)
        return real_add(self, entry)

    monkeypatch.setattr(manifest.Manifest, "add", add)
    monkeypatch.setattr(manifest.Manifest, "wait", wait)


@pytest.fixture
def sigterm_handler_kept():
    """main() installs its SIGTERM handler in this process; put the previous one back after."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_an_interrupt_while_the_run_waits_for_its_manifest_lines_keeps_them(
        in_tmp: Path, monkeypatch, capsys, sigterm_handler_kept, signals: int) -> None:
    """The run has converted a.mrc and waits for its manifest line (hashing a TIFF of a few GB
    takes seconds) when SIGTERM comes (and again): the wait used to drop its list of lines
    still to come and end at once, so the run could end before a.tif's line was written (and
    never say so). It must end only once the line is written."""
    import threading
    import time

    from cryotiff.cli import main
    from cryotiff.manifest import read_manifest

    small_movie(in_tmp / "a.mrc", 1)
    main_thread = threading.main_thread().ident

    def slowly(real_add, self, entry):
        for _ in range(signals - 1):
            time.sleep(0.2)  # the hashing
            signal.pthread_kill(main_thread, signal.SIGTERM)
        time.sleep(1.0)  # the hashing, not a wait for anything
        return real_add(self, entry)

    interrupted_while_the_line_is_made(monkeypatch, slowly)
    status = main(["--i", "a.mrc", "--o", "out", "--report", "report.json"])
    assert list(read_manifest(Path("out"))) == ["a.tif"]  # written before main() returned
    captured = capsys.readouterr()
    assert status == 130, captured.err
    assert "Movies converted: 1, skipped: 0, failed: 0" in captured.out
    assert "Traceback" not in captured.err
    assert json.loads(Path("report.json").read_text())["state"] == "interrupted"


def test_an_interrupt_while_a_manifest_line_fails_still_names_the_output(
        in_tmp: Path, monkeypatch, capsys, sigterm_handler_kept) -> None:
    """As above, and a.tif's line then cannot be written (a full disk): the run says so, as it
    does without the interrupt (the warning used to be lost with the list of lines to come)."""
    from cryotiff.cli import main
    from cryotiff.errors import OutputError

    small_movie(in_tmp / "a.mrc", 1)

    def fails(real_add, self, entry):
        import time

        time.sleep(0.5)  # the hashing
        raise OutputError(f"{self.path}: cannot add to the manifest (No space left on device)")

    interrupted_while_the_line_is_made(monkeypatch, fails)
    status = main(["--i", "a.mrc", "--o", "out", "--report", "report.json"])
    captured = capsys.readouterr()
    assert status == 130, captured.err
    assert f"{Path('out/a.tif')} is complete but not in the manifest" in captured.err, captured.err
    assert "Not in the manifest: 1 output" in captured.out, captured.out
    assert json.loads(Path("report.json").read_text())["totals"]["not_in_manifest"] == 1


#: A driver for convert-to-tiff-mpi in which rank 0 converts nothing (it hands out the movies in
#: the order given) and the rank that converts a.mrc, once a.tif is in place and its manifest
#: line on its way, says so (the file a-done) and waits for the run to stop: then it either
#: stops before its result is returned (MOVIE_END = "interrupted"), as a signal just after the
#: rename does, or returns it, so that it reaches rank 0 after rank 0 has begun to stop
#: ("late").
A_FINISHES_AS_THE_RUN_STOPS = """
import os
import signal
import sys
import time
from pathlib import Path

import cryotiff.mpi as mpi

MOVIE_END = sys.argv.pop(1)
real_take = mpi.WorkQueue.take
mpi.WorkQueue.take = lambda self, rank=0: None if rank == 0 else real_take(self, rank)
mpi.largest_first = lambda jobs, indices: list(indices)
real_run_job = mpi.run_job


def run_job(job, *args):
    result = real_run_job(job, *args)
    if job.source.name == "a.mrc":
        if MOVIE_END == "killed":
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node would
        Path("a-done").touch()
        while not mpi._told_to_stop():
            time.sleep(0.01)
        if MOVIE_END == "interrupted":
            mpi.stop_if_asked()  # raises KeyboardInterrupt
    return result


mpi.run_job = run_job
sys.exit(mpi.main())
"""


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
@pytest.mark.parametrize("movie_end", ["interrupted", "late"])
def test_a_movie_finished_as_the_run_stops_is_in_that_runs_movies_star(in_tmp: Path, movie_end: str) -> None:
    """SIGTERM to rank 0 just as rank 1 has put a.tif in place: a.tif, complete and in the
    manifest, must be listed in the movies.star and the report of that run, and not be called
    removed; rank 0 used to drop a result that came after it began to stop (and knew nothing of
    one whose rank was stopped before it returned), and said that a.tif's partial file was
    removed."""
    from cryotiff.manifest import read_manifest

    first = small_movie(in_tmp / "a.mrc", 1)
    small_movie(in_tmp / "b.mrc", 2)
    script = in_tmp / "driver.py"
    script.write_text(A_FINISHES_AS_THE_RUN_STOPS)
    with mpirun([movie_end, "--i", "a.mrc", "b.mrc", "--o", "out", "--report", "report.json"], in_tmp,
                script=script) as process:
        wait_until(lambda: (in_tmp / "a-done").exists(), "a.tif written", process, TIMEOUT_SECONDS)
        ranks = {mpi_rank_of(pid): pid for pid in rank_pids(process.pid, script.name)}
        os.kill(ranks[0], signal.SIGTERM)
        stdout, stderr = process.output.finish(TIMEOUT_SECONDS)
    assert process.returncode == 130, stdout + stderr
    out = in_tmp / "out"
    np.testing.assert_array_equal(read_tiff_frames(out / "a.tif"), first)
    assert list(read_manifest(out)) == ["a.tif"], stdout + stderr
    assert listed_in_movies_star(out / "movies.star") == ["out/a.tif"], stdout + stderr
    assert "partial out/a.tif was removed" not in stderr, stderr
    assert "Movies converted: 1, skipped: 0, failed: 0" in stdout, stdout
    if movie_end == "interrupted":
        assert "out/a.tif was finished as the run stopped" in stdout, stdout
    document = json.loads((in_tmp / "report.json").read_text())
    assert [(m["source"], m["status"]) for m in document["movies"]] == [("a.mrc", "converted")]
    assert "Traceback" not in stderr


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_a_movie_finished_by_a_rank_killed_before_its_result_is_said_to_be_unlisted(in_tmp: Path) -> None:
    """The rank that converts a.mrc is killed (SIGKILL) once a.tif is in place, before it sends
    the result; mpirun ends the job: rank 0 used to say that a.tif's partial file was removed.
    It must say that a.tif is complete but not listed, and the rerun with
    --only_do_unfinished lists it."""
    first = small_movie(in_tmp / "a.mrc", 1)
    small_movie(in_tmp / "b.mrc", 2)
    script = in_tmp / "driver.py"
    script.write_text(A_FINISHES_AS_THE_RUN_STOPS)
    with mpirun(["killed", "--i", "a.mrc", "b.mrc", "--o", "out"], in_tmp, script=script) as process:
        stdout, stderr = process.output.finish(TIMEOUT_SECONDS)
    text = stdout + stderr
    assert process.returncode != 0, text
    np.testing.assert_array_equal(read_tiff_frames(in_tmp / "out" / "a.tif"), first)
    assert "partial out/a.tif was removed" not in text, text
    assert ("a.mrc was converted as the run stopped: out/a.tif is complete, but not listed in movies.star nor in "
            "the report; run the same command again with --only_do_unfinished to list it") in text, text
    assert "Traceback" not in text

    completed = subprocess.run([str(MPIRUN), "-np", "2", "--oversubscribe"]
                               + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
                               + [sys.executable, "-m", "cryotiff.mpi", "--i", "a.mrc", "b.mrc", "--o", "out",
                                  "--only_do_unfinished"],
                               cwd=in_tmp, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
                               start_new_session=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert listed_in_movies_star(in_tmp / "out" / "movies.star") == ["out/a.tif", "out/b.tif"]


def test_an_interrupt_just_after_the_rename_keeps_the_manifest_line_and_says_the_tiff_is_complete(
        in_tmp: Path, monkeypatch, capsys) -> None:
    """Ctrl-C just after a.tif is renamed into place, before the conversion hands it to the
    manifest: a.tif used to stay without a manifest line while the run said that its partial
    file was removed. Its line must be written, and the run must say that a.tif is complete."""
    import cryotiff.convert
    from cryotiff.cli import main
    from cryotiff.manifest import read_manifest

    first = small_movie(in_tmp / "a.mrc", 1)
    real_write_movie = cryotiff.convert.write_movie

    def write_movie_then_interrupted(*args, **kwargs):
        real_write_movie(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cryotiff.convert, "write_movie", write_movie_then_interrupted)
    assert main(["--i", "a.mrc", "--o", "out"]) == 130
    captured = capsys.readouterr()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), first)
    assert list(read_manifest(Path("out"))) == ["a.tif"]
    assert "partial out/a.tif was removed" not in captured.err, captured.err
    assert ("a.mrc was converted as the run stopped: out/a.tif is complete, but not listed in movies.star nor in "
            "the report; run the same command again with --only_do_unfinished to list it") in captured.err, captured.err
    assert "Traceback" not in captured.err
