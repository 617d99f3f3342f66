"""MRC movies to TIFF: every mode, every compression, one strip per frame or per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.cli import main
from cryotiff.convert import ConvertOptions, convert_movie
from cryotiff.recorded_options import OutputRecord
from cryotiff.simulate.write import write_mrc_movie

from .helpers import libtiff_decodes, read_tiff_frames, real_data, temporary_files_of, tiff_tags

#: MRC mode -> (TIFF sample type RELION writes, BitsPerSample, SampleFormat)
RELION_TYPES = {
    0: (np.int8, 8, 2),
    1: (np.int16, 16, 2),
    2: (np.float32, 32, 3),
    6: (np.uint16, 16, 1),
    12: (np.float32, 32, 3),  # RELION cannot convert float16 at all
    101: (np.int8, 8, 2),
}


def make_frames(mode: int, shape=(3, 37, 51), seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if mode == 0:
        return rng.integers(-128, 128, shape).astype(np.int8)
    if mode == 1:
        return rng.integers(-32768, 32768, shape).astype(np.int16)
    if mode == 6:
        return rng.integers(0, 65536, shape).astype(np.uint16)
    if mode == 2:
        return (rng.poisson(1.2, shape) * rng.uniform(0.9, 1.1, shape[1:])).astype(np.float32)
    if mode == 12:
        return rng.normal(0, 100, shape).astype(np.float16)
    if mode == 101:
        return rng.integers(0, 16, shape).astype(np.int8)
    raise AssertionError(mode)


@pytest.mark.parametrize("line_by_line", [False, True])
@pytest.mark.parametrize("compression", ["none", "auto", "lzw", "deflate", "zip"])
@pytest.mark.parametrize("mode", sorted(RELION_TYPES))
def test_every_mode_round_trips(tmp_path: Path, mode: int, compression: str, line_by_line: bool) -> None:
    frames = make_frames(mode)
    source = write_mrc_movie(tmp_path / "movie.mrc", frames, mode, pixel_size_angstrom=1.05)
    destination = tmp_path / "movie.tif"
    options = ConvertOptions(output_dir=tmp_path, compression=compression, line_by_line=line_by_line)
    result = convert_movie(source, destination, options)

    dtype, bits, sample_format = RELION_TYPES[mode]
    decoded = read_tiff_frames(destination)
    assert decoded.dtype == dtype
    expected = frames.astype(np.float32) if mode == 12 else frames
    np.testing.assert_array_equal(decoded, expected)
    assert result.frames_verified == frames.shape[0]

    tags = tiff_tags(destination)
    assert tags["BitsPerSample"] == bits
    assert tags.get("SampleFormat", 1) == sample_format  # 1 (uint) is the default when absent
    assert tags["RowsPerStrip"] == (1 if line_by_line else frames.shape[1])
    assert len(tags["StripOffsets"]) == (frames.shape[1] if line_by_line else 1)
    # auto is a measured choice between LZW and standard deflate (docs/compression-policy.md)
    expected_codes = {"none": {1}, "auto": {5, 8}, "lzw": {5}, "deflate": {8}, "zip": {8}}[compression]
    assert tags["Compression"] in expected_codes
    assert tags["ResolutionUnit"] == 3
    numerator, denominator = tags["XResolution"]
    assert numerator / denominator == pytest.approx(1e8 / 1.05, rel=1e-6)
    assert tags["Software"].startswith("cryotiff")
    # The only description is cryotiff's record on page 1 (no tifffile or ImageJ metadata)
    record = OutputRecord.from_description(tags["ImageDescription"])
    assert record is not None and record.n_pages == frames.shape[0] and record.sample_type == np.dtype(dtype).name
    assert "ImageDescription" not in tiff_tags(destination, page=1)
    with tifffile.TiffFile(destination) as tif:
        assert not tif.is_shaped and not tif.is_imagej
    libtiff_decodes(destination)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("mode", [0, 6])
def test_frames_read_into_earlier_frames_keep_every_page_and_its_digest(in_tmp: Path, mode: int, threads: int) -> None:
    """Pages are read into the memory of pages already encoded (PlainPages.recycle): every page
    of a movie of distinct frames, big-endian on disk, is still its own frame, and the manifest's
    page digests (made beside the encoding with --j 1) are those of the source frames."""
    from cryotiff.manifest import page_digest, read_manifest

    frames = make_frames(mode, shape=(12, 40, 52), seed=7)
    write_mrc_movie(Path("movie.mrc"), frames, mode, big_endian=True)
    assert main(["--i", "movie.mrc", "--o", "out/", "--j", str(threads)]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out/movie.tif")), frames)
    entry = read_manifest(Path("out"))["movie.tif"]
    assert list(entry.page_sha256) == [page_digest(frame).hex()[:16] for frame in frames]


def test_rows_are_stored_bottom_up(tmp_path: Path) -> None:
    """TIFF scanline 0 holds the last MRC row: the convention of RELION, IMOD and SerialEM."""
    frames = np.arange(2 * 4 * 3, dtype=np.int16).reshape(2, 4, 3)
    source = write_mrc_movie(tmp_path / "m.mrc", frames, 1)
    convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path))
    stored = tifffile.imread(tmp_path / "m.tif")
    np.testing.assert_array_equal(stored[0, 0], frames[0, 3])
    np.testing.assert_array_equal(stored[1, 3], frames[1, 0])


def test_a_missing_pixel_size_gives_no_resolution_tags_and_a_warning(tmp_path: Path) -> None:
    """RELION writes its default 1.0 A; cryotiff writes no pixel size that the header did not state."""
    frames = make_frames(6)
    source = write_mrc_movie(tmp_path / "m.mrc", frames, 6)
    result = convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path))
    assert not {"XResolution", "YResolution", "ResolutionUnit"} & set(tiff_tags(tmp_path / "m.tif"))
    assert any("m.mrc: the header states no pixel size" in warning for warning in result.warnings)
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "m.tif"), frames)


def test_explicit_deflate_uses_deflate_level_and_standard_code_8(tmp_path: Path) -> None:
    frames = make_frames(6, shape=(2, 8, 4096))
    source = write_mrc_movie(tmp_path / "falcon.mrc", frames, 6)
    options = ConvertOptions(output_dir=tmp_path, compression="deflate", deflate_level=3)
    result = convert_movie(source, tmp_path / "falcon.tif", options)
    assert tiff_tags(tmp_path / "falcon.tif")["Compression"] == 8  # not RELION's legacy 32946
    assert result.codec == "deflate-3"
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "falcon.tif"), frames)


def test_big_endian_and_extended_header(tmp_path: Path) -> None:
    frames = make_frames(1)
    source = write_mrc_movie(tmp_path / "be.mrcs", frames, 1, big_endian=True, extended_header_bytes=4096)
    convert_movie(source, tmp_path / "be.tif", ConvertOptions(output_dir=tmp_path))
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "be.tif"), frames)


def test_odd_width_4bit_movie(tmp_path: Path) -> None:
    """Rows of odd width are padded to whole bytes, as IMOD writes them (RELION gets this wrong)."""
    frames = make_frames(101, shape=(2, 5, 7))
    source = write_mrc_movie(tmp_path / "sr.mrc", frames, 101)
    convert_movie(source, tmp_path / "sr.tif", ConvertOptions(output_dir=tmp_path))
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "sr.tif"), frames)


@pytest.mark.parametrize("name", ["falcon_epu2.9_single_frame.mrc", "k2_epu1.2_single_frame.mrc"])
def test_real_epu_images_round_trip(tmp_path: Path, name: str) -> None:
    import mrcfile

    path = real_data(name)
    with mrcfile.open(path, permissive=True) as mrc:
        original = np.array(mrc.data)
        pixel_size = float(mrc.voxel_size.x)
    destination = tmp_path / "real.tif"
    convert_movie(path, destination, ConvertOptions(output_dir=tmp_path))
    decoded = read_tiff_frames(destination)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[0], original.reshape(decoded.shape[1:]))
    numerator, denominator = tiff_tags(destination)["XResolution"]
    assert 1e8 / (numerator / denominator) == pytest.approx(pixel_size, rel=1e-4)
    libtiff_decodes(destination)


def test_tiff_input_is_recompressed_with_the_same_orientation(tmp_path: Path) -> None:
    """A SerialEM-style LZW TIFF (stored bottom-up) converts to a TIFF with identical pages."""
    frames = make_frames(6)
    serialem = tmp_path / "serialem.tif"
    tifffile.imwrite(serialem, frames[:, ::-1], compression="lzw", photometric="minisblack", metadata=None)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    convert_movie(serialem, out_dir / "serialem.tif", ConvertOptions(output_dir=out_dir, compression="deflate"))
    np.testing.assert_array_equal(tifffile.imread(out_dir / "serialem.tif"), frames[:, ::-1])
    np.testing.assert_array_equal(read_tiff_frames(out_dir / "serialem.tif"), frames)


def test_mixed_modes_each_keep_their_own_type(in_tmp: Path) -> None:
    a = make_frames(6)
    b = make_frames(0)
    write_mrc_movie(Path("a.mrc"), a, 6)
    write_mrc_movie(Path("b.mrc"), b, 0)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)


def test_error_mid_movie_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryotiff import convert
    from cryotiff.errors import MrcFormatError

    frames = make_frames(6, shape=(6, 20, 20))
    source = write_mrc_movie(tmp_path / "m.mrc", frames, 6)
    original_page = convert.PlainPages.page
    written = []

    def failing_page(self, index):
        if index == 4:
            assert temporary_files_of(tmp_path / "m.tif")  # the temporary file is being written
            raise MrcFormatError(f"{self.path}: frame 5 cannot be read")
        written.append(index)
        return original_page(self, index)

    monkeypatch.setattr(convert.PlainPages, "page", failing_page)
    with pytest.raises(MrcFormatError):
        convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path))
    assert written == [0, 1, 2, 3]
    assert not (tmp_path / "m.tif").exists()
    assert not temporary_files_of(tmp_path / "m.tif")


def test_bigtiff_only_when_the_file_could_pass_4_gib() -> None:
    from cryotiff.io.tiff import TiffLayout

    def layout(n_pages: int) -> TiffLayout:
        return TiffLayout(n_pages, (4096, 4096), np.dtype(np.uint16), 8, 4096, None, "x")

    assert not layout(100).bigtiff  # 3.4 GB
    assert layout(130).bigtiff  # 4.4 GB uncompressed: could pass 4 GiB


@pytest.mark.parametrize(
    "values, expected_type",
    [
        ([0, 3, 255], np.uint8),
        ([-3, 0, 100], np.int8),
        ([0, 7, 4000], np.uint16),
        ([-300, 0, 2], np.int16),
        ([0, 70000], np.float32),
    ],
)
def test_integer_valued_float_movies_become_the_smallest_integer_type(tmp_path, values, expected_type) -> None:
    frames = np.resize(np.array(values, np.float32), (3, 6, 5))
    source = write_mrc_movie(tmp_path / "m.mrc", frames, 2, pixel_size_angstrom=1.0)  # no pixel-size warning
    result = convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path))
    decoded = read_tiff_frames(tmp_path / "m.tif")
    assert decoded.dtype == expected_type
    np.testing.assert_array_equal(decoded.astype(np.float32), frames)
    if expected_type == np.float32:
        assert any("--estimate_gain" in w for w in result.warnings)
    else:
        assert result.warnings == []


@pytest.mark.parametrize(
    "last_frame, expected_type",
    [(np.full((6, 5), 300.0), np.uint16), (np.full((6, 5), 0.5), np.float32), (np.full((6, 5), -0.0), np.float32)],
    ids=["wider", "fraction", "negative-zero"],
)
def test_float_movie_is_rewritten_when_a_later_frame_does_not_fit(tmp_path, last_frame, expected_type) -> None:
    frames = np.stack([np.full((6, 5), 3.0), np.full((6, 5), 4.0), last_frame]).astype(np.float32)
    source = write_mrc_movie(tmp_path / "m.mrc", frames, 2)
    result = convert_movie(source, tmp_path / "m.tif", ConvertOptions(output_dir=tmp_path))
    decoded = read_tiff_frames(tmp_path / "m.tif")
    assert decoded.dtype == expected_type
    # bit-exact, including the sign of zero
    np.testing.assert_array_equal(decoded.astype(np.float32).view(np.uint32), frames.view(np.uint32))
    assert any("written again" in w for w in result.warnings)
