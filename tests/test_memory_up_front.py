"""A movie whose frame fits in the memory left, but not the two frames any conversion holds at
once (the frame and the page made of it, checked against it), is refused before a frame is
read, with what it needs and what is there; it ran out of memory after reading its frame (about
a minute for a frame of several GB) instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.io import memory
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames


def frames() -> np.ndarray:
    return np.random.default_rng(4).integers(-9, 9, (2, 1000, 1000)).astype(np.int16)  # 2 MB a frame


def room_of(monkeypatch, nbytes: int) -> None:
    room = memory.MemoryRoom(nbytes, "the machine (available memory and free swap)")
    monkeypatch.setattr(memory, "memory_room", lambda: room)


def test_a_frame_just_under_the_memory_left_is_refused_before_it_is_read(in_tmp: Path, capsys, monkeypatch) -> None:
    write_mrc_movie(Path("a.mrc"), frames(), 1, pixel_size_angstrom=1.0)
    room_of(monkeypatch, 3_000_000)
    read: list[int] = []
    from cryotiff.io import mrc

    real = mrc.MrcMovie._read_into
    monkeypatch.setattr(mrc.MrcMovie, "_read_into", lambda self, *a: read.append(1) or real(self, *a))
    assert main(["--i", "a.mrc", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "out of memory" not in err
    assert ("ERROR: a.mrc: its frames of 1000 x 1000 pixels (MRC mode 1, int16) take 2.0 MB each; converting it "
            "needs at least 4.0 MB (two frames at once; about 8.0 MB at --j 1 or 2, one more frame for each further "
            "thread), more than the 3.0 MB of memory left by the machine (available memory and free swap)") in err, err
    assert read == [] and not Path("out/a.tif").exists()


@pytest.mark.parametrize("room", [4_500_000, 10**9])
def test_a_movie_whose_two_frames_fit_converts(in_tmp: Path, monkeypatch, room: int) -> None:
    source = frames()
    write_mrc_movie(Path("a.mrc"), source, 1, pixel_size_angstrom=1.0)
    room_of(monkeypatch, room)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), source)
