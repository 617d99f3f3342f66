"""A STAR file given with --i is checked and read through one descriptor, opened once, with no
/proc/self/fd (which starfile needed, and which some systems lack): what is checked (a regular
file) is what is read, also where /proc is missing."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import cryotiff.io as cio
from cryotiff.io.star import read_movie_names


def test_a_star_file_is_opened_once_and_read_through_that_descriptor(tmp_path: Path, monkeypatch) -> None:
    star = tmp_path / "movies.star"
    star.write_text("data_movies\n\nloop_\n_rlnMicrographMovieName #1\nMovies/a.mrc\nMovies/b.mrc\n")
    opened: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, *args, **kwargs):
        opened.append(os.fspath(path) if not isinstance(path, int) else f"fd {path}")
        descriptor = real_os_open(path, *args, **kwargs)
        if os.fspath(path) == os.fspath(star):  # the name now leads elsewhere: only the descriptor knows
            os.rename(star, tmp_path / "moved.star")
            star.write_text("data_movies\n\nloop_\n_rlnMicrographMovieName #1\nplanted.mrc\n")
        return descriptor

    def builtin_open(file, *args, **kwargs):
        if not isinstance(file, int):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", builtin_open)
    monkeypatch.setattr(cio.os, "open", os_open)
    assert read_movie_names(star) == ["Movies/a.mrc", "Movies/b.mrc"]
    assert opened == [os.fspath(star)], opened  # one open by name; nothing under /proc
