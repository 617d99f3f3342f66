"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside its temporary directory (movie names are relative to the current
    directory, as in RELION)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Compile (or load from numba's cache) every kernel specialisation the conversions use,
    once, before the tests: a first compile takes seconds, which must not count against the
    time limits of the tests that guard against hangs."""
    import numpy as np

    from cryotiff import kernels as K

    stream = np.zeros(8, np.uint8)
    one = np.zeros(1, np.int64)
    offsets = np.zeros(16, np.int64)
    K.eer_place_events(stream, 64, 16, 7, 4, 0, K.EER_RECORD, 2, 1, offsets, np.zeros(1, np.uint16), 1,
                       np.zeros(16, np.int64), np.zeros(16, np.uint8))
    for dtype in (np.uint8, np.uint16, np.uint32):
        for placement in (K.EER_ADD_PHYSICAL, K.EER_ADD_UPSAMPLED, K.EER_ADD_BINNED):
            K.eer_add_frames(stream, one, one + 8, 16, 7, 4, 0, placement, 2, 2, offsets, np.zeros(64, dtype), 8,
                             np.zeros(1, np.bool_))
    frame = np.ones(4, np.float32)
    K.gain_update(frame.copy(), np.zeros(4, np.int16), frame, 50, np.float32(1e-4))
    K.gain_integerise(frame, frame, np.ones(4, np.bool_), np.float32(1e-4), frame.copy(), np.zeros(4, np.float32),
                      np.zeros(4, np.int64))
    K.gain_lossy_counts(frame, frame, np.ones(4, np.bool_), np.zeros(4, np.int32))
    from cryotiff.codecs import make_codec

    make_codec("deflate-huffman").encode(b"\0")  # the Huffman-only Deflate encoder
    make_codec("lzw", lzw_encoder="cryotiff").encode(b"\0")  # the LZW encoder
