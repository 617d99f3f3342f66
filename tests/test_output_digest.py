"""The output's SHA-256 for its manifest line is begun before the TIFF's fsync and runs beside it
(io.digest.BackgroundDigest, started by AtomicFile.commit). These tests hold that the line still
describes the very bytes in place: a digest made stale by a write before the commit is not used,
and an interrupt during the fsync leaves no thread, descriptor or temporary file behind."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import cryotiff.io.atomic as atomic
import cryotiff.io.digest as digest_module
from cryotiff.convert import ConvertOptions, RunContext, convert_movie
from cryotiff.io.digest import BackgroundDigest, DigestStopped, descriptor_sha256
from cryotiff.manifest import Manifest, read_manifest

from .helpers import int16_movie, read_tiff_frames, temporary_files_of

DIGEST_THREAD = "cryotiff-output-digest"


def digest_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == DIGEST_THREAD]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_temporary(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
    except OSError:
        return False


def convert_with_manifest(tmp_path: Path) -> tuple[Path, np.ndarray, Manifest]:
    movie = tmp_path / "a.mrc"
    frames = int16_movie(movie, seed=3, n_frames=4, shape_yx=(40, 48))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    manifest = Manifest(out)
    convert_movie(movie, out / "a.tif", ConvertOptions(output_dir=out), context=RunContext(manifest=manifest))
    return out, frames, manifest


def test_the_digest_begins_before_the_fsync_and_describes_the_file_in_place(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_init, real_fsync = BackgroundDigest.__init__, os.fsync

    def init(self, descriptor):
        events.append("digest")
        real_init(self, descriptor)

    def fsync(fd):
        if is_temporary(fd):
            events.append("fsync")
        return real_fsync(fd)

    monkeypatch.setattr(BackgroundDigest, "__init__", init)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    out, frames, manifest = convert_with_manifest(tmp_path)
    assert manifest.wait() == []
    assert events == ["digest", "fsync"]
    entry = read_manifest(out)["a.tif"]
    assert (entry.output_bytes, entry.output_sha256) == ((out / "a.tif").stat().st_size, sha256_of(out / "a.tif"))
    np.testing.assert_array_equal(read_tiff_frames(out / "a.tif"), frames)
    assert digest_threads() == []


def test_a_write_into_the_file_after_the_digest_began_is_hashed_again(tmp_path: Path, monkeypatch) -> None:
    """Something writes into the temporary file after its digest began (here: while it is
    synced, once the digest is done): the digest describes bytes that are no longer the file's,
    and the line must describe the file as it was put in place."""
    real_fsync = os.fsync
    begun: list[BackgroundDigest] = []
    real_init = BackgroundDigest.__init__

    def init(self, descriptor):
        real_init(self, descriptor)
        begun.append(self)

    def fsync(fd):
        if is_temporary(fd) and begun:
            begun[-1].result()  # the digest is of the file before the write below
            os.pwrite(fd, b"\0" * 16, os.fstat(fd).st_size)  # 16 bytes after the TIFF's end
        return real_fsync(fd)

    monkeypatch.setattr(BackgroundDigest, "__init__", init)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    out, frames, manifest = convert_with_manifest(tmp_path)
    assert manifest.wait() == []
    entry = read_manifest(out)["a.tif"]
    assert (entry.output_bytes, entry.output_sha256) == ((out / "a.tif").stat().st_size, sha256_of(out / "a.tif"))
    assert (out / "a.tif").read_bytes().endswith(b"\0" * 16)
    np.testing.assert_array_equal(read_tiff_frames(out / "a.tif"), frames)


def test_an_interrupt_during_the_fsync_leaves_no_digest_thread_descriptor_or_temporary(
        tmp_path: Path, monkeypatch) -> None:
    """The digest is still reading (held until it is told to stop) when the Ctrl-C lands."""
    real_fsync, real_preadv, real_init = os.fsync, os.preadv, BackgroundDigest.__init__
    begun: list[BackgroundDigest] = []

    def init(self, descriptor):
        begun.append(self)  # before the thread starts, which looks for it
        real_init(self, descriptor)

    def held_preadv(*args):
        if threading.current_thread().name != DIGEST_THREAD:  # the source's hash
            return real_preadv(*args)
        for _ in range(2000):  # at most 20 s: a digest never stopped is still running at the check
            if begun[-1]._stop.is_set():
                break
            threading.Event().wait(0.01)
        return real_preadv(*args)

    def fsync(fd):
        if is_temporary(fd):
            assert [thread.is_alive() for thread in digest_threads()] == [True]
            raise KeyboardInterrupt
        return real_fsync(fd)

    movie = tmp_path / "a.mrc"
    int16_movie(movie, seed=4, n_frames=3, shape_yx=(40, 48))
    out = tmp_path / "out"
    out.mkdir()
    manifest = Manifest(out)
    descriptors = open_descriptors()
    monkeypatch.setattr(BackgroundDigest, "__init__", init)
    monkeypatch.setattr(digest_module.os, "preadv", held_preadv)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        convert_movie(movie, out / "a.tif", ConvertOptions(output_dir=out), context=RunContext(manifest=manifest))
    monkeypatch.undo()
    assert manifest.wait() == []
    assert digest_threads() == []
    assert not (out / "a.tif").exists() and temporary_files_of(out / "a.tif") == []
    assert read_manifest(out) == {}
    assert open_descriptors() == descriptors


def test_a_stopped_digest_says_so_and_closes_its_descriptor(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(8 << 20))
    gate = threading.Event()
    real_preadv = os.preadv

    def slow_preadv(*args):
        gate.wait(60)  # the first block waits until the digest is stopped
        return real_preadv(*args)

    monkeypatch.setattr(digest_module.os, "preadv", slow_preadv)
    fd = os.open(path, os.O_RDONLY)
    try:
        descriptors = open_descriptors()
        started = BackgroundDigest(fd)
        stopper = threading.Thread(target=started.stop)
        stopper.start()
        while not started._stop.is_set():
            pass
        gate.set()
        stopper.join(60)
        with pytest.raises(DigestStopped):
            started.result()
        assert open_descriptors() == descriptors
        monkeypatch.undo()
        finished = BackgroundDigest(fd)
        assert finished.result() == descriptor_sha256(fd) == (8 << 20, sha256_of(path))
        assert finished.status_before.st_size == 8 << 20
    finally:
        os.close(fd)
    assert digest_threads() == []
