"""Codecs and the measured ``auto`` policy: choices on detector-like frames, bit-exact round trips
through convert_movie for every codec, TIFF tags, levels, the opt-in warning, libtiff decoding."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cryotiff import codecs
from cryotiff.cli import main
from cryotiff.codecs import (
    AUTO_CANDIDATES,
    COMPRESSION_CHOICES,
    PIPELINE_MB_PER_S,
    choose_auto_codec,
    make_codec,
    make_codec_from_label,
    opt_in_warning,
    policy_sample,
    resolve_codec,
    validate_options,
)
from cryotiff.convert import ConvertOptions, PageSource, convert_movie
from cryotiff.errors import OptionError
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.write import write_mrc_movie

from .helpers import libtiff_decodes, read_tiff_frames, tiff_tags

TIFFINFO = shutil.which("tiffinfo")


def k2_frame(shape=(384, 512), dose=0.96, seed=1) -> np.ndarray:
    return counting_frames(1, shape, dose, np.uint8, seed=seed)[0]


def falcon_frame(shape=(128, 4096), seed=1) -> np.ndarray:
    return falcon_frames(1, shape, seed=seed)[0]


def gain_normalised_frame(shape=(256, 512), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(1.45, shape) * rng.uniform(0.9, 1.1, shape)).astype(np.float32)


# --------------------------------------------------------------------------- the auto policy


def test_auto_picks_huffman_only_deflate_for_k2_counts() -> None:
    decision = choose_auto_codec(k2_frame(), 3838, is_eer=False)
    assert decision.codec.label == "deflate-huffman"
    assert decision.codec.tiff_code == 8
    assert decision.relion_codec == "lzw"
    # The K2 goal: at most 25.0 % (RELION's LZW: 27.8 %), on the sample.
    assert decision.sizes["deflate-huffman"] / decision.sample_bytes < 0.25
    assert decision.sizes["lzw"] / decision.sample_bytes > 0.27


def test_auto_picks_huffman_only_deflate_for_falcon_blobs() -> None:
    decision = choose_auto_codec(falcon_frame(), 4096, is_eer=False)
    assert decision.codec.label == "deflate-huffman"
    assert decision.relion_codec == "zlib-6"
    # RELION's deflate is slow: the floor is five times its speed (with the margin), not its speed.
    assert decision.floor_mb_per_s == pytest.approx(codecs.AUTO_MIN_MB_PER_S * codecs.AUTO_SPEED_MARGIN)
    assert "deflate-6" not in decision.sizes  # too close to the floor to be trusted
    assert decision.sizes["deflate-huffman"] < decision.sizes["lzw"]


def test_auto_keeps_lzw_for_sparse_counts() -> None:
    """At 0.05 e/px/frame LZW's dictionary beats every fast deflate encoding."""
    decision = choose_auto_codec(k2_frame((512, 512), dose=0.05), 512, is_eer=True)
    assert decision.codec.label == "lzw"
    assert decision.codec.tiff_code == 5


def test_auto_on_float_data_is_a_fast_plain_deflate() -> None:
    decision = choose_auto_codec(gain_normalised_frame(), 3838, is_eer=False)
    assert decision.codec.tiff_code == 8
    # libdeflate 6 is about as fast as LZW here: within the margin, so it is not tried.
    assert "deflate-6" not in decision.sizes
    assert decision.sizes[decision.codec.label] == min(decision.sizes.values())


@pytest.mark.parametrize("make", [k2_frame, falcon_frame, gain_normalised_frame])
def test_auto_is_deterministic_and_only_tries_fast_enough_codecs(make) -> None:
    page = make()
    width = page.shape[1]
    decisions = [choose_auto_codec(page.copy(), width, is_eer=False) for _ in range(3)]
    assert len({d.codec.label for d in decisions}) == 1
    assert len({tuple(sorted(d.sizes.items())) for d in decisions}) == 1
    decision = decisions[0]
    for label in decision.eligible:
        if label != decision.relion_codec:  # RELION's own LZW is as fast as RELION by definition
            assert decision.speeds_mb_per_s[label] >= decision.floor_mb_per_s
        assert decision.speeds_mb_per_s[label] >= codecs.AUTO_MIN_MB_PER_S
    # The choice is the smallest of the eligible candidates.
    assert decision.sizes[decision.codec.label] == min(decision.sizes.values())


def test_speed_table_covers_every_candidate_and_is_fast_enough() -> None:
    """Every auto candidate but libdeflate 6 is at least five times RELION's deflate on every
    measured data class (libdeflate 6 competes only where it is)."""
    for label in AUTO_CANDIDATES:
        xs = [x for x, _ in PIPELINE_MB_PER_S[label]]
        assert xs == sorted(xs)
        if label != "deflate-6":
            assert min(y for _, y in PIPELINE_MB_PER_S[label]) >= codecs.AUTO_MIN_MB_PER_S


def test_policy_sample_is_a_small_fraction_of_a_large_page() -> None:
    page = k2_frame((3710, 3838))
    strips = policy_sample(page)
    sampled = sum(strip.nbytes for strip in strips)
    assert sampled <= max(page.nbytes / 32, codecs.AUTO_SAMPLE_MIN_BYTES) + 8 * page.shape[1]
    assert sampled >= codecs.AUTO_SAMPLE_MIN_BYTES
    # Bands spread over the whole page, in TIFF scanline order (rows flipped).
    flipped = page[::-1]
    first_band_rows = strips[0].shape[0] // codecs.AUTO_SAMPLE_BANDS
    np.testing.assert_array_equal(strips[0][:first_band_rows], flipped[:first_band_rows])
    np.testing.assert_array_equal(strips[0][-1], flipped[-1])


def test_small_pages_are_sampled_whole_and_line_by_line_row_by_row() -> None:
    page = k2_frame((40, 64))
    (whole,) = policy_sample(page)
    np.testing.assert_array_equal(whole, page[::-1])
    rows = policy_sample(page, rows_per_strip=1)
    assert len(rows) == 40
    np.testing.assert_array_equal(rows[0], page[-1])


def test_auto_with_line_by_line_counts_per_row_headers() -> None:
    page = k2_frame()
    whole = choose_auto_codec(page, 512, is_eer=False)
    by_row = choose_auto_codec(page, 512, is_eer=False, rows_per_strip=1)
    # Each row is its own stream: every codec pays its headers per row, so the sample is larger.
    assert by_row.sizes["lzw"] > whole.sizes["lzw"]
    assert by_row.codec.tiff_code in (5, 8)


def test_auto_without_a_sample_is_relions_width_rule() -> None:
    assert resolve_codec("auto", 6, 4096, False).label == "deflate-6"
    assert resolve_codec("auto", 3, 4096, False).label == "deflate-3"
    assert resolve_codec("auto", 6, 4096, True).label == "lzw"
    assert resolve_codec("auto", 6, 3838, False).label == "lzw"


def test_explicit_choices_keep_relions_meaning() -> None:
    assert resolve_codec("lzw", 6, 4096, False, sample=k2_frame()).label == "lzw"
    assert resolve_codec("zip", 9, 3838, False, sample=k2_frame()).label == "deflate-9"
    assert resolve_codec("none", 6, 3838, False).tiff_code == 1
    assert resolve_codec("zstd:9", 6, 3838, False).label == "zstd-9"
    assert resolve_codec("lzma", 6, 3838, False).label == "lzma-6"


class CountingPages(PageSource):
    """A page source that counts how often each page is made."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames
        self.path = Path("counting.mrc")
        self.n_pages = frames.shape[0]
        self.shape_yx = frames.shape[1:]
        self.dtype = frames.dtype
        self.pixel_size_angstrom = 1.0
        self.input_bytes = frames.nbytes
        self.made: list[int] = []

    def page(self, index: int) -> np.ndarray:
        self.made.append(index)
        return self.frames[index].copy()


def test_auto_makes_the_first_page_once(tmp_path: Path) -> None:
    frames = counting_frames(3, (64, 96), 0.96, np.uint8, seed=3)
    source = CountingPages(frames)
    result = convert_movie(source.path, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path), source=source)
    assert sorted(source.made) == [0, 1, 2]
    assert "page" not in source.__dict__  # the hand-over removed itself
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "m.tif"), frames)
    assert result.codec in AUTO_CANDIDATES


# --------------------------------------------------------------------------- round trips


def movie(kind: str, n_frames: int = 3) -> tuple[np.ndarray, int]:
    """(frames, MRC mode) of a small movie of each kind."""
    if kind == "k2":
        return counting_frames(n_frames, (48, 80), 0.96, np.int8, seed=5), 0
    if kind == "falcon":
        return falcon_frames(n_frames, (40, 64), seed=5), 6
    if kind == "int16":
        return np.random.default_rng(5).integers(-3000, 3000, (n_frames, 33, 47)).astype(np.int16), 1
    if kind == "float":
        return np.stack([gain_normalised_frame((32, 48), seed=k) for k in range(n_frames)]), 2
    raise AssertionError(kind)


EXPECTED_TAG = {"none": 1, "lzw": 5, "deflate": 8, "zip": 8, "zstd": 50000, "zstd:19": 50000, "lzma": 34925, "lzma:1": 34925}


def libtiff_decodes_any(path: Path) -> None:
    """``tiffinfo -D``, tolerating only a libtiff built without the opt-in codec."""
    if TIFFINFO is None:
        return
    completed = subprocess.run([TIFFINFO, "-D", str(path)], capture_output=True, text=True)
    if "not configured" in completed.stderr or "not implemented" in completed.stderr:
        pytest.skip(f"this libtiff lacks the codec: {completed.stderr.strip()}")
    assert completed.returncode == 0, completed.stderr
    assert "error" not in completed.stderr.lower(), completed.stderr


@pytest.mark.parametrize("line_by_line", [False, True])
@pytest.mark.parametrize("compression", ["auto", "none", "lzw", "deflate", "zip", "zstd", "zstd:19", "lzma", "lzma:1"])
@pytest.mark.parametrize("kind", ["k2", "falcon", "int16", "float"])
def test_every_codec_round_trips_bit_exactly(tmp_path: Path, kind: str, compression: str, line_by_line: bool) -> None:
    frames, mode = movie(kind)
    source = write_mrc_movie(tmp_path / "m.mrc", frames, mode, pixel_size_angstrom=1.0)
    options = ConvertOptions(output_dir=tmp_path, compression=compression, line_by_line=line_by_line)
    result = convert_movie(source, tmp_path / "m.tif", options)
    decoded = read_tiff_frames(tmp_path / "m.tif")
    assert decoded.dtype == frames.dtype
    np.testing.assert_array_equal(decoded, frames)
    assert result.frames_verified == frames.shape[0]
    tags = tiff_tags(tmp_path / "m.tif")
    if compression == "auto":
        assert result.codec in AUTO_CANDIDATES
        assert tags["Compression"] == make_codec_from_label(result.codec).tiff_code
        assert tags["Compression"] in (5, 8)
    else:
        assert tags["Compression"] == EXPECTED_TAG[compression]
    assert "Predictor" not in tags  # the horizontal predictor makes counting data larger
    libtiff_decodes_any(tmp_path / "m.tif")


def test_auto_output_of_a_k2_movie_is_under_25_percent(tmp_path: Path) -> None:
    frames = counting_frames(2, (512, 768), 0.96, np.int8, seed=7)
    source = write_mrc_movie(tmp_path / "k2.mrc", frames, 0)
    result = convert_movie(source, tmp_path / "k2.tif", ConvertOptions(output_dir=tmp_path))
    assert result.codec == "deflate-huffman"
    assert tiff_tags(tmp_path / "k2.tif")["Compression"] == 8
    assert result.output_bytes / result.input_bytes < 0.25
    libtiff_decodes(tmp_path / "k2.tif")


def test_auto_output_of_a_falcon_movie_is_smaller_than_relions_deflate(tmp_path: Path) -> None:
    frames = falcon_frames(2, (96, 4096), seed=7)
    source = write_mrc_movie(tmp_path / "falcon.mrc", frames, 6)
    result = convert_movie(source, tmp_path / "falcon.tif", ConvertOptions(output_dir=tmp_path))
    relion = make_codec("zlib", 6)
    relion_bytes = sum(len(relion.encode(np.ascontiguousarray(f[::-1]))) for f in frames)
    assert result.codec == "deflate-huffman"
    assert result.output_bytes < relion_bytes
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "falcon.tif"), frames)


def test_huffman_only_encoder_is_the_kernel_only_where_numba_pays() -> None:
    """Short movies of plain integer frames do not load numba for the encoder; EER and gain
    movies (numba loaded for their pages) and long movies use the compiled kernel."""
    threshold = codecs.COMPILED_ENCODERS_MIN_MOVIE_BYTES
    assert codecs.huffman_encoder_for(threshold - 1, loads_kernels=False) == "zlib-ng"
    assert codecs.huffman_encoder_for(threshold, loads_kernels=False) == "cryotiff"
    assert codecs.huffman_encoder_for(1, loads_kernels=True) == "cryotiff"
    assert make_codec("deflate-huffman", huffman_encoder="zlib-ng").encoder == "zlib-ng"
    assert make_codec("deflate-huffman").encoder == "cryotiff"
    with pytest.raises(ValueError):
        make_codec("deflate-huffman", huffman_encoder="zlib")


def test_lzw_encoder_is_the_kernel_only_where_numba_pays() -> None:
    """LZW follows the Huffman-only rule: imagecodecs' encoder for short movies of plain integer
    frames (no numba loaded), the compiled kernel for EER and gain movies and long movies; the
    verification decoder is imagecodecs' either way."""
    threshold = codecs.COMPILED_ENCODERS_MIN_MOVIE_BYTES
    assert codecs.lzw_encoder_for(threshold - 1, loads_kernels=False) == "imagecodecs"
    assert codecs.lzw_encoder_for(threshold, loads_kernels=False) == "cryotiff"
    assert codecs.lzw_encoder_for(1, loads_kernels=True) == "cryotiff"
    assert make_codec("lzw").encoder == "imagecodecs"
    kernel = make_codec("lzw", lzw_encoder="cryotiff")
    assert kernel.encoder == "cryotiff" and kernel.label == "lzw" and kernel.tiff_code == 5
    assert kernel.decode is not None and make_codec_from_label("lzw", lzw_encoder="cryotiff").encoder == "cryotiff"
    with pytest.raises(ValueError):
        make_codec("lzw", lzw_encoder="libtiff")


@pytest.mark.parametrize("compression", ["lzw", "auto"])
def test_an_eer_movie_in_lzw_is_the_same_file_from_either_encoder(in_tmp: Path, compression: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An EER movie at --eer_upsampling 2 (numba loaded for its pages) is encoded by the compiled
    LZW kernel; the file is byte for byte the one imagecodecs' encoder writes, its pixels are the
    events rendered, and libtiff decodes every strip."""
    from cryotiff.simulate import eer as S

    events = S.random_events(np.random.default_rng(21), 2048, 4, 0.02)
    S.write_eer(Path("m.eer"), events, 2048, 65001)
    kernel_strips = []
    kernel_encoder = codecs._lzw_encode_rows
    monkeypatch.setattr(codecs, "_lzw_encode_rows", lambda rows: kernel_strips.append(rows.shape) or kernel_encoder(rows))
    options = ["--i", "m.eer", "--eer_upsampling", "2", "--eer_grouping", "2", "--compression", compression,
               "--report", "r.json"]
    assert main([*options, "--o", "kernel"]) == 0
    # Both pages with lzw; auto's sample at least (it measures LZW on every movie).
    assert len(kernel_strips) >= (2 if compression == "lzw" else 1)
    monkeypatch.setattr(codecs, "compiled_encoders_pay", lambda movie_bytes, loads_kernels: False)
    kernel_strips.clear()
    assert main([*options, "--o", "imagecodecs"]) == 0
    assert kernel_strips == []
    assert tiff_tags(Path("kernel/m.tif"))["Compression"] == 5
    assert Path("kernel/m.tif").read_bytes() == Path("imagecodecs/m.tif").read_bytes()
    pages = read_tiff_frames(Path("kernel/m.tif"))
    for index in range(2):
        indices, counts, size = S.expected_render_sparse(events[2 * index : 2 * index + 2], 2048, 2)
        page = pages[index].reshape(-1)
        assert pages[index].shape == (size, size) and int(page.sum()) == int(counts.sum())
        np.testing.assert_array_equal(page[indices], counts)
    libtiff_decodes(Path("kernel/m.tif"))


def test_auto_measures_the_same_lzw_sizes_with_either_encoder() -> None:
    """``auto``'s candidate sizes (and so its choice) do not depend on which LZW encoder runs:
    EER pages at upsampling 2, gain-corrected float32 frames, counts."""
    from cryotiff.simulate import eer as S
    from cryotiff.simulate import gain_reference as GR

    rng = np.random.default_rng(22)
    sensitivity = GR.asymmetric_sensitivity((256, 384), seed=5)
    pages = [
        S.expected_render(S.random_events(rng, 512, 8, 0.01), 512, 2).astype(np.uint8).reshape(1024, 1024),
        (GR.counting_frames_with_gain(sensitivity, 1, 1.2, seed=6)[0] * GR.multiplicative_gain(sensitivity)).astype(np.float32),
        counting_frames(1, (300, 517), 0.96, np.uint8, seed=3)[0],
    ]
    for page in pages:
        decisions = [choose_auto_codec(page, page.shape[1], True, lzw_encoder=encoder) for encoder in codecs.LZW_ENCODERS]
        assert decisions[0].sizes == decisions[1].sizes
        assert decisions[0].codec.label == decisions[1].codec.label


def test_auto_measures_lzw_with_imagecodecs_and_loads_the_compiled_lzw_encoder_only_to_encode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The two LZW encoders write the same bytes, so ``auto`` sizes LZW with imagecodecs': a
    movie that ends up in Deflate (Falcon frames) never runs the compiled LZW encoder, a movie
    that ends up in LZW (a sparse EER page) is encoded by it."""
    from cryotiff.simulate import eer as S

    def not_here(*args):
        raise AssertionError("the compiled LZW encoder ran while sizing the sample")

    falcon = falcon_frames(1, (512, 4096), seed=4)[0]
    eer_page = S.expected_render(S.random_events(np.random.default_rng(3), 512, 8, 0.01), 512, 2)
    eer_page = eer_page.astype(np.uint8).reshape(1024, 1024)
    sample = np.ascontiguousarray(eer_page[::-1]).view(np.uint8)
    kernel_bytes = make_codec("lzw", lzw_encoder="cryotiff").encode_rows(sample)
    assert kernel_bytes == make_codec("lzw", lzw_encoder="imagecodecs").encode(sample)
    monkeypatch.setattr(codecs, "_lzw_encode_rows", not_here)
    monkeypatch.setattr(codecs, "_lzw_encode", not_here)
    deflate = choose_auto_codec(falcon, falcon.shape[1], False, lzw_encoder="cryotiff")
    assert deflate.codec.name == "deflate" and "lzw" in deflate.sizes
    lzw = choose_auto_codec(eer_page, eer_page.shape[1], True, lzw_encoder="cryotiff")
    assert lzw.codec.label == "lzw" and lzw.codec.encoder == "cryotiff"


@pytest.mark.parametrize("encoder", codecs.HUFFMAN_ENCODERS)
def test_both_huffman_only_encoders_write_the_same_pixels_at_about_the_same_size(tmp_path: Path, encoder: str,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    frames = counting_frames(3, (512, 768), 0.96, np.int8, seed=8)
    source = write_mrc_movie(tmp_path / "k2.mrc", frames, 0)
    if encoder == "cryotiff":
        monkeypatch.setattr(codecs, "COMPILED_ENCODERS_MIN_MOVIE_BYTES", 0)
    result = convert_movie(source, tmp_path / "k2.tif", ConvertOptions(output_dir=tmp_path))
    assert result.codec == "deflate-huffman"
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "k2.tif"), frames)
    other = make_codec("deflate-huffman", huffman_encoder=[e for e in codecs.HUFFMAN_ENCODERS if e != encoder][0])
    other_bytes = sum(len(other.encode(np.ascontiguousarray(f[::-1]))) for f in frames)
    written = sum(len(make_codec("deflate-huffman", huffman_encoder=encoder).encode(np.ascontiguousarray(f[::-1])))
                  for f in frames)
    assert abs(written - other_bytes) < 0.01 * other_bytes
    libtiff_decodes(tmp_path / "k2.tif")


@pytest.mark.skipif(TIFFINFO is None, reason="libtiff's tiffinfo is not installed (apt-get install libtiff-tools)")
@pytest.mark.parametrize("label", ["lzw", "deflate-huffman", "deflate-rle", "deflate-1", "deflate-6", "deflate-12"])
def test_libtiff_decodes_every_auto_encoding(tmp_path: Path, label: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every encoder auto may pick writes files that libtiff itself decodes (tiffinfo -D), not only
    tifffile; and tiffcp rewrites them to identical pixels."""
    frames = counting_frames(2, (64, 96), 0.96, np.int8, seed=9)
    source = write_mrc_movie(tmp_path / "m.mrc", frames, 0)
    monkeypatch.setattr(
        codecs, "choose_auto_codec",
        lambda *args, **kwargs: codecs.AutoDecision(make_codec_from_label(label), 0, {}, {}, 0.0, "lzw", 0.0),
    )
    result = convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path))
    assert result.codec == label
    libtiff_decodes(tmp_path / "m.tif")
    tiffcp = shutil.which("tiffcp")
    if tiffcp:
        subprocess.run([tiffcp, "-c", "none", str(tmp_path / "m.tif"), str(tmp_path / "copy.tif")], check=True)
        np.testing.assert_array_equal(read_tiff_frames(tmp_path / "copy.tif"), frames)


# --------------------------------------------------------------------------- codecs, levels, options


@pytest.mark.parametrize("label", ["lzw", "deflate-huffman", "deflate-huffman/zlib-ng", "deflate-rle", "deflate-1",
                                   "deflate-12", "zlib-6", "zstd-3", "lzma-1", "none"])
def test_decoders_with_and_without_size_hints(label: str) -> None:
    label, _, huffman_encoder = label.partition("/")
    codec = make_codec_from_label(label, huffman_encoder=huffman_encoder or "cryotiff")
    small, large = bytes(range(256)) * 4, np.arange(20000, dtype=np.uint16).tobytes()
    small_encoded = codec.encode(small)
    assert codec.decode(small_encoded) == small
    # A strip larger than every strip this codec encoded (a hint too small) still decodes whole.
    large_encoded = make_codec_from_label(label).encode(large)
    assert codec.decode(large_encoded) == large
    assert codec.decode(large_encoded, len(large)) == large
    assert codec.decode(small_encoded, len(small)) == small


@pytest.mark.parametrize("level", range(1, 13))
def test_deflate_levels_1_to_12_are_accepted(tmp_path: Path, level: int) -> None:
    validate_options("deflate", level)
    frames, mode = movie("k2", n_frames=1)
    source = write_mrc_movie(tmp_path / "m.mrc", frames, mode)
    result = convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path, compression="deflate", deflate_level=level))
    assert result.codec == f"deflate-{level}"
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "m.tif"), frames)


@pytest.mark.parametrize("level", [0, 13, -1])
def test_deflate_levels_outside_1_to_12_are_rejected(in_tmp: Path, level: int, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OptionError, match="deflate level must be 1..12"):
        validate_options("deflate", level)
    assert main(["--i", "x.mrc", "--o", "out", "--deflate_level", str(level)]) == 2
    assert "deflate level must be 1..12" in capsys.readouterr().err
    assert not Path("out").exists()


@pytest.mark.parametrize(
    "compression, message",
    [
        ("zstd:0", "zstd level must be 1..22; got 0"),
        ("zstd:23", "zstd level must be 1..22; got 23"),
        ("lzma:10", "lzma level must be 0..9; got 10"),
        ("lzw:3", "only zstd and lzma take a level"),
        ("deflate:9", "deflate uses --deflate_level"),
    ],
)
def test_codec_levels_are_checked(in_tmp: Path, compression: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(OptionError, match=message.split(";")[0]):
        validate_options(compression, 6)
    status = None
    try:
        status = main(["--i", "x.mrc", "--o", "out", "--compression", compression])
    except SystemExit as exc:  # "lzw:3" is not even a choice for the parser
        status = exc.code
    assert status == 2
    assert not Path("out").exists()


def test_compression_choices_accept_levels_only_for_opt_in_codecs() -> None:
    for value in ("auto", "lzw", "zip", "zstd", "zstd:19", "lzma:0"):
        assert value in COMPRESSION_CHOICES
    for value in ("bzip2", "zstd:", "zstd:x", "lzw:3", "jpeg", 5):
        assert value not in COMPRESSION_CHOICES
    assert list(COMPRESSION_CHOICES) == ["auto", "none", "lzw", "deflate", "zip", "zstd", "lzma"]


def test_unknown_compression_is_an_invalid_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--i", "x.mrc", "--compression", "bzip2"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("compression, code, library", [("zstd", 50000, "libzstd"), ("lzma:1", 34925, "liblzma")])
def test_opt_in_warning_names_the_readers_that_cannot_decode(compression: str, code: int, library: str) -> None:
    text = opt_in_warning(compression)
    assert text.startswith("WARNING: ")
    for word in (str(code), "IMOD", "older system libtiff", library, "--compression auto"):
        assert word in text
    for baseline in ("auto", "lzw", "deflate", "zip", "none"):
        assert opt_in_warning(baseline) is None


def test_cli_prints_the_opt_in_warning_once(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.mrc", "b.mrc"):
        write_mrc_movie(Path(name), counting_frames(2, (16, 24), 0.96, np.int8, seed=1), 0)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--compression", "zstd:5"]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING: --compression zstd:5 writes TIFF Compression 50000") == 1
    assert tiff_tags(Path("out/a.tif"))["Compression"] == 50000
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), counting_frames(2, (16, 24), 0.96, np.int8, seed=1))


def test_cli_prints_no_warning_for_baseline_codecs(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_mrc_movie(Path("a.mrc"), counting_frames(2, (16, 24), 0.96, np.int8, seed=1), 0)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_labels_name_the_encoder() -> None:
    assert make_codec("deflate-huffman").label == "deflate-huffman"
    assert make_codec("deflate", 12).label == "deflate-12"
    assert make_codec("zlib", 6).label == "zlib-6"
    assert make_codec("zip").label == "deflate-6"
    for label in ("lzw", "none", "deflate-huffman", "deflate-rle", "deflate-3", "zlib-9", "zstd-19", "lzma-0"):
        assert make_codec_from_label(label).label == label
    with pytest.raises(OptionError):
        make_codec_from_label("brotli-5")


# --------------------------------------------------------------------------- zlib-ng writes zlib's bytes


def _zlib_strategy(data: bytes, strategy: int) -> bytes:
    import zlib

    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, strategy)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("label,strategy_name", [("deflate-rle", "Z_RLE")])
def test_zlib_ng_writes_the_bytes_zlib_writes(label: str, strategy_name: str) -> None:
    """RLE Deflate is encoded by zlib-ng; its streams are byte for byte what zlib (the encoder
    before) writes with the same parameters, so TIFFs are byte-identical: detector-like frames
    of every kind, whole and row by row, and edge cases."""
    import zlib

    from hypothesis import given, settings
    from hypothesis import strategies as st

    codec = make_codec_from_label(label)
    assert codec.encoder == "zlib-ng"
    strategy = getattr(zlib, strategy_name)
    frames = [
        counting_frames(1, (300, 517), 0.96, np.uint8, seed=3)[0],
        counting_frames(1, (200, 256), 0.02, np.uint8, seed=4)[0],
        falcon_frames(1, (128, 4096), seed=5)[0],
        np.random.default_rng(6).random((64, 300), dtype=np.float32) * 3,
        np.zeros((70, 70), np.uint16),
    ]
    for frame in frames:
        rows = np.ascontiguousarray(frame[::-1]).view(np.uint8).reshape(frame.shape[0], -1)
        for strip in [rows, *rows[:3]]:
            assert codec.encode(strip) == _zlib_strategy(strip.tobytes(), strategy)

    @settings(max_examples=60, deadline=None)
    @given(data=st.binary(max_size=70000), repeat=st.integers(1, 40))
    def random_bytes(data: bytes, repeat: int) -> None:
        data = data * repeat
        assert codec.encode(data) == _zlib_strategy(data, strategy)

    random_bytes()


@pytest.mark.parametrize("label", ["deflate-huffman", "deflate-rle", "lzw", "deflate-1"])
def test_strips_from_rows_anywhere_in_memory(label: str) -> None:
    """encode_rows takes the flipped view of a page (no contiguous copy for the streaming
    encoders) and gives encode's bytes; decodes_to accepts exactly the strip's bytes and refuses
    another strip, a cut stream and trailing data, and raises on a damaged stream."""
    import zlib

    from isal import igzip_lib

    codec = make_codec_from_label(label)
    frame = counting_frames(1, (700, 517), 0.96, np.uint16, seed=8)[0]
    rows = frame[::-1].view(np.uint8)
    assert not rows.flags.c_contiguous
    contiguous = np.ascontiguousarray(rows)
    encoded = codec.encode_rows(rows)
    assert encoded == codec.encode(contiguous)
    assert codec.decodes_to(encoded, rows) and codec.decodes_to(encoded, contiguous)
    other = contiguous.copy()
    other[350, 17] ^= 1
    assert not codec.decodes_to(encoded, other)
    assert not codec.decodes_to(codec.encode(contiguous[:-1]), rows)  # one row short
    assert not codec.decodes_to(encoded, rows[:-1])  # one row too many
    damaged = bytearray(encoded)
    damaged[len(damaged) // 2] ^= 0x55
    trailing = [encoded + b"\0\0"] if codec.tiff_code == 8 else []  # LZW stops at its end code
    for bad in [encoded[: len(encoded) // 2], bytes(damaged), *trailing]:
        try:
            assert not codec.decodes_to(bad, rows)
        except (zlib.error, RuntimeError, ValueError, igzip_lib.IsalError):  # imagecodecs', zlib-ng's, ISA-L's
            pass
