"""Runs that read STAR files import neither pandas nor starfile (io/star.py reads them itself):
a conversion from a movie STAR file, --only_do_unfinished, a rerun that merges the movies.star of
an earlier run, --verify_only, --watch and convert-to-tiff-mpi, each run through its entry point
in a fresh interpreter that then reports what it holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotiff.simulate.detectors import counting_frames
from cryotiff.simulate.write import write_mrc_movie

from .helpers import HANG_SECONDS
from .test_mpi import MPIRUN, run_mpi

#: What reading a STAR file used to import (through starfile).
STAR_LIBRARIES = ("pandas", "starfile", "pyarrow")

PROBE = """
import contextlib, io, json, sys
from cryotiff.%s import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main(sys.argv[1:])
print(json.dumps({"status": status, "loaded": [name for name in %r if name in sys.modules]}))
"""

STAR = "data_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n_rlnVoltage #3\nopticsGroup1 1 300\n\n" \
       "data_movies\n\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n{names}\n"


def star_of(*names: str) -> str:
    return STAR.format(names="\n".join(f"{name} 1" for name in names))


@pytest.fixture
def movies_in_a_star_file(tmp_path: Path) -> Path:
    for seed, name in enumerate(("a", "b", "c"), start=1):
        write_mrc_movie(tmp_path / f"{name}.mrc", counting_frames(2, shape_yx=(24, 20), dtype=np.int8, seed=seed), 0)
    (tmp_path / "ab.star").write_text(star_of("a.mrc", "b.mrc"))
    (tmp_path / "c.star").write_text(star_of("c.mrc"))
    return tmp_path


def loaded_by(cwd: Path, *argv: str, entry: str = "cli") -> set[str]:
    """The STAR_LIBRARIES a fresh interpreter holds after ``main(argv)`` of cryotiff.cli (or
    cryotiff.mpi); the run must succeed."""
    completed = subprocess.run([sys.executable, "-c", PROBE % (entry, STAR_LIBRARIES), *argv], capture_output=True,
                               text=True, cwd=cwd, timeout=HANG_SECONDS)
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 0, completed.stderr
    return set(outcome["loaded"])


def listed(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.split("\t")[0] for line in lines[lines.index("data_movies"):] if line.startswith("out/")]


def test_a_conversion_from_a_star_file_and_its_reruns_import_neither(movies_in_a_star_file: Path) -> None:
    here = movies_in_a_star_file
    assert loaded_by(here, "--i", "ab.star", "--o", "out/") == set()
    assert (here / "out" / "a.tif").is_file()
    assert loaded_by(here, "--i", "ab.star", "--o", "out/", "--only_do_unfinished") == set()
    # a second run into the same --o reads the movies.star of the first and merges
    assert loaded_by(here, "--i", "c.star", "--o", "out/") == set()
    assert listed(here / "out" / "movies.star") == ["out/a.tif", "out/b.tif", "out/c.tif"]
    assert loaded_by(here, "--verify_only", "--i", "ab.star", "--o", "out/") == set()
    assert loaded_by(here, "--verify_only", "--o", "out/") == set()


def test_a_watch_of_a_star_file_imports_neither(movies_in_a_star_file: Path) -> None:
    here = movies_in_a_star_file
    assert loaded_by(here, "--i", "ab.star", "--o", "out/", "--watch", "--settle_seconds", "0",
                     "--watch_timeout", "1") == set()
    assert (here / "out" / "b.tif").is_file()


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_convert_to_tiff_mpi_from_a_star_file_imports_neither(movies_in_a_star_file: Path) -> None:
    """On every rank, also when --o holds the movies.star of an earlier run (rank 0 merges it)."""
    here = movies_in_a_star_file
    probe = here / "probe.py"
    probe.write_text(PROBE % ("mpi", STAR_LIBRARIES))
    for arguments in (["--i", "ab.star", "--o", "out/"], ["--i", "c.star", "--o", "out/"]):
        completed = run_mpi(arguments, here, script=probe)
        assert completed.returncode == 0, completed.stderr
        outcomes = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith('{"status"')]
        assert outcomes == [{"status": 0, "loaded": []}] * 2, (completed.stdout, completed.stderr)
    assert listed(here / "out" / "movies.star") == ["out/a.tif", "out/b.tif", "out/c.tif"]
