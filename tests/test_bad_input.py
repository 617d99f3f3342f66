"""The bad-input catalogue: every damaged input or failing output gives one clear line naming the
file and the problem, no traceback, leaves no partial output, lets the other movies finish, and
makes the exit status 1."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile

from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames


def good_movie(path: str, seed: int) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 9, (3, 24, 32)).astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 1)
    return frames


def tiff_movie(path: str) -> tuple[np.ndarray, bytearray]:
    """A 3-page deflate TIFF movie; returns its frames and its bytes (to damage)."""
    frames = np.random.default_rng(5).integers(0, 9, (3, 32, 40)).astype(np.uint16)
    tifffile.imwrite(path, frames, compression="zlib", photometric="minisblack")
    return frames, bytearray(Path(path).read_bytes())


def expect_one_clean_failure(
    capsys: pytest.CaptureFixture[str], bad: str, fragment: str, output: str = "out", names: str | None = None
) -> list[str]:
    """Convert ``first.mrc``, ``bad`` and ``last.mrc``: exit status 1, one ERROR line naming
    ``bad`` with ``fragment``, no traceback, no output or temporary file for ``bad``, and the two
    good movies converted exactly. Returns the ERROR lines."""
    first = good_movie("first.mrc", 1)
    last = good_movie("last.mrc", 2)
    status = main(["--i", "first.mrc", bad, "last.mrc", "--o", output])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 1, captured
    assert len(errors) == 1, errors
    assert errors[0].startswith("ERROR: ") and fragment in errors[0], errors
    assert (names or Path(bad).stem) in errors[0], errors  # names the file (input or output)
    assert "Traceback" not in captured.err + captured.out
    stem = Path(bad).with_suffix("")
    assert not (Path(output) / f"{stem}.tif").exists()
    assert not list(Path(output).rglob("*.tmp"))
    np.testing.assert_array_equal(read_tiff_frames(Path(output) / "first.tif"), first)
    np.testing.assert_array_equal(read_tiff_frames(Path(output) / "last.tif"), last)
    assert "Movies converted: 2, skipped: 0, failed: 1" in captured.out
    return errors


# --------------------------------------------------------------------------- inputs


def test_missing_file(in_tmp: Path, capsys) -> None:
    expect_one_clean_failure(capsys, "missing.mrc", "no such file")


def test_empty_file(in_tmp: Path, capsys) -> None:
    Path("empty.mrc").write_bytes(b"")
    expect_one_clean_failure(capsys, "empty.mrc", "the file is empty")


def test_truncated_mrc(in_tmp: Path, capsys) -> None:
    good_movie("short.mrc", 3)
    os.truncate("short.mrc", os.path.getsize("short.mrc") - 100)
    expect_one_clean_failure(capsys, "short.mrc", "truncated")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"hello, I am a text file and not a movie\n" * 40, "not a valid MRC mode"),
        (b"\x89PNG\r\n\x1a\n" + bytes(2000), "is a PNG image, not an MRC file"),
        (b"\x1f\x8b\x08\x00" + bytes(2000), "gzip-compressed"),
        (b"II*\x00" + bytes(2000), "is a TIFF file"),
    ],
    ids=["text", "png", "gzip", "tiff"],
)
def test_a_file_named_mrc_that_is_not_one(in_tmp: Path, capsys, content: bytes, fragment: str) -> None:
    Path("fake.mrc").write_bytes(content)
    expect_one_clean_failure(capsys, "fake.mrc", fragment)


def test_mrc_with_a_garbage_mode(in_tmp: Path, capsys) -> None:
    good_movie("mode.mrc", 3)
    data = bytearray(Path("mode.mrc").read_bytes())
    data[12:16] = struct.pack("<i", 1937006958)  # the MODE word of relion#1244
    Path("mode.mrc").write_bytes(data)
    expect_one_clean_failure(capsys, "mode.mrc", "MODE word is 1937006958")


def test_tiff_with_a_damaged_strip(in_tmp: Path, capsys) -> None:
    _, data = tiff_movie("strip.tif")
    with tifffile.TiffFile("strip.tif") as tif:
        offset, count = tif.pages[1].dataoffsets[0], tif.pages[1].databytecounts[0]
    for index in range(offset + 2, offset + count - 4):
        data[index] ^= 0x5A
    Path("strip.tif").write_bytes(data)
    expect_one_clean_failure(capsys, "strip.tif", "page 2 cannot be decoded")


def test_tiff_whose_first_ifd_offset_is_damaged(in_tmp: Path, capsys) -> None:
    _, data = tiff_movie("ifd0.tif")
    data[4:8] = struct.pack("<I", len(data) + 1000)  # beyond the end of the file
    Path("ifd0.tif").write_bytes(data)
    expect_one_clean_failure(capsys, "ifd0.tif", "ifd0.tif")


def test_a_damaged_tiff_gives_exactly_one_line_outside_pytest(in_tmp: Path) -> None:
    """pytest captures the logging module, so the terminal is checked in a subprocess."""
    import subprocess
    import sys

    _, data = tiff_movie("ifd0.tif")
    data[4:8] = struct.pack("<I", len(data) + 1000)
    Path("ifd0.tif").write_bytes(data)
    completed = subprocess.run([sys.executable, "-m", "cryotiff", "--i", "ifd0.tif", "--o", "out"],
                               capture_output=True, text=True)
    assert completed.returncode == 1
    assert [line for line in completed.stderr.splitlines() if line.strip()] == [
        "ERROR: ifd0.tif: the TIFF file has no image"
    ]


def test_tiff_with_a_damaged_later_ifd(in_tmp: Path, capsys) -> None:
    _, data = tiff_movie("ifd.tif")
    with tifffile.TiffFile("ifd.tif") as tif:
        second_ifd = tif.pages[1].offset
    data[second_ifd : second_ifd + 2] = struct.pack("<H", 60000)  # an absurd tag count
    Path("ifd.tif").write_bytes(data)
    expect_one_clean_failure(capsys, "ifd.tif", "ifd.tif")


# --------------------------------------------------------------------------- outputs


def test_an_output_directory_that_cannot_be_created(in_tmp: Path, capsys) -> None:
    """Tests run as root, where chmod does not stop writes: the movie's output directory would
    have to be made inside a regular file, which fails for root too."""
    good_movie("Movies/bad.mrc", 3)
    Path("out").mkdir()
    Path("out/Movies").write_text("a file where the directory of Movies/bad.tif should go")
    expect_one_clean_failure(capsys, "Movies/bad.mrc", "cannot create the output directory", names="out/Movies")


def test_an_output_root_that_cannot_be_created_stops_before_any_movie(in_tmp: Path, capsys) -> None:
    good_movie("first.mrc", 1)
    Path("plain_file").write_text("not a directory")
    assert main(["--i", "first.mrc", "--o", "plain_file/out"]) == 2  # an unusable --o is a usage error
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "ERROR: plain_file/out: cannot create the output directory (Not a directory)"
    ]


def fail_writes_of(
    monkeypatch: pytest.MonkeyPatch, name: str, error_number: int, after_nbytes: int
) -> Callable[[], int]:
    """Make every write to the TIFF being written for ``name`` fail with ``error_number`` once the
    file would pass ``after_nbytes``; returns a function counting the refused writes."""
    refused = []
    real_write = tifffile.FileHandle.write

    def write(self, data) -> int:
        if self.path.endswith(f"{name}.tif.tmp") and self.tell() + len(data) > after_nbytes:
            refused.append(len(data))
            raise OSError(error_number, os.strerror(error_number))
        return real_write(self, data)

    monkeypatch.setattr(tifffile.FileHandle, "write", write)
    return lambda: len(refused)


def test_a_full_disk(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    good_movie("full.mrc", 3)
    refused = fail_writes_of(monkeypatch, "full", errno.ENOSPC, after_nbytes=1000)  # mid-movie
    errors = expect_one_clean_failure(capsys, "full.mrc", "No space left on device")
    assert "out/full.tif: cannot write" in errors[0]
    assert refused() >= 1


def test_an_output_file_that_cannot_be_created(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file system refuses to create the file (permissions; root ignores chmod, so the refusal
    is simulated where tifffile opens the file)."""
    good_movie("denied.mrc", 3)
    real_open = tifffile.FileHandle.open

    def open_(self) -> None:
        if str(self._file).endswith("denied.tif.tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self._file))
        real_open(self)

    monkeypatch.setattr(tifffile.FileHandle, "open", open_)
    expect_one_clean_failure(capsys, "denied.mrc", "out/denied.tif: cannot write (Permission denied)")


def test_a_quota_exceeded_mid_movie(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    good_movie("quota.mrc", 3)
    fail_writes_of(monkeypatch, "quota", errno.EDQUOT, after_nbytes=1000)
    expect_one_clean_failure(capsys, "quota.mrc", "out/quota.tif: cannot write (Disk quota exceeded)")


def test_a_full_disk_when_renaming(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    good_movie("rename.mrc", 3)
    real_replace = os.replace

    def replace(source, destination) -> None:
        if str(source).endswith("rename.tif.tmp"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    expect_one_clean_failure(capsys, "rename.mrc", "cannot rename the finished file")
