"""convert-to-tiff-mpi writes rank 0's files (movies.star, the --report, gain-reference.mrc) into
their directory as the run checked it, as convert-to-tiff does (cli.CheckedOutputs,
io.atomic.CheckedDirectory): a directory replaced by a symbolic link after the check gets
nothing, and one message names each file not written. Its --watch warns about a list that cannot
be written once per failing spell, says when it is written again and whether it is complete at
the end (one cli.WatchRecords for the whole watch). Run under a real mpirun."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cryotiff import cli
from cryotiff.io.star import read_movie_names

from .helpers import read_tiff_frames
from .test_mpi import MPIRUN, run_mpi, write_k2

pytestmark = pytest.mark.skipif(not MPIRUN.exists(), reason="no mpirun (pip install .[mpi])")

REPLACED = "the output directory was replaced (by a symbolic link or another directory) since the run checked it"

#: Python run by the driver scripts: ``swap(directory)`` moves it aside (``<directory>.checked``)
#: and puts a symbolic link to ``elsewhere`` at its name.
SWAP = textwrap.dedent("""
    import os
    import sys

    import cryotiff.cli as cli
    import cryotiff.jobs as jobs
    import cryotiff.mpi as mpi

    def swap(directory):
        os.makedirs("elsewhere", exist_ok=True)
        os.rename(directory, directory + ".checked")
        os.symlink(os.path.abspath("elsewhere"), directory)
""")


def driver(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "driver.py"
    script.write_text(SWAP + textwrap.dedent(body) + "\nsys.exit(mpi.main())\n")
    return script


def everything_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_o_replaced_by_a_link_after_the_movies_gets_no_movies_star_nor_report_through_it(tmp_path: Path) -> None:
    frames = {name: write_k2(tmp_path / f"{name}.mrc", 2, seed=k, shape_yx=(64, 48)) for k, name in enumerate("ab")}
    script = driver(tmp_path, """
        real_report_run = mpi.report_run

        def report_run(*args, **kwargs):  # rank 0, every rank's TIFFs and manifest lines written
            swap("out")
            return real_report_run(*args, **kwargs)

        mpi.report_run = report_run
    """)
    completed = run_mpi(["--i", "a.mrc", "b.mrc", "--o", "out", "--report", "out/report.json"], tmp_path,
                        script=script)
    text = completed.stdout + completed.stderr
    assert completed.returncode == 1, text
    assert "Traceback" not in text
    assert everything_in(tmp_path / "elsewhere") == []  # no list, no lock, no report through the link
    assert text.count("out/movies.star: not written: out: " + REPLACED) == 1, text
    assert text.count("out/report.json: not written: out: " + REPLACED) == 1, text
    checked = tmp_path / "out.checked"
    assert not (checked / "movies.star").exists() and not (checked / "report.json").exists()
    for name, movie_frames in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(checked / f"{name}.tif"), movie_frames)


def test_a_report_outside_o_is_not_written_through_a_link_that_replaced_its_directory(tmp_path: Path) -> None:
    write_k2(tmp_path / "a.mrc", 2, seed=1, shape_yx=(64, 48))
    (tmp_path / "reports").mkdir()
    script = driver(tmp_path, """
        real_report_run = mpi.report_run

        def report_run(*args, **kwargs):
            swap("reports")
            return real_report_run(*args, **kwargs)

        mpi.report_run = report_run
    """)
    completed = run_mpi(["--i", "a.mrc", "--o", "out", "--report", "reports/run.json"], tmp_path, script=script)
    text = completed.stdout + completed.stderr
    assert completed.returncode == 1, text
    assert "Traceback" not in text
    assert text.count("reports/run.json: not written: reports: " + REPLACED) == 1, text
    assert everything_in(tmp_path / "elsewhere") == [] and everything_in(tmp_path / "reports.checked") == []
    assert read_movie_names(tmp_path / "out/movies.star") == ["out/a.tif"]  # --o itself was not replaced


def test_the_gain_reference_is_not_written_through_a_link_that_replaced_o(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gain-reference.mrc, written by rank 0 before any movie, goes into --o as rank 0 checked
    it when it made it (jobs.prepare's output_directory)."""
    from .test_adversarial_outputs import gain_normalised_movie

    monkeypatch.chdir(tmp_path)
    gain_normalised_movie("m.mrc")
    assert cli.main(["--i", "m.mrc", "--o", "est", "--estimate_gain"]) == 0
    script = driver(tmp_path, """
        real_prepare_to_write = jobs._prepare_to_write

        def prepare_to_write(*args, **kwargs):  # rank 0 only (write_files=True)
            real_prepare_to_write(*args, **kwargs)
            swap("out")

        jobs._prepare_to_write = prepare_to_write
    """)
    completed = run_mpi(["--i", "m.mrc", "--o", "out", "--gain", "est/gain_estimate.bin"], tmp_path, script=script)
    text = completed.stdout + completed.stderr
    assert completed.returncode != 0, text
    assert "Traceback" not in text
    assert text.count("out/gain-reference.mrc: not written: out: " + REPLACED) == 1, text
    assert everything_in(tmp_path / "elsewhere") == []
    assert everything_in(tmp_path / "out.checked") == []


def test_an_estimate_report_is_not_written_through_a_link_that_replaced_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_adversarial_outputs import gain_normalised_movie

    monkeypatch.chdir(tmp_path)
    gain_normalised_movie("m.mrc")
    (tmp_path / "reports").mkdir()
    script = driver(tmp_path, """
        real_finish_estimation = mpi.finish_estimation

        def finish_estimation(*args, **kwargs):
            swap("reports")
            return real_finish_estimation(*args, **kwargs)

        mpi.finish_estimation = finish_estimation
    """)
    completed = run_mpi(["--i", "m.mrc", "--o", "est", "--estimate_gain", "--report", "reports/run.json"], tmp_path,
                        script=script)
    text = completed.stdout + completed.stderr
    assert completed.returncode == 1, text
    assert "Traceback" not in text
    assert text.count("reports/run.json: not written: reports: " + REPLACED) == 1, text
    assert everything_in(tmp_path / "elsewhere") == [] and everything_in(tmp_path / "reports.checked") == []


FULL = "out/movies.star: cannot write (No space left on device)"


def test_the_watch_warns_once_per_failing_spell_and_says_movies_star_is_complete(tmp_path: Path) -> None:
    """One cli.WatchRecords for the whole MPI watch, as in convert-to-tiff --watch
    (tests/test_watch_lists.py): rank 0 writes movies.star after each of the 6 movies and at
    the end; it fails after movies 1-2 and 4-6."""
    import os
    import time

    names = []
    for index in range(6):
        name = f"m{index}.mrc"
        write_k2(tmp_path / name, 2, seed=index, shape_yx=(32, 24))
        past = time.time() - 3600  # ready at the watch's first look
        os.utime(tmp_path / name, (past, past))
        names.append(name)
    script = driver(tmp_path, f"""
        from cryotiff.errors import OutputError

        real_write_movies_star = cli.write_movies_star
        calls = []

        def write_movies_star(*args, **kwargs):
            calls.append(len(calls) + 1)
            if calls[-1] in (1, 2, 4, 5, 6):
                raise OutputError({FULL!r})
            return real_write_movies_star(*args, **kwargs)

        cli.write_movies_star = write_movies_star
    """)
    completed = run_mpi(["--i", *names, "--o", "out", "--report", "report.json", "--watch", "--settle_seconds", "0",
                         "--watch_timeout", "1"], tmp_path, script=script)
    text = completed.stdout + completed.stderr
    assert completed.returncode == 0, text
    assert "Traceback" not in text
    warned = [line for line in completed.stderr.splitlines() if FULL in line]
    assert warned == [f"WARNING: {FULL}; it is tried again after every movie (not said again until it is written)"] * 2, text
    again = [line for line in completed.stdout.splitlines() if "written again" in line]
    assert again == ["out/movies.star written again, listing 3 movies"], text
    assert ("out/movies.star is complete: it lists every movie of this watch (it could not be written for a while "
            "during the watch)") in completed.stdout, text
    assert sorted(read_movie_names(tmp_path / "out/movies.star")) == [f"out/m{i}.tif" for i in range(6)]
    assert json.loads((tmp_path / "report.json").read_text())["state"] == "finished"
