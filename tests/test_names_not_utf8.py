"""A movie whose file name is not UTF-8 text (a byte such as 0xff, from a copy off an old Windows
share, say). movies.star is UTF-8 text and cannot list its TIFF, so the movie is refused up front
with a message that shows the byte, and every other movie converts. Before, the name stopped the
run: under a terminal whose encoding is strict (en_US.UTF-8) at its first line, with a traceback
and nothing converted; under C.UTF-8 at movies.star, after all the work, with a traceback and no
movies.star or summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotiff.io.star import read_star_blocks

from .helpers import int16_movie, read_tiff_frames, temporary_files_of
from .test_mpi import MPIRUN, run_mpi

BAD_NAME = os.fsdecode(b"bad\xffname.mrc")
SHOWN = "bad\\xffname.mrc"


def movies(directory: Path) -> dict[str, np.ndarray]:
    return {name: int16_movie(directory / name, seed, n_frames=3)
            for seed, name in enumerate(["good.mrc", BAD_NAME, "\u00fcn\u00ef.mrc"])}


def run_cli(arguments: list[str], cwd: Path, encoding: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    return subprocess.run([sys.executable, "-m", "cryotiff.cli", *arguments], cwd=cwd, env=env,
                          capture_output=True, timeout=300)


def check_outputs(out: Path, frames: dict[str, np.ndarray]) -> None:
    for name, expected in frames.items():
        tif = out / "in" / (Path(name).stem + ".tif")
        if name == BAD_NAME:
            assert not tif.exists() and temporary_files_of(tif) == []
        else:
            np.testing.assert_array_equal(read_tiff_frames(tif), expected)
    listed = (out / "movies.star").read_text(encoding="utf-8")
    assert "in/good.tif" in listed and "in/\u00fcn\u00ef.tif" in listed and "bad" not in listed


@pytest.mark.parametrize("encoding", ["utf-8:strict", "utf-8:surrogateescape"], ids=["strict", "surrogateescape"])
def test_a_name_that_is_not_utf8_is_refused_and_the_other_movies_convert(tmp_path: Path, encoding: str) -> None:
    frames = movies(tmp_path / "in")
    result = run_cli(["--i", "in/*.mrc", "--o", "out", "--report", "report.json"], tmp_path, encoding)
    stdout, stderr = result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert f"in/{SHOWN}: its name is not UTF-8 text" in stderr
    assert "Movies converted: 2, skipped: 0, failed: 1" in stdout
    check_outputs(tmp_path / "out", frames)
    blocks = read_star_blocks(tmp_path / "out" / "movies.star")  # the next run reads it back to merge
    assert sum(len(table.rows) for name, table in blocks.items() if "movies" in name) == 2


def test_a_dry_run_says_the_same(tmp_path: Path) -> None:
    movies(tmp_path / "in")
    result = run_cli(["--i", "in/*.mrc", "--o", "out", "--dry_run"], tmp_path, "utf-8:strict")
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    assert f"in/{SHOWN}: its name is not UTF-8 text" in stderr + result.stdout.decode("utf-8", "replace")
    assert not (tmp_path / "out" / "in").exists()


def test_an_output_directory_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    int16_movie(tmp_path / "a.mrc", 1)
    out = os.fsdecode(b"out\xfe")
    result = run_cli(["--i", "a.mrc", "--o", out], tmp_path, "utf-8:strict")
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    assert "--o out\\xfe: the path is not UTF-8 text" in stderr and "Traceback" not in stderr
    assert not os.path.exists(tmp_path / out)


@pytest.mark.skipif(not MPIRUN.exists(), reason="no mpirun")
def test_mpi_refuses_the_name_and_converts_the_others(tmp_path: Path, monkeypatch) -> None:
    frames = movies(tmp_path / "in")
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8:strict")
    result = run_mpi(["--i", "in/*.mrc", "--o", "out"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"in/{SHOWN}: its name is not UTF-8 text" in result.stderr + result.stdout
    check_outputs(tmp_path / "out", frames)


def test_a_watch_refuses_the_name_once_and_converts_the_others(tmp_path: Path) -> None:
    frames = movies(tmp_path / "in")
    result = run_cli(["--i", "in/*.mrc", "--o", "out", "--watch", "--settle_seconds", "0.2", "--watch_timeout", "2"],
                     tmp_path, "utf-8:strict")
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.count(f"in/{SHOWN}: its name is not UTF-8 text") == 1, stderr
    check_outputs(tmp_path / "out", frames)
