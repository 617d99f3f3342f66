"""The compiled kernels (cryotiff.kernels) against independent references on random inputs:
RELION's EER loop and rendering table in plain Python and imagecodecs.eer_decode for the EER
kernels, the earlier vectorised numpy code (kept here as the oracle) for the gain kernels."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryotiff import kernels as K
from cryotiff.io import eer as E
from cryotiff.simulate import eer as S

from .eer_reference import ref_decode, ref_render

# --------------------------------------------------------------------------------------------
# EER


def _placement(upsampling: int) -> int:
    return {1: K.EER_ADD_PHYSICAL, 2: K.EER_ADD_UPSAMPLED, 3: K.EER_ADD_UPSAMPLED, -1: K.EER_ADD_BINNED}[upsampling]


def add_frames(streams, width, encoding, upsampling, dtype, band_rows):
    """``kernels.eer_add_frames`` over ``streams`` (bytes) of a ``width``-wide detector."""
    out = E.output_size(width, upsampling)
    counts = np.zeros((out, out), dtype)
    data = np.frombuffer(b"".join(streams) or b"\0", np.uint8).copy()
    n_bytes = np.array([len(s) for s in streams], np.int64)
    starts = np.concatenate(([0], np.cumsum(n_bytes)[:-1])).astype(np.int64)
    complete = np.zeros(len(streams), np.bool_)
    factor = out // width if upsampling in (2, 3) else 1
    K.eer_add_frames(
        data, starts, n_bytes, width * width, encoding.rle_bits, encoding.symbol_bits,
        encoding.overflow_skip_bits, _placement(upsampling), width.bit_length() - 1, factor,
        E.symbol_offsets(encoding, upsampling, out), counts.reshape(-1), band_rows * width, complete,
    )
    return counts, complete


def reference_counts(streams, width, encoding, upsampling, dtype):
    out = E.output_size(width, upsampling)
    counts = np.zeros((out, out), np.int64)
    complete = []
    for stream in streams:
        events = ref_decode(stream, width * width, encoding.rle_bits, encoding.symbol_bits,
                            encoding.compression == 65000)
        complete.append(events is not None)
        if events is not None:
            ref_render(events, width, upsampling, encoding.horizontal_bits, counts)
    return counts.astype(dtype), np.array(complete)


ENCODINGS = {
    "65000": E.EerEncoding(65000, 8, 2, 2),
    "65001": E.EerEncoding(65001, 7, 2, 2),
    "65002-711": E.EerEncoding(65002, 7, 1, 1),
    "65002-722": E.EerEncoding(65002, 7, 2, 2),
}


def _frame_streams(rng: np.random.Generator, width: int, encoding: E.EerEncoding, n: int) -> list[bytes]:
    """Valid frames of several densities, some ending on the last pixel without a closing code,
    some cut short, some with a run that overshoots, some garbage."""
    bits = encoding.horizontal_bits
    sb = None if encoding.compression in (65000, 65001) else bits
    rle = encoding.rle_bits if encoding.compression == 65002 else None
    streams = []
    for k in range(n):
        fr = S.random_events(rng, width, 1, float(rng.choice([0.0, 0.01, 0.1, 0.5, 0.9])), subpixel_bits=bits)[0]
        kind = rng.integers(0, 6)
        stream = S.encode_frame(fr, width, encoding.compression, rle_bits=rle, subpixel_bits=sb,
                                align=int(rng.choice([1, 8])), close_after_last_pixel=bool(kind != 1))
        if kind == 2 and len(stream) > 1:
            stream = stream[: int(rng.integers(0, len(stream)))]
        elif kind == 3:
            stream = S.encode_frame(fr, width + 1, encoding.compression, rle_bits=rle, subpixel_bits=sb)
        elif kind == 4:
            stream = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        streams.append(stream)
    return streams


@pytest.mark.parametrize("name", list(ENCODINGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), width_shift=st.sampled_from([2, 3, 4, 5]),
       band_rows=st.sampled_from([2, 4, 6, 64]), dtype=st.sampled_from([np.uint8, np.uint16, np.uint32]))
def test_eer_add_frames_equals_relions_loop_and_table(name: str, seed: int, width_shift: int, band_rows: int, dtype) -> None:
    """Frames added band by band into a page equal RELION's loop and rendering table applied
    frame by frame, at every upsampling the bits allow; corrupt frames add nothing."""
    encoding = ENCODINGS[name]
    rng = np.random.default_rng(seed)
    width = 1 << width_shift
    streams = _frame_streams(rng, width, encoding, int(rng.integers(1, 7)))
    ups = (1, 2, -1, 3) if encoding.horizontal_bits == 2 else (1, 2)
    for up in ups:
        got, complete = add_frames(streams, width, encoding, up, dtype, band_rows)
        expected, expected_complete = reference_counts(streams, width, encoding, up, dtype)
        np.testing.assert_array_equal(complete, expected_complete)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["65001", "65002-711", "65002-722"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), width_shift=st.sampled_from([3, 4, 6]), band_rows=st.sampled_from([2, 8, 64]))
def test_eer_add_frames_equals_imagecodecs(name: str, seed: int, width_shift: int, band_rows: int) -> None:
    """Valid 65001/65002 frames: the page equals the sum of imagecodecs.eer_decode's images at the
    same super-resolution (0, 1 and, for 2+2 bits, 2)."""
    encoding = ENCODINGS[name]
    rng = np.random.default_rng(seed)
    width = 1 << width_shift
    bits = encoding.horizontal_bits
    sb = None if encoding.compression == 65001 else bits
    frames = S.random_events(rng, width, int(rng.integers(1, 5)), float(rng.choice([0.01, 0.2, 0.7])), subpixel_bits=bits)
    streams = [S.encode_frame(f, width, encoding.compression, subpixel_bits=sb) for f in frames]
    for superres in ((0, 1, 2) if bits == 2 else (0, 1)):
        up = {0: 1, 1: 2, 2: 3}[superres]
        got, complete = add_frames(streams, width, encoding, up, np.uint16, band_rows)
        assert complete.all()
        side = width << superres
        theirs = sum(
            imagecodecs.eer_decode(s + b"\0" * (2 + len(s) % 2), (side, side), 7, bits, bits, superres=superres).astype(np.uint16)
            for s in streams
        )
        np.testing.assert_array_equal(got, theirs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64), rle=st.integers(4, 14), symbol_bits=st.sampled_from([2, 4]),
       skip=st.booleans(), n_pixels=st.integers(1, 300))
def test_eer_place_events_records_what_relions_loop_reads(data: bytes, rle: int, symbol_bits: int, skip: bool, n_pixels: int) -> None:
    """Arbitrary bytes, every run width: the recorded events, and whether the frame is complete,
    are those of RELION's loop (with the last-pixel rule), also for frame sizes that are not a
    detector's."""
    positions = np.empty(8 * len(data) + 1, np.int64)
    symbols = np.empty(8 * len(data) + 1, np.uint8)
    placed = K.eer_place_events(
        np.frombuffer(data, np.uint8).copy(), 8 * len(data), n_pixels, rle, symbol_bits, symbol_bits if skip else 0,
        K.EER_RECORD, 0, 1, np.zeros(16, np.int64), np.zeros(1, np.uint16), 1, positions, symbols,
    )
    ref = ref_decode(data, n_pixels, rle, symbol_bits, skip)
    if ref is None:
        assert placed < 0
    else:
        assert list(zip(positions[:placed].tolist(), symbols[:placed].tolist())) == ref


def _damaged(rng: np.random.Generator, stream: bytes) -> bytes:
    """``stream`` with a few bits flipped, cut at any byte, or with bytes appended (the fast
    stretch of the kernel reads 8 bytes at a time: damage near the end and beyond it)."""
    data = bytearray(stream)
    kind = rng.integers(0, 4)
    if kind == 0 and data:
        for _ in range(int(rng.integers(1, 4))):
            bit = int(rng.integers(0, 8 * len(data)))
            data[bit >> 3] ^= 1 << (bit & 7)
    elif kind == 1:
        data = data[: int(rng.integers(0, len(data) + 1))]
    elif kind == 2:
        data += rng.integers(0, 256, int(rng.integers(1, 20)), dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.mark.parametrize("name", list(ENCODINGS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), junk=st.integers(0, 16))
def test_eer_place_events_reads_no_bit_beyond_the_data(name: str, seed: int, junk: int) -> None:
    """Damaged and intact frames of every encoding, cut anywhere, with the rest of the frame and
    ``junk`` bytes after the data, which the bit count excludes: the events, and whether the frame
    is complete, are those RELION's loop reads from the data alone (the kernel's 64-bit loads
    stay below the bit count's last whole byte)."""
    encoding = ENCODINGS[name]
    rng = np.random.default_rng(seed)
    width = 1 << int(rng.integers(2, 7))
    whole = _damaged(rng, _frame_streams(rng, width, encoding, 1)[0])
    cut = int(rng.integers(max(0, len(whole) - 24), len(whole) + 1))
    data = whole[:cut]
    stream = np.frombuffer(whole + rng.integers(0, 256, junk, dtype=np.uint8).tobytes(), np.uint8).copy()
    room = 8 * len(data) + 1
    positions, symbols = np.empty(room, np.int64), np.empty(room, np.uint8)
    placed = K.eer_place_events(
        stream, 8 * len(data), width * width, encoding.rle_bits, encoding.symbol_bits,
        encoding.overflow_skip_bits, K.EER_RECORD, 0, 1, np.zeros(16, np.int64), np.zeros(1, np.uint16), 1,
        positions, symbols,
    )
    ref = ref_decode(data, width * width, encoding.rle_bits, encoding.symbol_bits, encoding.compression == 65000)
    if ref is None:
        assert placed < 0
    else:
        assert list(zip(positions[:placed].tolist(), symbols[:placed].tolist())) == ref


@pytest.mark.parametrize("name", list(ENCODINGS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_eer_add_frames_pauses_at_any_pixel(name: str, seed: int) -> None:
    """Bands that end anywhere (not only at row boundaries, down to one pixel), on damaged and
    intact frames: the page is RELION's loop and table applied frame by frame."""
    encoding = ENCODINGS[name]
    rng = np.random.default_rng(seed)
    width = 1 << int(rng.integers(3, 7))
    streams = [_damaged(rng, s) for s in _frame_streams(rng, width, encoding, int(rng.integers(1, 6)))]
    ups = (1, 2, 3) if encoding.horizontal_bits == 2 else (1, 2)
    for up in ups:
        out = E.output_size(width, up)
        counts = np.zeros(out * out, np.uint16)
        data = np.frombuffer(b"".join(streams) or b"\0", np.uint8).copy()
        n_bytes = np.array([len(s) for s in streams], np.int64)
        starts = np.concatenate(([0], np.cumsum(n_bytes)[:-1])).astype(np.int64)
        complete = np.zeros(len(streams), np.bool_)
        band_pixels = int(rng.choice([1, int(rng.integers(1, width * width + 1))]))
        K.eer_add_frames(
            data, starts, n_bytes, width * width, encoding.rle_bits, encoding.symbol_bits,
            encoding.overflow_skip_bits, _placement(up), width.bit_length() - 1, out // width if up > 1 else 1,
            E.symbol_offsets(encoding, up, out), counts, band_pixels, complete,
        )
        expected, expected_complete = reference_counts(streams, width, encoding, up, np.uint16)
        np.testing.assert_array_equal(complete, expected_complete)
        np.testing.assert_array_equal(counts.reshape(out, out), expected)


@pytest.fixture(scope="module")
def checked_walk():
    """The EER walk compiled again with numba's bounds checks (its 64-bit loads included, which
    are eight byte indices): an index outside an array raises IndexError."""
    import numba

    from cryotiff.kernels import eer as KE

    return numba.njit(boundscheck=True)(KE._eer_walk.py_func)


@pytest.mark.parametrize("name", list(ENCODINGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_eer_walk_never_indexes_outside_its_arrays(checked_walk, name: str, seed: int) -> None:
    """Damaged and intact frames, each in an array of exactly its bytes, walked band by band
    (bands ending anywhere) into pages and event arrays of exactly the size the callers give:
    no index outside them, and the frame is complete exactly when RELION's loop says so."""
    from cryotiff.kernels import eer as KE

    encoding = ENCODINGS[name]
    rng = np.random.default_rng(seed)
    width = 1 << int(rng.integers(2, 6))
    n_pixels = width * width
    data = _damaged(rng, _frame_streams(rng, width, encoding, 1)[0])
    stream = np.frombuffer(data, np.uint8).copy()
    expected = ref_decode(data, n_pixels, encoding.rle_bits, encoding.symbol_bits, encoding.compression == 65000)
    ups = (1, 2, -1, 3) if encoding.horizontal_bits == 2 else (1, 2)
    for placement, up in [(K.EER_RECORD, 1)] + [(_placement(up), up) for up in ups]:
        out = E.output_size(width, up)
        counts = np.zeros(out * out, np.uint8)
        room = 8 * len(data) // (encoding.rle_bits + encoding.symbol_bits) + 1
        positions, symbols = np.empty(room, np.int64), np.empty(room, np.uint8)
        state, bits = np.zeros(K.EER_STATE_FIELDS, np.int64), np.zeros(1, np.uint64)
        state[KE._PENDING] = -1
        band = 2 * width * int(rng.integers(1, width // 2 + 1)) if up == -1 else int(rng.integers(1, n_pixels + 1))
        stop, status = 0, K.EER_PAUSED
        while status == K.EER_PAUSED:
            stop = min(stop + band, n_pixels)
            status = checked_walk(
                stream, 0, len(data), 8 * len(data), n_pixels, encoding.rle_bits, encoding.symbol_bits,
                encoding.overflow_skip_bits, placement, width.bit_length() - 1, out // width if up > 1 else 1,
                E.symbol_offsets(encoding, up, out), counts, 1, positions, symbols, state, bits, stop,
            )
        assert (status == K.EER_COMPLETE) == (expected is not None)


def test_a_corrupt_frame_is_taken_back_exactly_also_when_counts_wrap() -> None:
    """Taking back a corrupt frame's events restores the page bit for bit, even in a type whose
    sums wrapped (RELION's uint8 pages wrap; the kernel's arithmetic is modular)."""
    encoding = ENCODINGS["65001"]
    width = 16
    rng = np.random.default_rng(1)
    dense = S.random_events(rng, width, 1, 0.9)[0]
    good = S.encode_frame(dense, width, 65001)
    bad = good[: len(good) // 2]
    counts = np.full((width, width), 255, np.uint8)
    data = np.frombuffer(good + bad, np.uint8).copy()
    n_bytes = np.array([len(good), len(bad)], np.int64)
    complete = np.zeros(2, np.bool_)
    K.eer_add_frames(data, np.array([0, len(good)], np.int64), n_bytes, width * width, 7, 4, 0,
                     K.EER_ADD_PHYSICAL, 4, 1, np.zeros(16, np.int64), counts.reshape(-1), 2 * width, complete)
    assert complete.tolist() == [True, False]
    expected = np.full(width * width, 255, np.uint8)
    expected[dense.positions] = 0  # 255 + 1 wrapped; the corrupt frame left no trace
    np.testing.assert_array_equal(counts.reshape(-1), expected)


# --------------------------------------------------------------------------------------------
# Gain arithmetic against the numpy code it replaced (tests/gain_oracle.py)

from cryotiff import gain as G  # noqa: E402

from . import gain_oracle as O  # noqa: E402
from .test_gain import SPECIAL_VALUES, same_bits, states_and_frames  # noqa: E402

F32 = np.float32


def _gain_normalised(rng: np.random.Generator, shape, n_special: int):
    """A gain-normalised frame (Poisson counts x gain) with special values sprinkled in, its
    gain and a reliable mask."""
    gain = (1 + 0.1 * rng.standard_normal(shape)).astype(F32)
    frame = (rng.poisson(1.4, shape).astype(F32) * gain).astype(F32)
    flat = frame.reshape(-1)
    where = rng.integers(0, flat.size, n_special)
    flat[where] = rng.choice(np.array(SPECIAL_VALUES, F32), n_special)
    frame.reshape(-1)[rng.integers(0, flat.size, n_special)] += F32(0.3)  # not multiples
    return frame, gain, rng.random(shape) < 0.9


@settings(max_examples=300, deadline=None)
@given(states_and_frames(), st.sampled_from([0, 1, 2, 50]))
def test_gain_update_kernel_equals_numpy(case, thresh) -> None:
    gain, rel, frames = case
    estimate = G.GainEstimate(gain.copy(), rel.copy())
    ref_gain, ref_rel = gain.copy(), rel.copy()
    for frame in frames:
        stats = estimate.update(frame, thresh)
        changed, mismatch, negative, stable = O.update(ref_gain, ref_rel, frame, thresh)
        assert (stats.changed, stats.mismatch, stats.negative, stats.unreliable) == (changed, mismatch, negative, rel.size - stable)
        assert same_bits(estimate.gain, ref_gain)
        assert np.array_equal(estimate.reliability, ref_rel)


def _check_integerise(frame, gain, reliable) -> None:
    result = G.integerise(frame, gain, reliable, ignore_error=True)
    values, expected, errors, inexact = O.integerise(frame, gain, reliable)
    assert same_bits(result.values, values)
    rows, cols = np.nonzero(errors)
    assert result.n_errors == rows.size and result.n_inexact == int(np.count_nonzero(inexact))
    np.testing.assert_array_equal(result.error_rows, rows)
    np.testing.assert_array_equal(result.error_columns, cols)
    assert same_bits(result.expected, expected[rows, cols])
    assert same_bits(result.observed, frame[rows, cols]) and same_bits(result.gain, gain[rows, cols])
    lossy = G.lossy_integerise(frame, gain, reliable, ignore_error=True)
    counts, n_pixels, n_changed, max_change, sum_change, n_nonfinite, n_clipped = O.lossy_counts(frame, reliable, values)
    np.testing.assert_array_equal(lossy.counts, counts)
    s = lossy.stats
    assert (s.n_pixels, s.n_changed, s.max_abs_change, s.n_nonfinite, s.n_clipped) == (n_pixels, n_changed, max_change, n_nonfinite, n_clipped)
    assert s.sum_abs_change == pytest.approx(sum_change, rel=1e-12, abs=1e-300)  # summed in another order
    assert (lossy.minimum, lossy.maximum) == (int(counts.min()), int(counts.max()))


@settings(max_examples=300, deadline=None)
@given(states_and_frames(), st.integers(0, 2**32 - 1))
def test_integerise_and_lossy_kernels_equal_numpy(case, seed) -> None:
    gain, _, frames = case
    rng = np.random.default_rng(seed)
    for frame in frames:
        _check_integerise(frame, gain, rng.random(frame.shape) < 0.7)


def test_gain_kernels_on_whole_frames() -> None:
    """Realistic frames with thousands of errors (more than the first pass records) and of special
    values; the update in row blocks on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    for n_special in (0, 50, 3000):
        frame, gain, reliable = _gain_normalised(rng, (97, 131), n_special)
        _check_integerise(frame, gain, reliable)
    estimate = G.GainEstimate.new((97, 131))
    ref_gain, ref_rel = estimate.gain.copy(), estimate.reliability.copy()
    with ThreadPoolExecutor(2) as pool:
        for k in range(6):
            frame, _, _ = _gain_normalised(rng, (97, 131), 20)
            stats = estimate.update(frame, 3, executor=pool, block_rows=7)
            changed, mismatch, negative, stable = O.update(ref_gain, ref_rel, frame, 3)
            assert (stats.changed, stats.mismatch, stats.negative, stats.unreliable) == (changed, mismatch, negative, frame.size - stable)
    assert same_bits(estimate.gain, ref_gain) and np.array_equal(estimate.reliability, ref_rel)


# --------------------------------------------------------------------------------------------
# Huffman-only Deflate: the kernel's streams against zlib's decoder (and ISA-L's, libdeflate's)


def reference_limited_lengths(counts, max_bits: int) -> dict[int, int]:
    """Optimal code lengths of at most ``max_bits`` by the textbook package-merge, each item
    carrying the list of its symbols (independent of the kernel's bookkeeping)."""
    leaves = sorted(((int(c), [s]) for s, c in enumerate(counts) if c > 0), key=lambda item: item[0])
    if len(leaves) < 2:
        return {symbols[0]: 1 for _, symbols in leaves}
    level = list(leaves)
    for _ in range(max_bits - 1):
        packages = [(level[i][0] + level[i + 1][0], level[i][1] + level[i + 1][1]) for i in range(0, len(level) - 1, 2)]
        level = sorted(leaves + packages, key=lambda item: item[0])
    lengths: dict[int, int] = {}
    for _, symbols in level[: 2 * len(leaves) - 2]:
        for s in symbols:
            lengths[s] = lengths.get(s, 0) + 1
    return lengths


def _check_code(counts: np.ndarray, max_bits: int) -> None:
    lengths = np.zeros(counts.size, np.int64)
    total = K.deflate_code_lengths(counts.astype(np.int64), max_bits, lengths)
    used = counts > 0
    assert np.array_equal(lengths > 0, used)
    assert total == int((counts.astype(object) * lengths).sum())
    if used.sum() >= 2:
        assert lengths.max() <= max_bits
        assert sum(2.0 ** -int(n) for n in lengths[used]) == 1.0  # a complete prefix code
        reference = reference_limited_lengths(counts, max_bits)
        assert total == sum(int(counts[s]) * n for s, n in reference.items())  # optimal
    elif used.sum() == 1:
        assert lengths[used][0] == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=0, max_size=286), st.sampled_from([7, 15]))
def test_code_lengths_are_optimal_within_the_limit(counts: list[int], max_bits: int) -> None:
    _check_code(np.array(counts[: 2**max_bits - 1], np.int64), max_bits)


def test_code_lengths_on_skewed_counts_that_need_the_limit() -> None:
    """Fibonacci counts make an unlimited Huffman code about as deep as there are symbols."""
    fibonacci = [1, 1]
    while len(fibonacci) < 40:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    for n in (3, 16, 17, 30, 40):
        _check_code(np.array(fibonacci[:n], np.int64), 15)
        _check_code(np.array(fibonacci[:n][:19], np.int64), 7)
    poisson = np.bincount(np.random.default_rng(1).poisson(0.96, 10**6), minlength=257)
    _check_code(poisson, 15)


def huffman_encode(rows: np.ndarray, block_rows: int | None = None) -> bytes:
    from cryotiff.codecs import _row_span

    data, start, stride = _row_span(rows)
    n_rows, row_bytes = rows.shape
    block_rows = block_rows or max(n_rows, 1)
    n_blocks = max(1, -(-n_rows // block_rows))
    out = np.empty(K.deflate_huffman_bound(rows.size, n_blocks) // 4, np.uint32)
    n_bytes = K.deflate_huffman_encode(data, start, stride, n_rows, row_bytes, block_rows, out)
    assert n_bytes <= out.nbytes - 8
    return out.view(np.uint8)[:n_bytes].tobytes()


def _zlib_huffman_only(data: bytes) -> bytes:
    import zlib

    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return compressor.compress(data) + compressor.flush()


def _check_stream(encoded: bytes, expected: bytes) -> None:
    import zlib

    from isal import isal_zlib

    assert zlib.decompress(encoded) == expected  # zlib checks the Adler-32 too
    assert int.from_bytes(encoded[-4:], "big") == zlib.adler32(expected)
    assert encoded[:2] == b"\x78\x01"
    assert isal_zlib.decompress(encoded) == expected
    assert imagecodecs.deflate_decode(encoded) == expected


@st.composite
def byte_strips(draw):
    """Strips of detector-like and adversarial bytes: any bytes, one value, two values, every
    value, skewed (geometric, Poisson) distributions, of lengths 0 to about 200 kB."""
    kind = draw(st.sampled_from(["any", "one", "two", "all", "geometric", "poisson"]))
    n = draw(st.sampled_from([0, 1, 2, 3, 5, 64, 1000, 4097, 65535, 65536, 70001, 200003]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "any":
        return np.frombuffer(draw(st.binary(max_size=2000)), np.uint8).copy()
    if kind == "one":
        return np.full(n, draw(st.integers(0, 255)), np.uint8)
    if kind == "two":
        values = np.array(draw(st.lists(st.integers(0, 255), min_size=2, max_size=2)), np.uint8)
        return values[(rng.random(n) < draw(st.floats(0.0, 1.0))).astype(np.int64)]
    if kind == "all":
        return rng.permutation(np.resize(np.arange(256, dtype=np.uint8), max(n, 256)))
    if kind == "geometric":
        return np.minimum(rng.geometric(draw(st.floats(0.01, 0.99)), n) - 1, 255).astype(np.uint8)
    return np.minimum(rng.poisson(draw(st.floats(0.01, 40.0)), n), 255).astype(np.uint8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(byte_strips(), st.integers(1, 600), st.sampled_from(["contiguous", "flipped", "gaps", "odd"]), st.integers(1, 7))
def test_huffman_only_streams_decode_to_their_bytes(strip: np.ndarray, width: int, layout: str, block_rows: int) -> None:
    """Any bytes, as rows laid out as the pipeline gives them (the flipped view of a page), with
    gaps between rows, at odd addresses; one block or several; decoded by zlib, ISA-L and
    libdeflate, the Adler-32 checked."""
    n_rows = -(-strip.size // width)
    rows = np.resize(strip, n_rows * width).reshape(n_rows, width) if strip.size else np.zeros((0, width), np.uint8)
    if layout == "flipped":
        rows = np.ascontiguousarray(rows[::-1])[::-1]
    elif layout == "gaps":
        padded = np.zeros((n_rows, width + 3), np.uint8)
        padded[:, 1 : width + 1] = rows
        rows = padded[:, 1 : width + 1]
    elif layout == "odd":
        buffer = np.zeros(rows.size + 1, np.uint8)
        buffer[1:] = rows.reshape(-1)
        rows = buffer[1:].reshape(rows.shape)
    expected = rows.tobytes()
    encoded = huffman_encode(rows, block_rows)
    _check_stream(encoded, expected)
    if block_rows >= n_rows:  # one block: no larger than zlib's Huffman-only stream (which adapts
        # its blocks) by more than a few header bytes
        assert len(encoded) <= len(_zlib_huffman_only(expected)) * 1.002 + 40


def test_huffman_only_edge_cases() -> None:
    """No bytes (a fixed block of its end code), one byte, a single value (a two-symbol code:
    the value and the end of block), every value equally often (incompressible: stored), long
    strips (several stored blocks of 65535 bytes and the pair tables)."""
    assert huffman_encode(np.zeros((0, 5), np.uint8)) == bytes.fromhex("78 01 03 00 00 00 00 01")
    for data in (b"", b"\x00", b"\xff" * 100000, bytes(range(256)) * 1000, np.random.default_rng(2).bytes(300000)):
        rows = np.frombuffer(data, np.uint8).reshape(1, -1) if data else np.zeros((0, 1), np.uint8)
        encoded = huffman_encode(rows)
        _check_stream(encoded, data)
        assert len(encoded) <= len(data) + 5 * (len(data) // 65535 + 1) + 6
    assert len(huffman_encode(np.full((1, 100000), 7, np.uint8))) < 12600  # 1 bit per byte


def test_huffman_only_detector_frames_are_no_larger_than_zlibs() -> None:
    """On frames like those it encodes (K2/K3 counts, EER pages, Falcon, integer gain-path
    frames, float32) the stream is smaller than zlib's Huffman-only one (one optimal code per
    strip against zlib's heuristic code every 32767 bytes)."""
    from cryotiff.simulate.detectors import counting_frames, falcon_frames

    rng = np.random.default_rng(4)
    frames = [
        counting_frames(1, (300, 517), 0.96, np.uint8, seed=3)[0],
        rng.poisson(0.5, (256, 256)).astype(np.uint8),
        falcon_frames(1, (64, 4096), seed=5)[0],
        (rng.poisson(1.45, (128, 300)) * 3).astype(np.float32),
        rng.random((64, 300), dtype=np.float32),
    ]
    for frame in frames:
        rows = frame[::-1].view(np.uint8).reshape(frame.shape[0], -1)
        encoded = huffman_encode(rows)
        _check_stream(encoded, rows.tobytes())
        assert len(encoded) <= len(_zlib_huffman_only(rows.tobytes()))


@pytest.mark.parametrize("longest", [14, 15])
def test_huffman_only_four_bytes_per_flush_only_where_their_codes_fit(longest: int) -> None:
    """Bands with a pair table are coded four bytes per flush of the bit writer; when no code is
    longer than 14 bits without a test (7 pending bits and 4 x 14 fit in 64), with a 15-bit
    code with a flush between the two pairs where the second might not fit. Here the one value
    with the longest code occurs only four in a row, at the four bytes of one step, after all
    sorts of pending bits; rows of every length modulo 4, contiguous, flipped and at an odd
    address."""
    rng = np.random.default_rng(longest)
    # Values 0 .. rare - 1 occur 2**(top - v) times; the rare value 4 x 4 times, with a code
    # of ``longest`` bits, the longest of the band.
    rare, top = (13, 17) if longest == 14 else (14, 18)
    common = np.repeat(np.arange(rare, dtype=np.uint8), [2 ** (top - v) for v in range(rare)])
    for width in (4096, 4097, 4098, 4099):
        n_rows = -(-(common.size + 16) // width)
        strip = np.resize(rng.permutation(common), n_rows * width)
        strip[common.size :] = 0
        rows = strip.reshape(n_rows, width)
        for k in range(4):  # at whole steps from the row's start: each read as one quad
            rows[(k * 37) % n_rows, 4 * ((k * 151) % (width // 4)) :][:4] = rare
        lengths = np.zeros(257, np.int64)
        literal_counts = np.bincount(rows.reshape(-1), minlength=257)
        literal_counts[256] = 1
        K.deflate_code_lengths(literal_counts, 15, lengths)
        assert lengths[rare] == lengths.max() == longest
        buffer = np.zeros(rows.size + 1, np.uint8)
        buffer[1:] = rows.reshape(-1)
        for layout in (rows, np.ascontiguousarray(rows[::-1])[::-1], buffer[1:].reshape(rows.shape)):
            _check_stream(huffman_encode(layout), layout.tobytes())


def test_huffman_only_encoder_refuses_rows_that_are_not_bytes() -> None:
    """The kernel reads memory without bounds checks: rows of wider pixels (whose row length in
    bytes is not their shape's) are refused before it runs, never read out of bounds."""
    from cryotiff.codecs import make_codec

    codec = make_codec("deflate-huffman")
    for rows in (np.zeros((4, 8), np.uint16), np.zeros(8, np.uint8), np.zeros((2, 2, 2), np.uint8)):
        with pytest.raises(TypeError, match="2-D uint8"):
            codec.encode_rows(rows)


# --------------------------------------------------------------------------- TIFF LZW


def lzw_encode(rows: np.ndarray) -> bytes:
    from cryotiff.codecs import _row_span

    data, start, stride = _row_span(rows)
    out = np.empty(K.lzw_bound(rows.size), np.uint8)
    n_bytes = K.lzw_encode(data, start, stride, rows.shape[0], rows.shape[1], out)
    assert n_bytes <= out.size
    return out[:n_bytes].tobytes()


def lzw_reference(data: bytes) -> tuple[bytes, list[int]]:
    """TIFF LZW written from the chapter "LZW Compression" of TIFF Revision 6.0 in plain Python, with
    imagecodecs' reset rule (ClearCode once code 4095 is given out) and its zero byte after
    EndOfInformation where the codes end on a byte boundary: ``(stream, input offsets at which a
    ClearCode after the first was written)``."""
    codes: list[tuple[int, int]] = [(256, 9)]
    resets: list[int] = []
    width = 9
    if data:
        table = {bytes([v]): v for v in range(256)}
        next_code, phrase = 258, data[:1]
        for offset in range(1, len(data)):
            extended = phrase + data[offset : offset + 1]
            if extended in table:
                phrase = extended
                continue
            table[extended] = next_code
            next_code += 1
            codes.append((table[phrase], width))
            phrase = data[offset : offset + 1]
            if next_code in (512, 1024, 2048):
                width += 1
            elif next_code == 4096:
                codes.append((256, width))
                resets.append(offset)
                table = {bytes([v]): v for v in range(256)}
                next_code, width = 258, 9
        codes.append((table[phrase], width))
        if next_code in (511, 1023, 2047):  # the reader widens after adding that last code's string
            width += 1
    codes.append((257, width))
    bits = "".join(format(code, f"0{n}b") for code, n in codes)
    bits += "0" * (8 - len(bits) % 8)  # at least one padding bit: a zero byte where they end evenly
    return int(bits, 2).to_bytes(len(bits) // 8, "big"), resets


def _lzw_rows(strip: np.ndarray, width: int, layout: str) -> np.ndarray:
    """``strip`` as rows of ``width`` bytes laid out as the pipeline may give them."""
    n_rows = -(-strip.size // width)
    rows = np.resize(strip, n_rows * width).reshape(n_rows, width) if strip.size else np.zeros((0, width), np.uint8)
    if layout == "flipped":
        return np.ascontiguousarray(rows[::-1])[::-1]
    if layout == "gaps":
        padded = np.zeros((n_rows, width + 3), np.uint8)
        padded[:, 1 : width + 1] = rows
        return padded[:, 1 : width + 1]
    if layout == "odd":
        buffer = np.zeros(rows.size + 1, np.uint8)
        buffer[1:] = rows.reshape(-1)
        return buffer[1:].reshape(rows.shape)
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(byte_strips(), st.integers(1, 600), st.sampled_from(["contiguous", "flipped", "gaps", "odd"]))
def test_lzw_writes_the_bytes_imagecodecs_writes(strip: np.ndarray, width: int, layout: str) -> None:
    """Any bytes, as rows laid out as the pipeline gives them (flipped, with gaps between rows, at
    odd addresses): byte for byte imagecodecs' LZW of the same bytes, which imagecodecs decodes
    back."""
    rows = _lzw_rows(strip, width, layout)
    expected = rows.tobytes()
    encoded = lzw_encode(rows)
    assert encoded == imagecodecs.lzw_encode(expected)
    assert imagecodecs.lzw_decode(encoded) == expected


def test_lzw_edge_cases_equal_imagecodecs_and_the_reference() -> None:
    """No bytes (no rows, rows of no bytes), one byte, two; one value long enough for three
    table resets; every byte value in turn; random bytes (a reset every few kB); lengths ending
    on both sides of every code width change and of a reset; the stream ending on a byte
    boundary (the extra zero byte)."""
    rng = np.random.default_rng(11)
    random_bytes = rng.bytes(300000)
    reference, resets = lzw_reference(random_bytes[:20000])
    assert reference == imagecodecs.lzw_encode(random_bytes[:20000]) and len(resets) >= 3
    cases = [b"", b"\x00", b"\xff", b"ab", b"\x07" * 23_000_000, bytes(range(256)) * 1000, random_bytes]
    for reset in resets[:2]:
        cases += [random_bytes[: reset + d] for d in range(-3, 4)]
    for n_codes in (253, 254, 255, 765, 766, 767, 1789, 1790, 1791):  # the widths change near here
        cases += [random_bytes[: n_codes + d] for d in range(-3, 4)]
    for data in cases:
        encoded = lzw_encode(np.frombuffer(data, np.uint8).reshape(1, -1))
        assert encoded == imagecodecs.lzw_encode(data), len(data)
        if len(data) < 30000:
            assert encoded == lzw_reference(data)[0], len(data)
    assert lzw_encode(np.zeros((0, 5), np.uint8)) == lzw_encode(np.zeros((3, 0), np.uint8)) == imagecodecs.lzw_encode(b"")
    # EndOfInformation (257) ends in a 1 bit: a last byte of zeros is the extra one.
    assert any(lzw_encode(np.frombuffer(data, np.uint8).reshape(1, -1))[-1] == 0 for data in cases)


def test_lzw_bytes_do_not_depend_on_which_values_the_sample_finds_frequent() -> None:
    """The encoder looks strings up directly for the 4 or 8 byte values most frequent in a
    sample of 4096 bytes spread over the strip (4 where they cover 98.5 % of it), and in a hash
    for the rest. Strips whose sample misleads: the sampled positions hold one value and the
    others 20 different ones; the sample sees 12 values and the rest holds 3 others; the sample
    sees 4 values and the rest holds those and 60 others; one alphabet in the first half and
    another in the second; the direct values change their meaning across many table resets;
    samples on either side of the 98.5 %; integers in float32. Each as flipped rows, and as rows
    of one byte; both table layouts are used. Byte for byte imagecodecs' stream."""
    from cryotiff.kernels.lzw import _frequent_bytes

    rng = np.random.default_rng(13)
    n = 4096 * 7 * 9
    sampled = np.arange(n) % (n // 4096) == 0  # where the sample lands (its step is n // 4096)
    misleading_one = np.where(sampled, 0, rng.integers(100, 120, n)).astype(np.uint8)
    misleading_many = np.where(sampled, rng.integers(0, 12, n), rng.integers(200, 203, n)).astype(np.uint8)
    misleading_four = np.where(sampled, rng.integers(0, 4, n), rng.integers(0, 64, n)).astype(np.uint8)
    halves = np.concatenate([rng.poisson(1.0, n // 2), 100 + rng.poisson(2.0, n - n // 2)]).astype(np.uint8)
    shifting = (rng.poisson(0.7, n) + 16 * (np.arange(n) // 50000)).astype(np.uint8)
    # 4096 sampled bytes: 61 outside the 4 values is 98.5 %, 62 is below it.
    outside = np.flatnonzero(sampled)
    just_four = np.where(sampled, rng.integers(0, 4, n), rng.poisson(1.0, n)).astype(np.uint8)
    just_four[outside[:61]] = 9
    just_eight = just_four.copy()
    just_eight[outside[61]] = 9
    float_integers = rng.poisson(1.2, n // 4).astype(np.float32).view(np.uint8)
    strips = (misleading_one, misleading_many, misleading_four, halves, shifting, just_four, just_eight, float_integers)
    layouts = [int(_frequent_bytes(strip, 0, strip.size, 1, strip.size)[1]) for strip in strips]
    assert layouts == [2, 3, 2, 3, 3, 2, 3, 2]  # 2: 4 direct values; 3: 8
    for strip in strips:
        for width in (strip.size // 63, 1):
            rows = _lzw_rows(strip, width, "flipped")
            assert lzw_encode(rows) == imagecodecs.lzw_encode(rows.tobytes())
        assert lzw_encode(strip.reshape(1, -1)) == imagecodecs.lzw_encode(strip.tobytes())
    # The same walk with numba's bounds checks (an IndexError instead of reading past an array),
    # on strips of 1 and 3 bytes and on ones with dozens of table resets.
    from cryotiff.codecs import _row_span

    import numba

    checked = numba.njit(boundscheck=True)(K.lzw_encode.py_func)
    for strip in (misleading_one, misleading_four, halves, float_integers, np.zeros(1, np.uint8),
                  np.arange(3, dtype=np.uint8), np.frombuffer(rng.bytes(100_000), np.uint8)):
        rows = _lzw_rows(strip, max(strip.size // 63, 1), "flipped")
        data, start, stride = _row_span(rows)
        out = np.empty(K.lzw_bound(rows.size), np.uint8)
        n_bytes = checked(data, start, stride, rows.shape[0], rows.shape[1], out)
        assert out[:n_bytes].tobytes() == imagecodecs.lzw_encode(rows.tobytes())


def test_lzw_detector_pages_equal_imagecodecs() -> None:
    """The pages cryotiff writes in LZW: EER rendered at upsampling 2 (sparse counts, uint8 and
    uint16), counts, gain-corrected float32 frames and random float32 viewed as bytes, each as
    the flipped view the pipeline encodes; libtiff reads them back (test_codecs.py)."""
    from cryotiff.simulate import gain_reference as GR
    from cryotiff.simulate.detectors import counting_frames

    rng = np.random.default_rng(12)
    events = S.random_events(rng, 256, 8, 0.01)
    eer_page = S.expected_render(events, 256, 2).reshape(512, 512)
    sensitivity = GR.asymmetric_sensitivity((192, 256), seed=3)
    gain = GR.multiplicative_gain(sensitivity)
    counts = GR.counting_frames_with_gain(sensitivity, 1, 1.2, seed=4)[0]
    pages = [
        eer_page.astype(np.uint8),
        eer_page.astype(np.uint16),
        counting_frames(1, (300, 517), 0.96, np.uint8, seed=3)[0],
        (counts * gain).astype(np.float32),
        rng.random((64, 300), dtype=np.float32),
    ]
    for page in pages:
        rows = page[::-1].view(np.uint8).reshape(page.shape[0], -1)
        encoded = lzw_encode(rows)
        assert encoded == imagecodecs.lzw_encode(np.ascontiguousarray(rows).tobytes())
        assert imagecodecs.lzw_decode(encoded) == rows.tobytes()


def test_lzw_encoder_refuses_rows_that_are_not_bytes() -> None:
    """The kernel reads memory without bounds checks: rows of wider pixels (whose row length in
    bytes is not their shape's) are refused before it runs, never read out of bounds."""
    from cryotiff.codecs import make_codec

    codec = make_codec("lzw", lzw_encoder="cryotiff")
    for rows in (np.zeros((4, 8), np.uint16), np.zeros(8, np.uint8), np.zeros((2, 2, 2), np.uint8)):
        with pytest.raises(TypeError, match="2-D uint8"):
            codec.encode_rows(rows)
