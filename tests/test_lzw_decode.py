"""The compiled TIFF LZW decoder (cryotiff.kernels.lzw_decode), which verifies the compiled
encoder's strips: against imagecodecs' decoder on streams of imagecodecs' encoder, of the kernel
encoder and of libtiff (``tiffcp -c lzw``), across table resets and code width changes; damaged,
cut and random streams give a failure status, never a crash or a write outside the buffer; a
conversion whose LZW strip is damaged fails its verification."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import imagecodecs
import numba
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryotiff import kernels as K
from cryotiff.codecs import _row_span, make_codec

from .test_kernels import _lzw_rows, byte_strips, lzw_encode

#: Bytes on either side of the buffer that the decoder must leave alone.
_GUARD = 64
_GUARD_VALUE = 0xA5
_FAILURES = (K.LZW_DECODE_CORRUPT, K.LZW_DECODE_OVERFLOW, K.LZW_DECODE_TRUNCATED)


def decode(stream: bytes, capacity: int) -> tuple[int, bytes]:
    """``kernels.lzw_decode_into`` of ``stream`` with room for ``capacity`` decoded bytes, in a
    buffer with guard bytes around it that must stay as they were: ``(status, decoded bytes)``."""
    guarded = np.full(_GUARD + K.LZW_DECODE_ORIGIN + capacity + _GUARD, _GUARD_VALUE, np.uint8)
    buffer = guarded[_GUARD:-_GUARD]
    src = np.frombuffer(stream, np.uint8) if stream else np.zeros(0, np.uint8)
    status = K.lzw_decode_into(src, buffer)
    assert (guarded[:_GUARD] == _GUARD_VALUE).all() and (guarded[-_GUARD:] == _GUARD_VALUE).all()
    assert status in _FAILURES or 0 <= status <= capacity
    decoded = buffer[K.LZW_DECODE_ORIGIN : K.LZW_DECODE_ORIGIN + status].tobytes() if status >= 0 else b""
    return status, decoded


def decodes_to(stream: bytes, rows: np.ndarray) -> int:
    """``kernels.lzw_decodes_to`` of ``stream`` against ``rows`` (2-D uint8, anywhere in memory)."""
    data, start, stride = _row_span(rows)
    buffer = np.empty(K.lzw_check_buffer_bytes(rows.size), np.uint8)
    src = np.frombuffer(stream, np.uint8) if stream else np.zeros(0, np.uint8)
    return K.lzw_decodes_to(src, data, start, stride, rows.shape[0], rows.shape[1], buffer)


def codes_to_stream(codes: list[tuple[int, int]]) -> bytes:
    """``(code, width)`` pairs written most significant bit first, padded with zeros."""
    bits = "".join(format(code, f"0{width}b") for code, width in codes)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


# --------------------------------------------------------------------------- valid streams


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(byte_strips(), st.integers(1, 600), st.sampled_from(["contiguous", "flipped", "gaps", "odd"]))
def test_decodes_what_both_encoders_write(strip: np.ndarray, width: int, layout: str) -> None:
    """Any bytes as rows laid out as the pipeline gives them: the kernel's and imagecodecs'
    streams decode to those bytes (as imagecodecs decodes them), with room for exactly them or
    more; the rows check accepts them and refuses a changed byte, a row more and a row less."""
    rows = _lzw_rows(strip, width, layout)
    expected = rows.tobytes()
    by_kernel, by_library = lzw_encode(rows), imagecodecs.lzw_encode(expected)
    assert by_kernel == by_library  # (the encoder's own tests check this too)
    assert imagecodecs.lzw_decode(by_kernel) == expected
    for capacity in (len(expected), len(expected) + 1, len(expected) + 100):
        assert decode(by_kernel, capacity) == (len(expected), expected)
    if expected:
        assert decode(by_kernel, len(expected) - 1)[0] == K.LZW_DECODE_OVERFLOW
    assert decodes_to(by_kernel, rows) == K.LZW_DECODE_SAME
    if rows.size:
        changed = rows.copy()
        changed[rows.shape[0] // 2, width // 2] ^= 0x01
        assert decodes_to(by_kernel, changed) == K.LZW_DECODE_DIFFERENT
        assert decodes_to(by_kernel, rows[1:]) != K.LZW_DECODE_SAME  # the strip decodes to a row more
        assert decodes_to(lzw_encode(rows[1:]), rows) == K.LZW_DECODE_DIFFERENT  # a row less


def test_resets_width_changes_and_long_strings() -> None:
    """Lengths ending on both sides of every code width change and of the table resets (in
    imagecodecs' place, after code 4095), strings of every length up to the longest a table
    holds (one value repeated: each string one byte longer), every byte value, detector pages."""
    from cryotiff.simulate.detectors import counting_frames

    rng = np.random.default_rng(21)
    random_bytes = rng.bytes(120_000)
    cases = [b"", b"\x00", b"\xff", b"ab", b"aaa", b"abababab", b"\x07" * 9_000_000, bytes(range(256)) * 300,
             random_bytes]
    for n_codes in (253, 254, 255, 765, 766, 767, 1789, 1790, 1791, 3837, 3838, 3839, 7676, 7677):
        cases += [random_bytes[: n_codes + d] for d in range(-3, 4)]
    cases.append(counting_frames(1, (300, 517), 0.96, np.uint8, seed=3)[0].tobytes())
    cases.append(rng.random((64, 300), dtype=np.float32).tobytes())
    cases.append(np.minimum(rng.poisson(0.05, 300_000), 255).astype(np.uint8).tobytes())
    for data in cases:
        stream = imagecodecs.lzw_encode(data)
        assert decode(stream, len(data)) == (len(data), data), len(data)
        assert decode(stream + b"\xff\x00\x13", len(data)) == (len(data), data)  # bytes after EndOfInformation
        rows = np.frombuffer(data, np.uint8).reshape(1, -1)
        assert decodes_to(stream, rows) == K.LZW_DECODE_SAME


def test_the_check_holds_one_table_of_bytes_at_a_time() -> None:
    """The check against rows decodes into a buffer of at most one table's bytes
    (LZW_SEGMENT_MAX_BYTES) and compares them at each ClearCode. One value repeated is the
    longest table there is (each string one byte longer: 1 + 2 + ... + 3839 bytes, exactly the
    bound) and passes in it; a byte changed at either side of a ClearCode, in the first or the
    last table, or a byte more or less, is found."""
    assert K.LZW_SEGMENT_MAX_BYTES == 3839 * 3840 // 2
    n = 9_000_000
    run = np.full((1, n), 7, np.uint8)
    stream = lzw_encode(run)
    assert K.lzw_check_buffer_bytes(n) < n // 1.2
    assert decodes_to(stream, run) == K.LZW_DECODE_SAME
    first_table = K.LZW_SEGMENT_MAX_BYTES
    for position in (0, first_table - 1, first_table, first_table + 1, n - 1):
        changed = run.copy()
        changed[0, position] = 8
        assert decodes_to(stream, changed) == K.LZW_DECODE_DIFFERENT, position
    assert decodes_to(stream, run[:, :-1]) != K.LZW_DECODE_SAME
    assert decodes_to(lzw_encode(run[:, :-1]), run) == K.LZW_DECODE_DIFFERENT
    # Rows of 997 bytes: tables end inside rows; every table of random bytes is a few kB.
    rows = np.frombuffer(np.random.default_rng(9).bytes(997 * 300), np.uint8).reshape(300, 997)[::-1]
    stream = lzw_encode(rows)
    assert decodes_to(stream, rows) == K.LZW_DECODE_SAME
    for row, column in ((0, 0), (150, 996), (151, 0), (299, 996)):
        changed = rows.copy()
        changed[row, column] ^= 0x80
        assert decodes_to(stream, changed) == K.LZW_DECODE_DIFFERENT, (row, column)


def test_clear_codes_anywhere_and_a_missing_first_clear() -> None:
    """libtiff may reset the table wherever its compression ratio falls and a writer may repeat
    ClearCode: a ClearCode at any code boundary, two in a row, and a stream that omits the
    first one decode as imagecodecs decodes them."""
    data = b"abcabcabcabcabcd" * 40
    literal_codes = [256] + list(data[:100]) + [257]
    for cut in (1, 2, 5, 50, 99):  # ClearCode (twice) after `cut` literals, then literals again
        stream = codes_to_stream([(c, 9) for c in literal_codes[: cut + 1]] + [(256, 9), (256, 9)]
                                 + [(c, 9) for c in literal_codes[cut + 1 :]])
        assert decode(stream, 200) == (100, data[:100])
        assert imagecodecs.lzw_decode(stream) == data[:100]
    without_first_clear = codes_to_stream([(c, 9) for c in literal_codes[1:]])
    assert decode(without_first_clear, 200) == (100, data[:100])


def _libtiff_strips(tmp_path: Path, image: np.ndarray) -> list[tuple[bytes, bytes]]:
    """``(LZW strip written by libtiff, the bytes it holds)`` of ``image`` copied by ``tiffcp``."""
    tiffcp = shutil.which("tiffcp")
    if tiffcp is None:
        pytest.skip("libtiff's tiffcp is not installed")
    plain, packed = tmp_path / "plain.tif", tmp_path / "lzw.tif"
    tifffile.imwrite(plain, image, rowsperstrip=image.shape[0])
    subprocess.run([tiffcp, "-c", "lzw", "-r", str(image.shape[0]), str(plain), str(packed)], check=True,
                   capture_output=True)
    strips = []
    with tifffile.TiffFile(packed) as tif, open(packed, "rb") as raw:
        page = tif.pages[0]
        assert page.compression == 5
        raster = np.ascontiguousarray(image).tobytes()
        done = 0
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            raw.seek(offset)
            stream = raw.read(count)
            n_bytes = min(len(raster) - done, page.rowsperstrip * image[0].nbytes)
            strips.append((stream, raster[done : done + n_bytes]))
            done += n_bytes
    return strips


@pytest.mark.parametrize("kind", ["random", "counts", "sparse", "float32"])
def test_decodes_what_libtiff_writes(tmp_path: Path, kind: str) -> None:
    """libtiff's LZW (RELION's): its own reset points (after code 4093, and where its ratio
    falls) and its end; imagecodecs decodes the same strips to the same bytes."""
    rng = np.random.default_rng(31)
    image = {
        "random": lambda: rng.integers(0, 256, (700, 600), dtype=np.uint8),
        "counts": lambda: np.minimum(rng.poisson(0.96, (700, 600)), 255).astype(np.uint8),
        "sparse": lambda: np.minimum(rng.poisson(0.02, (1500, 1000)), 255).astype(np.uint8),
        "float32": lambda: (rng.poisson(1.45, (300, 400)) * (1 + 0.1 * rng.standard_normal((300, 400)))).astype(np.float32),
    }[kind]()
    strips = _libtiff_strips(tmp_path, image)
    assert len(strips) == 1
    for stream, expected in strips:
        assert imagecodecs.lzw_decode(stream) == expected
        assert decode(stream, len(expected)) == (len(expected), expected)
        rows = np.frombuffer(expected, np.uint8).reshape(image.shape[0], -1)
        assert decodes_to(stream, rows) == K.LZW_DECODE_SAME
        if kind == "random":
            assert stream != imagecodecs.lzw_encode(expected)  # libtiff's resets are its own


# --------------------------------------------------------------------------- broken streams


def test_broken_streams_give_their_status() -> None:
    """A code beyond the table, a string code right after ClearCode, a full table without
    ClearCode, a stream cut before EndOfInformation, more bytes than there is room for."""
    assert decode(codes_to_stream([(256, 9), (65, 9), (300, 9), (257, 9)]), 10)[0] == K.LZW_DECODE_CORRUPT
    assert decode(codes_to_stream([(256, 9), (258, 9), (257, 9)]), 10)[0] == K.LZW_DECODE_CORRUPT
    assert decode(codes_to_stream([(256, 9), (65, 9), (256, 9), (259, 9), (257, 9)]), 10)[0] == K.LZW_DECODE_CORRUPT
    # 3839 literals fill the table (the last string added gets code 4095); one more needs
    # ClearCode. The widths grow after the strings 510, 1022 and 2046 are added.
    widths = [9] * 254 + [10] * 512 + [11] * 1024 + [12] * 2049
    literals = [(0x41 + i % 7, w) for i, w in enumerate(widths)]
    assert decode(codes_to_stream([(256, 9)] + literals + [(257, 12)]), 10_000) == (
        len(literals), bytes(code for code, _ in literals))
    assert decode(codes_to_stream([(256, 9)] + literals + [(0x41, 12), (257, 12)]), 10_000)[0] == K.LZW_DECODE_CORRUPT
    data = np.random.default_rng(5).bytes(5000)
    stream = imagecodecs.lzw_encode(data)
    for cut in (0, 1, 2, len(stream) // 2, len(stream) - 2):
        assert decode(stream[:cut], len(data))[0] == K.LZW_DECODE_TRUNCATED
    assert decode(stream, len(data) - 1)[0] == K.LZW_DECODE_OVERFLOW
    assert decode(stream, 0)[0] == K.LZW_DECODE_OVERFLOW
    assert decode(imagecodecs.lzw_encode(b""), 0) == (0, b"")
    tiny = np.zeros(K.LZW_DECODE_ORIGIN - 1, np.uint8)  # no room for the single-byte strings
    assert K.lzw_decode_into(np.frombuffer(stream, np.uint8), tiny) == K.LZW_DECODE_OVERFLOW
    rows = np.frombuffer(data, np.uint8).reshape(50, 100)
    short = np.zeros(K.lzw_check_buffer_bytes(rows.size) - 1, np.uint8)
    assert K.lzw_decodes_to(np.frombuffer(stream, np.uint8), *_row_span(rows), 50, 100, short) == K.LZW_DECODE_OVERFLOW


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(byte_strips(), st.integers(1, 600), st.sampled_from(["contiguous", "flipped", "gaps", "odd"]),
       st.integers(0, 2**31), st.integers(1, 255))
def test_the_rows_check_finds_any_changed_byte(strip: np.ndarray, width: int, layout: str, position: int,
                                               flip: int) -> None:
    """Any one byte of the rows changed, anywhere (the first and last, at row ends, inside long
    strings), is found by the check of a strip against its rows; the rows as encoded pass."""
    rows = _lzw_rows(strip, width, layout)
    stream = lzw_encode(rows)
    assert decodes_to(stream, rows) == K.LZW_DECODE_SAME
    if rows.size:
        changed = rows.copy()
        changed[np.unravel_index(position % rows.size, rows.shape)] ^= flip
        assert decodes_to(stream, changed) == K.LZW_DECODE_DIFFERENT


@pytest.fixture(scope="module")
def checked_decoder():
    """The decoder compiled again with numba's bounds checks (every array index but those of the
    8-byte loads and copies, whose bounds the decoder checks itself, and which the guard bytes of
    :func:`decode` watch): an index outside an array raises."""
    return numba.njit(boundscheck=True)(K.lzw_decode_into.py_func)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=3000),
    repeat=st.integers(1, 30),
    edits=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 2**31)),
    garbage=st.binary(max_size=400),
    capacity_shortfall=st.integers(-3, 3),
)
def test_damaged_and_random_streams_never_crash(checked_decoder, data, repeat, edits, cut, garbage, capacity_shortfall) -> None:
    """Valid streams with bytes changed and cut anywhere, and random bytes (behind a ClearCode
    or not): a status, never a crash, an index outside the arrays (checked by the bounds-checked
    build) or a write outside the buffer; where the decoder reaches EndOfInformation, imagecodecs
    decodes the stream to the same bytes."""
    data = data * repeat
    stream = bytearray(imagecodecs.lzw_encode(data))
    for position, value in edits:
        stream[position % len(stream)] = value
    if cut is not None:
        del stream[cut % (len(stream) + 1) :]
    capacity = max(0, len(data) + capacity_shortfall)
    for which, candidate in enumerate((bytes(stream), garbage, b"\x80" + garbage)):
        status, decoded = decode(candidate, capacity)
        buffer = np.zeros(K.LZW_DECODE_ORIGIN + capacity, np.uint8)
        src = np.frombuffer(candidate, np.uint8) if candidate else np.zeros(0, np.uint8)
        assert checked_decoder(src, buffer) == status
        if status >= 0 and len(candidate) >= 2 and candidate[0] == 0x80 and candidate[1] < 0x80:
            # imagecodecs reads this as a stream that begins with ClearCode, as the kernel does
            assert imagecodecs.lzw_decode(candidate, out=capacity + 1)[:status] == decoded
        if which == 0 and status >= 0 and not edits and cut is None:  # the stream as encoded
            assert decoded == data[:status] and status == len(data)


# --------------------------------------------------------------------------- the conversion


def test_the_compiled_encoders_strips_are_checked_by_the_compiled_decoder() -> None:
    """The lzw codec of the compiled encoder checks its strips with the compiled decoder, rows
    where they lie; imagecodecs' codec keeps imagecodecs' decoder."""
    from cryotiff.codecs import _lzw_decodes_to

    kernel, library = make_codec("lzw", lzw_encoder="cryotiff"), make_codec("lzw", lzw_encoder="imagecodecs")
    assert kernel._rows_check is _lzw_decodes_to and library._rows_check is None
    rows = np.random.default_rng(4).integers(0, 4, (300, 77), dtype=np.uint8)[::-1]
    encoded = kernel.encode_rows(rows)
    assert kernel.decodes_to(encoded, rows) and library.decodes_to(encoded, rows)
    changed = np.ascontiguousarray(rows)
    changed[150, 3] ^= 2
    assert not kernel.decodes_to(encoded, changed)
    assert not kernel.decodes_to(encoded[: len(encoded) // 2], rows)
    with pytest.raises(ValueError, match="corrupt LZW stream"):
        kernel.decodes_to(codes_to_stream([(256, 9), (65, 9), (300, 9), (257, 9)]), rows)


@pytest.mark.parametrize("damage", ["other bytes", "cut", "corrupt code"])
def test_a_damaged_lzw_strip_fails_the_conversions_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """The compiled encoder made to write a damaged strip for one frame: the compiled decoder's
    verification fails that movie with the message verification gives, no output is left, and
    the other movie converts."""
    from cryotiff import codecs, convert
    from cryotiff.cli import main
    from cryotiff.simulate.write import write_mrc_movie

    from .helpers import read_tiff_frames

    rng = np.random.default_rng(17)
    a, b = (rng.integers(-3, 9, (3, 40, 50)).astype(np.int16) for _ in range(2))
    write_mrc_movie(tmp_path / "a.mrc", a, 1, pixel_size_angstrom=1.0)
    write_mrc_movie(tmp_path / "b.mrc", b, 1, pixel_size_angstrom=1.0)
    monkeypatch.setattr(convert, "lzw_encoder_for", lambda movie_bytes, loads_kernels: "cryotiff")
    real_encode_rows = codecs._lzw_encode_rows
    a_frame_2 = np.ascontiguousarray(a[1][::-1]).view(np.uint8)  # in TIFF row order, as bytes

    def encode_rows(rows: np.ndarray) -> bytes:
        if not np.array_equal(rows, a_frame_2):
            return real_encode_rows(rows)
        if damage == "other bytes":
            other = rows.copy()
            other[20, 25] ^= 1
            return real_encode_rows(other)
        if damage == "cut":
            return real_encode_rows(rows)[:-5]
        return codes_to_stream([(256, 9), (65, 9), (300, 9), (257, 9)])

    monkeypatch.setattr(codecs, "_lzw_encode_rows", encode_rows)
    monkeypatch.chdir(tmp_path)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--compression", "lzw"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("ERROR")]
    expected = ("cannot be decoded again (a corrupt LZW stream" if damage == "corrupt code"
                else "strip does not decode to the frame it was made from")
    assert len(errors) == 1 and "a.mrc: frame 2" in errors[0] and expected in errors[0], captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out" / "a.tif").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / "b.tif"), b)
