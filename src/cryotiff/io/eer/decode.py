"""EER bitstreams (65000, 65001, 65002) -> the events of one raw frame.

A frame's data is one LSB-first bitstream of ``run, [symbol]`` codes (RELION's loop in
``src/renderEER.cpp``; the grammar is in :func:`cryotiff.kernels.eer_place_events`, which walks
it): a run of ``2**bits - 1`` is an overflow code that carries no event; 65000 carries a symbol
field after every code, also after an overflow code. A frame is complete when its runs and
events account for exactly ``W*H`` pixels within its data; otherwise it is corrupt (RELION's
warning, and the frame is left out). An event on the last pixel ends the frame by itself
(Thermo Fisher's writer then writes no closing run code; RELION keeps such a frame only when the
bits after it happen to be zero; see docs/differences-from-relion.md).

The stored symbol holds the sub-pixel position, the most significant bit of each axis' field
flipped (:func:`subpixels`). Rendering adds events straight into the page
(:mod:`cryotiff.io.eer.render`); :func:`decode_eer_frame` gives a frame's events as arrays.
"""

from __future__ import annotations

import numpy as np

from cryotiff import kernels
from cryotiff.errors import EerFormatError
from cryotiff.io.eer.container import EerEncoding


class CorruptEerFrameError(EerFormatError):
    """A raw EER frame whose runs do not add up to the frame size (``read_frame`` only;
    ``render`` leaves such frames out and reports them)."""


def subpixels(
    symbols: np.ndarray, horizontal_bits: int, vertical_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel x and y (int64) from stored symbols: the horizontal field is the low bits, and
    the MSB of each field is flipped (RELION XORs 0x0A for 2+2 bits and 3 for 1+1 bits)."""
    s = np.asarray(symbols).astype(np.int64)
    xs = (s & ((1 << horizontal_bits) - 1)) ^ (1 << (horizontal_bits - 1))
    ys = ((s >> horizontal_bits) & ((1 << vertical_bits) - 1)) ^ (1 << (vertical_bits - 1))
    return xs, ys


def as_stream(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A frame's data as the writable uint8 array the kernels read (a read-only array would be
    another compiled specialisation of each kernel)."""
    stream = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    return stream if stream.flags.writeable else stream.copy()


def decode_eer_frame(
    data: bytes | np.ndarray,
    shape: tuple[int, int],
    encoding: EerEncoding,
    *,
    need_symbols: bool = False,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Events of one raw frame: ``(positions, symbols)``, or None when the frame is corrupt.

    ``positions`` are raster indices on the physical grid ``shape`` (sorted, int64), ``symbols``
    the stored sub-pixel symbols (uint8, with ``need_symbols``; else None). ``shape`` need not be
    a detector size (any ``rows x cols``).
    """
    stream = as_stream(data)
    n_bits = 8 * stream.size
    room = n_bits // (encoding.rle_bits + encoding.symbol_bits) + 1  # at most one event per code
    positions = np.empty(room, np.int64)
    symbols = np.empty(room, np.uint8)
    placed = kernels.eer_place_events(
        stream, n_bits, int(shape[0]) * int(shape[1]), encoding.rle_bits, encoding.symbol_bits,
        encoding.overflow_skip_bits, kernels.EER_RECORD, 0, 1, _NO_OFFSETS, _NO_COUNTS, 1,
        positions, symbols,
    )
    if placed < 0:
        return None
    return positions[:placed].copy(), (symbols[:placed].copy() if need_symbols else None)


_NO_OFFSETS = np.zeros(16, np.int64)
_NO_COUNTS = np.zeros(1, np.uint16)
