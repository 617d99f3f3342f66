"""The compiled hot loops: per-event and per-pixel arithmetic that numpy would do in several
passes over a frame, each loop written once, compiled by numba.

Every kernel is ``@njit(nogil=True, cache=True)``: it runs without the GIL, so the page tasks of
``--j N`` threads run their kernels at the same time, and the machine code is cached next to this
file (``__pycache__``, or numba's user cache directory where that is not writable) after the
first run, so later runs only load it. Float division follows IEEE (inf, NaN) as numpy and C do
(numba's ``error_model="numpy"``). The loops are plain
Python over NumPy arrays; the callers (``cryotiff.io.eer``, ``cryotiff.gain``) check shapes and
types before calling, since a compiled loop does not check its indices.

This module is a leaf: it imports only numpy and numba. That is why ``cryotiff.io`` may import it
(the rule that ``io/`` imports nothing from the package but ``errors`` has this one exception:
the EER reader's decoder lives here with the other compiled loops). The tests check every kernel
against an independent reference on random inputs: RELION's EER loop transcribed in plain
Python and ``imagecodecs.eer_decode`` for the EER kernel, the earlier vectorised numpy code for
the gain kernels (``tests/test_kernels.py``).
"""

from __future__ import annotations

import numba
import numpy as np

# error_model="numpy": float division by zero gives inf/NaN as in numpy and C (RELION), instead
# of Python's ZeroDivisionError.
_jit = numba.njit(nogil=True, cache=True, error_model="numpy")
_inline = numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")

# --------------------------------------------------------------------------------------------
# EER: raw frames' bitstreams -> their events, recorded or added into a page

#: How the EER kernels place each event (their ``placement`` argument).
EER_RECORD = 0  # into ``positions`` / ``symbols`` (physical raster index, stored symbol)
EER_ADD_PHYSICAL = 1  # +increment at the physical pixel (``--eer_upsampling 1``)
EER_ADD_UPSAMPLED = 2  # +increment at the sub-pixel of the 2x or 4x grid (upsampling 2, 3)
EER_ADD_BINNED = 3  # +increment at the 2x2-binned pixel (upsampling -1)

#: What a walk over a frame's bitstream ended with.
EER_PAUSED = 0  # the next event lies at or beyond the stop pixel (its symbol is kept)
EER_COMPLETE = 1  # the runs and events account for exactly every pixel
EER_CORRUPT = 2  # a run overshoots the frame, or a field lies beyond the frame's data

# The state of a walk, resumable: int64 fields of ``state``, and the bit buffer (uint64).
_BUFFERED, _NEXT_BYTE, _CONSUMED, _PIXEL, _PLACED, _PENDING, _STATUS = range(7)
EER_STATE_FIELDS = 7


@_inline
def _eer_walk(
    stream, start, n_bytes, n_data_bits, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    placement, width_shift, factor, symbol_offset, counts, increment, positions, symbols,
    state, bits, stop_pixel,
):
    """Walk one frame's bitstream from where ``state`` left it until the next event lies at or
    beyond ``stop_pixel`` (EER_PAUSED) or the frame ends (EER_COMPLETE, EER_CORRUPT); the
    grammar and the arguments are those of :func:`eer_place_events`."""
    max_run = (1 << rle_bits) - 1
    symbol_mask = (1 << symbol_bits) - 1
    width_mask = (1 << width_shift) - 1
    out_width = (1 << width_shift) * factor
    binned_width = (1 << width_shift) >> 1
    end_byte = start + n_bytes
    buffer = bits[0]  # bits not yet consumed, the next one lowest
    n_buffered = state[_BUFFERED]
    next_byte = state[_NEXT_BYTE]
    consumed = state[_CONSUMED]
    pixel = state[_PIXEL]
    placed = state[_PLACED]
    symbol = state[_PENDING]  # -1: no event waiting to be placed
    status = EER_PAUSED
    while True:
        if symbol < 0:
            if n_buffered < 32:  # refill: a run and a symbol are at most 18 bits together
                while n_buffered <= 56 and next_byte < end_byte:
                    buffer |= np.uint64(stream[next_byte]) << np.uint64(n_buffered)
                    next_byte += 1
                    n_buffered += 8
                if n_buffered < 32:  # past the data: zero bits (the bit count decides)
                    n_buffered = 64
            if consumed + rle_bits > n_data_bits:
                status = EER_CORRUPT
                break
            run = np.int64(buffer & np.uint64(max_run))
            buffer >>= np.uint64(rle_bits)
            n_buffered -= rle_bits
            consumed += rle_bits
            pixel += run
            if pixel >= n_pixels:
                status = EER_COMPLETE if pixel == n_pixels else EER_CORRUPT
                break
            if run == max_run:  # an overflow code: no event
                if overflow_skip_bits:
                    buffer >>= np.uint64(overflow_skip_bits)
                    n_buffered -= overflow_skip_bits
                    consumed += overflow_skip_bits
                continue
            if consumed + symbol_bits > n_data_bits:
                status = EER_CORRUPT
                break
            symbol = np.int64(buffer & np.uint64(symbol_mask))
            buffer >>= np.uint64(symbol_bits)
            n_buffered -= symbol_bits
            consumed += symbol_bits
        if pixel >= stop_pixel:
            break  # paused, the event kept for the next band
        if placement == EER_ADD_PHYSICAL:
            counts[pixel] += increment
        elif placement == EER_ADD_UPSAMPLED:
            index = ((pixel >> width_shift) * factor) * out_width + (pixel & width_mask) * factor
            counts[index + symbol_offset[symbol]] += increment
        elif placement == EER_ADD_BINNED:
            counts[((pixel >> width_shift) >> 1) * binned_width + ((pixel & width_mask) >> 1)] += increment
        else:
            positions[placed] = pixel
            symbols[placed] = symbol
        symbol = -1
        placed += 1
        pixel += 1
        if pixel == n_pixels:  # an event on the last pixel ends the frame
            status = EER_COMPLETE
            break
    bits[0] = buffer
    state[_BUFFERED] = n_buffered
    state[_NEXT_BYTE] = next_byte
    state[_CONSUMED] = consumed
    state[_PIXEL] = pixel
    state[_PLACED] = placed
    state[_PENDING] = symbol
    state[_STATUS] = status
    return status


@_jit
def _eer_start(state, bits, start):
    state[:] = 0
    state[_NEXT_BYTE] = start
    state[_PENDING] = -1
    bits[0] = 0


@_jit
def eer_place_events(
    stream, n_data_bits, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    placement, width_shift, factor, symbol_offset, counts, increment, positions, symbols,
):
    """Walk one raw frame's EER bitstream and place each of its events.

    The stream is LSB-first: bit ``i`` is bit ``i mod 8`` of byte ``i // 8``. RELION's loop
    (``src/renderEER.cpp``): read a run field of ``rle_bits`` and advance by it; if that reaches
    ``n_pixels`` the frame ends (exactly: complete; beyond: corrupt); a run of ``2**rle_bits - 1``
    is an overflow code without an event (65000 still carries ``overflow_skip_bits`` of symbol
    field after it); otherwise a symbol of ``symbol_bits`` follows and the event is at the pixel
    reached, which then counts as passed. One change: an event on the last pixel ends the frame
    (its events account for every pixel; RELION reads one more run field and keeps the frame
    only when it is 0). A field that would need bits beyond ``n_data_bits`` makes the frame
    corrupt (RELION reads on into the next frame's bytes).

    Args:
        stream: uint8, the frame's strips concatenated (``n_data_bits / 8`` bytes).
        n_data_bits: bits of frame data (8 x the strips' byte count).
        n_pixels: ``W * H`` of the detector (physical grid).
        rle_bits, symbol_bits: field widths (65000: 8, 4; 65001: 7, 4; 65002: tags 65007 and
            65008 + 65009).
        overflow_skip_bits: symbol bits that follow an overflow code (65000: 4, else 0).
        placement: :data:`EER_RECORD`, :data:`EER_ADD_PHYSICAL`, :data:`EER_ADD_UPSAMPLED` or
            :data:`EER_ADD_BINNED`.
        width_shift: log2 of the detector width (the adding placements).
        factor: output pixels per physical pixel and axis for :data:`EER_ADD_UPSAMPLED` (2, 4).
        symbol_offset: int64 per stored symbol, the event's offset inside its ``factor x factor``
            output block (``sub_y * out_width + sub_x``) for :data:`EER_ADD_UPSAMPLED`.
        counts: the page (flat, C order) the adding placements add to.
        increment: added per event (1; -1 takes back what a corrupt frame added: the sums wrap
            around in the counts' unsigned type, so adding and taking back cancel exactly).
        positions, symbols: int64 and uint8 arrays of room for every event, for
            :data:`EER_RECORD` (at most one event per ``rle_bits + symbol_bits`` of data).

    Returns:
        The number of events placed when the frame is complete; ``-1 - placed`` when it is
        corrupt (the events placed before the corruption showed are not taken back here).
    """
    state = np.empty(EER_STATE_FIELDS, np.int64)
    bits = np.empty(1, np.uint64)
    _eer_start(state, bits, 0)
    status = _eer_walk(
        stream, 0, stream.size, n_data_bits, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        placement, width_shift, factor, symbol_offset, counts, increment, positions, symbols,
        state, bits, n_pixels,
    )
    placed = state[_PLACED]
    return placed if status == EER_COMPLETE else -1 - placed


@_jit
def eer_add_frames(
    stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    placement, width_shift, factor, symbol_offset, counts, band_pixels, complete,
):
    """Add the events of several raw frames into one page, band by band, and take back those of
    every corrupt frame.

    A frame's events are sorted by pixel and touch nearly every cache line of the page, so
    adding frame after frame would stream the whole page through memory once per frame (128 MB
    at ``--eer_upsampling 2``). Instead every frame's walk pauses at the end of a band of
    ``band_pixels`` physical pixels (a few rows), and the next frame adds to the same band, which
    stays in the cache; then all walks resume for the next band. A frame found corrupt (only at
    its end) is walked again with increment -1, which takes back exactly what it added.

    Args:
        stream: uint8, the frames' data one after the other.
        starts, n_bytes: int64 per frame: where its data starts in ``stream`` and how many bytes.
        n_pixels ... symbol_offset, counts: as :func:`eer_place_events` (an adding placement).
        band_pixels: physical pixels per band (a multiple of two detector rows when binned).
        complete: bool per frame, set on return: the frame's events are in the page.
    """
    n_frames = starts.size
    states = np.empty((n_frames, EER_STATE_FIELDS), np.int64)
    bits = np.empty((n_frames, 1), np.uint64)
    no_positions = np.empty(0, np.int64)
    no_symbols = np.empty(0, np.uint8)
    for k in range(n_frames):
        _eer_start(states[k], bits[k], starts[k])
    stop = 0
    while stop < n_pixels:
        stop = min(stop + band_pixels, n_pixels)
        for k in range(n_frames):
            if states[k, _STATUS] != EER_PAUSED:
                continue
            _eer_walk(
                stream, starts[k], n_bytes[k], 8 * n_bytes[k], n_pixels, rle_bits, symbol_bits,
                overflow_skip_bits, placement, width_shift, factor, symbol_offset, counts, 1,
                no_positions, no_symbols, states[k], bits[k], stop,
            )
    for k in range(n_frames):
        complete[k] = states[k, _STATUS] == EER_COMPLETE
        if not complete[k]:
            _eer_start(states[k], bits[k], starts[k])
            _eer_walk(
                stream, starts[k], n_bytes[k], 8 * n_bytes[k], n_pixels, rle_bits, symbol_bits,
                overflow_skip_bits, placement, width_shift, factor, symbol_offset, counts, -1,
                no_positions, no_symbols, states[k], bits[k], n_pixels,
            )


# --------------------------------------------------------------------------------------------
# Gain of gain-normalised float movies: RELION's per-pixel arithmetic in float32
#
# RELION (src/tiff_converter.cpp) computes q = v / g in float32, rounds it with C's round (half
# away from zero) and casts to int, multiplies back in float32 and compares |g * iv - v| with
# 1e-4. These helpers do the same on float32 scalars; ``tolerance`` is the largest float32 not
# above 1e-4, so that ``diff <= tolerance`` in float32 is RELION's comparison in double.

_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_ZERO = np.float32(0.0)
_F32_TWO_POW_31 = np.float32(2.0**31)
_F32_INT_MIN = np.float32(-(2.0**31))


@_inline
def _round_half_away(q):
    """C ``round`` of a float32, in float32 (``q - trunc(q)`` is exact; NaN and inf pass)."""
    whole = np.float32(np.trunc(q))
    if abs(q - whole) >= _F32_HALF:
        whole = whole + _F32_ONE if q > 0 else whole - _F32_ONE
    return whole


@_inline
def _relion_int_round(q):
    """``(int)round(q)`` on x86-64 as a float32: beyond the int range (and NaN, inf) C's
    "integer indefinite" -2147483648; a rounded -0 becomes +0 (an int has no sign of zero)."""
    whole = _round_half_away(q)
    if not abs(whole) < _F32_TWO_POW_31:
        return _F32_INT_MIN
    return whole + _F32_ZERO


@_jit
def gain_update(gain, reliability, frame, thresh, tolerance):
    """RELION's ``--estimate_gain`` step for one frame, in place, pixel by pixel in this order:
    a zero value (also -0) changes nothing; a negative one makes the pixel inconsistent (-1); a
    positive one below the gain becomes the gain and restarts the counter at 0; any other (NaN
    included) is a multiple of the gain within ``tolerance`` (the counter grows, saturating at
    32767, unless it is -1) or a mismatch (-1). Two differences from RELION: a NaN is a mismatch
    (RELION counts it as consistent) and the counter saturates (RELION's int16 wraps).

    Args:
        gain: float32, flat; the estimate (updated).
        reliability: int16, flat; the counters (updated).
        frame: float32, flat; the frame's values.
        thresh: ``--thresh``; pixels with ``counter >= thresh`` after the frame are counted.
        tolerance: float32, RELION's 1e-4 as the largest float32 not above it.

    Returns:
        ``(changed, mismatch, negative, reliable)`` counts of this frame.
    """
    changed = mismatch = negative = reliable = 0
    for i in range(frame.size):
        v = frame[i]
        g = gain[i]
        r = reliability[i]
        if v == 0:
            pass
        elif v < 0:
            negative += 1
            r = -1
        elif v > 0 and g > v:
            gain[i] = v
            r = 0
            changed += 1
        else:
            expected = g * _relion_int_round(v / g)
            # DIFFERENCE: a NaN difference is a mismatch (RELION's "> 1e-4" is false for NaN).
            if abs(expected - v) <= tolerance:
                if 0 <= r < 32767:  # DIFFERENCE: saturates (RELION's int16 wraps to -32768)
                    r += 1
            else:
                mismatch += 1
                r = -1
        reliability[i] = r
        if r >= thresh:
            reliable += 1
    return changed, mismatch, negative, reliable


@_jit
def gain_integerise(frame, gain, reliable, tolerance, values, expected, errors):
    """RELION's ``--gain`` step (``unnormalise``) for one frame: a reliable pixel becomes
    ``(int)round(v / g)`` (float32) when ``|g * iv - v| <= tolerance``, otherwise it is an error;
    other pixels are copied. An error's value is ``round(v / g)`` without the int cast when ``v``
    is finite (RELION writes -2147483648 when the quotient overflows), ``v`` itself otherwise.

    Args:
        frame, gain: float32, flat.
        reliable: bool, flat: ``reliability >= thresh``.
        tolerance: float32 (see :func:`gain_update`).
        values: float32, flat, out: the page.
        expected: float32, out: ``g * iv`` of each error, in pixel order (room for some).
        errors: int64, out: the flat index of each error, in pixel order (as many as fit).

    Returns:
        ``(n_errors, n_inexact)``: all errors (also those beyond the room of ``errors``), and the
        reliable pixels accepted within the tolerance whose ``iv * g`` is not ``v`` bit for bit.
    """
    n_errors = n_inexact = 0
    room = errors.size
    for i in range(frame.size):
        v = frame[i]
        if not reliable[i]:
            values[i] = v
            continue
        g = gain[i]
        iv = _relion_int_round(v / g)
        e = g * iv
        if abs(e - v) <= tolerance:
            values[i] = iv
            if e != v:
                n_inexact += 1
        else:
            if n_errors < room:
                errors[n_errors] = i
                expected[n_errors] = e
            n_errors += 1
            values[i] = _round_half_away(v / g) + _F32_ZERO if np.isfinite(v) else v
    return n_errors, n_inexact


@_jit
def gain_lossy_counts(values, raw, reliable, counts):
    """``--lossy``: the whole frame as int32 counts. Reliable pixels take their integerised value
    (``values``; a value kept by ``--ignore_error`` beyond the int32 range saturates, a non-finite
    one becomes 0); unreliable ones their raw value rounded half away from zero (in float64, exact
    for float32 input), NaN and inf as 0, beyond int32 saturated.

    Args:
        values: float32, flat: :func:`gain_integerise`'s page.
        raw: float32, flat: the frame.
        reliable: bool, flat.
        counts: int32, flat, out.

    Returns:
        ``(n_unreliable, n_changed, max_abs_change, sum_abs_change, n_nonfinite, n_clipped,
        minimum, maximum)`` over the unreliable pixels (changes of finite values, float64; the
        sum in pixel order), and the smallest and largest count of the frame.
    """
    n_unreliable = n_changed = n_nonfinite = n_clipped = 0
    max_change = 0.0
    sum_change = 0.0
    minimum = np.int64(2**31 - 1)
    maximum = np.int64(-(2**31))
    for i in range(raw.size):
        if reliable[i]:
            v = np.float64(values[i])
            if not np.isfinite(v):
                c = np.int64(0)
            elif v <= -2147483648.0:
                c = np.int64(-2147483648)
            elif v >= 2147483520.0:  # the largest float32 below 2**31
                c = np.int64(2147483520)
            else:
                c = np.int64(v)
        else:
            n_unreliable += 1
            x = np.float64(raw[i])
            if not np.isfinite(x):
                n_nonfinite += 1
                n_changed += 1
                c = np.int64(0)
            else:
                rounded = np.floor(abs(x) + 0.5)
                if x < 0:
                    rounded = -rounded
                clipped = min(max(rounded, -2147483648.0), 2147483647.0)
                if clipped != rounded:
                    n_clipped += 1
                change = abs(clipped - x)
                if change > 0:
                    n_changed += 1
                if change > max_change:
                    max_change = change
                sum_change += change
                c = np.int64(clipped)
        counts[i] = c
        if c < minimum:
            minimum = c
        if c > maximum:
            maximum = c
    return n_unreliable, n_changed, max_change, sum_change, n_nonfinite, n_clipped, minimum, maximum
