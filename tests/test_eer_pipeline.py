"""EER movies through the command line: rendered pages equal the sums of the events (flipped as
RELION writes them), grouping, leftover frames, overflow, gain conversion, dose grouping."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.simulate.eer import (
    COMPRESSION_EER_7BIT,
    COMPRESSION_EER_VARIABLE,
    acquisition_metadata,
    events_from_positions,
    expected_render,
    random_events,
    write_eer,
)

from .helpers import read_tiff_frames, tiff_tags

DETECTOR = 2048


@pytest.fixture(scope="module")
def eer_events():
    return random_events(np.random.default_rng(3), DETECTOR, 11, 0.01)


def write_movie(path: Path, events, compression=COMPRESSION_EER_7BIT, **kwargs) -> Path:
    return write_eer(path, events, DETECTOR, compression, **kwargs)


@pytest.mark.parametrize("upsampling", [1, 2])
@pytest.mark.parametrize("compression", [COMPRESSION_EER_7BIT, COMPRESSION_EER_VARIABLE])
def test_pages_are_the_sums_of_the_events(in_tmp: Path, eer_events, upsampling: int, compression: int, capsys) -> None:
    write_movie(Path("movie.eer"), eer_events, compression, subpixel_bits=2 if compression == COMPRESSION_EER_VARIABLE else None)
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "4", "--eer_upsampling", str(upsampling)]) == 0
    out = capsys.readouterr()
    pages = read_tiff_frames(Path("out/movie.tif"))
    assert pages.dtype == np.uint8
    assert pages.shape == (2, DETECTOR * upsampling, DETECTOR * upsampling)  # 11 // 4 pages
    for k in range(2):
        np.testing.assert_array_equal(pages[k], expected_render(eer_events[4 * k: 4 * k + 4], DETECTOR, upsampling))
    assert "the last 3 raw frames do not fill a group of 4" in out.out
    assert "WARNING: Note that an EER gain reference is the inverse" in out.err
    tags = tiff_tags(Path("out/movie.tif"))
    assert tags["Compression"] in (5, 8)  # LZW or standard deflate
    # RELION writes no pixel size for EER; tifffile's placeholder 1/1 has no unit (ResolutionUnit 1)
    assert tags.get("ResolutionUnit", 1) == 1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("upsampling", [1, 2])
def test_pages_rendered_into_again_hold_only_their_own_events(in_tmp: Path, eer_events, monkeypatch, threads: int,
                                                             upsampling: int) -> None:
    """Pages handed back by the encoder are cleared and rendered into again (no fresh page per
    group): every page is still exactly the sum of its own group, at --j 1 and --j 2, and the
    reuse does happen."""
    from cryotiff.io.eer import EerMovie

    write_movie(Path("movie.eer"), eer_events)
    reused = []
    real_render = EerMovie.render

    def spying_render(self, *args, out=None, **kwargs):
        reused.append(out is not None)
        return real_render(self, *args, out=out, **kwargs)

    monkeypatch.setattr(EerMovie, "render", spying_render)
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "2", "--eer_upsampling", str(upsampling),
                 "--j", str(threads)]) == 0
    assert sum(reused) >= 2  # of 5 pages
    pages = read_tiff_frames(Path("out/movie.tif"))
    assert len(pages) == 5
    for k in range(5):
        np.testing.assert_array_equal(pages[k], expected_render(eer_events[2 * k: 2 * k + 2], DETECTOR, upsampling))


def test_grouping_one_gives_every_frame(in_tmp: Path, eer_events) -> None:
    write_movie(Path("movie.eer"), eer_events[:5])
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "1"]) == 0
    pages = read_tiff_frames(Path("out/movie.tif"))
    assert len(pages) == 5  # RELION writes N - 1
    np.testing.assert_array_equal(pages[4], expected_render(eer_events[4:5], DETECTOR, 1))


def test_counts_that_overflow_uint8_are_written_as_uint16(in_tmp: Path, capsys) -> None:
    hot = [events_from_positions([5, DETECTOR * 7 + 3]) for _ in range(300)]
    write_movie(Path("hot.eer"), hot)
    assert main(["--i", "hot.eer", "--o", "out", "--eer_grouping", "300"]) == 0
    assert "written again as uint16" in capsys.readouterr().err
    pages = read_tiff_frames(Path("out/hot.tif"))
    assert pages.dtype == np.uint16
    assert pages[0, 0, 5] == 300 and pages[0, 7, 3] == 300  # RELION's uint8 would hold 44

    assert main(["--i", "hot.eer", "--o", "short", "--eer_grouping", "300", "--short"]) == 0
    assert read_tiff_frames(Path("short/hot.tif")).dtype == np.uint16


def test_eer_gain_written_line_is_relions_also_for_the_current_directory(in_tmp: Path, eer_events, capsys) -> None:
    """RELION prints ``Written ./gain-reference.mrc.`` for ``--o .`` (its output prefix ends in
    a slash), as cryotiff's float-movie path does."""
    write_movie(Path("movie.eer"), eer_events[:2])
    with mrcfile.new("gain.mrc") as mrc:
        mrc.set_data(np.ones((DETECTOR, DETECTOR), np.float32))
    assert main(["--i", "movie.eer", "--o", ".", "--eer_grouping", "2", "--gain", "gain.mrc"]) == 0
    assert "Written ./gain-reference.mrc. Please use this file as a gain reference" in capsys.readouterr().out
    np.testing.assert_array_equal(read_tiff_frames(Path("movie.tif"))[0], expected_render(eer_events[:2], DETECTOR, 1))


def test_eer_gain_is_inverted_and_written_as_gain_reference(in_tmp: Path, eer_events, capsys) -> None:
    write_movie(Path("movie.eer"), eer_events[:4])
    rng = np.random.default_rng(0)
    eer_gain = rng.uniform(0.5, 2.0, (DETECTOR, DETECTOR)).astype(np.float32)
    eer_gain[10, 20] = 0.0  # a defect
    with mrcfile.new("gain.mrc") as mrc:
        mrc.set_data(eer_gain)
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "2", "--gain", "gain.mrc"]) == 0
    out = capsys.readouterr().out
    assert f"Read an EER gain file gain.mrc NX = {DETECTOR} NY = {DETECTOR}" in out
    assert "Taking inverse and re-scaling (when necessary)." in out
    assert "Written out/gain-reference.mrc" in out
    with mrcfile.open("out/gain-reference.mrc") as mrc:
        reference = np.array(mrc.data)
    mean = eer_gain.astype(np.float64).mean()
    nonzero = eer_gain != 0
    np.testing.assert_allclose(reference[nonzero], mean / eer_gain[nonzero], rtol=1e-5)
    assert reference[10, 20] == 0.0  # the defect stays a defect
    pages = read_tiff_frames(Path("out/movie.tif"))
    np.testing.assert_array_equal(pages[0], expected_render(eer_events[:2], DETECTOR, 1))  # never applied


def test_gain_for_eer_and_mrc_in_one_run_is_refused(in_tmp: Path, eer_events, capsys) -> None:
    from cryotiff.simulate.write import write_mrc_movie

    write_movie(Path("movie.eer"), eer_events[:2])
    write_mrc_movie(Path("other.mrc"), np.ones((2, 8, 8), np.float32), 2)
    assert main(["--i", "movie.eer", "other.mrc", "--o", "out", "--gain", "g.mrc", "--eer_grouping", "1"]) == 2
    assert "convert them in separate runs" in capsys.readouterr().err


def test_dose_per_fraction_chooses_the_grouping(in_tmp: Path, eer_events, capsys) -> None:
    metadata = acquisition_metadata(len(eer_events), DETECTOR, 0.01, pixel_size_angstrom=1.0)
    write_movie(Path("movie.eer"), eer_events, metadata=metadata)
    # 0.01 e/px per raw frame at 1 A/px: 0.01 e/A^2; 0.05 e/A^2 per page -> 5 raw frames
    assert main(["--i", "movie.eer", "--o", "out", "--eer_dose_per_fraction", "0.05"]) == 0
    assert "grouping 5 raw frames" in capsys.readouterr().out
    pages = read_tiff_frames(Path("out/movie.tif"))
    assert len(pages) == 2
    np.testing.assert_array_equal(pages[1], expected_render(eer_events[5:10], DETECTOR, 1))


def test_dose_per_fraction_without_metadata_fails_that_movie(in_tmp: Path, eer_events, capsys) -> None:
    write_movie(Path("movie.eer"), eer_events[:3])
    assert main(["--i", "movie.eer", "--o", "out", "--eer_dose_per_fraction", "1.0"]) == 1
    assert "movie.eer" in capsys.readouterr().err
    assert not Path("out/movie.tif").exists()


def test_frame_ending_on_the_last_pixel_converts_with_exit_0(in_tmp: Path, eer_events, capsys) -> None:
    """A raw frame whose last event is on the detector's last pixel and whose stream ends with
    that event's code (no closing run code, as Thermo Fisher's writer makes it) is complete: its
    electrons are in the page, no frame is reported damaged and the exit status is 0."""
    from cryotiff.simulate.eer import encode_frame

    total = DETECTOR * DETECTOR
    frames = list(eer_events[:4])
    last = frames[2]
    keep = last.positions < total - 1
    frames[2] = events_from_positions(
        np.append(last.positions[keep], total - 1), np.append(last.sub_x[keep], 3), np.append(last.sub_y[keep], 3)
    )
    streams = [encode_frame(f, DETECTOR, COMPRESSION_EER_7BIT, align=1, close_after_last_pixel=False) for f in frames]
    write_movie(Path("movie.eer"), streams)
    assert main(["--i", "movie.eer", "--o", "out", "--eer_grouping", "4"]) == 0
    out = capsys.readouterr()
    assert "corrupted" not in out.err
    pages = read_tiff_frames(Path("out/movie.tif"))
    np.testing.assert_array_equal(pages[0], expected_render(frames, DETECTOR, 1))
    assert pages[0][-1, -1] >= 1
