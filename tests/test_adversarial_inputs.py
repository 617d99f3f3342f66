"""Hostile and odd inputs, found by adversarial testing and kept in the suite: each gives one clear
error naming the file (or a stated warning), never a hang, a traceback, unbounded memory or a
misstated result. Calls that could hang or exhaust memory run in an isolated worker process
under a memory and a time limit (:mod:`tests.isolated`)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.errors import EerFormatError, InputError
from cryotiff.io import eer as E
from cryotiff.simulate import eer as S
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames
from .isolated import IsolatedRunner


@pytest.fixture(scope="module")
def isolated():
    with IsolatedRunner() as runner:
        yield runner


def good_movie(path: Path, seed: int) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 9, (3, 24, 32)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(path, frames, 1)
    return frames


def small_eer(path: Path, n_frames: int = 3, **kwargs) -> Path:
    frames = S.random_events(np.random.default_rng(3), 2048, n_frames, 0.002)
    return S.write_eer(path, frames, 2048, 65001, **kwargs)


# --------------------------------------------------------------------------- special files


@pytest.mark.parametrize("name", ["pipe.eer", "pipe.tif", "pipe.mrc", "pipe.dat"])
def test_a_named_pipe_is_refused_without_hanging(tmp_path: Path, isolated, name: str) -> None:
    """Opening a FIFO for reading blocks until a writer comes; the readers check first."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    outcome = isolated.call("tests.isolated:read_movie", str(fifo), timeout=10)
    assert outcome.kind == "error" and outcome.is_cryotiff_error, outcome.describe()
    assert name in outcome.message and "named pipe" in outcome.message, outcome.message


def test_a_named_pipe_among_movies_fails_alone(tmp_path: Path, isolated) -> None:
    first = good_movie(tmp_path / "first.mrc", 1)
    last = good_movie(tmp_path / "last.mrc", 2)
    os.mkfifo(tmp_path / "pipe.eer")
    outcome = isolated.call(
        "tests.isolated:run_cli",
        ["--i", "first.mrc", "pipe.eer", "last.mrc", "--o", "out"], str(tmp_path), timeout=30,
    )
    assert outcome.kind == "ok", outcome.describe()
    status, out, err = eval(outcome.value)  # the worker returns repr((status, out, err))
    assert status == 1
    assert "ERROR: pipe.eer: is a named pipe (FIFO), not a regular file" in err, err
    assert "Movies converted: 2, skipped: 0, failed: 1" in out
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/first.tif"), first)
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out/last.tif"), last)


def test_a_gain_that_is_a_named_pipe_is_refused(tmp_path: Path, isolated) -> None:
    fifo = tmp_path / "pipe.gain"
    os.mkfifo(fifo)
    outcome = isolated.call("cryotiff.eer_gain:convert_eer_gain", str(fifo), 2048, 1, timeout=10)
    assert outcome.kind == "error" and outcome.is_cryotiff_error, outcome.describe()
    assert "named pipe" in outcome.message


# --------------------------------------------------------------------------- EER containers


def _patch_long8_tag(data: bytearray, path: Path, page: int, code: int, value: int) -> None:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[page].tags[code]
        struct.pack_into("<Q", data, tag.valueoffset, value)


@pytest.mark.parametrize("final_image", [False, True])
def test_eer_messages_number_raw_frames_and_ifds_from_one(tmp_path: Path, final_image: bool) -> None:
    path = small_eer(tmp_path / "odd.eer", final_image=final_image)
    data = bytearray(path.read_bytes())
    # The second raw frame claims another width.
    _patch_long8_tag(data, path, 2 if final_image else 1, 256, 4096)
    path.write_bytes(data)
    ifd = 3 if final_image else 2
    with pytest.raises(EerFormatError, match=rf"odd\.eer: raw frame 2 \(IFD {ifd}\) .*4096x2048.* differs "
                                              r"from raw frame 1"):
        E.EerMovie(path)


def test_eer_frame_data_beyond_the_file_names_frame_and_ifd(tmp_path: Path) -> None:
    path = small_eer(tmp_path / "cut.eer")
    data = bytearray(path.read_bytes())
    _patch_long8_tag(data, path, 2, 279, len(data))  # third frame's strip byte count
    path.write_bytes(data)
    with pytest.raises(EerFormatError, match=r"cut\.eer: the data of raw frame 3 \(IFD 3\) lie beyond the end"):
        E.EerMovie(path)


def test_an_eer_frame_larger_than_any_frame_can_be_is_refused(tmp_path: Path) -> None:
    """A raw frame's stream is read into memory whole: it must be of a size a frame can have
    (here 12 MB for a 2K frame, which needs at most 5.8 MB with an event on every pixel)."""
    frames = S.random_events(np.random.default_rng(3), 2048, 2, 0.002)
    streams = [S.encode_frame(frame, 2048, 65001) for frame in frames]
    streams[1] += bytes(12 * 2**20)
    path = S.write_eer(tmp_path / "big.eer", streams, 2048, 65001)
    with pytest.raises(EerFormatError, match=r"big\.eer: raw frame 2 \(IFD 2\) holds \d+ bytes of data, more than a 2048x2048 frame can need.* damaged"):
        E.EerMovie(path)
    # A normal frame is well within the bound.
    assert E.max_frame_nbytes(2048 * 2048, E.EerEncoding(65001, 7, 2, 2)) > len(streams[0])


def test_mrc_refuses_special_files_with_the_shared_check(tmp_path: Path) -> None:
    from cryotiff.io.mrc import open_mrc

    with pytest.raises(InputError, match="is a directory, not an MRC file"):
        open_mrc(tmp_path)


@pytest.mark.parametrize("name", ["pipe.star", "pipe.lst"])
def test_an_input_list_that_is_a_named_pipe_is_refused(tmp_path: Path, isolated, name: str) -> None:
    os.mkfifo(tmp_path / name)
    outcome = isolated.call("tests.isolated:run_cli", ["--i", name, "--o", "out"], str(tmp_path), timeout=20)
    assert outcome.kind == "ok", outcome.describe()
    status, _, err = eval(outcome.value)
    assert status != 0 and f"{name}: is a named pipe (FIFO), not a regular file" in err, err
