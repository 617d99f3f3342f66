"""Adversarial cases found by an audit of bad inputs and bad environments: where ``--o`` lies
against the directories given to ``--i``, inputs that change or fail while being read, and ranks
of ``convert-to-tiff-mpi`` that die in the middle of a movie. Each case was found once by trying
to make cryotiff hang, lose, or misstate what it did; it stays here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import HANG_SECONDS, read_tiff_frames
from . import test_mpi
from .test_mpi import MPIRUN, run_mpi


def int16_movie(path: str | Path, seed: int, n_frames: int = 3, shape_yx: tuple[int, int] = (16, 20)) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(-3, 9, (n_frames, *shape_yx)).astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=1.0)
    return frames


def errors_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


# --------------------------------------------------------------------------- --o against a directory of --i


@pytest.mark.parametrize("output", ["./", ".", "..", "Movies/.."])
def test_a_directory_inside_the_output_directory_is_searched(in_tmp: Path, capsys, output: str) -> None:
    """``--i Movies --o ./``: every movie of Movies lies inside --o, and none of them is an output;
    the search used to leave them all out and say that the directory holds no movie."""
    (in_tmp / "job").mkdir()
    os.chdir(in_tmp / "job")  # restored by in_tmp's monkeypatch.chdir
    a = int16_movie("Movies/a.mrc", 1)
    b = int16_movie("Movies/sub/b.mrc", 2)
    assert main(["--i", "Movies", "--o", output]) == 0, capsys.readouterr()
    np.testing.assert_array_equal(read_tiff_frames(Path(output) / "Movies/a.tif"), a)
    np.testing.assert_array_equal(read_tiff_frames(Path(output) / "Movies/sub/b.tif"), b)


def test_the_output_directory_inside_a_searched_directory_is_left_out(in_tmp: Path, capsys) -> None:
    """``--i . --o Converted``, run twice: the second run does not take the first one's TIFFs
    for movies."""
    a = int16_movie("a.mrc", 1)
    for _ in range(2):
        assert main(["--i", ".", "--o", "Converted", "--only_do_unfinished"]) == 0
        captured = capsys.readouterr()
        assert "Converted/Converted" not in captured.out + captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("Converted/a.tif")), a)
    assert not Path("Converted/Converted").exists()


@pytest.mark.parametrize("pattern", ["**/*.tif", "./**/*.tif", "*/*.tif"])
def test_a_pattern_leaves_out_the_output_directory_inside_its_directory(in_tmp: Path, capsys, pattern: str) -> None:
    """``--i '**/*.tif' --o Converted``, run again: the first run's Converted/Movies/x.tif
    matched the pattern and was converted into Converted/Converted/Movies/x.tif, one level
    deeper on every run."""
    import tifffile

    frames = np.random.default_rng(4).integers(0, 300, (3, 16, 20)).astype(np.uint16)
    Path("Movies").mkdir()
    tifffile.imwrite("Movies/x.tif", frames[:, ::-1, :], photometric="minisblack", metadata=None)
    for run in range(2):
        assert main(["--i", pattern, "--o", "Converted", "--only_do_unfinished"]) == 0
        captured = capsys.readouterr()
        assert "Converted/Converted" not in captured.out + captured.err, captured
    assert "Movies converted: 0, skipped: 1, failed: 0" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("Converted/Movies/x.tif")), frames)
    assert not Path("Converted/Converted").exists()


# --------------------------------------------------------------------------- inputs that change or fail while read


def change_during_second_frame(monkeypatch, change) -> None:
    """Call ``change(path)`` when the second frame of an MRC movie is read."""
    from cryotiff.io import mrc

    real_read_frame = mrc.MrcMovie.read_frame

    def read_frame(self, index, out=None):
        if index == 1:
            change(self._path)
        return real_read_frame(self, index, out)

    monkeypatch.setattr(mrc.MrcMovie, "read_frame", read_frame)


def grow(path: Path) -> None:
    with open(path, "ab") as handle:  # as a movie still being written would
        handle.write(bytes(16 * 20 * 2))


def replace(path: Path) -> None:
    int16_movie(path.with_name("other.mrc"), 9)
    os.replace(path.with_name("other.mrc"), path)


def remove(path: Path) -> None:
    path.unlink()


def test_a_movie_that_grows_while_it_is_converted_is_not_kept(in_tmp: Path, capsys, monkeypatch) -> None:
    """A movie still being written when its conversion began: the TIFF would mix frames read
    before and after the change and name a file that is no longer what it was; it fails."""
    first = int16_movie("first.mrc", 1)
    int16_movie("moving.mrc", 2)
    last = int16_movie("last.mrc", 3)
    assert Path("moving.mrc").stat().st_size == 2944
    change_during_second_frame(monkeypatch, lambda path: grow(path) if path.name == "moving.mrc" else None)
    status = main(["--i", "first.mrc", "moving.mrc", "last.mrc", "--o", "out", "--j", "1"])
    captured = capsys.readouterr()
    assert status == 1
    assert errors_of(captured.err) == [
        "ERROR: moving.mrc: the file changed while it was being converted (its size went from 2944 to 3584 bytes); "
        "nothing was written. Convert it again once it is complete."], captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not Path("out/moving.tif").exists() and not list(Path("out").glob("*.tmp"))
    np.testing.assert_array_equal(read_tiff_frames(Path("out/first.tif")), first)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/last.tif")), last)
    assert "Movies converted: 2, skipped: 0, failed: 1" in captured.out


@pytest.mark.parametrize("change, what", [(replace, "another file took its name"), (remove, "it was removed")])
def test_a_movie_replaced_or_removed_while_it_is_converted_is_kept_with_a_warning(
    in_tmp: Path, capsys, monkeypatch, change, what: str
) -> None:
    """The reader goes on reading the file it opened, whose content did not change: the TIFF is
    a complete copy of it (for a removed movie, the only one left), kept with a warning."""
    frames = int16_movie("moving.mrc", 2)
    change_during_second_frame(monkeypatch, change)
    assert main(["--i", "moving.mrc", "--o", "out", "--j", "1"]) == 0
    captured = capsys.readouterr()
    assert (f"moving.mrc: {what} while it was being converted; out/moving.tif holds the movie that was "
            "there when its conversion began.") in captured.err, captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out/moving.tif")), frames)


def test_an_mrc_cut_short_while_it_is_converted_names_the_frame_from_one(in_tmp: Path, capsys, monkeypatch) -> None:
    int16_movie("cut.mrc", 2)
    change_during_second_frame(monkeypatch, lambda path: os.truncate(path, 1024 + 16 * 20 * 2 + 10))
    assert main(["--i", "cut.mrc", "--o", "out", "--j", "1"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == ["ERROR: cut.mrc: frame 2 is incomplete (10 of 640 bytes); the file was "
                                       "truncated after it was opened."], captured.err
    assert not list(Path("out").iterdir())


def test_an_input_output_error_is_not_called_damage(tmp_path: Path, monkeypatch) -> None:
    """EIO from the disk while a TIFF or EER movie is read: tifffile logs it as a corrupted tag
    list, which used to be reported as a damaged file."""
    import errno

    import tifffile

    from cryotiff.errors import InputError
    from cryotiff.io import eer as E
    from cryotiff.io.tiff import open_tiff
    from cryotiff.simulate import eer as S

    frames = np.random.default_rng(5).integers(0, 9, (3, 32, 40)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", frames, compression="zlib", photometric="minisblack", metadata=None)
    S.write_eer(tmp_path / "e.eer", S.random_events(np.random.default_rng(3), 2048, 2, 0.002), 2048, 65001)
    movie = open_tiff(tmp_path / "t.tif")

    def failing_read(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(tifffile.FileHandle, "read", failing_read)
    monkeypatch.setattr(tifffile.FileHandle, "read_segments", failing_read)
    try:
        with pytest.raises(InputError) as raised:
            movie.read_frame(1)
    finally:
        movie.close()
    assert str(raised.value) == f"{tmp_path / 't.tif'}: page 2: reading the file failed (Input/output error)", raised.value
    with pytest.raises(InputError) as raised:
        E.EerMovie(tmp_path / "e.eer")
    assert str(raised.value) == f"{tmp_path / 'e.eer'}: reading the file failed (Input/output error).", raised.value


# --------------------------------------------------------------------------- convert-to-tiff-mpi: a rank killed


KILL_RANK_ONE_MID_MOVIE = textwrap.dedent("""
    import os
    import signal
    import sys

    from mpi4py import MPI

    import cryotiff.convert as convert

    real_write_movie = convert.write_movie

    def write_movie(destination, layout, strips, *args, **kwargs):
        def strips_then_kill():
            for number, strip in enumerate(strips):
                if number == 2 and MPI.COMM_WORLD.rank == 1:
                    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node would
                yield strip
        return real_write_movie(destination, layout, strips_then_kill(), *args, **kwargs)

    convert.write_movie = write_movie
    import cryotiff.mpi as mpi

    sys.exit(mpi.main())
""")


#: The same, the rank ending with an error status of its own instead (a library's exit(1)). Not
#: under ``--with-ft ulfm``: Open MPI 5.0.11 then tells no rank, and mpirun waits for ever.
EXIT_RANK_ONE_MID_MOVIE = KILL_RANK_ONE_MID_MOVIE.replace("os.kill(os.getpid(), signal.SIGKILL)", "os._exit(3)")


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
@pytest.mark.parametrize("mpirun_options, driver", [([], KILL_RANK_ONE_MID_MOVIE),
                                                    (["--with-ft", "ulfm"], KILL_RANK_ONE_MID_MOVIE),
                                                    ([], EXIT_RANK_ONE_MID_MOVIE)],
                         ids=["mpirun", "mpirun-with-ft-ulfm", "mpirun-exit-status"])
def test_a_rank_killed_mid_movie_is_not_said_to_have_removed_its_partial_file(
    tmp_path: Path, monkeypatch, mpirun_options: list[str], driver: str
) -> None:
    """mpirun ends the job when a rank is killed (SIGKILL, or it exits with status 3) in the middle of a movie: its SIGTERM
    reaches rank 0 first, which used to report an interrupt that had removed that rank's partial
    file, though the file was still there. Now rank 0 says the partial file may remain (under
    ``mpirun --with-ft ulfm`` it also names the rank that died), no .tif of that movie exists, every .tif that exists is complete, and a rerun with --only_do_unfinished
    removes the partial file and converts the rest."""
    frames = {f"m{k}.mrc": int16_movie(tmp_path / f"m{k}.mrc", k, n_frames=6, shape_yx=(96, 80)) for k in range(4)}
    script = tmp_path / "driver.py"
    script.write_text(driver)
    plain_command = test_mpi.mpirun_command
    monkeypatch.setattr(test_mpi, "mpirun_command", lambda n_ranks: plain_command(n_ranks) + mpirun_options)
    completed = run_mpi(["--i", "m*.mrc", "--o", "out"], tmp_path, n_ranks=3, script=script)
    assert completed.returncode != 0
    text = completed.stdout + completed.stderr
    killed = re.findall(r"Processing (m\d\.mrc) into out/m\d\.tif", text)
    partial = sorted(p.name for p in (tmp_path / "out").glob("*.tmp"))
    assert len(partial) == 1, partial  # the killed rank's; the live ranks removed theirs
    movie = partial[0].split(".tif.")[0] + ".mrc"
    assert movie in killed
    assert f"{movie} was being converted; its partial out/{movie[:-4]}.tif was removed" not in text, text
    assert re.search(rf"{movie} was being converted by a rank that stopped before it could remove its partial "
                     rf"file; out/{movie[:-4]}\.tif was not written", text), text
    assert "Traceback" not in text
    if mpirun_options:  # MPI reports the dead rank before mpirun stops the job
        assert completed.returncode == 1
        assert re.search(rf"ERROR: MPI rank 1 \(on .+\) stopped while converting {movie}; every rank is stopped", text)
    for tif in (tmp_path / "out").glob("*.tif"):
        np.testing.assert_array_equal(read_tiff_frames(tif), frames[tif.stem + ".mrc"])
    assert not (tmp_path / "out" / f"{movie[:-4]}.tif").exists()

    monkeypatch.setattr(test_mpi, "mpirun_command", plain_command)
    rerun = run_mpi(["--i", "m*.mrc", "--o", "out", "--only_do_unfinished"], tmp_path, n_ranks=2)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not list((tmp_path / "out").glob("*.tmp"))
    for name, movie_frames in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / name.replace(".mrc", ".tif")), movie_frames)


KILL_RANK_ZERO_MID_MOVIE = KILL_RANK_ONE_MID_MOVIE.replace("MPI.COMM_WORLD.rank == 1", "MPI.COMM_WORLD.rank == 0")
EXIT_RANK_ZERO_MID_MOVIE = EXIT_RANK_ONE_MID_MOVIE.replace("MPI.COMM_WORLD.rank == 1", "MPI.COMM_WORLD.rank == 0")


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
@pytest.mark.parametrize("mpirun_options, driver", [([], KILL_RANK_ZERO_MID_MOVIE),
                                                    (["--with-ft", "ulfm"], KILL_RANK_ZERO_MID_MOVIE),
                                                    ([], EXIT_RANK_ZERO_MID_MOVIE)],
                         ids=["mpirun", "mpirun-with-ft-ulfm", "mpirun-exit-status"])
def test_rank_zero_killed_mid_movie_is_named_by_another_rank_which_removes_its_partial_file(
    tmp_path: Path, monkeypatch, mpirun_options: list[str], driver: str
) -> None:
    """Rank 0 (which hands out the movies, and converts too) killed in the middle of a movie: no
    rank hangs, and no cryotiff line named its movie (only its Processing line, and mpirun's
    message naming rank 0). Now another rank, stopped by mpirun or told by MPI, finds the partial
    file that carries rank 0's pid and whose lock is free, removes it and names the movie; the
    .tif files that exist are complete, no partial file is left, and a rerun with
    --only_do_unfinished converts the rest and lists every movie in movies.star."""
    frames = {f"m{k}.mrc": int16_movie(tmp_path / f"m{k}.mrc", k, n_frames=6, shape_yx=(96, 80)) for k in range(4)}
    script = tmp_path / "driver.py"
    script.write_text(driver)
    plain_command = test_mpi.mpirun_command
    monkeypatch.setattr(test_mpi, "mpirun_command", lambda n_ranks: plain_command(n_ranks) + mpirun_options)
    completed = run_mpi(["--i", "m*.mrc", "--o", "out"], tmp_path, n_ranks=3, script=script)
    assert completed.returncode != 0
    text = completed.stdout + completed.stderr
    named = re.findall(r"ERROR: MPI rank 0 \(on .+\) stopped while converting (m\d\.mrc): out/(m\d)\.tif was not "
                       r"written \(its partial file is removed\), and this run writes no movies.star nor --report; "
                       r"stopping every rank\.", text)
    assert len(named) == 1, text  # said once, by one of the other ranks
    movie, stem = named[0]
    assert movie == stem + ".mrc" and f"Processing {movie} into out/{stem}.tif" in text
    assert "Traceback" not in text
    assert not list((tmp_path / "out").glob("*.tmp")), text
    assert not (tmp_path / "out" / f"{stem}.tif").exists()
    assert not (tmp_path / "out" / "movies.star").exists()
    for tif in (tmp_path / "out").glob("*.tif"):
        np.testing.assert_array_equal(read_tiff_frames(tif), frames[tif.stem + ".mrc"])

    monkeypatch.setattr(test_mpi, "mpirun_command", plain_command)
    rerun = run_mpi(["--i", "m*.mrc", "--o", "out", "--only_do_unfinished"], tmp_path, n_ranks=2)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not list((tmp_path / "out").glob("*.tmp"))
    for name, movie_frames in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / name.replace(".mrc", ".tif")), movie_frames)
    listed = (tmp_path / "out" / "movies.star").read_text()
    assert all(f"out/m{k}.tif" in listed for k in range(4)), listed


def test_a_partial_file_of_rank_zero_is_taken_for_a_dead_rank_zero_only_when_no_one_holds_its_lock(tmp_path, monkeypatch):
    """What another rank says when it is stopped (dead_coordinator_line): rank 0's partial file
    (its pid in the name) whose lock is free is named and removed; one that rank 0 still holds
    (it is alive, and says itself what was stopped), an empty one (a live writer may not have
    locked it yet), and another process's are left alone and give no line."""
    import fcntl

    from cryotiff import mpi

    out = tmp_path / "out"
    out.mkdir()
    outputs = [(Path(f"m{k}.mrc"), out / f"m{k}.tif") for k in range(4)]
    # rank 0 on another node: its pid means nothing here, the lock and the size tell
    monkeypatch.setattr(mpi, "_COORDINATOR", {"host": "node1", "pid": 4711, "here": "node2", "outputs": outputs})
    held = out / "m0.tif.cryotiff-4711-0000000a.tmp"
    empty = out / "m1.tif.cryotiff-4711-0000000b.tmp"
    other = out / "m2.tif.cryotiff-47110-0000000c.tmp"  # another pid that begins with 4711
    left = out / "m3.tif.cryotiff-4711-0000000d.tmp"
    for path in (held, other):
        path.write_bytes(b"partial")
    empty.touch()
    with open(held, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        assert mpi.dead_coordinator_line() is None
        left.write_bytes(b"partial")
        line = mpi.dead_coordinator_line()
        assert line == ("ERROR: MPI rank 0 (on node1) stopped while converting m3.mrc: "
                        f"{out / 'm3.tif'} was not written (its partial file is removed), and this run writes no "
                        "movies.star nor --report; stopping every rank. Every .tif that exists is complete; rerun "
                        "the same command with --only_do_unfinished to convert the rest."), line
        assert mpi.dead_coordinator_line() is None  # said once
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (held, empty, other))

    # rank 0 on this node: only once its process is gone, and then also an empty partial file
    for path in out.iterdir():
        path.unlink()
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        partial = out / f"m1.tif.cryotiff-{alive.pid}-0000000e.tmp"
        partial.touch()
        monkeypatch.setattr(mpi, "_COORDINATOR", {"host": "node1", "pid": alive.pid, "here": "node1",
                                                  "outputs": outputs})
        assert mpi.dead_coordinator_line() is None and partial.exists()  # free lock, live rank 0
    finally:
        alive.stdin.close()
        alive.wait(HANG_SECONDS)
    assert mpi.dead_coordinator_line().startswith("ERROR: MPI rank 0 (on node1) stopped while converting m1.mrc: ")
    assert not partial.exists()
    monkeypatch.setattr(mpi, "_COORDINATOR", {})
    assert mpi.dead_coordinator_line() is None  # rank 0 itself, or a run that shares no movies


def test_rank_zero_killed_by_mpirun_waits_once_for_the_partial_files_counted_from_the_signal(tmp_path, monkeypatch):
    """Open MPI ends a job whose rank died with SIGCONT, SIGTERM 0.25 s later and SIGKILL 0.25 s
    after that. Rank 0 waited 0.1 s for the other ranks to stop, then 0.1 s more for their
    partial files to go, 0.2 s of its 0.25 s, and on a loaded machine (its main thread a little
    late to the signal) SIGKILL came before its line about the dead rank's partial file (the
    line test_a_rank_killed_mid_movie_is_not_said_to_have_removed_its_partial_file looks for).
    Both waits together now end PARTIAL_FILES_WAIT_SECONDS after the signal. On a clock of the
    test's own (no real time passes)."""
    import types

    from cryotiff import mpi
    from cryotiff.io.atomic import temporaries_of
    from cryotiff.jobs import Job

    clock = [1000.0]  # the SIGTERM comes at 1000.0; rank 0's main thread gets to it 0.02 s late

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    class NoRankAnswers:  # the served event: the rank that died never says STOPPED
        def wait(self, timeout: float) -> bool:
            sleep(timeout)
            return False

    monkeypatch.setattr(mpi, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    monkeypatch.setattr(mpi, "_SIGNALS", {"continued": 999.75, "interrupted": 1000.0})
    clock[0] = 1000.02
    jobs = [Job(Path("m0.mrc"), tmp_path / "m0.tif"), Job(Path("m1.mrc"), tmp_path / "m1.tif")]
    (tmp_path / "m1.tif.cryotiff-4711-9f3ab2c1.tmp").write_bytes(b"partial")  # rank 1's, which died
    assert temporaries_of(jobs[1].destination)
    stop = mpi.WorkStopped({1: 1}, served=NoRankAnswers(), request=mpi._StopRequest())
    assert mpi.being_killed()

    stop.wait_for_the_other_ranks()  # run_conversion's
    interruption = mpi.stopped_run(stop, jobs, n_movies=2, n_done=1)

    assert clock[0] <= 1000.0 + mpi.PARTIAL_FILES_WAIT_SECONDS + mpi.POLL_SECONDS, clock[0] - 1000.0
    assert interruption.left_behind == [jobs[1]] and interruption.removed == []
    assert any("m1.mrc was being converted by a rank that stopped before it could remove its partial file" in line
               for line in interruption.lines())


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_more_ranks_than_movies_and_every_movie_failing(tmp_path: Path) -> None:
    """Already right, kept as a guard: four ranks and one movie convert it and end with status 0;
    four ranks and two movies that both fail end with status 1, each failure said once, no file
    written."""
    frames = int16_movie(tmp_path / "one.mrc", 1)
    completed = run_mpi(["--i", "one.mrc", "--o", "out"], tmp_path, n_ranks=4)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/one.tif"), frames)
    for name in ("bad1.mrc", "bad2.mrc"):
        (tmp_path / name).write_bytes((tmp_path / "one.mrc").read_bytes()[:1500])
    completed = run_mpi(["--i", "bad1.mrc", "bad2.mrc", "--o", "bad"], tmp_path, n_ranks=4)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    errors = errors_of(completed.stderr)
    assert sorted(line.split(":")[1].strip() for line in errors) == ["bad1.mrc", "bad2.mrc"], errors
    assert all("the file is truncated" in line for line in errors), errors
    assert "Movies converted: 0, skipped: 0, failed: 2" in completed.stdout
    assert not [p for p in (tmp_path / "bad").rglob("*") if p.suffix in (".tif", ".tmp")]


def test_an_output_name_taken_by_a_directory_fails_that_movie_only(in_tmp: Path, capsys) -> None:
    """Already right, kept as a guard: out/a.tif is a directory; a.mrc fails naming it, the
    directory is left as it was, the other movie is converted."""
    int16_movie("a.mrc", 1)
    b = int16_movie("b.mrc", 2)
    (in_tmp / "out/a.tif").mkdir(parents=True)
    (in_tmp / "out/a.tif/keep").write_text("kept")
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == ["ERROR: out/a.tif: cannot rename the finished file (Is a directory)"], captured.err
    assert (in_tmp / "out/a.tif/keep").read_text() == "kept"
    assert not list((in_tmp / "out").glob("*.tmp"))
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)


def test_a_consumer_that_stops_early_waits_for_the_running_tasks() -> None:
    """--verify_only stops at the first page that differs and closes its TIFF readers; a page
    task still running then opened a reader of its own, which was never closed (a ResourceWarning
    that failed a later test)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from cryotiff.convert import ordered_map

    running: set[int] = set()
    lock = threading.Lock()

    def task(index: int) -> int:
        with lock:
            running.add(index)
        time.sleep(0.0 if index == 0 else 0.3)
        with lock:
            running.discard(index)
        return index

    with ThreadPoolExecutor(2) as executor:
        pages = ordered_map(task, 6, executor, 2)
        assert next(pages) == 0
        time.sleep(0.05)  # task 1 is running
        pages.close()
        with lock:
            assert running == set()


# --------------------------------------------------------------------------- --report at the name of another file


@pytest.mark.parametrize("report", ["a.mrc", "movies.lst", "out/b.tif", "gain.mrc"])
def test_a_report_is_never_written_over_another_file(in_tmp: Path, capsys, report: str) -> None:
    """``--report a.mrc`` replaced the movie a.mrc (an original, which users delete nothing but
    after converting) with the JSON report; so for the list file, the gain or a TIFF written by an
    earlier run. A file at the report's name that is not a cryotiff report is refused before any
    movie is converted."""
    int16_movie("a.mrc", 1)
    int16_movie("b.mrc", 2)
    Path("movies.lst").write_text("a.mrc\nb.mrc\n")
    assert main(["--i", "b.mrc", "--o", "out"]) == 0
    Path("gain.mrc").write_bytes(Path("a.mrc").read_bytes())
    before = Path(report).read_bytes()
    capsys.readouterr()
    status = main(["--i", "movies.lst", "--o", "out", "--report", report])
    captured = capsys.readouterr()
    assert status != 0
    assert errors_of(captured.err) == [f"ERROR: --report {report}: the file exists and is not a report of cryotiff; "
                                       "it is not replaced. Give another name."], captured.err
    assert Path(report).read_bytes() == before
    assert not Path("out/a.tif").exists()  # refused before any movie


def test_a_report_of_an_earlier_run_is_replaced(in_tmp: Path, capsys) -> None:
    a = int16_movie("a.mrc", 1)
    for _ in range(2):
        assert main(["--i", "a.mrc", "--o", "out", "--report", "report.json"]) == 0
    assert '"cryotiff_version"' in Path("report.json").read_text()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


def test_a_report_named_like_an_output_of_this_run_never_replaces_it(in_tmp: Path, capsys) -> None:
    """``--report out/a.tif``: no file there when the run starts, the run's own TIFF at the end."""
    a = int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "out", "--report", "out/a.tif"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == ["ERROR: --report out/a.tif: the file exists and is not a report of cryotiff; "
                                       "it is not replaced. Give another name."], captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


# --------------------------------------------------------------------------- --only_do_unfinished meeting a special file


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_named_pipe_or_directory_at_the_output_name_is_not_finished(tmp_path: Path, kind: str) -> None:
    """``--only_do_unfinished`` opened a named pipe at out/a.tif to see whether it was a complete
    TIFF, which blocks until a writer comes: the run hung (run here in a worker with a time
    limit). Such a file is not finished: the movie is converted again, saying why (a pipe is
    replaced by the TIFF; a directory makes that movie fail, as without the option)."""
    from .isolated import IsolatedRunner

    frames = int16_movie(tmp_path / "a.mrc", 1)
    b = int16_movie(tmp_path / "b.mrc", 2)
    (tmp_path / "out").mkdir()
    if kind == "fifo":
        os.mkfifo(tmp_path / "out/a.tif")
    else:
        (tmp_path / "out/a.tif").mkdir()
    with IsolatedRunner() as runner:
        outcome = runner.call("tests.isolated:run_cli", ["--i", "a.mrc", "b.mrc", "--o", "out", "--only_do_unfinished"],
                              str(tmp_path), timeout=HANG_SECONDS)
    assert outcome.kind == "ok", outcome.describe()
    status, out, err = eval(outcome.value)  # the worker returns repr((status, out, err))
    assert "Traceback" not in out + err
    what = "a named pipe (FIFO)" if kind == "fifo" else "a directory"
    assert f"out/a.tif: is {what}, not a TIFF file" in out + err, out + err
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/b.tif"), b)
    if kind == "fifo":
        assert status == 0, out + err
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/a.tif"), frames)
    else:
        assert status == 1 and "ERROR: out/a.tif: cannot rename the finished file (Is a directory)" in err, err


# --------------------------------------------------------------------------- names of one file


@pytest.mark.parametrize("given", [["Movies"], ["Movies/*.mrc"], ["Movies/**/*.mrc"]])
def test_every_hard_link_to_a_movie_gets_its_own_output(in_tmp: Path, capsys, given: list[str]) -> None:
    """Two hard links to one movie found by one pattern or directory: only the first name was
    converted, and nothing said so (a symbolic link beside the movie likewise). Each name is a
    movie a STAR file or a user may ask for by that name (RELION converts each name it is
    given): each gets its TIFF. The same entry reached again through a directory symlink is
    not another name."""
    a = int16_movie("Movies/a.mrc", 1)
    os.link("Movies/a.mrc", "Movies/b.mrc")
    Path("Movies/c.mrc").symlink_to("a.mrc")
    Path("Movies/loop").symlink_to(".")  # Movies/loop/a.mrc is Movies/a.mrc
    assert main(["--i", *given, "--o", "out"]) == 0
    out = capsys.readouterr().out
    assert "Movies converted: 3, skipped: 0, failed: 0" in out, out
    assert sorted(str(p) for p in Path("out").rglob("*.tif")) == [
        "out/Movies/a.tif", "out/Movies/b.tif", "out/Movies/c.tif"]
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(read_tiff_frames(Path(f"out/Movies/{name}.tif")), a)


# --------------------------------------------------------------------------- inputs that name nothing


def test_an_empty_directory_among_the_inputs_fails_alone(in_tmp: Path, capsys) -> None:
    """``--i Movies Empty``: the empty directory stopped the whole run before any movie. The
    movies of the other inputs are converted; the empty one is named once, and the exit status
    says that something failed."""
    a = int16_movie("Movies/a.mrc", 1)
    Path("Empty").mkdir()
    assert main(["--i", "Movies", "Empty", "Nowhere/*.mrc", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        "ERROR: Empty: the directory holds no .mrc, .mrcs, .tif, .tiff, .eer or .ecc movie",
        "ERROR: Nowhere/*.mrc: no file matches this pattern"], captured.err
    assert "Movies converted: 1, skipped: 0, failed: 2" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)


def test_a_star_file_beside_an_empty_directory_or_naming_one(in_tmp: Path, capsys) -> None:
    """A STAR file's movies are converted whether an empty directory is given beside it or named
    in it; the directory is named once, as a failure."""
    a = int16_movie("Movies/a.mrc", 1)
    Path("Empty").mkdir()
    Path("movies.star").write_text("data_movies\nloop_\n_rlnMicrographMovieName #1\nMovies/a.mrc\nEmpty\n")
    assert main(["--i", "movies.star", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert len(errors_of(captured.err)) == 1 and "Empty: is a directory" in captured.err, captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)
    Path("movies.star").write_text("data_movies\nloop_\n_rlnMicrographMovieName #1\nMovies/a.mrc\n")
    assert main(["--i", "movies.star", "Empty", "--o", "out2"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        "ERROR: Empty: the directory holds no .mrc, .mrcs, .tif, .tiff, .eer or .ecc movie"], captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out2/Movies/a.tif")), a)
    assert read_movie_names_of("out2/movies.star") == ["out2/Movies/a.tif"]


def read_movie_names_of(path: str) -> list[str]:
    from cryotiff.io.star import read_movie_names

    return read_movie_names(Path(path))


def test_inputs_that_all_name_nothing_stop_the_run_with_one_message(in_tmp: Path, capsys) -> None:
    Path("Empty").mkdir()
    assert main(["--i", "Empty", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        "ERROR: Empty: the directory holds no .mrc, .mrcs, .tif, .tiff, .eer or .ecc movie"], captured.err
    assert not Path("out/movies.star").exists()


# --------------------------------------------------------------------------- directories that cannot be searched


def refuse_to_list(monkeypatch, broken: dict[str, int]) -> None:
    """``os.scandir`` of a directory named in ``broken`` fails with that errno (as for a directory
    without read permission, which the tests, run as root, cannot make, or a stale mount)."""
    real_scandir = os.scandir

    def scandir(path="."):
        error = broken.get(os.path.normpath(os.fspath(path)))
        if error is not None:
            raise OSError(error, os.strerror(error), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_subdirectory_that_cannot_be_searched_is_named(in_tmp: Path, capsys, monkeypatch) -> None:
    """A directory below ``--i Movies`` that cannot be listed was left out without a word: its
    movies were silently never converted."""
    import errno

    a = int16_movie("Movies/a.mrc", 1)
    int16_movie("Movies/locked/b.mrc", 2)
    int16_movie("Other/c.mrc", 3)
    refuse_to_list(monkeypatch, {"Movies/locked": errno.EACCES, "Other": errno.ESTALE})
    assert main(["--i", "Movies", "Other/*.mrc", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        "ERROR: Movies/locked: cannot be searched (Permission denied); the movies in it are not converted",
        "ERROR: Other/*.mrc: Other cannot be searched (Stale file handle)"], captured.err
    assert "Movies converted: 1, skipped: 0, failed: 2" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)


# --------------------------------------------------------------------------- --watch and inputs that fail


def aged_movie(path: str, seed: int) -> np.ndarray:
    """A movie written an hour ago: ready at first sight."""
    frames = int16_movie(path, seed)
    os.utime(path, (os.path.getmtime(path) - 3600,) * 2)
    return frames


def watch_argv(*inputs: str) -> list[str]:
    return ["--i", *inputs, "--o", "out", "--watch", "--settle_seconds", "0", "--watch_timeout", "1"]


@pytest.mark.parametrize("broken, errno_name, message", [
    ("Movies/later", "EACCES", "Movies/later: cannot be searched (Permission denied); the movies in it are not "
                               "converted"),
    ("Movies", "ESTALE", "Movies: cannot be searched (Stale file handle)"),
])
def test_the_watch_reports_a_directory_it_cannot_search_once_and_goes_on(
        in_tmp: Path, capsys, monkeypatch, broken: str, errno_name: str, message: str) -> None:
    """``--watch`` took every error of the search for "nothing there yet": a directory that
    could not be listed for a while gave no message, and its movies no failure. It is named once
    (not at every look), the watch goes on and converts its movies once it can be listed again,
    and the exit status says that something failed."""
    import errno

    a = aged_movie("Movies/a.mrc", 1)
    b = aged_movie("Movies/later/b.mrc", 2)
    failing_looks = {"left": 6}
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.normpath(os.fspath(path)) == broken and failing_looks["left"] > 0:
            failing_looks["left"] -= 1
            code = getattr(errno, errno_name)
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main(watch_argv("Movies")) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [f"ERROR: {message}"], captured.err
    assert failing_looks["left"] == 0
    assert "Movies converted: 2, skipped: 0, failed: 1" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/later/b.tif")), b)


def test_the_watch_reports_an_input_directory_that_is_removed(in_tmp: Path, capsys, monkeypatch) -> None:
    """An input directory removed (or unmounted) during the watch became a "movie" of that name,
    waiting without a word and failing at the end as incomplete ("no such file"). It is named
    once as gone; its movies converted before stay; the exit status says that something failed."""
    import threading

    a = aged_movie("Movies/a.mrc", 1)
    c = aged_movie("Other/c.mrc", 3)
    threading.Timer(0.5, os.rename, ("Other", "Other.moved")).start()
    assert main(watch_argv("Movies", "Other")) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        "ERROR: Other: the directory is gone (removed, renamed or its file system unmounted); watching for it to "
        "come back"], captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Other/c.tif")), c)


def test_an_empty_directory_at_the_start_of_a_watch_is_no_failure(in_tmp: Path, capsys) -> None:
    """An empty directory is normal at the start of a collection: the watch waits for its movies.
    An input that named nothing during the whole watch gets one warning (a wrong path, say)."""
    import threading

    Path("Movies").mkdir()
    Path("Unused").mkdir()
    later = np.random.default_rng(5).integers(-3, 9, (3, 16, 20)).astype(np.int16)
    threading.Timer(0.3, write_mrc_movie, (Path("Movies/m.mrc"), later, 1)).start()
    assert main(watch_argv("Movies", "Unused", "Never/*.eer")) == 0
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [], captured.err
    assert [line for line in captured.err.splitlines() if line.startswith("WARNING")] == [
        "WARNING: Unused: named no movie during the whole watch",
        "WARNING: Never/*.eer: named no movie during the whole watch"], captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/m.tif")), later)


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_the_mpi_watch_reports_an_input_directory_that_is_removed(tmp_path: Path) -> None:
    """The same under a real ``mpirun``: rank 0's watcher names the directory once, the exit
    status is 1."""
    from .helpers import wait_until
    from .test_watch import finish, mpirun_prefix, start

    a = aged_movie(str(tmp_path / "Movies/a.mrc"), 1)
    c = aged_movie(str(tmp_path / "Other/c.mrc"), 3)
    process = start(mpirun_prefix() + [sys.executable, "-m", "cryotiff.mpi", "--i", "Movies", "Other", "--o", "out",
                                       "--watch", "--settle_seconds", "0", "--watch_timeout", "3"], tmp_path)
    wait_until(lambda: (tmp_path / "out/Other/c.tif").exists(), "out/Other/c.tif", process)
    os.rename(tmp_path / "Other", tmp_path / "Other.moved")
    stdout, stderr = finish(process)
    assert process.returncode == 1, (stdout, stderr)
    assert stderr.count("Other: the directory is gone") == 1, stderr
    assert "no such file" not in stdout + stderr
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/Movies/a.tif"), a)
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/Other/c.tif"), c)


# --------------------------------------------------------------------------- frames too large for the memory


def sparse_mrc(path: Path, ny: int, nx: int, n_frames: int) -> None:
    """An int16 MRC whose header announces frames of ``ny`` x ``nx`` pixels, its data a hole of
    that size (a sparse file: it takes no disk space)."""
    import struct

    int16_movie(path, 1, n_frames=1, shape_yx=(2, 2))
    with open(path, "r+b") as handle:
        header = bytearray(handle.read(1024))
        nsymbt = struct.unpack_from("<i", header, 92)[0]
        struct.pack_into("<iii", header, 0, nx, ny, n_frames)
        struct.pack_into("<iii", header, 28, nx, ny, n_frames)  # MX, MY, MZ: the pixel size stays CELLA / MX
        handle.seek(0)
        handle.write(header)
        handle.truncate(1024 + nsymbt)  # the frames: zeros, as the hole reads
        handle.truncate(1024 + nsymbt + n_frames * ny * nx * 2)


def refused_for_memory(directory: Path, inputs: list[str], refused: str, sample_type: str) -> None:
    """Convert ``inputs`` in ``directory`` in a process whose address space is limited to about
    768 MiB more than it has: the run fails, with one error refusing ``refused`` (frames of 40000
    x 40000 pixels of ``sample_type``) for its size, and nothing runs out of memory."""
    from .isolated import IsolatedRunner

    with IsolatedRunner() as runner:
        outcome = runner.call("tests.isolated:run_cli", ["--i", *inputs, "--o", "out"], str(directory), timeout=HANG_SECONDS)
    assert outcome.kind == "ok", outcome.describe()
    status, out, err = eval(outcome.value)
    assert status == 1, (out, err)
    assert "out of memory" not in err
    [error] = errors_of(err)
    assert re.fullmatch(
        rf"ERROR: {re.escape(refused)}: its frames of 40000 x 40000 pixels \({re.escape(sample_type)}\) take 3\.20 GB "
        r"each, more than the [\d.]+ [MG]B of memory left by this process's address-space limit \(ulimit -v\); "
        r"converting it needs about 12\.80 GB \(four frames at once at --j 1 or 2, one more for each further thread\)",
        error), error


def test_a_frame_too_large_for_the_memory_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A (sparse) MRC with 40000 x 40000 frames ended as "out of memory": clean, but it did not
    say why. The message names the file, the frame size and what its conversion needs, before
    the frame is allocated; a movie that fits beside it is converted."""
    sparse_mrc(tmp_path / "huge.mrc", 40000, 40000, 2)
    sparse_mrc(tmp_path / "large.mrc", 10000, 10000, 1)  # 200 MB frames: they fit, and are converted
    fits = int16_movie(tmp_path / "fits.mrc", 2, n_frames=2, shape_yx=(256, 256))
    refused_for_memory(tmp_path, ["huge.mrc", "large.mrc", "fits.mrc"], "huge.mrc", "MRC mode 1, int16")
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/fits.tif"), fits)
    large = read_tiff_frames(tmp_path / "out/large.tif")
    assert large.shape == (1, 10000, 10000) and large.dtype == np.int16 and not large.any()
    assert not (tmp_path / "out/huge.tif").exists()


def test_a_conversion_out_of_memory_says_how_large_the_frames_are(in_tmp: Path, capsys, monkeypatch) -> None:
    """A frame that fits but whose conversion still runs out of memory (it holds several frames at
    once) said only "out of memory"."""
    from cryotiff import jobs

    int16_movie("a.mrc", 1, shape_yx=(640, 480))

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(jobs, "convert_movie", out_of_memory)
    assert main(["--i", "a.mrc", "--o", "out", "--j", "2"]) == 1
    assert errors_of(capsys.readouterr().err) == [
        "ERROR: a.mrc: out of memory while converting its frames of 640 x 480 pixels (0.6 MB each); a conversion "
        "holds about 4 of them at once with --j 2 (2.5 MB)"]
    assert not Path("out/a.tif").exists()


@pytest.mark.parametrize("later", ["Later", "Later/*", "Later/**"])
def test_a_directory_or_pattern_that_gives_movies_only_later_in_the_watch(in_tmp: Path, capsys, later: str) -> None:
    """A directory not made yet when the watch starts names nothing yet (it is no movie of that
    name); a pattern, whatever its ending, is expanded again at every look."""
    import threading

    frames = np.random.default_rng(6).integers(-3, 9, (3, 16, 20)).astype(np.int16)

    def arrive() -> None:
        Path("Later").mkdir()
        write_mrc_movie(Path("Later/m.mrc"), frames, 1)

    threading.Timer(0.3, arrive).start()
    assert main(watch_argv(later)) == 0
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [], captured.err
    assert "Movies converted: 1, skipped: 0, failed: 0" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Later/m.tif")), frames)


def test_the_memory_room_takes_the_tightest_control_group_without_its_page_cache(tmp_path: Path, monkeypatch) -> None:
    """A batch job's control group (cgroup v2) limits its memory; the page cache it holds (movies
    read before) is reclaimed before memory is refused, so it does not count as used, and a
    parent group's tighter limit counts too."""
    from cryotiff.io import memory

    root = tmp_path / "cgroup"
    job = root / "slurm" / "job_7"
    job.mkdir(parents=True)
    (tmp_path / "self_cgroup").write_text("0::/slurm/job_7\n")
    (job / "memory.max").write_text("16000000000\n")
    (job / "memory.current").write_text("12000000000\n")
    (job / "memory.stat").write_text("anon 2000000000\nfile 10000000000\n")
    (root / "slurm" / "memory.max").write_text("max\n")
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "PROC_SELF_CGROUP", tmp_path / "self_cgroup")
    assert memory._cgroup_room() == memory.MemoryRoom(14_000_000_000, "this process's control group (memory.max)")
    (root / "slurm" / "memory.max").write_text("5000000000\n")
    (root / "slurm" / "memory.current").write_text("13000000000\n")
    (root / "slurm" / "memory.stat").write_text("anon 3000000000\nfile 10000000000\n")
    assert memory._cgroup_room().nbytes == 2_000_000_000
    (job / "memory.max").write_text("max\n")
    (root / "slurm" / "memory.max").write_text("max\n")
    assert memory._cgroup_room() is None


@pytest.mark.parametrize("pattern, locked", [
    ("Movies/*/Data/*.mrc", "Movies/GridSquare_2/Data"),
    ("Movies/*/*/*.mrc", "Movies/GridSquare_2"),
    ("Movies/**/*.mrc", "Movies/GridSquare_2/Data"),
])
def test_a_directory_a_pattern_cannot_search_is_named(in_tmp: Path, capsys, monkeypatch, pattern: str,
                                                       locked: str) -> None:
    """glob.glob passes over a directory it cannot list without a word: in an EPU layout
    (``Images-Disc1/GridSquare_*/Data/*.tiff``) a locked grid square's movies were silently
    never converted."""
    import errno

    a = int16_movie("Movies/GridSquare_1/Data/a.mrc", 1)
    int16_movie("Movies/GridSquare_2/Data/b.mrc", 2)
    refuse_to_list(monkeypatch, {locked: errno.EACCES})
    assert main(["--i", pattern, "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        f"ERROR: {pattern}: {locked} cannot be searched (Permission denied); the movies in it are not converted"
    ], captured.err
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/GridSquare_1/Data/a.tif")), a)


# --------------------------------------------------------------------------- directories without search permission


def refuse_to_search(monkeypatch, *locked: str) -> None:
    """Each of ``locked`` behaves as a directory of mode 0644 does for a user other than root (the tests,
    run as root, cannot make one): it can be listed, but nothing inside it can be looked at or
    opened (stat, lstat, scandir and open of any path through it fail with EACCES)."""
    import builtins
    import errno

    def through_locked(path) -> bool:
        if isinstance(path, int):
            return False
        text = os.fspath(path)
        text = text.decode() if isinstance(text, bytes) else text
        while text.startswith("./"):
            text = text[2:]
        return any(text.startswith(directory + "/") for directory in locked)

    def refusing(real):
        def call(path, *args, **kwargs):
            if through_locked(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    for name in ("stat", "lstat", "scandir", "open"):
        monkeypatch.setattr(os, name, refusing(getattr(os, name)))
    monkeypatch.setattr(builtins, "open", refusing(builtins.open))


@pytest.mark.parametrize("pattern, message", [
    ("Movies/GridSquare_2/Data/*.mrc", "Movies/GridSquare_2/Data/*.mrc: Movies/GridSquare_2 cannot be searched "
                                       "(Permission denied)"),
    ("Movies/GridSquare_2/*/*.mrc", "Movies/GridSquare_2/*/*.mrc: Movies/GridSquare_2 cannot be searched "
                                    "(Permission denied)"),
    ("Movies/*/Data/*.mrc", "Movies/*/Data/*.mrc: Movies/GridSquare_2 cannot be searched (Permission denied); "
                            "the movies in it are not converted"),
    ("Movies/*/*/*.mrc", "Movies/*/*/*.mrc: Movies/GridSquare_2 cannot be searched (Permission denied); the "
                         "movies in it are not converted"),
    ("Movies/**/*.mrc", "Movies/**/*.mrc: Movies/GridSquare_2 cannot be searched (Permission denied); the "
                        "movies in it are not converted"),
    ("Movies", "Movies/GridSquare_2: cannot be searched (Permission denied); the movies in it are not converted"),
])
def test_a_directory_without_search_permission_is_named_once(in_tmp: Path, capsys, monkeypatch, pattern: str,
                                                              message: str) -> None:
    """A directory of mode 0644 (listable, but nothing inside it can be looked at) that a
    pattern names literally (``Movies/GridSquare_2/Data/*.mrc``) or passes through
    (``Movies/*/Data/*.mrc``) was missed without a word, or taken for a pattern that matches
    nothing, or named once per movie in it as a file that cannot be read. It is one failure
    naming the directory; the other inputs still convert."""
    a = int16_movie("Movies/GridSquare_1/Data/a.mrc", 1)
    int16_movie("Movies/GridSquare_2/Data/b.mrc", 2)
    int16_movie("Movies/GridSquare_2/c.mrc", 3)
    int16_movie("Movies/GridSquare_2/Data/d.mrc", 4)
    refuse_to_search(monkeypatch, "Movies/GridSquare_2")
    inputs = [pattern] if not pattern.startswith("Movies/GridSquare_2") else [pattern, "Movies/GridSquare_1/Data"]
    assert main(["--i", *inputs, "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [f"ERROR: {message}"], captured.err
    assert "Movies converted: 1, skipped: 0, failed: 1" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/GridSquare_1/Data/a.tif")), a)


def test_the_watch_names_a_directory_without_search_permission_once(in_tmp: Path, capsys, monkeypatch) -> None:
    """Under ``--watch`` a pattern through a directory of mode 0644 named nothing, which the watch
    takes for "no movie there yet": its movies waited without a word. It is reported once; the
    other movies convert."""
    a = aged_movie("Movies/GridSquare_1/Data/a.mrc", 1)
    aged_movie("Movies/GridSquare_2/Data/b.mrc", 2)
    aged_movie("Other/GridSquare_9/Data/c.mrc", 3)
    refuse_to_search(monkeypatch, "Movies/GridSquare_2", "Other/GridSquare_9")
    assert main(watch_argv("Movies/*/Data/*.mrc", "Other/GridSquare_9/Data/*.mrc")) == 1
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [
        "ERROR: Movies/*/Data/*.mrc: Movies/GridSquare_2 cannot be searched (Permission denied); the movies in it "
        "are not converted",
        "ERROR: Other/GridSquare_9/Data/*.mrc: Other/GridSquare_9 cannot be searched (Permission denied)"], \
        captured.err
    assert "Movies converted: 1, skipped: 0, failed: 2" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/GridSquare_1/Data/a.tif")), a)


# --------------------------------------------------------------------------- --watch and STAR files being rewritten

STAR_HEADER = "data_movies\n\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\nMovies/a.mrc 1\n"


def test_a_star_file_read_while_it_is_written_gives_no_cut_off_name(in_tmp: Path) -> None:
    """A STAR file read by the watch while another program writes it could end in the middle of
    a movie name (``Movies/b``): that name then waited for a movie that never appears, and failed
    at the end of the watch. A read that ends in an incomplete line, or during which the file
    changed, is not used: the input gives the movies of its last complete read (none yet), and
    is read again at the next look."""
    from cryotiff.watch import InputSearch

    Path("movies.star").write_text(STAR_HEADER + "Movies/b")
    search = InputSearch(["movies.star"], Path("out"))
    assert search.look() == ([], [])
    with open("movies.star", "a") as star:
        star.write(".mrc 1\n")
    assert search.look() == (["Movies/a.mrc", "Movies/b.mrc"], [])
    with open("movies.star", "a") as star:
        star.write("Movies/c.mr")
    assert search.look() == (["Movies/a.mrc", "Movies/b.mrc"], [])  # the last complete read
    # Unchanged since the last look: a file that simply ends without a line break.
    assert search.look() == (["Movies/a.mrc", "Movies/b.mrc", "Movies/c.mr"], [])


def test_a_star_file_that_changes_while_it_is_read_is_read_again(in_tmp: Path, monkeypatch) -> None:
    from cryotiff import inputs
    from cryotiff.watch import InputSearch

    Path("movies.star").write_text(STAR_HEADER)
    real_read = inputs.read_movie_names
    writes = ["Movies/b.mrc 1\n"]

    def read_while_written(path):
        names = real_read(path)
        if writes:
            with open(path, "a") as star:
                star.write(writes.pop())
        return names

    monkeypatch.setattr(inputs, "read_movie_names", read_while_written)
    search = InputSearch(["movies.star"], Path("out"))
    assert search.look() == ([], [])
    assert search.look() == (["Movies/a.mrc", "Movies/b.mrc"], [])


def assert_the_watch_converts_both(capsys, a: np.ndarray, b: np.ndarray) -> None:
    """Watch ``movies.star``: Movies/a.mrc and Movies/b.mrc convert, exactly, and nothing fails."""
    assert main(watch_argv("movies.star")) == 0
    captured = capsys.readouterr()
    assert errors_of(captured.err) == [], captured.err
    assert "Movies converted: 2, skipped: 0, failed: 0" in captured.out, captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/b.tif")), b)


def test_the_watch_converts_what_a_star_file_written_in_two_steps_names(in_tmp: Path, capsys) -> None:
    """End to end: the STAR file's second step completes the name ``Movies/b`` the watch could
    read; both movies convert, and nothing fails."""
    import threading

    a = aged_movie("Movies/a.mrc", 1)
    b = aged_movie("Movies/b.mrc", 2)
    Path("movies.star").write_text(STAR_HEADER + "Movies/b")

    def second_step() -> None:
        with open("movies.star", "a") as star:
            star.write(".mrc 1\n")

    threading.Timer(0.3, second_step).start()
    assert_the_watch_converts_both(capsys, a, b)


def test_a_name_a_star_file_no_longer_gives_is_no_failure_of_the_watch(in_tmp: Path, capsys) -> None:
    """A name read from a STAR file (a cut-off one that a slow writer left for longer than a look,
    or a movie taken out of the list) waited until the end of the watch and failed there, though
    no input named it any more. A movie not converted yet that the inputs no longer name is
    forgotten; the others convert."""
    import threading

    a = aged_movie("Movies/a.mrc", 1)
    b = aged_movie("Movies/b.mrc", 2)
    Path("movies.star").write_text(STAR_HEADER + "Movies/b\n")

    def rewritten() -> None:
        Path("movies.new").write_text(STAR_HEADER + "Movies/b.mrc 1\n")
        os.replace("movies.new", "movies.star")

    threading.Timer(0.3, rewritten).start()
    assert_the_watch_converts_both(capsys, a, b)


# --------------------------------------------------------------------------- TIFF and EER pages too large for the memory


def tiff_claiming(path: Path, ny: int, nx: int, n_pages: int, data_nbytes: int = 60000) -> None:
    """A little-endian TIFF whose ``n_pages`` pages claim ``ny`` x ``nx`` uint16 pixels in one
    zstd strip each of ``data_nbytes`` zero bytes (enough for its size tags to be plausible; the
    strips are never decoded)."""
    import struct

    tags_per_page = 10
    ifd_nbytes = 2 + tags_per_page * 12 + 4
    data_offset = 8 + n_pages * ifd_nbytes
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for page in range(n_pages):
        tags = [(256, 4, nx), (257, 4, ny), (258, 3, 16), (259, 3, 50000), (262, 3, 1),
                (273, 4, data_offset + page * data_nbytes), (277, 3, 1), (278, 4, ny), (279, 4, data_nbytes),
                (339, 3, 1)]
        out += struct.pack("<H", len(tags))
        for code, kind, value in tags:
            out += struct.pack("<HHI", code, kind, 1) + struct.pack("<HH" if kind == 3 else "<I",
                                                                    *((value, 0) if kind == 3 else (value,)))
        out += struct.pack("<I", 8 + (page + 1) * ifd_nbytes if page < n_pages - 1 else 0)
    path.write_bytes(bytes(out) + bytes(n_pages * data_nbytes))


def test_a_tiff_whose_pages_do_not_fit_in_memory_is_refused_before_decoding(tmp_path: Path) -> None:
    """TIFF movies had no memory check (MRC movies had): pages that claim 40000 x 40000 pixels,
    plausible for their compressed data, were decoded into memory that is not there. They are
    refused with the file, the page size and what converting needs, before a page is decoded;
    a movie that fits beside it converts."""
    import tifffile

    tiff_claiming(tmp_path / "huge.tif", 40000, 40000, 2)
    fits = np.random.default_rng(5).integers(0, 900, (2, 256, 256)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "fits.tif", fits[:, ::-1, :], photometric="minisblack", metadata=None)
    refused_for_memory(tmp_path, ["huge.tif", "fits.tif"], "huge.tif", "uint16")
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/fits.tif"), fits)
    assert not (tmp_path / "out/huge.tif").exists()


def test_eer_pages_that_do_not_fit_in_memory_are_refused_before_rendering(in_tmp: Path, capsys,
                                                                          monkeypatch) -> None:
    """EER movies had no memory check: the pages of ``--eer_upsampling 2`` and 3 (16384 x 16384
    for a 4K detector) were allocated whatever the memory left. A page that does not fit is
    refused with the file, the page size and what converting needs; the same movie at a
    smaller upsampling, whose pages fit, converts."""
    from cryotiff.io import memory
    from cryotiff.simulate.eer import COMPRESSION_EER_7BIT, expected_render, random_events, write_eer

    events = random_events(np.random.default_rng(3), 2048, 4, 0.01)
    write_eer(Path("movie.eer"), events, 2048, COMPRESSION_EER_7BIT)
    room = memory.MemoryRoom(10_000_000, "the machine (available memory and free swap)")
    monkeypatch.setattr(memory, "memory_room", lambda: room)
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "4", "--eer_upsampling", "2"]) == 1
    assert errors_of(capsys.readouterr().err) == [
        "ERROR: movie.eer: its pages of 4096 x 4096 pixels (--eer_upsampling 2, uint8) take 16.8 MB each, more than "
        "the 10.0 MB of memory left by the machine (available memory and free swap); converting it needs about "
        "67.1 MB (four pages at once at --j 1 or 2, one more for each further thread)"]
    assert not Path("out/movie.tif").exists()
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "4", "--eer_upsampling", "1"]) == 0, \
        capsys.readouterr()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/movie.tif"))[0], expected_render(events, 2048, 1))


@pytest.mark.parametrize("where", ["encode_rows", "decodes_to"])
def test_an_encoder_out_of_memory_says_so_with_the_frame_size(in_tmp: Path, capsys, monkeypatch, where: str) -> None:
    """A frame that fits but whose encoder (or the check that decodes its strips again) then runs
    out of memory failed as "the lzw encoder failed (Unable to allocate ...)", or as a strip that
    "cannot be decoded again", which says the output was wrong. It says it ran out of memory,
    with the frame size."""
    from cryotiff import codecs

    int16_movie("a.mrc", 1, shape_yx=(640, 480))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 GiB for an array with shape (1073741824,) and data type uint8")

    monkeypatch.setattr(codecs.StripCodec, where, out_of_memory)
    assert main(["--i", "a.mrc", "--o", "out"]) == 1
    assert errors_of(capsys.readouterr().err) == [
        "ERROR: a.mrc: out of memory while converting its frames of 640 x 480 pixels (0.6 MB each); a conversion "
        "holds about 3 of them at once with --j 1 (1.8 MB)"]
    assert not Path("out/a.tif").exists()


def test_a_tiff_page_whose_decoding_runs_out_of_memory_is_not_called_damaged(in_tmp: Path, capsys,
                                                                             monkeypatch) -> None:
    """A TIFF page that fits but whose decoding ran out of memory failed as "page 1 cannot be
    decoded: not a readable TIFF file (Unable to allocate ...)", which says the movie is damaged."""
    import tifffile

    frames = np.random.default_rng(5).integers(0, 900, (2, 640, 480)).astype(np.uint16)
    tifffile.imwrite("a.tif", frames, photometric="minisblack", metadata=None)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 GiB for an array with shape (1073741824,) and data type uint8")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", out_of_memory)
    assert main(["--i", "a.tif", "--o", "out"]) == 1
    assert errors_of(capsys.readouterr().err) == [
        "ERROR: a.tif: out of memory while converting its frames of 640 x 480 pixels (0.6 MB each); a conversion "
        "holds about 3 of them at once with --j 1 (1.8 MB)"]
    assert not Path("out/a.tif").exists()


def test_a_rerun_whose_check_of_an_output_runs_out_of_memory_says_so(in_tmp: Path, capsys, monkeypatch) -> None:
    """``--only_do_unfinished`` makes the first and last pages of a movie again to compare them
    with its output; running out of memory there ended the run with a traceback. The movie is
    converted again, whose failure says it ran out of memory, with the frame size."""
    from cryotiff.io import mrc

    int16_movie("a.mrc", 1, shape_yx=(640, 480))
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    capsys.readouterr()

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 GiB for an array with shape (1073741824,) and data type uint8")

    monkeypatch.setattr(mrc.MrcMovie, "read_frame", out_of_memory)
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 1
    assert errors_of(capsys.readouterr().err) == [
        "ERROR: a.mrc: out of memory while converting its frames of 640 x 480 pixels (0.6 MB each); a conversion "
        "holds about 3 of them at once with --j 1 (1.8 MB)"]
