"""Inputs (STAR, LST, globs, directories), output naming, --only_do_unfinished, failure handling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.convert import ConvertOptions
from cryotiff.errors import InputError, StarFormatError
from cryotiff.inputs import expand_inputs, output_path, read_list_file
from cryotiff.jobs import plan
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames, temporary_files_of


def movie(path: str, seed: int = 0, n_frames: int = 2) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 4, (n_frames, 12, 10)).astype(np.int8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 0)
    return frames


STAR_31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
opticsGroup1 1 1.05

# version 30001

data_movies

loop_
_rlnMicrographMovieName #1
_rlnOpticsGroup #2
Movies/a.mrc 1
Movies/b.mrc 1
"""

STAR_30 = """
data_

loop_
_rlnMicrographMovieName #1
Movies/a.mrc
Movies/b.mrc
"""


@pytest.mark.parametrize("text", [STAR_31, STAR_30, STAR_31.replace("\n", "\r\n")], ids=["3.1", "3.0", "crlf"])
def test_star_inputs(in_tmp: Path, text: str) -> None:
    a, b = movie("Movies/a.mrc", 1), movie("Movies/b.mrc", 2)
    Path("movies.star").write_bytes(text.encode())
    assert main(["--i", "movies.star", "--o", "Converted/"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("Converted/Movies/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("Converted/Movies/b.tif")), b)


def test_star_without_movie_column(in_tmp: Path) -> None:
    Path("bad.star").write_text("data_movies\nloop_\n_rlnMicrographName #1\nx.mrc\n")
    with pytest.raises(StarFormatError, match="rlnMicrographMovieName"):
        expand_inputs(["bad.star"])


def test_list_file_is_trimmed_and_skips_blanks_and_comments(in_tmp: Path) -> None:
    Path("movies.lst").write_text("# my movies\n  Movies/a.mrc  \n\n\tMovies/b.mrc\r\n   \n")
    assert read_list_file(Path("movies.lst")) == ["Movies/a.mrc", "Movies/b.mrc"]
    a, b = movie("Movies/a.mrc", 1), movie("Movies/b.mrc", 2)
    assert main(["--i", "movies.lst", "--o", "out"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/b.tif")), b)


def test_globs_directories_and_several_inputs(in_tmp: Path) -> None:
    frames = {name: movie(name, seed) for seed, name in enumerate(
        ["Movies/x1.mrc", "Movies/x2.mrc", "Other/sub/y.mrcs", "single.mrc"])}
    Path("Other/sub/notes.txt").write_text("not a movie")
    found = expand_inputs(["Movies/*.mrc", "Other", "single.mrc", "Movies/x1.mrc"])
    assert found == [Path("Movies/x1.mrc"), Path("Movies/x2.mrc"), Path("Other/sub/y.mrcs"), Path("single.mrc")]
    assert main(["--i", "Movies/*.mrc", "Other", "single.mrc", "--o", "out"]) == 0
    for name, expected in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(Path("out") / Path(name).with_suffix(".tif")), expected)


def test_directory_input_leaves_out_the_output_directory(in_tmp: Path) -> None:
    movie("Movies/a.mrc")
    assert main(["--i", "Movies", "--o", "Movies/Converted"]) == 0
    assert expand_inputs(["Movies"], Path("Movies/Converted")) == [Path("Movies/a.mrc")]


def test_inputs_that_name_nothing(in_tmp: Path) -> None:
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs(["Nowhere/*.mrc"])
    Path("empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        expand_inputs(["empty"])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Movies/a.mrcs", "Converted/Movies/a.tif"),
        ("Movies/FoilHole_1_Fractions.mrc.eer", "Converted/Movies/FoilHole_1_Fractions.mrc.tif"),
        ("/abs/data/x.mrc", "Converted/abs/data/x.tif"),
        ("../raw/x.mrc", "Converted/__/raw/x.tif"),
        ("a/../../b/./x.mrc", "Converted/__/b/x.tif"),
        ("noext", "Converted/noext.tif"),
    ],
)
def test_output_naming_never_leaves_the_output_directory(name: str, expected: str) -> None:
    assert output_path(Path(name), Path("Converted")) == Path(expected)


def test_parent_and_absolute_paths_convert_inside_output(in_tmp: Path) -> None:
    (in_tmp / "work").mkdir()
    os.chdir(in_tmp / "work")
    frames = movie(str(in_tmp / "raw" / "x.mrc"))
    assert main(["--i", "../raw/x.mrc", str(in_tmp / "raw" / "x.mrc"), "--o", "out"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out/__/raw/x.tif")), frames)
    absolute = Path("out") / str(in_tmp / "raw" / "x.tif").lstrip("/")
    np.testing.assert_array_equal(read_tiff_frames(absolute), frames)
    assert not (in_tmp / "raw" / "x.tif").exists()


def test_two_movies_for_one_output_fail_the_second(in_tmp: Path) -> None:
    movie("a.mrc")
    movie("a.mrcs", seed=3)
    jobs, failures = plan(["a.mrc", "a.mrcs"], ConvertOptions(output_dir=Path("out")))
    assert [job.source for job in jobs] == [Path("a.mrc")]
    assert "a.mrcs" in failures[0].message and "already" in failures[0].message


def test_tiff_input_never_overwrites_itself(in_tmp: Path) -> None:
    import tifffile

    tifffile.imwrite("m.tif", np.zeros((2, 4, 4), np.uint8), photometric="minisblack")
    assert main(["--i", "m.tif", "--o", "."]) == 1
    assert tifffile.imread("m.tif").shape == (2, 4, 4)


def test_only_do_unfinished(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = movie("Movies/a.mrc", 1, n_frames=3)
    b = movie("Movies/b.mrc", 2, n_frames=3)
    c = movie("Movies/c.mrc", 3, n_frames=3)
    assert main(["--i", "Movies/a.mrc", "--o", "out"]) == 0
    done_mtime = Path("out/Movies/a.tif").stat().st_mtime_ns
    # b: a truncated result from an earlier crash (wrong page count); c: only RELION's X.tif.tmp
    import tifffile

    Path("out/Movies").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite("out/Movies/b.tif", b[:1], photometric="minisblack")
    Path("out/Movies/c.tif.tmp").write_bytes(b"partial")
    capsys.readouterr()
    assert main(["--i", "Movies", "--o", "out", "--only_do_unfinished"]) == 0
    output = capsys.readouterr().out
    assert "Skipping already processed Movies/a.mrc" in output
    assert "Processing Movies/b.mrc" in output and "Processing Movies/c.mrc" in output
    assert Path("out/Movies/a.tif").stat().st_mtime_ns == done_mtime
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/b.tif")), b)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/c.tif")), c)
    # RELION's temporary name carries no lock: cryotiff cannot tell whether RELION is writing it
    assert Path("out/Movies/c.tif.tmp").read_bytes() == b"partial"
    assert "out/Movies/c.tif.tmp: left alone" in output


def test_a_failing_movie_does_not_stop_the_others(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = movie("a.mrc", 1)
    Path("broken.mrc").write_bytes(b"this is not an MRC file" * 100)
    c = movie("c.mrc", 3)
    Path("movies.lst").write_text("a.mrc\nbroken.mrc\nmissing.mrc\nc.mrc\n")
    assert main(["--i", "movies.lst", "--o", "out"]) == 1
    captured = capsys.readouterr()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/c.tif")), c)
    assert not Path("out/broken.tif").exists() and not temporary_files_of(Path("out/broken.tif"))
    errors = [line for line in captured.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2
    assert "broken.mrc" in errors[0] and "missing.mrc" in errors[1]
    assert "Traceback" not in captured.err
    assert "Movies converted: 2, skipped: 0, failed: 2" in captured.out
