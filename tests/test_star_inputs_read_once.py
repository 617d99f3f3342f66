"""A movie STAR file given with --i is read once: the rows and optics groups movies.star lists for
its movies are those of the version the run read when it expanded the inputs (the movies it
converted), not of a newer version that replaced the file during the conversion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

import cryotiff.cli as cli
from cryotiff.io.star import read_star_blocks
from cryotiff.simulate.write import write_mrc_movie

STAR = """
data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnMicrographOriginalPixelSize #4
opticsGroup1 1 {voltage} 1.050000


data_movies

loop_
_rlnMicrographMovieName #1
_rlnOpticsGroup #2
{movies}
"""


def star_text(movies: list[str], voltage: float) -> str:
    return STAR.format(voltage=f"{voltage:.6f}", movies="\n".join(f"{name} 1" for name in movies))


def test_movies_star_lists_the_star_file_as_it_was_read_before_the_movies(in_tmp: Path, monkeypatch) -> None:
    frames = np.random.default_rng(3).integers(0, 9, (3, 24, 32)).astype(np.int16)
    Path("Movies").mkdir()
    write_mrc_movie(Path("Movies/a.mrc"), frames, 1, pixel_size_angstrom=1.05)
    Path("in.star").write_text(star_text(["Movies/a.mrc"], 300.0))
    real_run = cli.run

    def converted_then_changed(*args, **kwargs):
        results = real_run(*args, **kwargs)
        # The file replaced by a newer version (another Import job writing it again, say).
        Path("in.star.new").write_text(star_text(["Movies/a.mrc", "Movies/b.mrc"], 200.0))
        os.replace("in.star.new", "in.star")
        return results

    monkeypatch.setattr(cli, "run", converted_then_changed)
    assert cli.main(["--i", "in.star", "--o", "out"]) == 0
    blocks = read_star_blocks(Path("out/movies.star"))
    assert blocks["optics"]["rlnVoltage"] == [300.0]  # the version the movies were converted from
    assert list(blocks["movies"]["rlnMicrographMovieName"]) == ["out/Movies/a.tif"]
    np.testing.assert_array_equal(tifffile.imread("out/Movies/a.tif")[..., ::-1, :], frames)


def test_a_star_file_is_read_again_by_the_next_run(in_tmp: Path) -> None:
    """What one run read does not stand for the file in the next run: each run reads it anew."""
    frames = np.random.default_rng(4).integers(0, 9, (3, 24, 32)).astype(np.int16)
    write_mrc_movie(Path("a.mrc"), frames, 1, pixel_size_angstrom=1.05)
    Path("in.star").write_text(star_text(["a.mrc"], 300.0))
    assert cli.main(["--i", "in.star", "--o", "out"]) == 0
    Path("in.star").write_text(star_text(["a.mrc"], 200.0))
    assert cli.main(["--i", "in.star", "--o", "out2"]) == 0
    assert read_star_blocks(Path("out2/movies.star"))["optics"]["rlnVoltage"] == [200.0]
