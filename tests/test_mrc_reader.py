"""Tests of the MRC reader (cryotiff.io.mrc) and the MRC writer (cryotiff.simulate.write)."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mrcfile.dtypes import HEADER_DTYPE

from cryotiff.errors import CryotiffError, InputError, MrcFormatError
from cryotiff.io.mrc import (
    MODE_DTYPES,
    open_mrc,
    read_mrc_header,
    read_mrc_image,
    read_mrc_mode,
    unpack_mode101,
)
from cryotiff.simulate.write import pack_mode101, write_mrc_movie

from .helpers import real_data

FALCON = "falcon_epu2.9_single_frame.mrc"
K2 = "k2_epu1.2_single_frame.mrc"


# ----------------------------------------------------------------------------------------------
# helpers

def _random_frames(mode: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Frames spanning the whole value range of ``mode``."""
    rng = np.random.default_rng(seed)
    if mode == 101:
        return rng.integers(0, 16, shape).astype(np.int8)
    dtype = MODE_DTYPES[mode]
    if dtype.kind == "f":
        values = rng.normal(0.0, 1000.0, shape).astype(dtype)
        values.flat[0] = -0.0
        values.flat[-1] = np.finfo(dtype).max
        return values
    info = np.iinfo(dtype)
    values = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    values.flat[0], values.flat[-1] = info.min, info.max
    return values


def _all_frames(path: Path) -> np.ndarray:
    with open_mrc(path) as movie:
        return np.stack(list(movie.iter_frames()))


def _patch_field(path: Path, field: str, value: int | float, byte_order: str = "<") -> None:
    """Overwrite one header field (by its name in mrcfile's HEADER_DTYPE) in place."""
    dtype, offset = HEADER_DTYPE.fields[field][:2]
    packed = np.array(value, dtype=dtype.newbyteorder(byte_order)).tobytes()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(packed)


def _patch_bytes(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def small_movie(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = _random_frames(1, (3, 4, 5))
    return write_mrc_movie(tmp_path / "small.mrc", frames, 1, pixel_size_angstrom=1.1), frames


# ----------------------------------------------------------------------------------------------
# round trips

@pytest.mark.parametrize("mode", [0, 1, 2, 6, 12])
@pytest.mark.parametrize("big_endian", [False, True])
def test_round_trip_every_mode(tmp_path: Path, mode: int, big_endian: bool) -> None:
    frames = _random_frames(mode, (3, 6, 7), seed=mode)
    path = write_mrc_movie(tmp_path / "m.mrcs", frames, mode, big_endian=big_endian)
    with open_mrc(path) as movie:
        info = movie.info
        assert info.kind == "mrc"
        assert info.mrc_mode == mode
        assert info.n_frames == 3
        assert info.shape_yx == (6, 7)
        assert info.dtype == MODE_DTYPES[mode]
        assert info.frame_nbytes == 6 * 7 * MODE_DTYPES[mode].itemsize
        assert info.extra["byte_order"] == (">" if big_endian else "<")
        assert info.extra["header_warnings"] == ()
        for k in range(3):
            frame = movie.read_frame(k)
            assert frame.dtype == MODE_DTYPES[mode] and frame.dtype.isnative
            assert frame.flags.c_contiguous
            np.testing.assert_array_equal(frame, frames[k])
    # mrcfile reads our files to the same values
    with mrcfile.open(path, permissive=True) as reference:
        np.testing.assert_array_equal(reference.data, frames)


def test_mode0_is_signed(tmp_path: Path) -> None:
    frames = np.array([[[-128, -1, 0, 127]]], dtype=np.int8)
    path = write_mrc_movie(tmp_path / "m0.mrc", frames, 0)
    frame = _all_frames(path)[0]
    assert frame.dtype == np.int8
    np.testing.assert_array_equal(frame, [[-128, -1, 0, 127]])


@pytest.mark.parametrize("mode", [0, 1, 2, 6])
def test_written_little_endian_files_pass_mrcfile_validation(tmp_path: Path, mode: int) -> None:
    frames = np.random.default_rng(mode).integers(0, 100, (2, 4, 4))  # float32 header statistics stay exact
    path = write_mrc_movie(tmp_path / "v.mrc", frames, mode, pixel_size_angstrom=1.0)
    with open(os.devnull, "w") as sink:
        assert mrcfile.validate(path, print_file=sink)


@pytest.mark.parametrize("nx", [1, 2, 5, 6, 7, 10])
@pytest.mark.parametrize("big_endian", [False, True])
def test_mode101_round_trip_odd_and_even_widths(tmp_path: Path, nx: int, big_endian: bool) -> None:
    frames = _random_frames(101, (3, 5, nx), seed=nx)
    path = write_mrc_movie(tmp_path / "m101.mrc", frames, 101, big_endian=big_endian, extended_header_bytes=3)
    assert path.stat().st_size == 1024 + 3 + 3 * 5 * ((nx + 1) // 2)
    with open_mrc(path) as movie:
        assert movie.info.mrc_mode == 101
        assert movie.info.dtype == np.int8
        assert movie.info.frame_nbytes == 5 * ((nx + 1) // 2)
        assert movie.info.shape_yx == (5, nx)
        for k in range(3):
            frame = movie.read_frame(k)
            assert frame.dtype == np.int8 and frame.flags.c_contiguous
            np.testing.assert_array_equal(frame, frames[k])
    assert read_mrc_mode(path) == 101


def test_mode101_nibble_order_and_row_padding_from_raw_bytes(tmp_path: Path) -> None:
    """Independent of the writer: bytes built by hand following IMOD's description."""
    # nx = 3, ny = 2: each row is 2 bytes, the high nibble of the second byte is padding.
    # row 0 = 1, 2, 3 -> 0x21, 0xF3 (padding nibble set to 15 to prove it is ignored)
    # row 1 = 4, 5, 6 -> 0x54, 0x06
    header = np.zeros((), dtype=HEADER_DTYPE.newbyteorder("<"))
    header["nx"], header["ny"], header["nz"], header["mode"] = 3, 2, 1, 101
    header["map"] = b"MAP "
    header["machst"] = [0x44, 0x44, 0, 0]
    path = tmp_path / "hand.mrc"
    path.write_bytes(header.tobytes() + bytes([0x21, 0xF3, 0x54, 0x06]))
    np.testing.assert_array_equal(_all_frames(path)[0], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(pack_mode101(np.array([[1, 2, 3], [4, 5, 6]])), [[0x21, 0x03], [0x54, 0x06]])
    np.testing.assert_array_equal(unpack_mode101(np.array([[0x21, 0xF3]], np.uint8), 3), [[1, 2, 3]])


def test_writer_rejects_values_that_do_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_mrc_movie(tmp_path / "x.mrc", np.array([[16]]), 101)
    with pytest.raises(ValueError):
        write_mrc_movie(tmp_path / "x.mrc", np.array([[-1]]), 6)
    with pytest.raises(ValueError):
        write_mrc_movie(tmp_path / "x.mrc", np.array([[0.5]]), 1)
    with pytest.raises(ValueError):
        write_mrc_movie(tmp_path / "x.mrc", np.array([[1]]), 3)


# ----------------------------------------------------------------------------------------------
# byte order

@pytest.mark.parametrize("mode", [1, 2, 6, 101, 0])
def test_big_endian_with_blank_machine_stamp(tmp_path: Path, mode: int) -> None:
    frames = _random_frames(mode, (2, 3, 4), seed=7)
    path = write_mrc_movie(tmp_path / "be.mrc", frames, mode, big_endian=True)
    _patch_bytes(path, 212, b"\x00\x00\x00\x00")  # machine stamp
    with open_mrc(path) as movie:
        assert movie.info.extra["byte_order"] == ">"
        assert movie.info.extra["header_warnings"]  # the tolerated problem is recorded
        np.testing.assert_array_equal(np.stack(list(movie.iter_frames())), frames)
    assert read_mrc_mode(path) == mode


def test_big_endian_mode0_with_blank_machine_stamp_and_plausible_swapped_sizes(tmp_path: Path) -> None:
    """Read little-endian, NX = NY = 256 become 65536 and NZ = 1 becomes 2**24: still sane-looking
    numbers, but the data block would not fit in the file, so the other byte order is chosen."""
    frames = _random_frames(0, (1, 256, 256))
    path = write_mrc_movie(tmp_path / "be0.mrc", frames, 0, big_endian=True)
    _patch_bytes(path, 212, b"\x00\x00\x00\x00")
    with open_mrc(path) as movie:
        assert movie.info.extra["byte_order"] == ">"
        assert movie.info.shape_yx == (256, 256) and movie.info.n_frames == 1
        np.testing.assert_array_equal(movie.read_frame(0), frames[0])


def test_little_endian_with_blank_machine_stamp(tmp_path: Path) -> None:
    frames = _random_frames(6, (2, 3, 4))
    path = write_mrc_movie(tmp_path / "le.mrc", frames, 6)
    _patch_bytes(path, 212, b"\x00\x00\x00\x00")
    with open_mrc(path) as movie:
        assert movie.info.extra["byte_order"] == "<"
        assert any("machine stamp" in w.lower() for w in movie.info.extra["header_warnings"])
        np.testing.assert_array_equal(movie.read_frame(1), frames[1])


def test_big_endian_file_has_big_endian_stamp(tmp_path: Path) -> None:
    path = write_mrc_movie(tmp_path / "be.mrc", _random_frames(1, (1, 2, 2)), 1, big_endian=True)
    raw = path.read_bytes()
    assert raw[212:214] == b"\x11\x11"
    assert struct.unpack(">i", raw[12:16])[0] == 1


# ----------------------------------------------------------------------------------------------
# extended header, pixel size, 2D files

@pytest.mark.parametrize("nsymbt", [0, 1, 131, 3072])
def test_extended_header_is_skipped(tmp_path: Path, nsymbt: int) -> None:
    frames = _random_frames(6, (2, 4, 3))
    path = write_mrc_movie(tmp_path / "ext.mrc", frames, 6, extended_header_bytes=nsymbt, exttyp=b"FEI2")
    with open_mrc(path) as movie:
        assert movie.info.extra["nsymbt"] == nsymbt
        assert movie.info.extra["data_offset_bytes"] == 1024 + nsymbt
        assert movie.info.extra["exttyp"] == ("FEI2" if nsymbt else "")
        np.testing.assert_array_equal(np.stack(list(movie.iter_frames())), frames)


def test_pixel_size(tmp_path: Path) -> None:
    frames = _random_frames(1, (1, 4, 8))
    path = write_mrc_movie(tmp_path / "px.mrc", frames, 1, pixel_size_angstrom=0.83)
    with open_mrc(path) as movie:
        assert movie.info.pixel_size_angstrom == pytest.approx(0.83, rel=1e-6)
    path = write_mrc_movie(tmp_path / "nopx.mrc", frames, 1)
    with open_mrc(path) as movie:
        assert movie.info.pixel_size_angstrom is None
    path = write_mrc_movie(tmp_path / "mx0.mrc", frames, 1, pixel_size_angstrom=0.83)
    _patch_field(path, "mx", 0)
    with open_mrc(path) as movie:
        assert movie.info.pixel_size_angstrom is None
        np.testing.assert_array_equal(movie.read_frame(0), frames[0])


def test_single_image_and_volume_are_movies_of_nz_frames(tmp_path: Path) -> None:
    image = _random_frames(2, (1, 5, 6))[0]
    path = write_mrc_movie(tmp_path / "img.mrc", image, 2)  # 2D input -> nz = 1
    with open_mrc(path) as movie:
        assert movie.info.n_frames == 1
        np.testing.assert_array_equal(movie.read_frame(0), image)
    frames = _random_frames(2, (3, 5, 6))
    path = write_mrc_movie(tmp_path / "vol.mrc", frames, 2)
    _patch_field(path, "ispg", 1)  # a "volume": still NZ frames, as in RELION
    _patch_field(path, "mz", 3)
    np.testing.assert_array_equal(_all_frames(path), frames)


def test_read_mrc_image(tmp_path: Path) -> None:
    gain = _random_frames(6, (2, 4, 5))
    path = write_mrc_movie(tmp_path / "gain.mrc", gain, 6, pixel_size_angstrom=1.25)
    image, pixel_size = read_mrc_image(path)
    assert image.dtype == np.float32 and image.shape == (4, 5)
    np.testing.assert_array_equal(image, gain[0].astype(np.float32))
    assert pixel_size == pytest.approx(1.25)


def test_trailing_bytes_are_ignored(tmp_path: Path, small_movie: tuple[Path, np.ndarray]) -> None:
    path, frames = small_movie
    with open(path, "ab") as handle:
        handle.write(b"junk")
    with open_mrc(path) as movie:
        assert movie.info.extra["trailing_bytes"] == 4
        np.testing.assert_array_equal(np.stack(list(movie.iter_frames())), frames)


# ----------------------------------------------------------------------------------------------
# frames: copies, threads, closing

def test_read_frame_returns_fresh_writeable_copies(small_movie: tuple[Path, np.ndarray]) -> None:
    path, frames = small_movie
    with open_mrc(path) as movie:
        first = movie.read_frame(0)
        assert first.flags.writeable and first.flags.owndata
        first[...] = 0
        np.testing.assert_array_equal(movie.read_frame(0), frames[0])


@pytest.mark.parametrize("mode", [0, 1, 2, 6, 12])
@pytest.mark.parametrize("big_endian", [False, True])
def test_read_frame_into_an_earlier_frame(tmp_path: Path, mode: int, big_endian: bool) -> None:
    """``out``: the frame is read into the array given (the same values as a fresh read, swapped
    to native order), and only into one that fits exactly; the others are left untouched."""
    frames = _random_frames(mode, (3, 6, 7), seed=mode + 10)
    path = write_mrc_movie(tmp_path / "m.mrc", frames, mode, big_endian=big_endian)
    with open_mrc(path) as movie:
        assert movie.reads_into
        earlier = movie.read_frame(0)
        again = movie.read_frame(2, out=earlier)
        assert again is earlier
        np.testing.assert_array_equal(again, frames[2])
        dtype = MODE_DTYPES[mode]
        unfit = [np.zeros((6, 8), dtype), np.zeros((6, 7), np.float64 if dtype.itemsize != 8 else np.int8),
                 np.zeros((7, 6), dtype).T, np.zeros((6, 14), dtype)[:, ::2]]
        read_only = np.zeros((6, 7), dtype)
        read_only.flags.writeable = False
        for out in [*unfit, read_only]:
            before = out.copy()
            fresh = movie.read_frame(1, out=out)
            assert fresh is not out
            np.testing.assert_array_equal(fresh, frames[1])
            np.testing.assert_array_equal(out, before)


def test_packed_4bit_frames_are_never_read_into_a_given_array(tmp_path: Path) -> None:
    frames = _random_frames(101, (2, 6, 7))
    path = write_mrc_movie(tmp_path / "m.mrc", frames, 101)
    with open_mrc(path) as movie:
        earlier = movie.read_frame(0)
        second = movie.read_frame(1, out=earlier)
        assert second is not earlier
        np.testing.assert_array_equal(second, frames[1])
        np.testing.assert_array_equal(earlier, frames[0])


def test_a_frame_recycler_reads_only_into_frames_given_back(tmp_path: Path) -> None:
    """Frames still in use are never overwritten: only frames given back are read into, views
    and frames of another shape or type are not taken, and it keeps at most ``capacity``."""
    from cryotiff.io import FrameRecycler

    frames = _random_frames(6, (6, 5, 4), seed=3)
    path = write_mrc_movie(tmp_path / "m.mrc", frames, 6, big_endian=True)
    with open_mrc(path) as movie:
        recycler = FrameRecycler(movie, capacity=2)
        held = [recycler.read(k) for k in range(3)]
        assert len({id(frame) for frame in held}) == 3
        recycler.give_back(held[0][1:])  # a view
        recycler.give_back(held[0].astype(np.int32))  # another type
        recycler.give_back(np.zeros((4, 5), np.uint16))  # another shape
        assert recycler.read(3) is not held[0]
        for frame in held:
            recycler.give_back(frame)
        again = [recycler.read(4), recycler.read(5), recycler.read(0)]
        assert {id(frame) for frame in again[:2]} <= {id(frame) for frame in held}
        assert all(again[2] is not frame for frame in held)  # only two were kept
        for index, frame in zip((4, 5, 0), again):
            np.testing.assert_array_equal(frame, frames[index])


def test_read_frame_from_many_threads(tmp_path: Path) -> None:
    frames = _random_frames(6, (40, 16, 16))
    path = write_mrc_movie(tmp_path / "many.mrc", frames, 6, big_endian=True)
    order = list(range(40)) * 5
    with open_mrc(path) as movie, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(movie.read_frame, order))
    for index, frame in zip(order, results):
        np.testing.assert_array_equal(frame, frames[index])


def test_close_is_idempotent_and_releases_the_file(small_movie: tuple[Path, np.ndarray]) -> None:
    path, _ = small_movie
    before = _open_fds()
    movie = open_mrc(path)
    assert _open_fds() == before + 1
    movie.close()
    movie.close()
    assert _open_fds() == before
    with pytest.raises(ValueError):
        movie.read_frame(0)


def test_frame_index_out_of_range(small_movie: tuple[Path, np.ndarray]) -> None:
    path, _ = small_movie
    with open_mrc(path) as movie:
        for index in (-1, 3):
            with pytest.raises(IndexError):
                movie.read_frame(index)


def test_close_waits_for_reads_in_progress(tmp_path: Path) -> None:
    frames = _random_frames(2, (30, 64, 64))
    path = write_mrc_movie(tmp_path / "c.mrc", frames, 2)
    movie = open_mrc(path)
    errors: list[BaseException] = []

    def reader() -> None:
        for k in range(30):
            try:
                np.testing.assert_array_equal(movie.read_frame(k), frames[k])
            except ValueError as err:  # closed: the only acceptable failure
                assert "closed" in str(err)
                return
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    movie.close()
    for thread in threads:
        thread.join()
    assert not errors


def test_truncated_after_open(small_movie: tuple[Path, np.ndarray]) -> None:
    path, frames = small_movie
    with open_mrc(path) as movie:
        os.truncate(path, path.stat().st_size - 3)
        np.testing.assert_array_equal(movie.read_frame(0), frames[0])
        with pytest.raises(MrcFormatError, match="truncated"):
            movie.read_frame(2)


# ----------------------------------------------------------------------------------------------
# errors

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as excinfo:
        open_mrc(tmp_path / "absent.mrc")
    assert "absent.mrc" in str(excinfo.value)
    with pytest.raises(InputError):
        read_mrc_mode(tmp_path / "absent.mrc")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory"):
        open_mrc(tmp_path)


def test_named_pipe_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mrc"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        open_mrc(fifo)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "empty"),
        (b"\x00" * 1023, "shorter than the 1024-byte"),
        (b"hello, this is text\n" * 10, "shorter than the 1024-byte"),
        (b"this is a text file, not a movie\n" * 100, "not a valid MRC mode"),
        (b"\x00" * 2048, "NX is 0"),
    ],
)
def test_not_mrc(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "fake.mrc"
    path.write_bytes(content)
    with pytest.raises(MrcFormatError, match=pattern) as excinfo:
        open_mrc(path)
    assert "fake.mrc" in str(excinfo.value)


def test_tiff_named_mrc(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "movie.mrc"
    tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(MrcFormatError, match="TIFF"):
        open_mrc(path)


def test_gzipped_mrc(tmp_path: Path, small_movie: tuple[Path, np.ndarray]) -> None:
    path, _ = small_movie
    gz = tmp_path / "small.mrc"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(MrcFormatError, match="gzip"):
        open_mrc(gz)


@pytest.mark.parametrize("mode", [3, 4])
def test_complex_modes_refused(small_movie: tuple[Path, np.ndarray], mode: int) -> None:
    path, _ = small_movie
    _patch_field(path, "mode", mode)
    with pytest.raises(MrcFormatError, match="complex data"):
        open_mrc(path)
    assert read_mrc_mode(path) == mode


@pytest.mark.parametrize("mode", [154285104, 5, 7, 100, -1, 16])
def test_garbage_mode(small_movie: tuple[Path, np.ndarray], mode: int) -> None:
    path, _ = small_movie
    _patch_field(path, "mode", mode)
    with pytest.raises(MrcFormatError, match="not a valid MRC mode") as excinfo:
        open_mrc(path)
    assert str(mode) in str(excinfo.value)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("nx", 0, "NX is 0"),
        ("ny", -5, "NY is -5"),
        ("nz", 0, "NZ is 0"),
        ("nx", 1 << 30, "absurd"),
        ("nz", 1 << 30, "absurd"),
        ("nsymbt", -4, "NSYMBT"),
        ("nsymbt", 1 << 30, "extended header of 1073741824 bytes"),
    ],
)
def test_bad_dimensions(small_movie: tuple[Path, np.ndarray], field: str, value: int, pattern: str) -> None:
    path, _ = small_movie
    _patch_field(path, field, value)
    with pytest.raises(MrcFormatError, match=pattern):
        open_mrc(path)


def test_truncated_data(small_movie: tuple[Path, np.ndarray]) -> None:
    path, _ = small_movie  # 3 frames of 4 x 5 int16 = 40 bytes each
    os.truncate(path, 1024 + 40 * 2 + 7)
    with pytest.raises(MrcFormatError) as excinfo:
        open_mrc(path)
    message = str(excinfo.value)
    assert "truncated" in message and "small.mrc" in message
    assert "33 bytes missing" in message
    assert "2 of 3 frames complete" in message


def test_header_only_file(small_movie: tuple[Path, np.ndarray]) -> None:
    path, _ = small_movie
    os.truncate(path, 1024)
    with pytest.raises(MrcFormatError, match="0 of 3 frames complete"):
        open_mrc(path)


def test_read_mrc_header_fields(tmp_path: Path) -> None:
    path = write_mrc_movie(
        tmp_path / "h.mrc", _random_frames(12, (2, 3, 4)), 12, pixel_size_angstrom=2.0,
        extended_header_bytes=8, exttyp=b"SERI",
    )
    header = read_mrc_header(path)
    assert (header.nx, header.ny, header.nz, header.mode) == (4, 3, 2, 12)
    assert (header.nsymbt, header.exttyp, header.byte_order) == (8, "SERI", "<")
    assert header.has_map_id and header.pixel_size_angstrom == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# fuzzing

_FUZZ_FRAMES = _random_frames(101, (3, 4, 5), seed=11)


def _fuzz_base() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = write_mrc_movie(
            Path(folder) / "base.mrc", _FUZZ_FRAMES, 101, pixel_size_angstrom=1.0, extended_header_bytes=12
        )
        return path.read_bytes()


_FUZZ_BASE = _fuzz_base()
_INT_FIELD_OFFSETS = [HEADER_DTYPE.fields[name][1] for name in ("nx", "ny", "nz", "mode", "mx", "nsymbt", "ispg")]


@settings(max_examples=300, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field_edits=st.lists(
        st.tuples(st.sampled_from(_INT_FIELD_OFFSETS), st.integers(-(2**31), 2**31 - 1)), max_size=3
    ),
    byte_edits=st.lists(
        st.tuples(st.integers(0, len(_FUZZ_BASE) - 1), st.integers(0, 255)), max_size=8
    ),
    small_field_values=st.lists(
        st.tuples(st.sampled_from(_INT_FIELD_OFFSETS), st.integers(-2, 40)), max_size=3
    ),
    big_endian_fields=st.booleans(),
    length=st.one_of(st.none(), st.integers(0, len(_FUZZ_BASE) + 16)),
)
def test_fuzzed_files_fail_cleanly(
    field_edits: list[tuple[int, int]],
    byte_edits: list[tuple[int, int]],
    small_field_values: list[tuple[int, int]],
    big_endian_fields: bool,
    length: int | None,
) -> None:
    data = bytearray(_FUZZ_BASE)
    fmt = ">i" if big_endian_fields else "<i"
    for offset, value in field_edits + small_field_values:
        data[offset : offset + 4] = struct.pack(fmt, value)
    for offset, value in byte_edits:  # the base is mostly header: 1024 + 12 + 36 bytes
        data[offset] = value
    if length is not None:
        data = data[:length] if length <= len(data) else data + b"\x00" * (length - len(data))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.mrc"
        path.write_bytes(bytes(data))
        try:
            with open_mrc(path) as movie:
                info = movie.info
                assert info.n_frames >= 1
                for frame in movie.iter_frames():
                    assert frame.shape == info.shape_yx and frame.dtype == info.dtype
        except CryotiffError:
            pass
        try:
            read_mrc_mode(path)
        except CryotiffError:
            pass


def test_unmodified_fuzz_base_is_read() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.mrc"
        path.write_bytes(_FUZZ_BASE)
        np.testing.assert_array_equal(_all_frames(path), _FUZZ_FRAMES)


# ----------------------------------------------------------------------------------------------
# real EPU files

@pytest.mark.parametrize(
    ("name", "shape_yx", "pixel_size", "exttyp", "nsymbt"),
    [
        (FALCON, (4096, 4096), 0.6666, "FEI2", 909312),
        (K2, (3838, 3710), 0.8538, "FEI1", 786432),
    ],
    ids=["falcon", "k2"],
)
def test_real_epu_files(name: str, shape_yx: tuple[int, int], pixel_size: float, exttyp: str, nsymbt: int) -> None:
    path = real_data(name)
    with open_mrc(path) as movie:
        info = movie.info
        assert info.mrc_mode == 6
        assert info.dtype == np.uint16
        assert info.n_frames == 1
        assert info.shape_yx == shape_yx
        assert info.frame_nbytes == shape_yx[0] * shape_yx[1] * 2
        assert info.pixel_size_angstrom == pytest.approx(pixel_size, abs=1e-4)
        assert info.extra["exttyp"] == exttyp
        assert info.extra["nsymbt"] == nsymbt
        assert info.extra["header_warnings"] == ()
        frame = movie.read_frame(0)
    with mrcfile.open(path, permissive=True) as reference:
        np.testing.assert_array_equal(frame, reference.data)
    assert read_mrc_mode(path) == 6


def test_each_frame_read_asks_the_system_to_read_the_next_one_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """posix_fadvise WILLNEED of the next frame after each read (the disk works while a frame is
    converted); the frames are the same with or without it, and without posix_fadvise at all."""
    frames = _random_frames(1, (4, 6, 8), seed=4)
    path = write_mrc_movie(tmp_path / "m.mrc", frames, 1)
    advised: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, n, advice: advised.append((offset, n, advice)))
    with open_mrc(path) as movie:
        offset, nbytes = movie.info.extra["data_offset_bytes"], movie.info.frame_nbytes
        for index in range(4):
            np.testing.assert_array_equal(movie.read_frame(index), frames[index])
    assert advised == [(offset + k * nbytes, nbytes, os.POSIX_FADV_WILLNEED) for k in (1, 2, 3)]
    monkeypatch.delattr(os, "posix_fadvise")
    with open_mrc(path) as movie:
        np.testing.assert_array_equal(np.stack([movie.read_frame(k) for k in range(4)]), frames)
