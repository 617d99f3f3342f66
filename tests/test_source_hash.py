"""The manifest's source_bytes and source_sha256 describe the file whose pages were converted,
also when another file takes the movie's name during the conversion (hashed through the
descriptor the pages were read from, never by name)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cryotiff.convert as C
from cryotiff.convert import ConvertOptions, RunContext, convert_movie
from cryotiff.errors import InputError
from cryotiff.manifest import Manifest, read_manifest
from cryotiff.recorded_options import read_record
from cryotiff.simulate.eer import random_events, write_eer
from cryotiff.simulate.write import write_mrc_movie


def write_movie(path: Path, kind: str, seed: int, n_frames: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "mrc":
        write_mrc_movie(path, rng.integers(0, 9, (n_frames, 24, 32)).astype(np.int16), 1, pixel_size_angstrom=1.05)
    elif kind == "tif":
        tifffile.imwrite(path, rng.integers(0, 9, (n_frames, 24, 32)).astype(np.uint16), compression="zlib",
                         photometric="minisblack", metadata=None)
    else:
        write_eer(path, random_events(rng, 2048, n_frames, 0.001), 2048, 65001)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replace_name_once_opened(monkeypatch, movie: Path, newcomer: Path, moved: Path) -> None:
    """Right after the movie's page source is opened, the movie is moved away and ``newcomer``
    takes its name (another process, say, writing the next movie of that name)."""
    real = C.open_page_source

    def opened_then_replaced(path, options, context=None):
        source = real(path, options, context)
        os.rename(movie, moved)
        os.rename(newcomer, movie)
        return source

    monkeypatch.setattr(C, "open_page_source", opened_then_replaced)


@pytest.mark.parametrize("kind", ["mrc", "tif", "eer"])
def test_the_manifest_describes_the_movie_converted_when_another_file_takes_its_name(
        tmp_path: Path, monkeypatch, kind: str) -> None:
    movie, newcomer, moved = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}", tmp_path / f"moved.{kind}"
    write_movie(movie, kind, 1, 4)
    write_movie(newcomer, kind, 2, 6)  # another size, other bytes
    original_bytes, original_sha256 = movie.stat().st_size, sha256_of(movie)
    out = tmp_path / "out"
    out.mkdir()
    replace_name_once_opened(monkeypatch, movie, newcomer, moved)
    manifest = Manifest(out)
    options = ConvertOptions(output_dir=out, eer_grouping=2)
    result = convert_movie(movie, out / "a.tif", options, context=RunContext(manifest=manifest))
    assert manifest.wait() == []
    assert any("another file took its name while it was being converted" in w for w in result.warnings), result
    entry = read_manifest(out)["a.tif"]
    assert (entry.source_bytes, entry.source_sha256) == (original_bytes, original_sha256)
    assert sha256_of(moved) == original_sha256 and sha256_of(movie) != original_sha256
    assert read_record(out / "a.tif").input_bytes == original_bytes  # the TIFF's own record, too
    assert len(entry.page_sha256) == (2 if kind == "eer" else 4)  # the pages are the original's


def test_a_held_file_that_is_not_the_file_the_pages_are_read_from_fails_the_movie(
        tmp_path: Path, monkeypatch) -> None:
    movie, other = tmp_path / "a.mrc", tmp_path / "other.mrc"
    write_movie(movie, "mrc", 1, 3)
    write_movie(other, "mrc", 2, 3)
    real_held_file = C.HeldFile
    monkeypatch.setattr(C, "HeldFile", lambda path, descriptor=None: real_held_file(other))
    out = tmp_path / "out"
    out.mkdir()
    manifest = Manifest(out)
    with pytest.raises(InputError, match=r"a\.mrc: another file took its name while it was being opened; nothing "
                                         r"was written\. Convert it again\."):
        convert_movie(movie, out / "a.tif", ConvertOptions(output_dir=out), context=RunContext(manifest=manifest))
    assert manifest.wait() == []
    assert not (out / "a.tif").exists() and read_manifest(out) == {}


def test_the_manifest_describes_the_tiff_written_when_another_file_takes_its_name(
        tmp_path: Path, monkeypatch) -> None:
    """Between the rename of a.tif into place and its manifest line (hashed in the background),
    another file takes the name a.tif: the line must describe the TIFF cryotiff wrote (hashed
    through the descriptor that wrote it), not the newcomer; the line used to hash the name, so
    that --verify_only --o, once the originals are gone, called the newcomer OK."""
    from cryotiff.cli import main

    movie = tmp_path / "a.mrc"
    write_movie(movie, "mrc", 1, 4)
    out = tmp_path / "out"
    out.mkdir()
    newcomer, written = tmp_path / "newcomer.tif", tmp_path / "written.tif"
    tifffile.imwrite(newcomer, np.zeros((2, 8, 8), np.uint16), photometric="minisblack", metadata=None)
    real_add_later = Manifest.add_later

    def add_later(self, source, destination, *args, **kwargs):
        os.link(destination, written)  # what cryotiff wrote, kept to compare
        os.replace(newcomer, destination)
        return real_add_later(self, source, destination, *args, **kwargs)

    monkeypatch.setattr(Manifest, "add_later", add_later)
    manifest = Manifest(out)
    result = convert_movie(movie, out / "a.tif", ConvertOptions(output_dir=out), context=RunContext(manifest=manifest))
    assert manifest.wait() == []
    entry = read_manifest(out)["a.tif"]
    assert (entry.output_bytes, entry.output_sha256) == (written.stat().st_size, sha256_of(written))
    expected_record = json.loads(read_record(written).to_description())
    expected_record.pop("cryotiff_record", None)
    assert entry.record == expected_record
    assert result.output_bytes == written.stat().st_size
    monkeypatch.undo()
    assert main(["--verify_only", "--o", str(out)]) == 1  # the newcomer is not what the line describes


def test_a_tiff_written_into_after_its_rename_gets_no_manifest_line_and_a_warning(tmp_path: Path, monkeypatch) -> None:
    """Another program writes into a.tif (the file cryotiff wrote) before its line is made: the
    line would describe bytes cryotiff did not write; the run warns that a.tif is not in the
    manifest instead."""
    movie = tmp_path / "a.mrc"
    write_movie(movie, "mrc", 1, 3)
    out = tmp_path / "out"
    out.mkdir()
    real_add_later = Manifest.add_later

    def add_later(self, source, destination, *args, **kwargs):
        with open(destination, "ab") as handle:
            handle.write(b"more")
        return real_add_later(self, source, destination, *args, **kwargs)

    monkeypatch.setattr(Manifest, "add_later", add_later)
    manifest = Manifest(out)
    convert_movie(movie, out / "a.tif", ConvertOptions(output_dir=out), context=RunContext(manifest=manifest))
    problems = manifest.wait()
    assert len(problems) == 1 and "a.tif is complete but not in the manifest: " in problems[0], problems
    assert "the file changed after it was written" in problems[0]
    assert read_manifest(out) == {} and manifest.unrecorded() == [out / "a.tif"]
