"""--watch rewrites movies.star and the report after every movie. One that cannot be written is
warned about once when it starts failing, not after every movie; a line says when it is written
again, and the end of the watch says whether movies.star is complete."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

import cryotiff.cli as cli
from cryotiff.errors import OutputError
from cryotiff.io.star import read_movie_names
from cryotiff.simulate.write import write_mrc_movie

FULL = "out/movies.star: cannot write (No space left on device)"


def old_movies(n: int) -> list[str]:
    """``n`` movies written an hour ago: ready at the watch's first look."""
    names = []
    for index in range(n):
        name = f"m{index}.mrc"
        frames = np.random.default_rng(index).integers(0, 9, (2, 16, 20)).astype(np.int16)
        write_mrc_movie(Path(name), frames, 1, pixel_size_angstrom=1.0)
        past = time.time() - 3600
        os.utime(name, (past, past))
        names.append(name)
    return names


def failing_on(monkeypatch, calls_that_fail: set[int]) -> list[int]:
    """movies.star cannot be written at the given calls (counted from 1); the others write it."""
    real = cli.write_movies_star
    calls: list[int] = []

    def write(*args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] in calls_that_fail:
            raise OutputError(FULL)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "write_movies_star", write)
    return calls


def watch(names: list[str]) -> int:
    return cli.main(["--i", *names, "--o", "out", "--watch", "--settle_seconds", "0", "--watch_timeout", "0.5"])


def test_a_movies_star_that_cannot_be_written_is_warned_about_once_per_failing_spell(
        in_tmp: Path, capsys, monkeypatch) -> None:
    names = old_movies(6)
    # after movies 1-2: failing; 3: written; 4-6: failing; the end of the watch: written
    calls = failing_on(monkeypatch, {1, 2, 4, 5, 6})
    assert watch(names) == 0
    assert len(calls) == 7  # after each of the 6 movies, and at the end
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    warned = [line for line in captured.err.splitlines() if FULL in line]
    assert warned == [f"WARNING: {FULL}; it is tried again after every movie (not said again until it is written)"] * 2
    again = [line for line in captured.out.splitlines() if "written again" in line]
    assert again == ["out/movies.star written again, listing 3 movies"], captured.out
    assert ("out/movies.star is complete: it lists every movie of this watch (it could not be written for a while "
            "during the watch)") in captured.out
    assert read_movie_names(Path("out/movies.star")) == [f"out/m{i}.tif" for i in range(6)]


def test_the_end_of_the_watch_says_when_movies_star_is_not_complete(in_tmp: Path, capsys, monkeypatch) -> None:
    names = old_movies(3)
    failing_on(monkeypatch, {3, 4})  # written after movies 1 and 2, then never again
    assert watch(names) == 1
    err = capsys.readouterr().err
    assert err.count(FULL) == 2  # the warning when it started failing, and the error at the end
    assert ("WARNING: out/movies.star is not complete: it was last written when 2 of the 3 movies of this watch "
            "were done; run the same command again with --only_do_unfinished to list them all") in err, err
    assert read_movie_names(Path("out/movies.star")) == ["out/m0.tif", "out/m1.tif"]


def test_a_watch_whose_lists_are_always_written_says_nothing_more(in_tmp: Path, capsys) -> None:
    assert watch(old_movies(2)) == 0
    captured = capsys.readouterr()
    assert "written again" not in captured.out and "complete" not in captured.out + captured.err
    assert read_movie_names(Path("out/movies.star")) == ["out/m0.tif", "out/m1.tif"]


def test_a_report_that_cannot_be_written_is_warned_about_once_and_movies_star_still_is(
        in_tmp: Path, capsys, monkeypatch) -> None:
    names = old_movies(3)
    real = cli.write_report
    states: list[str] = []

    def write(path, *args, **kwargs):
        states.append(kwargs.get("state", "finished"))
        if kwargs.get("state") == "watching":
            raise OutputError(f"{path}: cannot write the report (Permission denied)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cli, "write_report", write)
    assert cli.main(["--i", *names, "--o", "out", "--report", "report.json", "--watch", "--settle_seconds", "0",
                     "--watch_timeout", "0.5"]) == 0
    err = capsys.readouterr().err
    assert err.count("report.json: cannot write the report (Permission denied)") == 1, err
    assert states == ["watching"] * 3 + ["finished"]
    assert Path("report.json").is_file()
