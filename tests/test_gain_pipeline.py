"""Gain-normalised float movies through the command line: --estimate_gain, --gain, --lossy."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.gain import GainEstimate
from cryotiff.simulate.gain_normalised import make_detector
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames, temporary_files_of

SHAPE = (96, 80)


@pytest.fixture
def k2_movies(in_tmp: Path):
    """Three gain-normalised movies of one simulated detector, and the detector (the truth)."""
    rng = np.random.default_rng(7)
    detector = make_detector(SHAPE, rng, defect_fraction=0.002, cold_fraction=0.001)
    frames = {}
    for name in ("m1.mrc", "m2.mrc", "m3.mrc"):
        movie = detector.movie(40, rng)
        write_mrc_movie(Path(name), movie.frames, 2, pixel_size_angstrom=1.05)
        frames[name] = movie.frames
    return detector, frames


def estimate_files(out: str) -> GainEstimate:
    return GainEstimate.load(Path(out) / "gain_estimate.bin")


def test_estimate_then_convert_reproduces_the_float_frames(k2_movies, capsys) -> None:
    detector, frames = k2_movies
    assert main(["--i", "m*.mrc", "--o", "Est", "--estimate_gain"]) == 0
    out = capsys.readouterr().out
    assert " m1.mrc Frame 001 #Changed " in out
    assert "Updated Est/gain_estimate.bin and Est/gain_estimate_reliablity.bin" in out
    assert not list(Path("Est").glob("*.tif"))
    estimate = estimate_files("Est")
    reliable = estimate.reliable_mask(50)
    assert reliable.sum() > 0.9 * reliable.size
    np.testing.assert_array_equal(estimate.gain[reliable], detector.gain[reliable])
    assert not (reliable & detector.defect_mask).any()  # every defect stays unreliable

    assert main(["--i", "m*.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin"]) == 0
    out = capsys.readouterr().out
    assert "Written Conv/gain-reference.mrc. Please use this file as a gain reference" in out
    with mrcfile.open("Conv/gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    np.testing.assert_array_equal(gain_reference[~reliable], 1.0)
    for name, original in frames.items():
        stored = read_tiff_frames(Path("Conv") / name.replace(".mrc", ".tif"))
        assert stored.dtype == np.float32
        # TIFF x gain-reference gives back the original float frames, bit for bit
        np.testing.assert_array_equal(stored * gain_reference, original)
        assert np.array_equal(stored[:, reliable], np.rint(stored[:, reliable]))


def test_resume_equals_one_run(k2_movies) -> None:
    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Both", "--estimate_gain"]) == 0
    assert main(["--i", "m1.mrc", "--o", "First", "--estimate_gain"]) == 0
    assert main(["--i", "m2.mrc", "--o", "First", "--estimate_gain", "--gain", "First/gain_estimate.bin"]) == 0
    both, resumed = estimate_files("Both"), estimate_files("First")
    np.testing.assert_array_equal(both.gain, resumed.gain)
    np.testing.assert_array_equal(both.reliability, resumed.reliability)


def test_mismatch_fails_the_movie_only(k2_movies, capsys) -> None:
    detector, frames = k2_movies
    assert main(["--i", "m*.mrc", "--o", "Est", "--estimate_gain"]) == 0
    reliable = estimate_files("Est").reliable_mask(50)
    row, column = np.argwhere(reliable)[0]
    bad = frames["m2.mrc"].copy()
    bad[5, row, column] = np.float32(2.5) * detector.gain[row, column]  # not a multiple of the gain
    write_mrc_movie(Path("m2.mrc"), bad, 2)
    capsys.readouterr()
    assert main(["--i", "m*.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin"]) == 1
    err = capsys.readouterr().err
    assert "Unexpected pixel value in a pixel that was considered reliable" in err
    assert f"m2.mrc frame 6 pixel (row {row}, column {column})" in err
    assert not Path("Conv/m2.tif").exists() and not temporary_files_of(Path("Conv/m2.tif"))
    assert Path("Conv/m1.tif").exists() and Path("Conv/m3.tif").exists()

    assert main(["--i", "m2.mrc", "--o", "Ignore", "--gain", "Est/gain_estimate.bin", "--ignore_error"]) == 0
    err = capsys.readouterr().err
    assert " mismatch: m2.mrc frame  6 pos" in err
    stored = read_tiff_frames(Path("Ignore/m2.tif"))
    assert stored[5, row, column] == 3.0  # 2.5 rounded half away from zero


def test_lossy_changes_only_unreliable_pixels(k2_movies, capsys) -> None:
    _, frames = k2_movies
    assert main(["--i", "m*.mrc", "--o", "Est", "--estimate_gain"]) == 0
    reliable = estimate_files("Est").reliable_mask(50)
    assert main(["--i", "m1.mrc", "--o", "Lossy", "--gain", "Est/gain_estimate.bin", "--lossy"]) == 0
    out = capsys.readouterr().out
    assert "--lossy changed" in out and "reliable pixels are exact" in out
    stored = read_tiff_frames(Path("Lossy/m1.tif"))
    assert stored.dtype == np.uint8
    with mrcfile.open("Lossy/gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    original = frames["m1.mrc"]
    restored = stored.astype(np.float32) * gain_reference
    np.testing.assert_array_equal(restored[:, reliable], original[:, reliable])
    changed = restored[:, ~reliable] != original[:, ~reliable]
    assert changed.any()
    assert np.abs(restored[:, ~reliable] - original[:, ~reliable]).max() <= 0.5


def test_gain_of_another_size_fails_each_float_movie(in_tmp: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    detector = make_detector((40, 30), rng)
    write_mrc_movie(Path("small.mrc"), detector.movie(20, rng).frames, 2)
    assert main(["--i", "small.mrc", "--o", "Est", "--estimate_gain"]) == 0
    write_mrc_movie(Path("big.mrc"), make_detector((30, 40), rng).movie(2, rng).frames, 2)
    assert main(["--i", "big.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin"]) == 1
    assert "big.mrc has a different size from others" in capsys.readouterr().err


def test_gain_with_integer_movies_is_irrelevant(in_tmp: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    detector = make_detector((40, 30), rng)
    write_mrc_movie(Path("float.mrc"), detector.movie(20, rng).frames, 2)
    assert main(["--i", "float.mrc", "--o", "Est", "--estimate_gain"]) == 0
    counts = rng.poisson(1.0, (3, 40, 30)).astype(np.int8)
    write_mrc_movie(Path("counts.mrc"), counts, 0)
    capsys.readouterr()
    assert main(["--i", "counts.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin"]) == 0
    assert "A gain reference is irrelavant" in capsys.readouterr().err
    np.testing.assert_array_equal(read_tiff_frames(Path("Conv/counts.tif")), counts)


def test_estimate_gain_rejects_integer_movies(in_tmp: Path, capsys) -> None:
    write_mrc_movie(Path("counts.mrc"), np.ones((2, 8, 8), np.int8), 0)
    assert main(["--i", "counts.mrc", "--o", "Est", "--estimate_gain"]) == 1
    assert "not in mode 2" in capsys.readouterr().out


def test_lossy_needs_a_gain(in_tmp: Path, capsys) -> None:
    assert main(["--i", "x.mrc", "--lossy"]) == 2
    assert "--lossy needs --gain" in capsys.readouterr().err


def relion_mrc_bytes(data: np.ndarray, mode: int) -> bytes:
    """An MRC file laid out byte for byte as RELION 5.0.1 writes gain_estimate.bin and its
    reliability map (RELION's src/tiff_converter.cpp and src/rwMRC.h): 1024-byte header, no extended header, nversion 0, machine stamp
    0x44 0x41 0 0, one "Relion" label."""
    import struct

    ny, nx = data.shape
    header = bytearray(1024)
    struct.pack_into("<10i", header, 0, nx, ny, 1, mode, 0, 0, 0, nx, ny, 1)
    struct.pack_into("<6f", header, 40, float(nx), float(ny), 1.0, 90.0, 90.0, 90.0)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    struct.pack_into("<3f", header, 76, float(data.min()), float(data.max()), float(data.mean()))
    struct.pack_into("<2i", header, 88, 0, 0)  # ispg, nsymbt
    header[208:212] = b"MAP "
    header[212:216] = bytes([0x44, 0x41, 0, 0])
    struct.pack_into("<f", header, 216, float(data.std()))
    struct.pack_into("<i", header, 220, 1)
    header[224:224 + 30] = b"Relion 5.0.1   23-Nov-26  20:00"[:30]
    dtype = {2: "<f4", 1: "<i2"}[mode]
    return bytes(header) + np.ascontiguousarray(data, dtype=dtype).tobytes()


def test_gain_files_in_relions_layout_are_read(k2_movies, capsys) -> None:
    """Files written by RELION's --estimate_gain (its MRC layout and its file names) work as --gain."""
    detector, frames = k2_movies
    assert main(["--i", "m*.mrc", "--o", "Est", "--estimate_gain"]) == 0
    ours = estimate_files("Est")
    Path("Relion").mkdir()
    Path("Relion/gain_estimate.bin").write_bytes(relion_mrc_bytes(ours.gain, 2))
    Path("Relion/gain_estimate_reliablity.bin").write_bytes(relion_mrc_bytes(ours.reliability, 1))
    assert main(["--i", "m1.mrc", "--o", "Conv", "--gain", "Relion/gain_estimate.bin"]) == 0
    with mrcfile.open("Conv/gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    stored = read_tiff_frames(Path("Conv/m1.tif"))
    np.testing.assert_array_equal(stored * gain_reference, frames["m1.mrc"])


def test_a_movie_failing_part_way_leaves_no_frames_in_the_estimate(k2_movies, monkeypatch) -> None:
    """A movie whose frame 6 cannot be read fails; the saved estimate equals the one made without it."""
    from cryotiff.errors import MrcFormatError
    from cryotiff.io.mrc import MrcMovie

    read_frame = MrcMovie.read_frame

    def failing_read_frame(self, index, out=None):
        if self.info.path.name == "m2.mrc" and index == 5:
            raise MrcFormatError(f"{self.info.path}: frame 6 cannot be read")
        return read_frame(self, index, out)

    assert main(["--i", "m1.mrc", "m3.mrc", "--o", "Without", "--estimate_gain"]) == 0
    monkeypatch.setattr(MrcMovie, "read_frame", failing_read_frame)
    assert main(["--i", "m1.mrc", "m2.mrc", "m3.mrc", "--o", "With", "--estimate_gain"]) == 1
    without, with_failed = estimate_files("Without"), estimate_files("With")
    np.testing.assert_array_equal(without.gain, with_failed.gain)
    np.testing.assert_array_equal(without.reliability, with_failed.reliability)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_movie_failing_part_way_first_or_after_a_resume(k2_movies, monkeypatch, threads) -> None:
    """The state before the failed movie is the fresh one (it came first) or the --gain one
    (nothing saved yet in this run), read back, whatever --j."""
    from cryotiff.errors import MrcFormatError
    from cryotiff.io.mrc import MrcMovie

    read_frame = MrcMovie.read_frame

    def failing_read_frame(self, index, out=None):
        if self.info.path.name == "m2.mrc" and index == 5:
            raise MrcFormatError(f"{self.info.path}: frame 6 cannot be read")
        return read_frame(self, index, out)

    assert main(["--i", "m1.mrc", "--o", "One", "--estimate_gain"]) == 0
    assert main(["--i", "m1.mrc", "m3.mrc", "--o", "Two", "--estimate_gain"]) == 0
    monkeypatch.setattr(MrcMovie, "read_frame", failing_read_frame)
    assert main(["--i", "m2.mrc", "m1.mrc", "--o", "First", "--estimate_gain", "--j", threads]) == 1
    assert main(["--i", "m2.mrc", "m3.mrc", "--o", "Resumed", "--estimate_gain", "--j", threads,
                 "--gain", "One/gain_estimate.bin"]) == 1
    for expected, found in (("One", "First"), ("Two", "Resumed")):
        np.testing.assert_array_equal(estimate_files(expected).gain, estimate_files(found).gain)
        np.testing.assert_array_equal(estimate_files(expected).reliability, estimate_files(found).reliability)


@pytest.mark.parametrize("threads", [1, 2])
def test_pages_written_into_again_hold_each_frame_exactly(k2_movies, monkeypatch, threads) -> None:
    """With --gain the pages handed back by the encoder are integerised into again (no fresh
    57 MB page per frame): every page still gives back its own original frame bit for bit, at
    --j 1 and --j 2, and the reuse does happen."""
    import cryotiff.convert as convert_module
    from cryotiff import gain as gain_module

    detector, frames = k2_movies
    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Est", "--estimate_gain"]) == 0
    reused = []
    real_integerise = gain_module.integerise

    def spying_integerise(*args, out=None, **kwargs):
        reused.append(out is not None)
        return real_integerise(*args, out=out, **kwargs)

    monkeypatch.setattr(gain_module, "integerise", spying_integerise)
    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin", "--j", str(threads)]) == 0
    assert sum(reused) >= 40  # most of the 80 frames' pages were written into again
    assert convert_module.GainPages.recycle is not convert_module.PlainPages.recycle
    with mrcfile.open("Conv/gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    for name in ("m1.mrc", "m2.mrc"):
        stored = read_tiff_frames(Path("Conv") / name.replace(".mrc", ".tif"))
        np.testing.assert_array_equal(stored * gain_reference, frames[name])
        assert len({page.tobytes() for page in stored}) == len(stored)  # no page written twice


def test_integerise_refuses_an_out_array_it_cannot_fill() -> None:
    """The kernel writes without bounds checks: an ``out`` of another shape or type, not
    contiguous, read-only or sharing the frame's memory is refused before it runs."""
    from cryotiff.gain import integerise

    frame = np.ones((4, 6), np.float32)
    gain = np.ones_like(frame)
    mask = np.ones(frame.shape, bool)
    read_only = np.empty_like(frame)
    read_only.flags.writeable = False
    for out in (np.empty((4, 5), np.float32), np.empty((4, 6), np.float64), np.empty((4, 12), np.float32)[:, ::2],
                read_only, frame):
        with pytest.raises(ValueError, match="out must be"):
            integerise(frame, gain, mask, out=out)
    out = np.full_like(frame, np.nan)
    assert integerise(frame, gain, mask, out=out).values is out and np.array_equal(out, frame)


def test_a_finished_movies_spare_pages_are_let_go(k2_movies, monkeypatch) -> None:
    """The pages kept for reuse belong to one movie: once it is finished none stays resident
    beside the next movie's (a run of two 57 MB-frame movies held up to 4 spare pages more at its
    peak)."""
    import cryotiff.convert as convert_module

    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Est", "--estimate_gain"]) == 0
    sources = []
    real_init = convert_module.GainPages.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        sources.append(self)

    monkeypatch.setattr(convert_module.GainPages, "__init__", recording_init)
    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin", "--j", "2"]) == 0
    assert len(sources) >= 2
    assert all(not len(source._spare_pages) and not source._frames._free for source in sources)


def test_with_one_thread_the_next_frame_is_read_beside_the_estimate(k2_movies, monkeypatch) -> None:
    """``--estimate_gain --j 1``: the frames are read on a thread of their own while the
    estimate is updated; the estimate is the one of ``--j 2``."""
    import threading

    from cryotiff.gain import GainEstimate as Estimate
    from cryotiff.io.mrc import MrcMovie

    threads: dict[str, set[str]] = {"update": set()}
    reads: list[tuple[str, str, int]] = []  # (thread, movie, frame index)
    read_frame, update = MrcMovie.read_frame, Estimate.update

    def tracked_read_frame(self, index, out=None):
        reads.append((threading.current_thread().name, self.info.path.name, index))
        return read_frame(self, index, out)

    def tracked_update(self, *args, **kwargs):
        threads["update"].add(threading.current_thread().name)
        return update(self, *args, **kwargs)

    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Two", "--estimate_gain", "--j", "2"]) == 0
    monkeypatch.setattr(MrcMovie, "read_frame", tracked_read_frame)
    monkeypatch.setattr(Estimate, "update", tracked_update)
    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "One", "--estimate_gain", "--j", "1"]) == 0
    assert threads["update"] == {threading.current_thread().name}
    # Every frame the estimate adds is read on the reading thread (the movie's first frame may
    # also be read where it is opened).
    n_frames = {}
    for name in ("m1.mrc", "m2.mrc"):
        with mrcfile.mmap(name, permissive=True) as mrc:
            n_frames[name] = mrc.data.shape[0]
    beside = {(movie, index) for thread, movie, index in reads if thread not in threads["update"]}
    assert beside == {(movie, index) for movie, n in n_frames.items() for index in range(n)}
    np.testing.assert_array_equal(estimate_files("One").gain, estimate_files("Two").gain)
    np.testing.assert_array_equal(estimate_files("One").reliability, estimate_files("Two").reliability)


def test_the_gain_recorded_is_the_file_read_when_another_takes_its_name(k2_movies, monkeypatch, capsys) -> None:
    """Once --gain and its reliability map are read, other files take their names (the next
    estimate written there, say): the TIFFs' record (made_with.gain, which --only_do_unfinished
    compares) must hold the checksums of the files read, hashed through the descriptors they
    were read from; they were hashed by name afterwards, so the record named the newcomers."""
    import hashlib
    import os

    from cryotiff.recorded_options import read_record

    assert main(["--i", "m*.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert main(["--i", "m1.mrc", "--o", "Other", "--estimate_gain"]) == 0  # another estimate
    capsys.readouterr()
    names = ("gain_estimate.bin", "gain_estimate_reliablity.bin")
    real_load = GainEstimate.load.__func__

    def load_then_replaced(cls, gain_path, **kwargs):
        estimate = real_load(cls, gain_path, **kwargs)
        for name in names:
            os.link(Path("Est") / name, Path(f"read-{name}"))
            os.replace(Path("Other") / name, Path("Est") / name)
        return estimate

    monkeypatch.setattr(GainEstimate, "load", classmethod(load_then_replaced))
    assert main(["--i", "m1.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin"]) == 0
    recorded = read_record(Path("Conv/m1.tif")).made_with["gain"]
    sha256 = {name: hashlib.sha256(Path(f"read-{name}").read_bytes()).hexdigest() for name in names}
    assert (recorded["sha256"], recorded["reliability_sha256"]) == (sha256[names[0]], sha256[names[1]])
