"""Independent references for the EER kernels: RELION's decoding loop and rendering table
(``src/renderEER.cpp``) transcribed bit by bit in plain Python, slow and obviously right."""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# RELION's decoding loop, bit by bit, stopping at the end of the data.


def _bits(data: bytes) -> list[int]:
    return np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").tolist()


def ref_decode(
    data: bytes,
    total: int,
    rle: int,
    sym_bits: int,
    waste_after_overflow: bool,
    last_pixel_ends: bool = True,
):
    """``[(pixel, symbol), ...]`` or None when the runs do not end at exactly ``total``.

    ``last_pixel_ends``: cryotiff's one change to RELION's loop: an event on the last pixel ends
    the frame (its events account for every pixel), whatever follows. False is RELION's loop as
    it is, which reads one more run field and keeps the frame only when that field is 0.
    """
    bits = _bits(data)

    def take(p: int, n: int) -> int | None:
        if p + n > len(bits):
            return None
        return sum(bits[p + i] << i for i in range(n))

    max_run = (1 << rle) - 1
    n = p = 0
    events = []
    while True:
        run = take(p, rle)
        if run is None:
            return None
        p += rle
        n += run
        if n >= total:
            break
        if run == max_run:
            if waste_after_overflow:  # 65000: a symbol field follows even an overflow code
                p += sym_bits
            continue
        sym = take(p, sym_bits)
        if sym is None:
            return None
        p += sym_bits
        events.append((n, sym))
        n += 1
        if last_pixel_ends and n == total:
            break
    return events if n == total else None




# --------------------------------------------------------------------------------------------
# RELION's rendering table


def ref_render(events, width: int, upsampling: int, horizontal_bits: int, counts: np.ndarray) -> None:
    """Add ``events`` (``[(pixel, symbol)]`` of a ``width x width`` detector) to ``counts`` (2-D)
    as RELION's ``render4K_to_*`` / ``render2K_to_*`` loops do, one event at a time: the stored
    symbol's fields flipped (XOR 0x0A for 2+2 bits, 3 for 1+1), then at upsampling 2 the top bit
    of each axis, at 3 both bits (4K files of 2+2 bits), at -1 the 2x2 bin."""
    flip = 0x0A if horizontal_bits == 2 else 3
    mask = (1 << horizontal_bits) - 1
    for pixel, symbol in events:
        s = symbol ^ flip
        x0, y0 = pixel % width, pixel // width
        xs, ys = s & mask, s >> horizontal_bits
        if upsampling == 1:
            x, y = x0, y0
        elif upsampling == -1:
            x, y = x0 >> 1, y0 >> 1
        elif upsampling == 2:
            drop = horizontal_bits - 1
            x, y = 2 * x0 + (xs >> drop), 2 * y0 + (ys >> drop)
        else:
            x, y = 4 * x0 + xs, 4 * y0 + ys
        counts[y, x] += 1
