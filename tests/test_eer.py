"""EER reading and rendering (cryotiff.io.eer) against synthetic movies whose events are known."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryotiff.errors import EerFormatError, OptionError
from cryotiff.io import Movie
from cryotiff.io import eer as E
from cryotiff.simulate import eer as S

from .eer_reference import ref_decode


def required_bits(positions: np.ndarray, n_pixels: int, rle_bits: int, symbol_bits: int) -> int:
    """Bits the shortest valid variable-length stream with these events needs: before each event
    ``gap // maxrun`` overflow codes and one ``run + symbol`` code; after the last event
    ``ceil(tail / maxrun)`` run-only codes (none after an event on the last pixel)."""
    max_run = (1 << rle_bits) - 1
    n = int(positions.size)
    if n:
        gaps = np.diff(positions, prepend=-1) - 1
        n_overflow = int((gaps // max_run).sum())
        tail = n_pixels - 1 - int(positions[-1])
    else:
        n_overflow, tail = 0, n_pixels
    return n * (rle_bits + symbol_bits) + rle_bits * (n_overflow + -(-tail // max_run))


def _as_pairs(decoded):
    if decoded is None:
        return None
    pos, sym = decoded
    return list(zip(pos.tolist(), sym.tolist()))


ENC_65000 = E.EerEncoding(65000, 8, 2, 2)
ENC_65001 = E.EerEncoding(65001, 7, 2, 2)
ENC_711 = E.EerEncoding(65002, 7, 1, 1)
ENC_722 = E.EerEncoding(65002, 7, 2, 2)


def _edge_frames(size: int, bits: int) -> list[S.EerFrameEvents]:
    total = size * size
    top = (1 << bits) - 1
    cases = [
        [],
        [0],
        [total - 1],
        [0, total - 1],
        [126, 127, 254],  # gaps of exactly 127 / 0 / 126
        [127, 254 + 1, 254 + 1 + 128],
        list(range(0, total, 127)),
        [total - 128],  # tail of exactly 127
        [total - 1 - 254],  # tail of exactly 254
    ]
    return [S.events_from_positions(c, [top] * len(c), [0] * len(c)) for c in cases]


# --------------------------------------------------------------------------------------------
# Encoder and decoders on tiny frames


@pytest.mark.parametrize(
    "compression,subpixel_bits",
    [(65001, None), (65002, 1), (65002, 2)],
)
def test_encoder_matches_imagecodecs(compression: int, subpixel_bits: int | None) -> None:
    bits = 2 if subpixel_bits is None else subpixel_bits
    rng = np.random.default_rng(7)
    size = 64
    frames = _edge_frames(size, bits)
    for density in (0.002, 0.03, 0.4):
        frames += S.random_events(rng, size, 3, density, subpixel_bits=bits)
    for fr in frames:
        stream = S.encode_frame(fr, size, compression, subpixel_bits=subpixel_bits)
        levels = (0, 1, 2) if bits == 2 else (0, 1)
        for superres in levels:
            f = 1 << superres
            got = imagecodecs.eer_decode(
                stream, (size * f, size * f), 7, bits, bits, superres=superres
            )
            up = {0: 1, 1: 2, 2: 3}[superres]
            expected = S.expected_render([fr], size, up, bits)
            np.testing.assert_array_equal(got.astype(np.int64), expected)


@pytest.mark.parametrize("encoding", [ENC_65001, ENC_711, ENC_722])
def test_variable_decoder_matches_reference_and_imagecodecs_subpixels(
    encoding: E.EerEncoding,
) -> None:
    rng = np.random.default_rng(11)
    size = 32
    bits = encoding.horizontal_bits
    frames = _edge_frames(size, bits) + S.random_events(rng, size, 4, 0.05, subpixel_bits=bits)
    for fr in frames:
        stream = S.encode_frame(
            fr,
            size,
            encoding.compression,
            subpixel_bits=None if encoding.compression == 65001 else bits,
        )
        decoded = E.decode_eer_frame(stream, (size, size), encoding, need_symbols=True)
        ref = ref_decode(stream, size * size, 7, 2 * bits, False)
        assert ref is not None
        assert _as_pairs(decoded) == ref
        np.testing.assert_array_equal(decoded[0], fr.positions)
        # The symbol gather gives the same sub-pixels as imagecodecs' superres decoding.
        xs, ys = E.subpixels(decoded[1], bits, bits)
        np.testing.assert_array_equal(xs, fr.sub_x)
        np.testing.assert_array_equal(ys, fr.sub_y)
        sr = imagecodecs.eer_decode(
            stream + b"\0\0", (2 * size, 2 * size), 7, bits, bits, superres=1
        )
        np.testing.assert_array_equal(sr.astype(np.int64), S.expected_render([fr], size, 2, bits))


def test_8bit_decoder_matches_reference() -> None:
    rng = np.random.default_rng(5)
    size = 32
    frames = _edge_frames(size, 2) + S.random_events(rng, size, 5, 0.03)
    frames += S.random_events(rng, size, 3, 0.002)  # many 255 overflow codes
    for fr in frames:
        stream = S.encode_frame(fr, size, 65000)
        got = E.decode_eer_frame(stream, (size, size), ENC_65000, need_symbols=True)
        assert _as_pairs(got) == ref_decode(stream, size * size, 8, 4, True)
        np.testing.assert_array_equal(got[0], fr.positions)
        xs, ys = E.subpixels(got[1], 2, 2)
        np.testing.assert_array_equal(xs, fr.sub_x)
        np.testing.assert_array_equal(ys, fr.sub_y)
        # Truncations: the reference and the vectorised decoder agree on every prefix.
        for cut in range(0, len(stream), 3):
            assert _as_pairs(E.decode_eer_frame(stream[:cut], (size, size), ENC_65000, need_symbols=True)) == ref_decode(
                stream[:cut], size * size, 8, 4, True
            )


def test_8bit_overflow_wastes_symbol_bits() -> None:
    """After a 255 run RELION skips 4 bits; imagecodecs does not (the reason for our decoder)."""
    fr = S.events_from_positions([300], [1], [2])
    stream = S.encode_frame(fr, 32, 65000)
    pos, sym = E.decode_eer_frame(stream, (32, 32), ENC_65000, need_symbols=True)
    assert pos.tolist() == [300]
    xs, ys = E.subpixels(sym, 2, 2)
    assert (xs.tolist(), ys.tolist()) == ([1], [2])
    try:  # imagecodecs reads the wasted bits as the next run: wrong events or an overshoot
        theirs = np.flatnonzero(imagecodecs.eer_decode(stream, (32, 32), 8, 2, 2)).tolist()
    except RuntimeError:
        theirs = None
    assert theirs != [300]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=48), which=st.sampled_from([0, 1, 2, 3]))
def test_garbage_streams_agree_with_reference(data: bytes, which: int) -> None:
    """Arbitrary bytes: valid or corrupt exactly when RELION's loop (stopping at the end of the
    data) says so, with the same events."""
    encoding = [ENC_65000, ENC_65001, ENC_711, ENC_722][which]
    total = 8 * 8
    ref = ref_decode(
        data, total, encoding.rle_bits, encoding.symbol_bits, encoding.compression == 65000
    )
    got = E.decode_eer_frame(data, (8, 8), encoding, need_symbols=True)
    assert _as_pairs(got) == ref


@settings(max_examples=60, deadline=None)
@given(
    positions=st.sets(st.integers(0, 255), max_size=40),
    which=st.sampled_from([1, 2, 3]),
    cut=st.integers(0, 400),
)
def test_truncated_streams_are_corrupt_like_reference(
    positions: set[int], which: int, cut: int
) -> None:
    encoding = [ENC_65000, ENC_65001, ENC_711, ENC_722][which]
    bits = encoding.horizontal_bits
    fr = S.events_from_positions(sorted(positions))
    sb = None if encoding.compression == 65001 else bits
    stream = S.encode_frame(fr, 16, encoding.compression, subpixel_bits=sb, align=1)
    stream = stream[: min(cut, len(stream))]
    ref = ref_decode(stream, 256, 7, 2 * bits, False)
    assert _as_pairs(E.decode_eer_frame(stream, (16, 16), encoding, need_symbols=True)) == ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=64),
        # Mostly one bits: many overflow codes.
        st.lists(st.sampled_from([0xFF, 0xFF, 0xFF, 0x7F, 0xFE, 0xEF, 0x00]), max_size=64).map(bytes),
    ),
    rle=st.integers(4, 14),
    subpixel_bits=st.sampled_from([1, 2]),
    shape=st.sampled_from([(1, 1), (4, 4), (8, 8), (10, 10), (16, 16)]),
)
def test_variable_streams_agree_with_relions_loop(
    data: bytes, rle: int, subpixel_bits: int, shape: tuple[int, int]
) -> None:
    """Every run width imagecodecs decodes (65002): valid or corrupt exactly when RELION's loop
    (stopping at the end of the data) says so, with the same events and symbols, also for frame
    sizes that are not a multiple of 8 pixels (the scan's other path)."""
    symbol_bits = 2 * subpixel_bits
    if not 8 < rle + symbol_bits <= 16:
        return
    encoding = E.EerEncoding(65002, rle, subpixel_bits, subpixel_bits)
    total = shape[0] * shape[1]
    ref = ref_decode(data, total, rle, symbol_bits, False)
    got = E.decode_eer_frame(data, shape, encoding, need_symbols=True)
    assert _as_pairs(got) == ref
    plain = E.decode_eer_frame(data, shape, encoding)
    assert (plain is None) == (ref is None)
    if plain is not None:
        assert plain[1] is None
        assert plain[0].tolist() == [pixel for pixel, _ in ref]


def test_valid_and_damaged_frames_in_turn() -> None:
    """Valid, cut and garbage frames decoded one after the other: each on its own."""
    rng = np.random.default_rng(3)
    size = 256
    frames = S.random_events(rng, size, 6, 0.03)
    for fr in frames:
        stream = S.encode_frame(fr, size, 65001)
        for data, valid in ((stream, True), (stream[: len(stream) // 2], False), (b"\xff" * 64, False)):
            got = E.decode_eer_frame(data, (size, size), ENC_65001)
            assert (got is not None) == valid
            if valid:
                np.testing.assert_array_equal(got[0], fr.positions)


@pytest.mark.parametrize("rle,subpixel_bits", [(7, 1), (9, 1), (14, 1), (5, 2), (7, 2), (12, 2)])
def test_variable_decoder_on_encoded_frames(rle: int, subpixel_bits: int) -> None:
    """Valid streams of several run widths, sparse (long overflow chains) to dense, with and
    without the closing run code after an event on the last pixel; the shortest of each needs
    exactly the bits the grammar needs (:func:`required_bits`): one byte less is corrupt."""
    rng = np.random.default_rng(rle)
    size = 64
    bits = subpixel_bits
    encoding = E.EerEncoding(65002, rle, bits, bits)
    frames = _edge_frames(size, bits) + [
        f
        for density in (0.0005, 0.01, 0.1, 0.6)
        for f in S.random_events(rng, size, 2, density, subpixel_bits=bits)
    ]
    for fr, closing in [(fr, closing) for fr in frames for closing in (True, False)]:
        stream = S.encode_frame(fr, size, 65002, rle_bits=rle, subpixel_bits=bits, align=1,
                                close_after_last_pixel=closing)
        got = E.decode_eer_frame(stream, (size, size), encoding, need_symbols=True)
        assert got is not None
        np.testing.assert_array_equal(got[0], fr.positions)
        xs, ys = E.subpixels(got[1], bits, bits)
        np.testing.assert_array_equal(xs, fr.sub_x)
        np.testing.assert_array_equal(ys, fr.sub_y)
        if closing and fr.positions.size and fr.positions[-1] == size * size - 1:
            continue  # one code longer than needed
        needed = required_bits(fr.positions, size * size, rle, 2 * bits)
        assert len(stream) == -(-needed // 8)
        assert E.decode_eer_frame(stream[:-1], (size, size), encoding) is None


# --------------------------------------------------------------------------------------------
# EER files


def _check_render(result: E.RenderResult, frames, det: int, up: int, bits: int) -> None:
    idx, counts, size = S.expected_render_sparse(frames, det, up, bits)
    assert result.counts.shape == (size, size)
    flat = result.counts.reshape(-1)
    nz = np.flatnonzero(flat)
    np.testing.assert_array_equal(nz, idx)
    np.testing.assert_array_equal(flat[nz], counts)
    assert result.max_count == (int(counts.max()) if counts.size else 0)


@pytest.fixture(scope="module")
def movies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    rng = np.random.default_rng(2024)
    tmp = tmp_path_factory.mktemp("eer")
    out: dict[str, tuple[Path, list]] = {}

    fr = S.random_events(rng, 4096, 4)
    out["4k_65001"] = (
        S.write_eer(tmp / "a.eer", fr, 4096, 65001, strips_per_frame=3,
                    metadata=S.acquisition_metadata(4, 4096)),
        fr,
    )
    fr = S.random_events(rng, 4096, 2)
    out["4k_65000"] = (S.write_eer(tmp / "b.eer", fr, 4096, 65000), fr)
    fr = S.random_events(rng, 4096, 2, subpixel_bits=2)
    out["4k_722"] = (S.write_eer(tmp / "c.eer", fr, 4096, 65002, subpixel_bits=2), fr)
    fr = S.random_events(rng, 4096, 2, subpixel_bits=1)
    out["4k_711"] = (S.write_eer(tmp / "d.ecc", fr, 4096, 65002, subpixel_bits=1), fr)
    fr = S.random_events(rng, 2048, 7, subpixel_bits=1)
    out["2k_711"] = (
        S.write_eer(tmp / "e.eer", fr, 2048, 65002, subpixel_bits=1, final_image=True,
                    metadata=S.acquisition_metadata(7, 2048, 0.025, 0.8)),
        fr,
    )
    fr = S.random_events(rng, 2048, 3, subpixel_bits=2)
    out["2k_722"] = (S.write_eer(tmp / "f.eer", fr, 2048, 65002, subpixel_bits=2,
                                 write_tag_65009=False), fr)
    return out


@pytest.mark.parametrize(
    "name,bits,ups",
    [
        ("4k_65001", 2, (1, 2, 3, -1)),
        ("4k_65000", 2, (1, 2, 3, -1)),
        ("4k_722", 2, (1, 2, -1)),
        ("4k_711", 1, (1, 2)),
        ("2k_711", 1, (1, 2)),
        ("2k_722", 2, (1, 2)),
    ],
)
def test_render_equals_sum_of_events(movies, name: str, bits: int, ups: tuple[int, ...]) -> None:
    path, frames = movies[name]
    with E.EerMovie(path) as movie:
        assert isinstance(movie, Movie)
        det = movie.detector_size
        assert movie.info.kind == "eer"
        assert movie.info.n_frames == len(frames)
        assert movie.info.shape_yx == (det, det)
        assert movie.info.extra["horizontal_bits"] == bits
        n = len(frames)
        for up in ups:
            result = movie.render(0, n, up)
            assert result.counts.dtype == np.uint16
            assert result.corrupt_frames == []
            _check_render(result, frames, det, up, bits)
        # A sub-range, and one raw frame read directly.
        _check_render(movie.render(1, n, 1), frames[1:], det, 1, bits)
        frame = movie.read_frame(n - 1)
        assert frame.shape == (det, det)
        np.testing.assert_array_equal(np.flatnonzero(frame), frames[-1].positions)


def test_render_16k_from_65002_722(movies) -> None:
    path, frames = movies["4k_722"]
    with E.EerMovie(path) as movie:
        _check_render(movie.render(0, 1, 3), frames[:1], 4096, 3, 2)


def test_renders_on_a_thread_pool_give_the_same_counts(movies) -> None:
    path, frames = movies["4k_65001"]
    with E.EerMovie(path) as movie, ThreadPoolExecutor(2) as pool:
        for up in (1, 2):
            serial = movie.render(0, 4, up)
            parallel = pool.submit(movie.render, 0, 4, up).result()
            np.testing.assert_array_equal(serial.counts, parallel.counts)
            _check_render(parallel, frames, 4096, up, 2)


@pytest.mark.parametrize("name,bits,ups", [("4k_65001", 2, (1, 2, -1)), ("2k_711", 1, (1, 2))])
def test_render_in_small_calls_and_bands(
    movies, monkeypatch: pytest.MonkeyPatch, name: str, bits: int, ups: tuple[int, ...]
) -> None:
    """The frames of a page are added a few at a time, band by band: the same counts with calls
    of 1 and 3 frames (several calls, a partial last one), calls cut by their data size, and bands
    from 2 physical rows (the least: binning adds row pairs) to all rows; in every sample type
    that holds the sums."""
    from cryotiff.io.eer import render as R

    path, frames = movies[name]
    with E.EerMovie(path) as movie:
        det = movie.detector_size
        for per_call, data_bytes, band_bytes in ((1, 1 << 40, 1 << 16), (3, 1 << 40, 1), (3, 1, 4096 * 24), (3, 1 << 40, 1 << 40)):
            monkeypatch.setattr(R, "_FRAMES_PER_CALL", per_call)
            monkeypatch.setattr(R, "_DATA_BYTES_PER_CALL", data_bytes)
            monkeypatch.setattr(R, "_BAND_BYTES", band_bytes)
            for k, up in enumerate(ups):
                dtype = (np.uint8, np.uint16, np.uint32)[(k + per_call + band_bytes) % 3]
                result = movie.render(0, len(frames), up, dtype=dtype)
                assert result.counts.dtype == dtype
                _check_render(result, frames, det, up, bits)


def test_render_refuses_a_type_the_sums_could_overflow(movies) -> None:
    path, _ = movies["4k_65001"]
    with E.EerMovie(path) as movie:
        assert E.max_count(4, -1) == 16 and E.max_count(300, 1) == 300
        with pytest.raises(OptionError, match="cannot be summed in int16"):
            movie.render(0, 4, 1, dtype=np.int16)
    # A group of 256 raw frames needs uint16 (RELION's uint8 would wrap), binned from 64 on.
    with pytest.raises(OptionError, match="256 raw frames cannot be summed in uint8"):
        frames = S.random_events(np.random.default_rng(2), 2048, 1, 0.0)
        with E.EerMovie(S.write_eer(Path(path).with_name("empty.eer"), frames * 256, 2048, 65001)) as movie:
            movie.render(0, 256, 1, dtype=np.uint8)


def test_concurrent_renders_are_independent(movies) -> None:
    """Page tasks render the same movie from several threads at once (as ``--j`` does)."""
    path, frames = movies["4k_65001"]
    with E.EerMovie(path) as movie, ThreadPoolExecutor(4) as pool:
        ranges = [(0, 4), (1, 3), (0, 1), (2, 4)] * 2
        results = list(pool.map(lambda r: movie.render(r[0], r[1], 1 + r[0] % 2), ranges))
        for (a, b), result in zip(ranges, results):
            _check_render(result, frames[a:b], 4096, 1 + a % 2, 2)


def test_metadata_and_extra(movies) -> None:
    path, _ = movies["4k_65001"]
    with E.EerMovie(path) as movie:
        assert movie.metadata["numberOfFrames"] == 4
        assert movie.metadata["totalDose"] == pytest.approx(0.1)
        assert movie.info.extra["compression"] == 65001
        assert movie.info.extra["rle_bits"] == 7
        assert movie.info.extra["final_image_ifd"] is False
        assert movie.info.extra["sensor_pixel_size_angstrom"] == pytest.approx(0.8)
    path, _ = movies["4k_65000"]
    with E.EerMovie(path) as movie:
        assert movie.metadata == {}
        assert movie.info.extra["rle_bits"] == 8


def test_final_image_ifd_is_skipped_and_2k_grouping(movies) -> None:
    path, frames = movies["2k_711"]
    with E.EerMovie(path) as movie:
        assert movie.info.extra["final_image_ifd"] is True
        assert movie.info.n_frames == 7
        pages, dropped = E.plan_groups(movie.info.n_frames, 3)
        assert pages == [(0, 3), (3, 6)] and dropped == 1
        for start, stop in pages:
            _check_render(movie.render(start, stop, 2), frames[start:stop], 2048, 2, 1)
        grouping, dose = E.grouping_for_dose(movie.metadata, 1.0, movie=str(path))
        assert dose == pytest.approx(0.025 / 0.8**2)
        assert grouping == 26  # 1.0 / 0.0390625 = 25.6


def test_missing_tag_65009_uses_65008(movies) -> None:
    with E.EerMovie(movies["2k_722"][0]) as movie:
        assert (movie.encoding.horizontal_bits, movie.encoding.vertical_bits) == (2, 2)


def test_upsampling_rejections(movies) -> None:
    with E.EerMovie(movies["2k_711"][0]) as movie:
        for up in (-1, 3):
            with pytest.raises(OptionError, match="For subpixel_bits = 2, eer_upsamling must be 1 or 2."):
                movie.render(0, 1, up)
    with E.EerMovie(movies["4k_711"][0]) as movie:
        with pytest.raises(OptionError, match="eer_upsamling must be 1 or 2"):
            movie.render(0, 1, -1)
    with E.EerMovie(movies["2k_722"][0]) as movie:
        with pytest.raises(OptionError, match="Invalid EER upsamle for 2K images. This must be 2 or 1."):
            movie.render(0, 1, 3)
        for up in (0, 4, -2):
            with pytest.raises(OptionError, match="eer_upsampling must be -1, 1, 2 or 3"):
                movie.render(0, 1, up)
        with pytest.raises(OptionError, match="Invalid frame range"):
            movie.render(2, 5, 1)
        with pytest.raises(OptionError):
            movie.render(1, 1, 1)


def test_corrupt_frames_are_skipped_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    det = 2048
    frames = S.random_events(rng, det, 6)
    good = [S.encode_frame(f, det, 65001) for f in frames]
    streams = [
        good[0],
        good[1][: len(good[1]) * 2 // 3],  # runs out of data before W*H pixels
        good[2],
        S.encode_frame(frames[3], det + 1, 65001),  # runs overshoot W*H
        # Ends early (at (W-1)^2 pixels), then zero bits.
        S.encode_frame(S.events_from_positions(frames[4].positions[:1000]), det - 1, 65001)
        + b"\0" * 64,
        b"",
        good[5],
    ]
    path = S.write_eer(tmp_path / "bad.eer", streams, det, 65001, strips_per_frame=2)
    with E.EerMovie(path) as movie, ThreadPoolExecutor(2) as pool:
        assert movie.info.n_frames == 7
        for render in (movie.render, lambda *args: pool.submit(movie.render, *args).result()):
            result = render(0, 7, 1)
            assert result.corrupt_frames == [1, 3, 4, 5]
            _check_render(result, [frames[0], frames[2], frames[5]], det, 1, 2)
        assert result.corrupt_frame_warnings("Movies/bad.eer") == [
            "WARNING: The number of pixels is not right in Movies/bad.eer frame 2. "
            "Probably this frame is corrupted. This frame is skipped.",
            "WARNING: The number of pixels is not right in Movies/bad.eer frame 4. "
            "Probably this frame is corrupted. This frame is skipped.",
            "WARNING: The number of pixels is not right in Movies/bad.eer frame 5. "
            "Probably this frame is corrupted. This frame is skipped.",
            "WARNING: The number of pixels is not right in Movies/bad.eer frame 6. "
            "Probably this frame is corrupted. This frame is skipped.",
        ]
        assert movie.corrupt_frames() == [1, 3, 4, 5]
        with pytest.raises(E.CorruptEerFrameError, match="raw frame 2"):
            movie.read_frame(1)
        # Binned and 2x rendering skip the same frames.
        result = movie.render(0, 7, 2)
        assert result.corrupt_frames == [1, 3, 4, 5]
        _check_render(result, [frames[0], frames[2], frames[5]], det, 2, 2)


def test_corrupt_65000_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    frames = S.random_events(rng, 2048, 2)
    streams = [
        S.encode_frame(frames[0], 2048, 65000),
        S.encode_frame(frames[1], 2048, 65000)[:-4000],
    ]
    with E.EerMovie(S.write_eer(tmp_path / "x.eer", streams, 2048, 65000)) as movie:
        result = movie.render(0, 2, 1)
        assert result.corrupt_frames == [1]
        _check_render(result, frames[:1], 2048, 1, 2)


# --------------------------------------------------------------------------------------------
# Grouping and dose


def test_plan_groups() -> None:
    assert E.plan_groups(10, 3) == ([(0, 3), (3, 6), (6, 9)], 1)
    assert E.plan_groups(10, 1) == ([(k, k + 1) for k in range(10)], 0)  # RELION: 9 pages
    assert E.plan_groups(10, 10) == ([(0, 10)], 0)
    assert E.plan_groups(1000, 40)[1] == 0 and len(E.plan_groups(1000, 30)[0]) == 33
    with pytest.raises(OptionError, match="larger than the number of raw frames"):
        E.plan_groups(10, 11, movie="m.eer")
    for g in (0, -5):
        with pytest.raises(OptionError, match="positive"):
            E.plan_groups(10, g)


def test_grouping_for_dose() -> None:
    md = {"totalDose": 50.0, "numberOfFrames": 1000, "sensorPixelSize.width": 1e-10,
          "sensorPixelSize.height": 1e-10, "totalDose.unit": "e/pixel"}
    assert E.grouping_for_dose(md, 1.0) == (20, pytest.approx(0.05))
    assert E.grouping_for_dose(md, 0.01)[0] == 1  # at least 1
    assert E.grouping_for_dose(md, 0.125)[0] == 3  # 2.5 rounds up
    assert E.grouping_for_dose(md, 1.0, pixel_size_angstrom=2.0)[0] == 80
    with pytest.raises(OptionError, match="m.eer.*totalDose"):
        E.grouping_for_dose({}, 1.0, movie="m.eer")
    with pytest.raises(OptionError, match="sensorPixelSize"):
        E.grouping_for_dose({"totalDose": 50.0, "numberOfFrames": 10}, 1.0, movie="m.eer")
    with pytest.raises(OptionError, match="implausible"):
        E.grouping_for_dose({**md, "sensorPixelSize.width": 1.4e-5,
                             "sensorPixelSize.height": 1.4e-5}, 1.0)
    with pytest.raises(OptionError, match="positive"):
        E.grouping_for_dose(md, 0.0)


def test_counts_dtype() -> None:
    assert E.counts_dtype(65535, 1) == np.uint16
    assert E.counts_dtype(65536, 2) == np.uint32
    assert E.counts_dtype(16383, -1) == np.uint16
    assert E.counts_dtype(16384, -1) == np.uint32


def test_messages() -> None:
    assert E.found_frames_message(1000) == " Found 1000 raw frames"
    assert E.rendering_message(40, 80) == " Rendering EER (hardware) frame 41 to 80"
    assert E.corrupt_frame_warning("a.eer", 3) == (
        "WARNING: The number of pixels is not right in a.eer frame 3. Probably this frame is "
        "corrupted. This frame is skipped."
    )
    assert E.is_eer_path("x/Movie_EER.eer") and E.is_eer_path("a.ecc")
    assert not E.is_eer_path("a.EER") and not E.is_eer_path("a.eer.tif")


# --------------------------------------------------------------------------------------------
# Damaged and unsupported files


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_damaged_files_raise_eer_format_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(9)
    frames = S.random_events(rng, 2048, 2)
    good = S.write_eer(tmp_path / "good.eer", frames, 2048, 65001).read_bytes()
    cases = {
        "missing.eer": None,
        "empty.eer": b"",
        "text.eer": b"this is not a TIFF file at all" * 10,
        "half.eer": good[: len(good) // 2],
        "tail.eer": good[:-40],
        "legacy.eer": b"\1\2\3\4" * 100 + (50).to_bytes(8, "little") + E.LEGACY_EER_FOOTER,
    }
    before = _open_fds()
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(EerFormatError) as info:
            with E.EerMovie(path) as movie:
                movie.render(0, movie.info.n_frames, 1)
        assert name in str(info.value)
        if name == "legacy.eer":
            assert "legacy" in str(info.value)
    assert _open_fds() == before
    assert capfd.readouterr() == ("", "")  # the library prints nothing (tifffile logs captured)


def test_unsupported_sizes_and_schemes(tmp_path: Path) -> None:
    fr = S.random_events(np.random.default_rng(1), 1024, 1)
    with pytest.raises(EerFormatError, match="small.eer.*4096x4096 or 2048x2048"):
        E.EerMovie(S.write_eer(tmp_path / "small.eer", fr, 1024, 65001))
    fr = S.random_events(np.random.default_rng(1), 2048, 1)
    with pytest.raises(EerFormatError, match="Unknown compression scheme for EER: 5"):
        E.EerMovie(S.write_eer(tmp_path / "c5.eer", fr, 2048, 65001, tag_compression=5))
    with pytest.raises(
        EerFormatError,
        match="Unsupported compression scheme: type = 65002, rle_bits = 7, subpix_h = 3, subpix_v = 3",
    ):
        E.EerMovie(S.write_eer(tmp_path / "v3.eer", [b"\0" * 16], 2048, 65002, subpixel_bits=3))


def test_files_are_closed(movies) -> None:
    path, _ = movies["2k_722"]
    before = _open_fds()
    for _ in range(50):
        with E.EerMovie(path) as movie:
            movie.render(0, 1, 1)
    movie = E.EerMovie(path)
    movie.close()
    movie.close()  # idempotent
    with pytest.raises(EerFormatError, match="closed"):
        movie.read_frame(0)
    assert _open_fds() == before


# --------------------------------------------------------------------------------------------
# An event on the detector's last pixel


def _ends_on_last_pixel(rng: np.random.Generator, size: int, compression: int, bits: int):
    """Events with one on the last pixel whose stream, without a closing run code, ends exactly
    at its last byte (no padding bit), and that stream."""
    total = size * size
    sb = None if compression in (65000, 65001) else bits
    while True:
        positions = np.sort(rng.choice(total - 1, size=int(rng.integers(1, 40)), replace=False))
        fr = S.events_from_positions(
            np.append(positions, total - 1),
            rng.integers(0, 1 << bits, positions.size + 1),
            rng.integers(0, 1 << bits, positions.size + 1),
        )
        stream = S.encode_frame(fr, size, compression, subpixel_bits=sb, align=1,
                                close_after_last_pixel=False)
        rle = 8 if compression == 65000 else 7
        max_run = (1 << rle) - 1
        gaps = np.diff(fr.positions, prepend=-1) - 1
        code_bits = (rle + 2 * bits) * fr.positions.size + (rle + (4 if rle == 8 else 0)) * int(
            (gaps // max_run).sum()
        )
        if code_bits == 8 * len(stream):
            return fr, stream


@pytest.mark.parametrize(
    "encoding", [ENC_65000, ENC_65001, ENC_711, ENC_722], ids=["65000", "65001", "65002-711", "65002-722"]
)
def test_event_on_last_pixel_without_closing_code_is_kept(tmp_path: Path, encoding) -> None:
    """Thermo Fisher's writer ends a frame whose last event is on the last pixel with that
    event's code: its runs add up to exactly the frame size and no closing run code follows.
    Such a frame is complete and kept (RELION keeps it only when the next 7 bits happen to be
    zero), in the decoder, in the reference loop and through a whole EER file."""
    rng = np.random.default_rng(encoding.compression + encoding.horizontal_bits)
    size = 16
    bits = encoding.horizontal_bits
    waste = encoding.compression == 65000
    for trial in range(4):
        fr, stream = _ends_on_last_pixel(rng, size, encoding.compression, bits)
        expected = list(zip(fr.positions.tolist(), [None] * fr.positions.size))
        ref = ref_decode(stream, size * size, encoding.rle_bits, encoding.symbol_bits, waste)
        assert ref is not None and [p for p, _ in ref] == fr.positions.tolist()
        got = E.decode_eer_frame(stream, (size, size), encoding, need_symbols=True)
        assert _as_pairs(got) == ref, expected
        xs, ys = E.subpixels(got[1], bits, bits)
        np.testing.assert_array_equal(xs, fr.sub_x)
        np.testing.assert_array_equal(ys, fr.sub_y)
        # Whatever bits follow the last event (padding, the next frame's bytes) are not read.
        for tail in (b"\0", b"\xff", b"\x5a\xa5"):
            assert _as_pairs(E.decode_eer_frame(stream + tail, (size, size), encoding,
                                                need_symbols=True)) == ref
        # One byte less cuts the last event's code: corrupt.
        assert E.decode_eer_frame(stream[:-1], (size, size), encoding) is None
        # RELION's own loop reads one more run field after the last pixel and fails here.
        assert ref_decode(stream + b"\xff\xff", size * size, encoding.rle_bits,
                          encoding.symbol_bits, waste, last_pixel_ends=False) is None
    # The same through an EER file at the real detector size, every upsampling.
    det = 2048
    bits_per_axis = encoding.horizontal_bits
    frames = S.random_events(rng, det, 3, subpixel_bits=bits_per_axis)
    last = frames[1]
    frames[1] = S.EerFrameEvents(
        np.append(last.positions[last.positions < det * det - 1], det * det - 1),
        np.append(last.sub_x[last.positions < det * det - 1], 1).astype(np.uint8),
        np.append(last.sub_y[last.positions < det * det - 1], 0).astype(np.uint8),
    )
    sb = None if encoding.compression in (65000, 65001) else bits_per_axis
    streams = [S.encode_frame(f, det, encoding.compression, subpixel_bits=sb, align=1,
                              close_after_last_pixel=False) for f in frames]
    path = S.write_eer(tmp_path / "last.eer", streams, det, encoding.compression,
                       subpixel_bits=sb)
    with E.EerMovie(path) as movie:
        for up in (1, 2):
            result = movie.render(0, 3, up)
            assert result.corrupt_frames == []
            _check_render(result, frames, det, up, bits_per_axis)


def test_reading_raw_frames_asks_the_system_to_read_the_next_ones_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a group of raw frames is read, as many following frames are advised (WILLNEED),
    strips one after the other as one range; the rendering is unchanged."""
    rng = np.random.default_rng(11)
    size = 2048
    frames = S.random_events(rng, size, 8, 0.001)
    path = tmp_path / "m.eer"
    S.write_eer(path, frames, size, strips_per_frame=2)
    with E.EerMovie(path) as movie:
        expected = movie.render(0, 8, 1).counts
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, n, advice: advised.append((offset, n)))
    with E.EerMovie(path) as movie:
        movie.frame_data(0, 3)
        strips = [strip for index in range(3, 6) for strip in movie._strips[index]]
        np.testing.assert_array_equal(movie.render(0, 8, 1).counts, expected)
    covered = set()
    for offset, n in advised[:]:
        covered.update(range(offset, offset + n))
    assert all(set(range(offset, offset + count)) <= covered for offset, count in strips)
    assert len(advised) < len(strips) or len(strips) == 1
