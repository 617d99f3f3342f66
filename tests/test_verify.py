"""``--verify_only`` and the manifest: an intact set passes, with and without the originals; a
single flipped bit in one strip of one output is found and named, with and without the
originals; under a real ``mpirun`` the verdicts are those of one process; concurrent runs into
one ``--o`` keep every manifest entry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.cli import main
from cryotiff.manifest import MANIFEST_NAME, page_digest, read_manifest
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.eer import random_events, write_eer
from cryotiff.simulate.gain_normalised import make_detector
from cryotiff.simulate.write import write_mrc_movie

MPIRUN = Path(sys.executable).parent / "mpirun"
TIMEOUT_SECONDS = 180


def verdict_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.split(" ")[0] in ("OK", "DIFFERS", "MISSING", "UNCHECKED"))


@pytest.fixture
def converted_set(in_tmp: Path) -> dict[str, np.ndarray]:
    """Movies of every kind converted into ``out/``: counting MRC (uncompressed, so that a bit of
    a strip can be flipped and the TIFF still decodes), Falcon MRC (deflate), integer-valued
    float MRC, EER rendered with grouping 4 on the 2x grid, and gain-normalised float movies
    converted with their estimated gain."""
    frames = {}
    frames["k2"] = counting_frames(5, shape_yx=(64, 48), dtype=np.int8, seed=1)
    write_mrc_movie(Path("k2.mrc"), frames["k2"], 0, pixel_size_angstrom=1.1)
    assert main(["--i", "k2.mrc", "--o", "out", "--compression", "none"]) == 0
    frames["falcon"] = falcon_frames(4, shape_yx=(64, 96), seed=2)
    write_mrc_movie(Path("falcon.mrc"), frames["falcon"], 6)
    frames["float"] = np.random.default_rng(3).integers(0, 300, (3, 32, 40)).astype(np.float32)
    write_mrc_movie(Path("float.mrc"), frames["float"], 2)
    assert main(["--i", "falcon.mrc", "float.mrc", "--o", "out", "--compression", "deflate", "--j", "2"]) == 0
    write_eer(Path("movie.eer"), random_events(np.random.default_rng(4), 2048, 9, 0.002), 2048)
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "4", "--eer_upsampling", "2"]) == 0

    rng = np.random.default_rng(5)
    detector = make_detector((48, 40), rng, defect_fraction=0.002, cold_fraction=0.001)
    for name in ("g1.mrc", "g2.mrc"):
        frames[name[:-4]] = detector.movie(30, rng).frames
        write_mrc_movie(Path(name), frames[name[:-4]], 2)
    assert main(["--i", "g1.mrc", "g2.mrc", "--o", "est", "--estimate_gain"]) == 0
    assert main(["--i", "g1.mrc", "g2.mrc", "--o", "out", "--gain", "est/gain_estimate.bin"]) == 0
    return frames


ALL = ["k2.mrc", "falcon.mrc", "float.mrc", "movie.eer", "g1.mrc", "g2.mrc"]


def flip_bit_in_strip(path: Path, page: int, byte_in_strip: int, bit: int = 3) -> None:
    """Flip one bit of the stored (compressed or not) data of ``page`` (0-based)."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[page].dataoffsets[0]
    with open(path, "r+b") as handle:
        handle.seek(offset + byte_in_strip)
        value = handle.read(1)[0]
        handle.seek(offset + byte_in_strip)
        handle.write(bytes([value ^ (1 << bit)]))


# --------------------------------------------------------------------------- the manifest


def test_the_manifest_records_every_output(converted_set, in_tmp: Path) -> None:
    entries = read_manifest(Path("out"))
    assert sorted(entries) == ["falcon.tif", "float.tif", "g1.tif", "g2.tif", "k2.tif", "movie.tif"]
    k2 = entries["k2.tif"]
    assert (k2.source, k2.pages, k2.shape_yx, k2.sample_type) == ("k2.mrc", 5, (64, 48), "int8")
    assert k2.source_bytes == Path("k2.mrc").stat().st_size

    assert k2.output_sha256 == hashlib.sha256(Path("out/k2.tif").read_bytes()).hexdigest()
    assert k2.source_sha256 == hashlib.sha256(Path("k2.mrc").read_bytes()).hexdigest()
    assert k2.page_sha256[2] == page_digest(converted_set["k2"][2]).hex()[:16]
    # What made it: the record the TIFF carries (recorded_options), here the EER rendering.
    assert entries["movie.tif"].record["made_with"] == {"eer_grouping": 4, "eer_upsampling": 2, "short": False}
    assert entries["g1.tif"].record["made_with"]["gain"]["file"] == "est/gain_estimate.bin"


def test_runs_into_one_output_directory_keep_every_entry(in_tmp: Path) -> None:
    """Merged across runs (the later entry of a movie wins), also for two runs at the same time."""
    names = [f"m{k}.mrc" for k in range(8)]
    for k, name in enumerate(names):
        write_mrc_movie(Path(name), counting_frames(2, shape_yx=(32, 32), dtype=np.int8, seed=k), 0)
    runs = [subprocess.Popen([sys.executable, "-m", "cryotiff", "--i", *part, "--o", "out"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for part in (names[0::2], names[1::2])]
    for run in runs:
        _, stderr = run.communicate(timeout=TIMEOUT_SECONDS)
        assert run.returncode == 0, stderr
    assert sorted(read_manifest(Path("out"))) == sorted(name.replace(".mrc", ".tif") for name in names)
    before = read_manifest(Path("out"))["m0.tif"]
    assert main(["--i", "m0.mrc", "--o", "out", "--compression", "deflate"]) == 0  # written again, otherwise
    after = read_manifest(Path("out"))["m0.tif"]
    assert after.output_sha256 != before.output_sha256 and after.pixels_sha256 == before.pixels_sha256
    assert len(Path("out", MANIFEST_NAME).read_text().splitlines()) == 9


# --------------------------------------------------------------------------- --verify_only


def test_an_intact_set_passes_with_and_without_the_originals(converted_set, in_tmp: Path, capsys) -> None:
    # The command line's EER options differ from those recorded: the recorded ones are used.
    assert main(["--verify_only", "--i", *ALL, "--o", "out", "--j", "2"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("OK ")]) == 6, out
    assert "OK        out/movie.tif (2 pages; compared with movie.eer)" in out
    assert "Verified 6 outputs: 6 OK, 0 differ, 0 missing, 0 could not be checked" in out
    assert main(["--verify_only", "--o", "out"]) == 0
    out = capsys.readouterr().out
    assert "Verified 6 outputs: 6 OK" in out and "compared with the manifest" in out


def test_a_flipped_bit_in_an_uncompressed_strip_is_found_with_and_without_the_originals(
        converted_set, in_tmp: Path, capsys) -> None:
    """The TIFF still decodes; page 3 holds one wrong pixel."""
    row_bytes, byte = 48, 5 * 48 + 7  # int8: scanline 5 (raster row 64 - 1 - 5), column 7
    flip_bit_in_strip(Path("out/k2.tif"), 2, byte)
    expected = converted_set["k2"][2, 58, 7]
    assert main(["--verify_only", "--i", *ALL, "--o", "out"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("DIFFERS")]
    assert lines == [f"DIFFERS   out/k2.tif: page 3, pixel x=7 y=58: {np.int8(expected ^ 8)!r} in the TIFF, "
                     f"{np.int8(expected)!r} expected (1 pixel of the page differs)"], out
    assert "Verified 6 outputs: 5 OK, 1 differ" in out

    assert main(["--verify_only", "--o", "out", "--j", "2"]) == 1  # the originals gone
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("DIFFERS")] == [
        "DIFFERS   out/k2.tif: page 3 decodes to other pixels than when it was written"]
    assert "Verified 6 outputs: 5 OK, 1 differ" in out
    assert row_bytes == converted_set["k2"].shape[2]


def test_a_flipped_bit_in_compressed_data_is_found_with_and_without_the_originals(
        converted_set, in_tmp: Path, capsys) -> None:
    with tifffile.TiffFile("out/falcon.tif") as tif:
        nbytes = tif.pages[1].databytecounts[0]
    flip_bit_in_strip(Path("out/falcon.tif"), 1, nbytes // 2)
    for argv in (["--i", *ALL], []):
        assert main(["--verify_only", *argv, "--o", "out"]) == 1
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("DIFFERS")]
        assert len(lines) == 1 and lines[0].startswith("DIFFERS   out/falcon.tif: page 2"), lines


def test_missing_outputs_and_a_missing_manifest(in_tmp: Path, capsys) -> None:
    write_mrc_movie(Path("a.mrc"), counting_frames(2, shape_yx=(16, 16), dtype=np.int8, seed=0), 0)
    assert main(["--verify_only", "--o", "out"]) == 2
    assert "no manifest to check the outputs against; give the originals with --i" in capsys.readouterr().err
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 1
    assert "MISSING   out/a.tif: no such file" in capsys.readouterr().out
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    Path("out/a.tif").unlink()
    assert main(["--verify_only", "--o", "out"]) == 1
    assert "MISSING   out/a.tif: no such file (the manifest records it, from a.mrc)" in capsys.readouterr().out


def test_verify_only_refuses_options_that_convert(in_tmp: Path, capsys) -> None:
    assert main(["--verify_only", "--o", "out", "--watch"]) == 2
    assert "--verify_only converts nothing and cannot be combined with --watch" in capsys.readouterr().err


def test_a_changed_gain_file_is_said(converted_set, in_tmp: Path, capsys) -> None:
    data = bytearray(Path("est/gain_estimate.bin").read_bytes())
    data[-1] ^= 1
    Path("est/gain_estimate.bin").write_bytes(bytes(data))
    assert main(["--verify_only", "--i", "g1.mrc", "--o", "out"]) == 1
    assert "UNCHECKED out/g1.tif: cannot make its pages again: the gain est/gain_estimate.bin has changed" in (
        capsys.readouterr().out)


# --------------------------------------------------------------------------- convert-to-tiff-mpi


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_under_mpirun_the_verdicts_are_those_of_one_process(converted_set, in_tmp: Path, capsys) -> None:
    flip_bit_in_strip(Path("out/k2.tif"), 2, 5 * 48 + 7)
    command = [str(MPIRUN), "-np", "2", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    for argv in (["--i", *ALL], []):
        assert main(["--verify_only", *argv, "--o", "out"]) == 1
        serial = verdict_lines(capsys.readouterr().out)
        completed = subprocess.run(command + [sys.executable, "-m", "cryotiff.mpi", "--verify_only", *argv, "--o",
                                              "out"], capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        assert completed.returncode == 1, completed.stderr
        assert verdict_lines(completed.stdout) == serial
        assert "Verified 6 outputs: 5 OK, 1 differ" in completed.stdout
    report = json.dumps(serial)
    assert "k2.tif" in report


def test_file_sha256_reads_files_of_several_blocks(tmp_path: Path) -> None:
    from cryotiff.recorded_options import file_sha256

    for n_bytes in (0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17):
        data = np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
        (tmp_path / "f").write_bytes(data)
        assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_a_failed_movie_cancels_its_source_hash_and_adds_no_entry(tmp_path: Path) -> None:
    """The original is hashed while the movie converts; a movie that fails leaves no entry."""
    from cryotiff.manifest import Manifest, read_manifest

    manifest = Manifest(tmp_path)
    (tmp_path / "m.mrc").write_bytes(b"x" * 100)
    future = manifest.hash_source_later(tmp_path / "m.mrc")
    assert future.result() == (100, hashlib.sha256(b"x" * 100).hexdigest())
    missing = manifest.hash_source_later(tmp_path / "missing.mrc")  # opened as inputs are: an InputError
    assert isinstance(missing.result(), Exception) and "missing.mrc: no such file" in str(missing.result())
    manifest.add_later(tmp_path / "missing.mrc", tmp_path / "m.tif", [], (1, 1), "uint8", missing)
    problems = manifest.wait()
    assert len(problems) == 1 and "not in the manifest" in problems[0]
    assert read_manifest(tmp_path) == {}
