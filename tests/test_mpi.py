"""``convert-to-tiff-mpi`` under a real ``mpirun -np 2``.

``mpirun`` is the one next to ``sys.executable`` (``pip install .[mpi]`` puts Open MPI's there),
never one found on PATH, so the tests exercise the MPI that the package installs. Every run has a
timeout and runs in its own process group, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cryotiff import cli
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.write import write_mrc_movie

from .helpers import HANG_SECONDS, read_tiff_frames, start_process, temporary_files_of, wait_until

BIN_DIR = Path(sys.executable).parent  # not resolved: a venv's python is a symlink to the base one
MPIRUN = BIN_DIR / "mpirun"
#: Only a hang must fail (helpers.HANG_SECONDS): a shared 2-core machine can be slow.
TIMEOUT_SECONDS = HANG_SECONDS

pytestmark = pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def mpirun_command(n_ranks: int) -> list[str]:
    command = [str(MPIRUN), "-np", str(n_ranks), "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command


def run_mpi(arguments: list[str], cwd: Path, n_ranks: int = 2, script: Path | None = None) -> Completed:
    """``mpirun -np N python -m cryotiff.mpi ARGS`` (or ``python SCRIPT ARGS``) in ``cwd``."""
    program = [sys.executable, str(script)] if script else [sys.executable, "-m", "cryotiff.mpi"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        mpirun_command(n_ranks) + program + arguments,
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # mpirun and every rank it started
        stdout, stderr = process.communicate()
        pytest.fail(f"mpirun hung for {TIMEOUT_SECONDS} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return Completed(process.returncode, stdout, stderr)


def run_serial(arguments: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.chdir(cwd)
    return cli.main(arguments)


def processing_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("Processing ")]


def report_movies(path: Path) -> dict[str, dict]:
    return {entry["source"]: entry for entry in json.loads(path.read_text())["movies"]}


def write_k2(path: Path, n_frames: int, seed: int, shape_yx: tuple[int, int] = (192, 160)) -> np.ndarray:
    frames = counting_frames(n_frames, shape_yx=shape_yx, dtype=np.int8, seed=seed)
    write_mrc_movie(path, frames, 0, pixel_size_angstrom=1.06)
    return frames


# --------------------------------------------------------------------------- installation


def test_mpirun_is_installed_next_to_python() -> None:
    """``pip install .[mpi]`` gives an ``mpirun`` and the console script beside the interpreter."""
    assert os.access(MPIRUN, os.X_OK)
    assert (BIN_DIR / "convert-to-tiff-mpi").exists()


# --------------------------------------------------------------------------- conversion


def test_outputs_identical_to_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    movies = tmp_path / "Movies"
    movies.mkdir()
    expected = {}
    for k, n_frames in enumerate([3, 7, 2, 5]):
        expected[f"k2_{k}"] = write_k2(movies / f"k2_{k}.mrc", n_frames, seed=k)
    falcon = falcon_frames(4, shape_yx=(64, 96), seed=9)
    write_mrc_movie(movies / "falcon.mrc", falcon, 6)
    expected["falcon"] = falcon
    floats = np.random.default_rng(2).integers(0, 200, (3, 40, 56)).astype(np.float32)
    write_mrc_movie(movies / "float.mrc", floats, 2)
    expected["float"] = floats

    assert run_serial(["--i", "Movies", "--o", "serial", "--j", "2"], tmp_path, monkeypatch) == 0
    completed = run_mpi(["--i", "Movies", "--o", "mpi", "--j", "2"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert len(processing_lines(completed.stdout)) == len(expected)
    assert "Movies converted: 6, skipped: 0, failed: 0" in completed.stdout
    for name, frames in expected.items():
        mpi_tif = tmp_path / "mpi" / "Movies" / f"{name}.tif"
        serial_tif = tmp_path / "serial" / "Movies" / f"{name}.tif"
        np.testing.assert_array_equal(read_tiff_frames(mpi_tif), frames)
        np.testing.assert_array_equal(read_tiff_frames(mpi_tif), read_tiff_frames(serial_tif))
        assert mpi_tif.read_bytes() == serial_tif.read_bytes()
    # Warnings are printed once by rank 0, not once per rank.
    assert completed.stderr.count("WARNING: To effectively compress mode 2") <= 1
    assert (tmp_path / "mpi" / "movies.star").exists()


def test_finished_movies_are_skipped_before_hand_out_and_both_ranks_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELION issue #985: the movies already converted are exactly one rank's round-robin share
    (even list positions). RELION's round-robin would leave rank 0 idle; here both ranks convert
    and the finished movies are not handed out."""
    names = [f"m{k}.mrc" for k in range(8)]
    for k, name in enumerate(names):
        write_k2(tmp_path / name, 6, seed=k, shape_yx=(384, 320))
    finished = names[0::2]
    # A slow codec (about 0.2 s per movie), so that rank 0, which converts too, cannot convert
    # all four before rank 1 has asked for one on a loaded machine (test_two_hosts.py saw that).
    slow = ["--compression", "deflate", "--deflate_level", "12"]
    assert run_serial(["--i", *finished, "--o", "out", *slow], tmp_path, monkeypatch) == 0

    completed = run_mpi(["--i", *names, "--o", "out", *slow, "--only_do_unfinished", "--report", "report.json"],
                        tmp_path)
    assert completed.returncode == 0, completed.stderr
    lines = processing_lines(completed.stdout)
    assert sorted(lines) == sorted(f"Processing {name} into out/{Path(name).stem}.tif" for name in names[1::2])
    for name in finished:
        assert completed.stdout.count(f"Skipping already processed {name}") == 1
    movies = report_movies(tmp_path / "report.json")
    assert {movies[name]["status"] for name in finished} == {"skipped"}
    ranks = {movies[name]["details"]["mpi_rank"] for name in names[1::2]}
    assert ranks == {0, 1}, movies
    assert all(movies[name]["status"] == "converted" for name in names[1::2])


def test_uneven_movies_are_balanced(tmp_path: Path) -> None:
    """One long movie and several short ones: the long one is handed out first and the rank that
    gets it converts nothing else while the other rank converts the short ones."""
    # A slow codec, so that the long movie's time is its frames' and not the per-movie overhead
    # (with a fast encoder 150 frames took about as long as one): about 60 times the short ones.
    write_k2(tmp_path / "long.mrc", 60, seed=1, shape_yx=(512, 512))
    short = [f"short{k}.mrc" for k in range(5)]
    for k, name in enumerate(short):
        write_k2(tmp_path / name, 1, seed=10 + k, shape_yx=(512, 512))
    completed = run_mpi(["--i", *short, "long.mrc", "--o", "out", "--report", "report.json",
                         "--compression", "deflate", "--deflate_level", "12"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    movies = report_movies(tmp_path / "report.json")
    long_rank = movies["long.mrc"]["details"]["mpi_rank"]
    per_rank = {rank: [name for name, entry in movies.items() if entry["details"]["mpi_rank"] == rank] for rank in (0, 1)}
    assert per_rank[long_rank] == ["long.mrc"], per_rank
    assert sorted(per_rank[1 - long_rank]) == sorted(short)
    assert "Movies per MPI rank: " in completed.stdout


def test_corrupt_movie_is_reported_once_and_the_rest_complete(tmp_path: Path) -> None:
    names = [f"good{k}.mrc" for k in range(4)]
    for k, name in enumerate(names):
        write_k2(tmp_path / name, 3, seed=k)
    write_k2(tmp_path / "bad.mrc", 6, seed=7)
    with open(tmp_path / "bad.mrc", "r+b") as handle:  # truncated in the middle of frame 4
        handle.truncate(1024 + 3 * 192 * 160 + 100)
    completed = run_mpi(["--i", "bad.mrc", *names, "--o", "out"], tmp_path)
    assert completed.returncode == 1
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(error_lines) == 1 and "bad.mrc" in error_lines[0], completed.stderr
    assert "Movies converted: 4, skipped: 0, failed: 1" in completed.stdout
    assert completed.stdout.count("  bad.mrc") == 1  # the summary's list of failed movies
    for name in names:
        assert (tmp_path / "out" / name.replace(".mrc", ".tif")).exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [name.replace(".mrc", ".tif") for name in names] + ["cryotiff-manifest.jsonl", "movies.star"]
    )


def test_bug_in_one_movie_on_one_rank_fails_that_movie_only(tmp_path: Path) -> None:
    """An unexpected exception (not a CryotiffError) while converting one movie on rank 1."""
    for k in range(4):
        write_k2(tmp_path / f"m{k}.mrc", 3, seed=k)
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import sys
        from mpi4py import MPI
        import cryotiff.mpi as mpi

        real_run_job = mpi.run_job

        def run_job(job, *args):
            if MPI.COMM_WORLD.rank == 1:
                raise ZeroDivisionError("injected bug")
            return real_run_job(job, *args)

        mpi.run_job = run_job
        sys.exit(mpi.main())
    """))
    completed = run_mpi(["--i", "m*.mrc", "--o", "out", "--report", "report.json"], tmp_path, script=script)
    assert completed.returncode == 1
    movies = report_movies(tmp_path / "report.json")
    failed = [name for name, entry in movies.items() if entry["status"] == "failed"]
    converted = [name for name, entry in movies.items() if entry["status"] == "converted"]
    assert len(failed) + len(converted) == 4
    assert all("ZeroDivisionError: injected bug" in movies[name]["message"] for name in failed)
    assert all(movies[name]["details"]["mpi_rank"] == 0 for name in converted)
    assert all(movies[name]["details"]["mpi_rank"] == 1 for name in failed)


@pytest.mark.parametrize("rank", [0, 1])
def test_bug_outside_a_movie_aborts_every_rank(tmp_path: Path, rank: int) -> None:
    """An unexpected exception between collectives must end the job, not leave the other rank
    waiting for ever (the timeout of run_mpi turns a hang into a failure)."""
    write_k2(tmp_path / "m.mrc", 2, seed=0)
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import cryotiff.mpi as mpi

        real = mpi.find_finished

        def find_finished(comm, *args):
            if comm.rank == {rank}:
                raise RuntimeError("injected bug on rank {rank}")
            return real(comm, *args)

        mpi.find_finished = find_finished
        sys.exit(mpi.main())
    """))
    completed = run_mpi(["--i", "m.mrc", "--o", "out", "--only_do_unfinished"], tmp_path, script=script)
    assert completed.returncode != 0
    assert f"MPI rank {rank}: unexpected error" in completed.stderr
    assert f"injected bug on rank {rank}" in completed.stderr


def test_bug_in_rank_zero_service_thread_aborts(tmp_path: Path) -> None:
    for k in range(3):
        write_k2(tmp_path / f"m{k}.mrc", 2, seed=k)
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import sys
        import cryotiff.mpi as mpi

        class Broken(mpi.MpiReporter):
            def report_result(self, result):
                if result.details.get("mpi_rank") == 1:
                    raise RuntimeError("injected collect bug")
                super().report_result(result)

        mpi.MpiReporter = Broken
        sys.exit(mpi.main())
    """))
    completed = run_mpi(["--i", "m*.mrc", "--o", "out"], tmp_path, script=script)
    assert completed.returncode != 0
    assert "injected collect bug" in completed.stderr


# --------------------------------------------------------------------------- messages once


def test_option_errors_are_printed_once(tmp_path: Path) -> None:
    completed = run_mpi(["--i", "x.mrc", "--j", "0"], tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.count("ERROR: --j must be at least 1") == 1


def test_demo_is_refused_clearly(tmp_path: Path) -> None:
    completed = run_mpi(["--demo"], tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.count("--demo is not available in convert-to-tiff-mpi") == 1


def test_usage_error_is_printed_once(tmp_path: Path) -> None:
    completed = run_mpi(["--o", "out"], tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.count("the following arguments are required: --i") == 1


def test_missing_input_is_reported_once(tmp_path: Path) -> None:
    completed = run_mpi(["--i", "nothing*.mrc", "--o", "out"], tmp_path)
    assert completed.returncode != 0
    assert completed.stderr.count("nothing*.mrc: no file matches this pattern") == 1


# --------------------------------------------------------------------------- gain estimation


def estimate_in_order(movies: list[np.ndarray], start=None):
    from cryotiff import gain as G

    estimate = start.copy() if start is not None else G.GainEstimate.new(movies[0].shape[1:])
    for frames in movies:
        for frame in frames:
            estimate.update(frame)
    return estimate


@pytest.fixture
def gain_movies(tmp_path: Path) -> list[np.ndarray]:
    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(11)
    detector = make_detector((36, 44), rng, defect_fraction=0.01, cold_fraction=0.01)
    movies = [detector.movie(n_frames, rng, 1.45).frames for n_frames in (6, 9, 4, 7)]
    for k, frames in enumerate(movies):
        write_mrc_movie(tmp_path / f"g{k}.mrc", frames, 2)
    return movies


def assert_same_as_some_serial_order(out_dir: Path, movies: list[np.ndarray], start=None) -> None:
    """The gain map equals a serial run's bit for bit (every order gives the same one); each
    reliability counter equals that of a serial run in some order of the movies, and the serial
    one wherever the order does not matter."""
    import itertools

    from cryotiff import gain as G

    merged = G.GainEstimate.load(out_dir / G.GAIN_ESTIMATE_NAME)
    serial = [estimate_in_order([movies[i] for i in order], start)
              for order in itertools.permutations(range(len(movies)))]
    for estimate in serial:
        assert np.array_equal(merged.gain.view(np.uint32), estimate.gain.view(np.uint32))
    counters = np.stack([estimate.reliability for estimate in serial])
    assert (counters == merged.reliability).any(axis=0).all()
    order_free = (counters == counters[0]).all(axis=0)
    assert np.array_equal(merged.reliability[order_free], counters[0][order_free])
    assert order_free.any()


def test_mpi_gain_estimation_equals_serial(
    tmp_path: Path, gain_movies: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"g{k}.mrc" for k in range(len(gain_movies))]
    assert run_serial(["--estimate_gain", "--i", *names, "--o", "serial"], tmp_path, monkeypatch) == 0
    completed = run_mpi(["--estimate_gain", "--i", *names, "--o", "mpi"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    from cryotiff import gain as G

    serial = G.GainEstimate.load(tmp_path / "serial" / G.GAIN_ESTIMATE_NAME)
    mpi = G.GainEstimate.load(tmp_path / "mpi" / G.GAIN_ESTIMATE_NAME)
    assert np.array_equal(mpi.gain.view(np.uint32), serial.gain.view(np.uint32))
    assert_same_as_some_serial_order(tmp_path / "mpi", gain_movies)
    # Saved after every round of two movies (one per rank): after movies 2 and 4.
    assert completed.stdout.count("Updated ") == 2
    assert sorted(line for line in completed.stdout.splitlines() if line.startswith("Processing ")) == [
        f"Processing {name}" for name in names
    ]
    assert "Movies estimated: 4, failed: 0" in completed.stdout
    assert not list((tmp_path / "mpi").glob("*.tif"))


def test_mpi_gain_estimation_resumes_from_gain(
    tmp_path: Path, gain_movies: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--gain resumes from an earlier state (here the output directory's own files, which rank 0
    overwrites during the run), and a movie that is not float is reported once."""
    from cryotiff import gain as G

    assert run_serial(["--estimate_gain", "--i", "g0.mrc", "--o", "mpi"], tmp_path, monkeypatch) == 0
    start = G.GainEstimate.load(tmp_path / "mpi" / G.GAIN_ESTIMATE_NAME)
    write_k2(tmp_path / "counts.mrc", 2, seed=1)
    completed = run_mpi(["--estimate_gain", "--i", "g1.mrc", "g2.mrc", "counts.mrc", "g3.mrc", "--o", "mpi",
                         "--gain", "mpi/gain_estimate.bin", "--report", "estimate.json"], tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.count("counts.mrc") == 1, completed.stderr
    assert "Movies estimated: 3, failed: 1" in completed.stdout
    assert_same_as_some_serial_order(tmp_path / "mpi", gain_movies[1:], start)
    # The --report, written once by rank 0: every movie, the totals and the exit status.
    report = json.loads((tmp_path / "estimate.json").read_text())
    assert (report["state"], report["exit_status"], report["options"]["estimate_gain"]) == ("finished", 1, True)
    assert (report["totals"]["converted"], report["totals"]["failed"]) == (3, 1)
    statuses = {Path(movie["source"]).name: movie["status"] for movie in report["movies"]}
    assert statuses == {"g1.mrc": "converted", "g2.mrc": "converted", "counts.mrc": "failed", "g3.mrc": "converted"}
    assert {movie["details"]["mpi_rank"] for movie in report["movies"]} <= {0, 1}


# --------------------------------------------------------------------------- pieces (no MPI needed)


def test_work_queue_hands_out_each_index_once_across_threads() -> None:
    import threading

    from cryotiff.mpi import WorkQueue

    queue = WorkQueue(range(5000))
    taken: list[list[int]] = [[] for _ in range(4)]

    def drain(mine: list[int]) -> None:
        while (index := queue.take()) is not None:
            mine.append(index)

    threads = [threading.Thread(target=drain, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(index for mine in taken for index in mine) == list(range(5000))
    assert queue.take() is None


def test_largest_movies_are_handed_out_first(tmp_path: Path) -> None:
    from cryotiff.jobs import Job
    from cryotiff.mpi import largest_first

    sizes = {"a": 10, "b": 300, "c": 10, "d": 50}
    jobs = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        jobs.append(Job(tmp_path / name, tmp_path / f"{name}.tif"))
    jobs.append(Job(tmp_path / "missing", tmp_path / "missing.tif"))
    assert largest_first(jobs, range(5)) == [1, 3, 0, 2, 4]  # equal sizes keep the list order


def test_rank_line_counts_movies_per_rank() -> None:
    from cryotiff.convert import MovieResult
    from cryotiff.mpi import format_rank_line

    results = [MovieResult(Path(f"m{k}.mrc"), None, "converted", input_bytes=1000, details={"mpi_rank": k % 2})
               for k in range(3)]
    results.append(MovieResult(Path("s.mrc"), None, "skipped"))
    assert format_rank_line(results, 2) == "Movies per MPI rank: 0: 2 (2.00 kB), 1: 1 (1.00 kB)"


def test_pipeline_control_is_refused_even_without_a_directory() -> None:
    from cryotiff import cli
    from cryotiff.mpi import mpi_problem

    for argv in (["--i", "x.mrc", "--pipeline_control", "job/"], ["--i", "x.mrc", "--demo"]):
        args = cli.build_parser().parse_args(argv)
        assert "not" in mpi_problem(args, cli.options_from_args(args))
    args = cli.build_parser().parse_args(["--i", "x.mrc"])
    assert mpi_problem(args, cli.options_from_args(args)) is None


def test_dry_run_runs_once(tmp_path: Path) -> None:
    for k in range(2):
        write_k2(tmp_path / f"m{k}.mrc", 2, seed=k)
    completed = run_mpi(["--i", "m*.mrc", "--o", "out", "--dry_run"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("m0.mrc") == 1, completed.stdout
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.tif"))


def test_ctrl_c_on_mpirun_leaves_no_partial_file(tmp_path: Path) -> None:
    """mpirun turns Ctrl-C into SIGTERM for the ranks; each removes the .tif.tmp it was writing."""
    for k in range(2):
        write_k2(tmp_path / f"m{k}.mrc", 40, seed=k, shape_yx=(1024, 1024))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    process = start_process(
        mpirun_command(2) + [sys.executable, "-m", "cryotiff.mpi", "--i", "m0.mrc", "m1.mrc", "--o", "out",
                             "--compression", "deflate", "--deflate_level", "12"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        started = [process.stdout.readline() for _ in range(2)]  # both ranks are converting a movie
        assert all(line.startswith("Processing ") for line in started), started
        wait_until(lambda: all(temporary_files_of(tmp_path / "out" / f"m{k}.tif") for k in range(2)),
                   "both partial files", process, TIMEOUT_SECONDS)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert not list((tmp_path / "out").rglob("*.tif"))


class _RecordingRaw(io.RawIOBase):
    """A raw stream that keeps every write it is given, as the pipe to Open MPI would see them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.writes.append(bytes(data))
        return len(data)


def test_each_line_of_a_rank_is_one_write_also_when_python_is_unbuffered() -> None:
    """With ``PYTHONUNBUFFERED`` (or ``-u``) print's text and newline are two writes, and under
    mpirun another rank's line could come between them; the ranks' streams are set so that every
    line is one write."""
    from cryotiff.mpi import whole_lines_per_write

    unbuffered = _RecordingRaw()
    stream = io.TextIOWrapper(unbuffered, encoding="utf-8", write_through=True)  # what -u makes
    print("Processing m7.mrc into out/m7.tif", file=stream, flush=True)
    assert unbuffered.writes == [b"Processing m7.mrc into out/m7.tif", b"\n"]  # the race this prevents

    raw = _RecordingRaw()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    whole_lines_per_write(stream)
    print("Processing m7.mrc into out/m7.tif", file=stream, flush=True)
    print("Progress: 1 of 8 movies", file=stream)
    print("ERROR: m8.mrc: damaged", file=stream, flush=True)
    assert raw.writes == [b"Processing m7.mrc into out/m7.tif\n", b"Progress: 1 of 8 movies\n",
                          b"ERROR: m8.mrc: damaged\n"]
    whole_lines_per_write(io.StringIO())  # a test's capture: left as it is


def test_two_mpi_jobs_into_one_output_directory_keep_every_manifest_line(tmp_path: Path) -> None:
    """Already right, kept as a guard: two ``mpirun -np 2`` jobs at once into the same ``--o``
    (four ranks appending to one manifest, under its lock), each with its own movies and one
    movie both convert: every manifest line is whole, none is lost (one per TIFF written, two for
    the shared movie), and ``movies.star`` lists every movie (merged under its own lock)."""
    from cryotiff.io.star import read_movie_names
    from cryotiff.manifest import MANIFEST_NAME, ManifestEntry, read_manifest

    frames = {}
    for job in "ab":
        for k in range(5):
            frames[f"{job}{k}"] = write_k2(tmp_path / f"{job}{k}.mrc", 3, seed=10 * (job == "b") + k, shape_yx=(64, 48))
    frames["shared"] = write_k2(tmp_path / "shared.mrc", 3, seed=99, shape_yx=(64, 48))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    processes = [subprocess.Popen(mpirun_command(2) + [sys.executable, "-m", "cryotiff.mpi", "--i", f"{job}*.mrc",
                                                       "shared.mrc", "--o", "out"],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True) for job in "ab"]
    try:
        outputs = [process.communicate(timeout=TIMEOUT_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stdout + stderr
    lines = (tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()
    assert all(ManifestEntry.from_line(line) is not None for line in lines), lines
    assert sorted(ManifestEntry.from_line(line).output for line in lines) == sorted(
        [f"{name}.tif" for name in frames] + ["shared.tif"])
    assert sorted(read_manifest(tmp_path / "out")) == sorted(f"{name}.tif" for name in frames)
    assert sorted(read_movie_names(tmp_path / "out" / "movies.star")) == sorted(f"out/{name}.tif" for name in frames)
    for name, movie_frames in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / f"{name}.tif"), movie_frames)


def test_bad_movies_of_each_kind_named_once_under_three_ranks(tmp_path: Path) -> None:
    """Already right, kept as a guard: a STAR file naming a named pipe (FIFO), a directory, a
    truncated movie and a header of absurd size among good movies, under -np 3: each bad one is
    named once (no hang on the pipe), the good ones are converted, the exit status is 1."""
    import struct

    good = {f"good{k}": write_k2(tmp_path / f"good{k}.mrc", 2, seed=k, shape_yx=(64, 48)) for k in range(3)}
    os.mkfifo(tmp_path / "pipe.mrc")
    (tmp_path / "folder.mrc").mkdir()
    write_k2(tmp_path / "cut.mrc", 4, seed=5, shape_yx=(64, 48))
    os.truncate(tmp_path / "cut.mrc", 1024 + 64 * 48 + 10)
    write_k2(tmp_path / "absurd.mrc", 1, seed=6, shape_yx=(64, 48))
    with open(tmp_path / "absurd.mrc", "r+b") as handle:  # NX, NY of 200000: far beyond any detector
        handle.write(struct.pack("<2i", 200000, 200000))
    bad = ["pipe.mrc", "folder.mrc", "cut.mrc", "absurd.mrc"]
    names = [*bad[:2], "good0.mrc", *bad[2:], "good1.mrc", "good2.mrc"]
    (tmp_path / "movies.star").write_text("data_movies\nloop_\n_rlnMicrographMovieName #1\n" + "\n".join(names) + "\n")
    completed = run_mpi(["--i", "movies.star", "--o", "out"], tmp_path, n_ranks=3)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("ERROR:")]
    assert sorted(line.split(":")[1].strip() for line in errors) == sorted(bad), completed.stderr
    assert "Traceback" not in completed.stderr
    assert "Movies converted: 3, skipped: 0, failed: 4" in completed.stdout
    for name, frames in good.items():
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / f"{name}.tif"), frames)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{name}.tif" for name in good] + ["cryotiff-manifest.jsonl", "movies.star"])


def test_a_manifest_line_that_cannot_be_written_makes_the_exit_status_1(tmp_path: Path) -> None:
    """As in convert-to-tiff: a converted movie whose manifest line cannot be written (a full
    disk) is named by a WARNING, counted in the summary, and the exit status is 1, whichever
    rank converted it (the ranks' manifest lines are written after their results reach rank 0)."""
    from cryotiff.manifest import read_manifest

    frames = {name: write_k2(tmp_path / f"{name}.mrc", 2, seed=k, shape_yx=(64, 48)) for k, name in enumerate("abcd")}
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import errno
        import os
        import sys

        import cryotiff.manifest as manifest
        import cryotiff.mpi as mpi

        real_append = manifest._append_locked

        def append(path, line):
            if '"output":"b.tif"' in line or '"output":"c.tif"' in line:
                raise manifest.OutputError(f"{path}: cannot add to the manifest ({os.strerror(errno.ENOSPC)})")
            return real_append(path, line)

        manifest._append_locked = append
        sys.exit(mpi.main())
    """))
    completed = run_mpi(["--i", "a.mrc", "b.mrc", "c.mrc", "d.mrc", "--o", "out", "--report", "report.json"],
                        tmp_path, script=script)
    text = completed.stdout + completed.stderr
    assert completed.returncode == 1, text
    for name in "bc":
        assert text.count(f"out/{name}.tif is complete but not in the manifest") == 1, text
    assert "Not in the manifest: 2 outputs" in completed.stdout, completed.stdout
    assert json.loads((tmp_path / "report.json").read_text())["exit_status"] == 1
    assert sorted(read_manifest(tmp_path / "out")) == ["a.tif", "d.tif"]
    for name, movie_frames in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / f"{name}.tif"), movie_frames)
