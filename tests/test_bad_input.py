"""The bad-input catalogue: every damaged input or failing output gives one clear line naming the
file and the problem, no traceback, leaves no partial output, lets the other movies finish, and
makes the exit status 1."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import is_temporary_of, read_tiff_frames


def good_movie(path: str, seed: int) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 9, (3, 24, 32)).astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=1.05)  # no pixel-size warning
    return frames


def tiff_movie(path: str) -> tuple[np.ndarray, bytearray]:
    """A 3-page deflate TIFF movie; returns its frames and its bytes (to damage)."""
    frames = np.random.default_rng(5).integers(0, 9, (3, 32, 40)).astype(np.uint16)
    tifffile.imwrite(path, frames, compression="zlib", photometric="minisblack")
    return frames, bytearray(Path(path).read_bytes())


def expect_one_clean_failure(
    capsys: pytest.CaptureFixture[str],
    bad: str,
    fragment: str,
    output: str = "out",
    names: str | None = None,
    eer_grouping: str | None = None,
) -> list[str]:
    """Convert ``first.mrc``, ``bad`` and ``last.mrc``: exit status 1, one ERROR line naming
    ``bad`` with ``fragment``, no traceback, no output or temporary file for ``bad``, and the two
    good movies converted exactly. Returns the ERROR lines."""
    first = good_movie("first.mrc", 1)
    last = good_movie("last.mrc", 2)
    extra = ["--eer_grouping", eer_grouping] if eer_grouping else []
    status = main(["--i", "first.mrc", bad, "last.mrc", "--o", output, *extra])
    captured = capsys.readouterr()
    # Besides the one error, only RELION's warning that EER movies need their gain converted.
    errors = [line for line in captured.err.splitlines()
              if line.strip() and not line.startswith("WARNING: Note that an EER gain reference")]
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
        "ERROR: ifd0.tif: the TIFF file has no readable image: its header puts the first page (IFD) at byte "
        f"{len(data) + 1000}, beyond the end of the file ({len(data)} bytes); the file is truncated or damaged"
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
        if is_temporary_of(self.path, f"{name}.tif") and self.tell() + len(data) > after_nbytes:
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
    real_open = os.open

    def open_(path, flags, *args, **kwargs) -> int:
        if is_temporary_of(path, "denied.tif"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    expect_one_clean_failure(capsys, "denied.mrc", "out/denied.tif: cannot write (Permission denied)")


def test_a_quota_exceeded_mid_movie(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    good_movie("quota.mrc", 3)
    fail_writes_of(monkeypatch, "quota", errno.EDQUOT, after_nbytes=1000)
    expect_one_clean_failure(capsys, "quota.mrc", "out/quota.tif: cannot write (Disk quota exceeded)")


def test_a_full_disk_when_renaming(in_tmp: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    good_movie("rename.mrc", 3)
    real_replace = os.replace

    def replace(source, destination, **directories) -> None:  # src_dir_fd, dst_dir_fd (io.atomic)
        if is_temporary_of(source, "rename.tif"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, destination, **directories)

    monkeypatch.setattr(os, "replace", replace)
    expect_one_clean_failure(capsys, "rename.mrc", "cannot rename the finished file")


# --------------------------------------------------------------------------- EER and gains


def small_eer(path: str, seed: int, n_frames: int = 6, damaged_frame: int | None = None) -> list:
    """A 2048 x 2048 (Falcon 4i 2K-style) EER movie with few events; ``damaged_frame`` (0-based)
    gets half of its bitstream cut off. Returns the events of every frame."""
    from cryotiff.simulate.eer import encode_frame, random_events, write_eer

    events = random_events(np.random.default_rng(seed), 2048, n_frames, 0.002)
    streams = [encode_frame(frame, 2048) for frame in events]
    if damaged_frame is not None:
        streams[damaged_frame] = streams[damaged_frame][: len(streams[damaged_frame]) // 2]
    write_eer(path, streams, 2048)
    return events


DAMAGED_FRAME_3_WARNING = ("WARNING: The number of pixels is not right in bad.eer frame 3. Probably this frame "
                           "is corrupted. This frame is skipped.")


@pytest.mark.parametrize("accept", [False, True])
def test_a_damaged_eer_frame_is_left_out_with_relions_warning(in_tmp: Path, capsys, accept: bool) -> None:
    """The movie is written without the damaged frame (RELION's output), the warning names it, the
    summary counts it, and the exit status is 1 unless --ignore_error accepts the loss."""
    from cryotiff.simulate.eer import expected_render

    events = small_eer("bad.eer", 3, damaged_frame=2)
    small_eer("good.eer", 4)
    args = ["--i", "*.eer", "--o", "out", "--eer_grouping", "3", "--report", "out/report.json"]
    status = main(args + ["--ignore_error"] * accept)
    assert status == (0 if accept else 1)
    captured = capsys.readouterr()
    assert captured.err.count("WARNING: The number of pixels is not right") == 1
    assert DAMAGED_FRAME_3_WARNING in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "Movies converted: 2, skipped: 0, failed: 0" in captured.out
    summary_line = "Damaged raw EER frames left out: 1 in 1 movie (each named by a WARNING above); "
    assert summary_line + ("accepted with --ignore_error" if accept
                           else "exit status 1 (--ignore_error accepts them)") in captured.out
    pages = read_tiff_frames(Path("out/bad.tif"))
    np.testing.assert_array_equal(pages[0], expected_render(events[0:2], 2048, 1, 2))  # without frame 3
    np.testing.assert_array_equal(pages[1], expected_render(events[3:6], 2048, 1, 2))
    report = json.loads(Path("out/report.json").read_text())
    assert report["totals"]["damaged_eer_frames"] == 1
    assert report["exit_status"] == status
    assert not list(Path("out").glob("*.tmp"))


def float_movie_and_gain(name: str, gain_shape_yx: tuple[int, int]) -> None:
    """A gain-normalised float movie of 48 x 64 pixels and a gain estimate (with its reliability
    map, RELION's spelling) of another shape."""
    rng = np.random.default_rng(4)
    gain = rng.uniform(0.8, 1.2, (48, 64)).astype(np.float32)
    write_mrc_movie(Path(name), (rng.poisson(2.0, (3, 48, 64)) * gain).astype(np.float32), 2)
    write_mrc_movie(Path("gain.mrc"), rng.uniform(0.8, 1.2, gain_shape_yx).astype(np.float32), 2)
    write_mrc_movie(Path("gain_reliablity.mrc"), np.full(gain_shape_yx, 100, np.int16), 1)


@pytest.mark.parametrize(
    "gain_shape_yx, hint",
    [((64, 48), "the gain is transposed"), ((96, 128), "the gain is twice the movie size"),
     ((24, 32), "the gain is half the movie size"), ((50, 64), "Frames are 64 x 48, the gain is 64 x 50")],
    ids=["transposed", "2x", "half", "other"],
)
def test_a_gain_of_the_wrong_size(in_tmp: Path, capsys, gain_shape_yx: tuple[int, int], hint: str) -> None:
    """The float movie fails naming the sizes and the likely cause; the integer movies convert;
    no gain-reference.mrc is written for a gain that fits no movie."""
    float_movie_and_gain("float.mrc", gain_shape_yx)
    first = good_movie("first.mrc", 1)
    assert main(["--i", "first.mrc", "float.mrc", "--o", "out", "--gain", "gain.mrc"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "float.mrc" in errors[0] and hint in errors[0], errors
    assert "gain.mrc" in captured.err and "gain-reference.mrc is not written" in captured.err
    assert "Traceback" not in captured.err
    assert not Path("out/gain-reference.mrc").exists()
    assert not Path("out/float.tif").exists() and not list(Path("out").rglob("*.tmp"))
    np.testing.assert_array_equal(read_tiff_frames(Path("out/first.tif")), first)


@pytest.mark.parametrize(
    "gain_size, hint", [(1024, "(half the expected size)"), (2000, "expected X = 2048 Y = 2048")], ids=["half", "other"]
)
def test_an_eer_gain_of_the_wrong_size_stops_before_any_movie(in_tmp: Path, capsys, gain_size: int, hint: str) -> None:
    small_eer("movie.eer", 1)
    write_mrc_movie(Path("eer_gain.mrc"), np.ones((1, gain_size, gain_size), np.float32), 2)
    assert main(["--i", "movie.eer", "--o", "out", "--gain", "eer_gain.mrc", "--eer_grouping", "3"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        line for line in captured.err.strip().splitlines() if line.startswith("ERROR: eer_gain.mrc: ")
    ]
    assert hint in captured.err and "Traceback" not in captured.err
    assert not Path("out/movie.tif").exists() and not Path("out/gain-reference.mrc").exists()


# --------------------------------------------------------------------------- fuzzing the EER reader


def _fuzz_eer_base() -> tuple[bytes, int]:
    """A small valid EER file and the offset of its first IFD (cryotiff.simulate.eer writes the
    frame data first and the IFDs after it, as real EER files are laid out)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.eer"
        small_eer(str(path), 9, n_frames=3)
        with tifffile.TiffFile(path) as tif:
            first_ifd = min(page.offset for page in tif.pages)
        return path.read_bytes(), first_ifd


_EER_BASE, _EER_FIRST_IFD = _fuzz_eer_base()


class _Hang(Exception):
    """Raised by SIGALRM: the reader took far too long (a hang)."""


def _on_alarm(signum, frame) -> None:
    raise _Hang()


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header_edits=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)), max_size=2),
    ifd_edits=st.lists(st.tuples(st.integers(_EER_FIRST_IFD, len(_EER_BASE) - 1), st.integers(0, 255)), max_size=6),
    data_edits=st.lists(st.tuples(st.integers(16, _EER_FIRST_IFD - 1), st.integers(0, 255)), max_size=6),
    length=st.one_of(st.none(), st.integers(0, len(_EER_BASE) + 64)),
    upsampling=st.sampled_from([1, 2, -1]),
)
# A BigTIFF header whose first IFD offset does not fit a seek (found once by this test).
@example(header_edits=[(4, 0), (15, 128)], ifd_edits=[], data_edits=[], length=None, upsampling=1)
def test_fuzzed_eer_files_fail_cleanly(
    header_edits: list[tuple[int, int]],
    ifd_edits: list[tuple[int, int]],
    data_edits: list[tuple[int, int]],
    length: int | None,
    upsampling: int,
) -> None:
    """Mutated EER files: opening, reading and rendering every frame either works or raises one of
    cryotiff's own errors; never another exception, a crash or a hang (60 s per file: a tiny file
    takes milliseconds, the margin is for a machine loaded by other work, where 10 s was seen to
    run out)."""
    import signal
    import tempfile

    from cryotiff.errors import CryotiffError
    from cryotiff.io.eer import EerMovie

    data = bytearray(_EER_BASE)
    for offset, value in header_edits + ifd_edits + data_edits:
        data[offset] = value
    if length is not None:
        data = data[:length] if length <= len(data) else data + b"\x00" * (length - len(data))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(60)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "fuzz.eer"
            path.write_bytes(bytes(data))
            try:
                with EerMovie(path) as movie:
                    n_frames = movie.info.n_frames
                    assert n_frames >= 1
                    for index in range(n_frames):
                        frame = movie.read_frame(index)
                        assert frame.shape == movie.info.shape_yx
                    movie.check_upsampling(upsampling)
                    result = movie.render(0, n_frames, upsampling)
                    assert result.counts.shape == (movie.output_size(upsampling),) * 2
            except CryotiffError:
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_unmodified_fuzz_base_reads() -> None:
    import tempfile

    from cryotiff.io.eer import EerMovie

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.eer"
        path.write_bytes(_EER_BASE)
        with EerMovie(path) as movie:
            assert movie.info.n_frames == 3
            assert movie.render(0, 3, 1).corrupt_frames == []
