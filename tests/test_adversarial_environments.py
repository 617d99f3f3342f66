"""Adversarial cases found by an audit of bad inputs and bad environments: where ``--o`` lies
against the directories given to ``--i``, inputs that change or fail while being read, and ranks
of ``convert-to-tiff-mpi`` that die in the middle of a movie. Each case was found once by trying
to make cryotiff hang, lose, or misstate what it did; it stays here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames


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


@pytest.mark.parametrize("output", ["Movies", "Movies/", "./Movies", "abs"])
def test_an_output_directory_equal_to_a_searched_directory_is_refused(in_tmp: Path, capsys, output: str) -> None:
    """``--i Movies --o Movies`` would write Movies/Movies/a.tif, which the next run (finding
    every movie under Movies) would take for a movie and convert into Movies/Movies/Movies/."""
    int16_movie("Movies/a.mrc", 1)
    output = str(in_tmp / "Movies") if output == "abs" else output
    status = main(["--i", "Movies", "--o", output])
    captured = capsys.readouterr()
    assert status != 0
    errors = errors_of(captured.err)
    assert len(errors) == 1 and "Movies" in errors[0] and "is also the output directory" in errors[0], captured
    assert "Traceback" not in captured.out + captured.err
    assert sorted(p.name for p in (in_tmp / "Movies").iterdir()) == ["a.mrc"]  # nothing written
