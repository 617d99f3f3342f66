"""Nothing lost: every strip is verified before it is written, the finished file is checked
before the rename, and a killed or interrupted conversion never leaves an incomplete ``.tif``."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff import convert
from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import is_temporary_of, read_tiff_frames, start_process, temporary_files_of


def small_movie(path: str, seed: int, n_frames: int = 3) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(-3, 9, (n_frames, 16, 20)).astype(np.int16)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=1.05)  # no pixel-size warning
    return frames


def corrupt_decoder(monkeypatch: pytest.MonkeyPatch, bad_strips: set[int] | None) -> None:
    """Make the codec's decoder flip a bit in the strips numbered ``bad_strips`` (counted over the
    whole run, from 0), or in every strip when None: a codec that silently loses data."""
    counter = itertools.count()
    real_resolve = convert.resolve_codec

    def resolve(*args, **kwargs):
        codec = real_resolve(*args, **kwargs)

        def decode(data: bytes) -> bytes:
            decoded = bytearray(codec.decode(data))
            if bad_strips is None or next(counter) in bad_strips:
                decoded[len(decoded) // 2] ^= 0x10
            return bytes(decoded)

        # No streaming encoder, no row-reading encoder, no streaming check: the strip is encoded
        # by _encode and decoded whole by _decode, whichever codec it is
        return dataclasses.replace(codec, _decode=decode, _compressor=None, _encode_rows=None, _rows_check=None)

    monkeypatch.setattr(convert, "resolve_codec", resolve)


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*.tmp"))


# --------------------------------------------------------------------------- verification


def test_summary_says_how_many_frames_were_verified(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_movie("a.mrc", 1, n_frames=3)
    small_movie("b.mrc", 2, n_frames=4)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 0
    assert "Frames verified:  7" in capsys.readouterr().out


def test_a_strip_that_decodes_wrong_fails_its_movie_only(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_movie("a.mrc", 1, n_frames=3)
    b = small_movie("b.mrc", 2, n_frames=3)
    with pytest.MonkeyPatch.context() as patch:
        corrupt_decoder(patch, bad_strips={1})  # the second strip of the run: a.mrc, frame 2
        assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1
    assert "a.mrc: frame 2" in errors[0] and "does not decode to the frame" in errors[0]
    assert "Traceback" not in captured.err
    assert not Path("out/a.tif").exists()
    assert leftovers(Path("out")) == []
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)
    assert "Movies converted: 1, skipped: 0, failed: 1" in captured.out
    assert "Frames verified:  3" in captured.out


@pytest.mark.parametrize("bad_frame", [1, 3, 4])
def test_with_one_thread_a_page_checked_beside_the_next_one_still_fails_its_movie(
        in_tmp: Path, capsys: pytest.CaptureFixture[str], bad_frame: int) -> None:
    """With ``--j 1`` page k is checked on a thread of its own while page k + 1 is made: a
    failed check of the first page, a middle one or the last one still fails the movie, names
    that frame and leaves no file."""
    small_movie("a.mrc", 1, n_frames=4)
    with pytest.MonkeyPatch.context() as patch:
        corrupt_decoder(patch, bad_strips={bad_frame - 1})
        assert main(["--i", "a.mrc", "--o", "out", "--j", "1"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and f"a.mrc: frame {bad_frame}," in errors[0], errors
    assert "does not decode to the frame" in errors[0] and "Traceback" not in captured.err
    assert not Path("out/a.tif").exists() and leftovers(Path("out")) == []


def test_with_one_thread_the_checks_run_beside_the_encoder(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--j 1``: the strips are encoded on the converting thread, checked on the side thread."""
    import threading

    a = small_movie("a.mrc", 1, n_frames=3)
    threads: dict[str, set[str]] = {"encode": set(), "check": set()}
    real_check = convert._check_strips
    real_encode_page = convert._encode_page

    def check(*args, **kwargs):
        threads["check"].add(threading.current_thread().name)
        return real_check(*args, **kwargs)

    def encode_page(*args, **kwargs):
        threads["encode"].add(threading.current_thread().name)
        return real_encode_page(*args, **kwargs)

    monkeypatch.setattr(convert, "_check_strips", check)
    monkeypatch.setattr(convert, "_encode_page", encode_page)
    assert main(["--i", "a.mrc", "--o", "out", "--j", "1"]) == 0
    assert threads["encode"] == {threading.current_thread().name}
    assert len(threads["check"]) == 1 and threads["check"] != threads["encode"]
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


@pytest.mark.parametrize("stage", ["encode", "decode"])
def test_a_codec_that_raises_fails_its_movie_only(in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys, stage) -> None:
    """imagecodecs raises its own RuntimeError subclasses (for example on a corrupt stream): that
    is one movie's failure, never a traceback that stops the run."""
    import imagecodecs

    small_movie("a.mrc", 1)
    b = small_movie("b.mrc", 2)
    real_resolve = convert.resolve_codec

    def resolve(*args, **kwargs):
        codec = real_resolve(*args, **kwargs)
        if args and "a.mrc" not in str(resolve.current):
            return codec

        def broken(data: bytes) -> bytes:
            raise imagecodecs.LzwError("lzw_decode", "corrupt stream")

        # _encode and _decode do all the work, whichever codec it is (see corrupt_decoder)
        return dataclasses.replace(codec, **{f"_{stage}": broken}, _compressor=None, _encode_rows=None,
                                   _rows_check=None)

    real_write_pages = convert._write_pages

    def write_pages(source, source_path, *args, **kwargs):
        resolve.current = source_path
        return real_write_pages(source, source_path, *args, **kwargs)

    resolve.current = None
    monkeypatch.setattr(convert, "resolve_codec", resolve)
    monkeypatch.setattr(convert, "_write_pages", write_pages)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    expected = "encoder failed" if stage == "encode" else "cannot be decoded again"
    assert len(errors) == 1 and "a.mrc: frame 1" in errors[0] and expected in errors[0], errors
    assert not Path("out/a.tif").exists() and leftovers(Path("out")) == []
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)


def test_no_verify_skips_the_strip_check(in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    a = small_movie("a.mrc", 1)
    corrupt_decoder(monkeypatch, bad_strips=None)  # every decode is wrong, but none is made
    assert main(["--i", "a.mrc", "--o", "out", "--no_verify"]) == 0
    assert "Frames verified:  0" in capsys.readouterr().out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


def test_a_finished_file_that_reads_back_short_is_never_renamed(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reopen check: a write that the disk lost (here the file is cut in half once tifffile
    has closed it) fails the movie, and neither ``.tif`` nor ``.tif.tmp`` remains."""
    small_movie("a.mrc", 1, n_frames=6)
    b = small_movie("b.mrc", 2)
    real_close = tifffile.TiffWriter.close

    def close_and_lose_half(self) -> None:
        path = self.filehandle.path
        real_close(self)
        if is_temporary_of(path, "a.tif"):
            os.truncate(path, os.path.getsize(path) // 2)

    monkeypatch.setattr(tifffile.TiffWriter, "close", close_and_lose_half)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert "out/a.tif: the written file" in err and "Traceback" not in err
    assert not Path("out/a.tif").exists() and leftovers(Path("out")) == []
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)


# --------------------------------------------------------------------------- kill -9 and Ctrl-C

#: A movie that takes a good fraction of a second to write, so that the test can stop the
#: conversion while its .tif.tmp is half written: 24 frames of 1024 x 1024 int16.
SLOW_MOVIE_SHAPE = (24, 1024, 1024)


#: libdeflate's slowest level, so that the signal always arrives while the movie is being written
#: (with the fast default codec a lightly loaded machine could finish first).
SLOW_CODEC = ("--compression", "deflate", "--deflate_level", "12")


def slow_movie(path: str) -> np.ndarray:
    frames = np.random.default_rng(7).integers(0, 16, SLOW_MOVIE_SHAPE, dtype=np.int16)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=1.05)
    return frames


def start_cli(*args: str) -> subprocess.Popen:
    return start_process(
        [sys.executable, "-m", "cryotiff", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until_half_written(process: subprocess.Popen, destination: Path, min_nbytes: int = 1 << 20) -> None:
    """Wait until the temporary file of ``destination`` holds at least ``min_nbytes`` (a few
    pages of the slow movie)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for tmp in temporary_files_of(destination):
            try:
                if tmp.stat().st_size >= min_nbytes:
                    return
            except FileNotFoundError:
                pass
        if process.poll() is not None:
            raise AssertionError(f"the conversion ended before {destination} was half written: {process.communicate()}")
        time.sleep(0.002)
    process.kill()
    raise AssertionError(f"no temporary file of {destination} appeared")


def test_kill_9_mid_movie_leaves_no_tif_and_a_rerun_completes_the_set(in_tmp: Path) -> None:
    a = small_movie("a.mrc", 1)
    big = slow_movie("big.mrc")
    c = small_movie("c.mrc", 3)
    process = start_cli("--i", "a.mrc", "big.mrc", "c.mrc", "--o", "out", *SLOW_CODEC)
    wait_until_half_written(process, Path("out/big.tif"))
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert Path("out/a.tif").exists()  # finished before the kill
    assert not Path("out/big.tif").exists()  # never an incomplete .tif
    assert not Path("out/c.tif").exists()

    completed = subprocess.run(
        [sys.executable, "-m", "cryotiff", "--i", "a.mrc", "big.mrc", "c.mrc", "--o", "out", "--only_do_unfinished"],
        capture_output=True, text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Skipping already processed a.mrc" in completed.stdout
    assert "Processing big.mrc" in completed.stdout and "Processing c.mrc" in completed.stdout
    for name, frames in (("a", a), ("big", big), ("c", c)):
        np.testing.assert_array_equal(read_tiff_frames(Path(f"out/{name}.tif")), frames)
    assert leftovers(Path("out")) == []  # the stale temporary file of big.tif was removed
    assert "Removed out/big.tif.cryotiff-" in completed.stdout


def test_ctrl_c_mid_movie_removes_the_temporary_file_and_exits_130(in_tmp: Path) -> None:
    small_movie("a.mrc", 1)
    slow_movie("big.mrc")
    process = start_cli(
        "--i", "a.mrc", "big.mrc", "--o", "out", "--j", "2", *SLOW_CODEC,
        "--pipeline_control", "out", "--report", "out/report.json",
    )
    wait_until_half_written(process, Path("out/big.tif"))
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert not Path("out/big.tif").exists() and not temporary_files_of(Path("out/big.tif"))
    assert Path("out/a.tif").exists()
    assert Path("out/RELION_JOB_EXIT_FAILURE").exists()
    assert not Path("out/RELION_JOB_EXIT_SUCCESS").exists()
    report = json.loads(Path("out/report.json").read_text())
    assert report["state"] == "interrupted" and report["exit_status"] == 130
    assert [m["source"] for m in report["movies"]] == ["a.mrc"]


def test_sigterm_mid_movie_cleans_up_like_ctrl_c(in_tmp: Path) -> None:
    """Batch schedulers stop jobs with SIGTERM: the movie being written is removed, exit 130."""
    slow_movie("big.mrc")
    process = start_cli("--i", "big.mrc", "--o", "out", *SLOW_CODEC)
    wait_until_half_written(process, Path("out/big.tif"))
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert not Path("out/big.tif").exists() and not temporary_files_of(Path("out/big.tif"))
