"""What a run imports: only what its path needs (start-up time and memory are measured in
benchmarks/; here the structure: which large libraries a fresh interpreter ends up holding)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.write import write_mrc_movie

#: Libraries that cost start-up time or memory and that only some runs need.
LARGE = ("pandas", "pyarrow", "starfile", "numba", "llvmlite", "mpi4py", "tqdm", "importlib.metadata")

PROBE = """
import contextlib, io, json, sys
from cryotiff.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print(json.dumps({"status": status, "loaded": [name for name in %r if name in sys.modules]}))
""" % (LARGE,)


def loaded_by(*argv: str, cwd: Path) -> set[str]:
    """The large libraries a fresh interpreter holds after ``convert-to-tiff argv`` (none: after
    importing the command line)."""
    completed = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=cwd,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 0, completed.stderr
    return set(outcome["loaded"])


@pytest.fixture
def counts_movie(in_tmp: Path) -> Path:
    write_mrc_movie(in_tmp / "k2.mrc", counting_frames(2, shape_yx=(24, 20), dtype=np.int8, seed=5), 0)
    return in_tmp / "k2.mrc"


def test_the_command_line_imports_none_of_them(in_tmp: Path) -> None:
    assert loaded_by(cwd=in_tmp) == set()


def test_converting_an_mrc_movie_needs_none_of_them(counts_movie: Path) -> None:
    """movies.star is written without pandas; with a codec that is not compiled (LZW), no
    kernel is needed for integer frames."""
    assert loaded_by("--i", "k2.mrc", "--o", "out/", "--j", "2", "--compression", "lzw",
                     cwd=counts_movie.parent) == set()
    assert (counts_movie.parent / "out" / "movies.star").is_file()


def test_a_short_counts_movie_in_huffman_only_deflate_needs_no_numba(in_tmp: Path) -> None:
    """The Huffman-only encoder of a short movie of integer frames is zlib-ng's, not the compiled
    kernel (numba would cost more to load than it saves; codecs.huffman_encoder_for)."""
    write_mrc_movie(in_tmp / "k2.mrc", counting_frames(2, shape_yx=(512, 768), dtype=np.int8, seed=5), 0)
    assert loaded_by("--i", "k2.mrc", "--o", "out/", "--report", "r.json", cwd=in_tmp) == set()
    report = json.loads((in_tmp / "r.json").read_text())
    assert [movie["codec"] for movie in report["movies"]] == ["deflate-huffman"]


def test_a_long_movie_written_in_deflate_never_loads_the_lzw_kernel(in_tmp: Path) -> None:
    """A movie long enough for the compiled encoders (here: the threshold lowered to 0) loads the
    Huffman-only kernel it encodes with, but not the LZW kernel: ``auto`` sizes LZW with
    imagecodecs' encoder (the same bytes), so loading the LZW kernel is left to movies written in
    LZW."""
    write_mrc_movie(in_tmp / "f.mrc", falcon_frames(2, (64, 4096), seed=2), 6)
    probe = ("import contextlib, io, json, sys\n"
             "from cryotiff import codecs\n"
             "codecs.COMPILED_ENCODERS_MIN_MOVIE_BYTES = 0\n"
             "from cryotiff.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    status = main(['--i', 'f.mrc', '--o', 'out/', '--report', 'r.json'])\n"
             "from cryotiff import kernels\n"
             "print(json.dumps({'status': status, 'huffman': len(kernels.deflate_huffman_encode.signatures),\n"
             "                  'lzw': len(kernels.lzw_encode.signatures)}))\n")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=in_tmp, timeout=600)
    assert completed.returncode == 0, completed.stderr
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    report = json.loads((in_tmp / "r.json").read_text())
    assert [movie["codec"] for movie in report["movies"]] == ["deflate-huffman"]
    assert outcome == {"status": 0, "huffman": 1, "lzw": 0}


def test_reading_a_star_file_needs_none_of_them(counts_movie: Path) -> None:
    """A STAR input is read without starfile or pandas (io/star.py; tests/test_star_imports.py for
    the other runs that read STAR files)."""
    (counts_movie.parent / "in.star").write_text("data_movies\n\nloop_\n_rlnMicrographMovieName #1\nk2.mrc\n")
    assert loaded_by("--i", "in.star", "--o", "out/", "--compression", "lzw", cwd=counts_movie.parent) == set()


def test_the_probe_sees_an_import_when_there_is_one(in_tmp: Path) -> None:
    """The probe's own check: a large library imported before the run (tqdm) is seen."""
    probe = PROBE.replace("from cryotiff.cli import main", "import tqdm\nfrom cryotiff.cli import main")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=in_tmp,
                               timeout=300)
    assert "tqdm" in json.loads(completed.stdout.strip().splitlines()[-1])["loaded"], completed.stderr


def test_the_gain_package_imports_none_of_them() -> None:
    """cryotiff.gain holds the estimate, the integerisation and the gain files; importing it (a float
    movie without --gain, --estimate_gain before its first frame) loads no kernel and no tifffile:
    the calls that need them import them."""
    probe = ("import json, sys, cryotiff.gain; "
             f"print(json.dumps([name for name in {LARGE + ('tifffile',)!r} if name in sys.modules]))")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == []
