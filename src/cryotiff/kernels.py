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


@_inline
def _relion_int_round_select(q):
    """:func:`_relion_int_round` with selects instead of branches (the same float32 result)."""
    whole = np.float32(np.trunc(q))
    step = _F32_ONE if q > _F32_ZERO else -_F32_ONE
    whole = whole + step if abs(q - whole) >= _F32_HALF else whole
    whole = whole if abs(whole) < _F32_TWO_POW_31 else _F32_INT_MIN
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
    # Written without branches (every pixel computes every case, a select keeps one), so that
    # the compiler vectorises the loop: 2.3x the branching loop's speed, the same bits.
    changed = mismatch = negative = reliable = 0
    for i in range(frame.size):
        v = frame[i]
        g = gain[i]
        r = reliability[i]
        expected = g * _relion_int_round_select(v / g)
        # DIFFERENCE: a NaN difference is a mismatch (RELION's "> 1e-4" is false for NaN).
        consistent = abs(expected - v) <= tolerance
        is_zero = v == _F32_ZERO
        is_negative = v < _F32_ZERO
        is_lower = (v > _F32_ZERO) & (g > v)
        # DIFFERENCE: saturates at 32767 (RELION's int16 wraps to -32768); -1 stays -1.
        grown = r + np.int16(1) if (r >= 0) & (r < 32767) else r
        checked = grown if consistent else np.int16(-1)
        new_r = r if is_zero else (np.int16(-1) if is_negative else (np.int16(0) if is_lower else checked))
        gain[i] = v if is_lower else g
        reliability[i] = new_r
        changed += is_lower
        negative += is_negative
        mismatch += not (is_zero or is_negative or is_lower or consistent)
        reliable += new_r >= thresh
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


# --------------------------------------------------------------------------------------------
# Deflate with Huffman codes only: a standard zlib stream (RFC 1950 around RFC 1951) whose
# blocks code every byte as a literal, each block with the optimal 15-bit-limited code of its
# own bytes (or stored, or fixed codes, whichever is smallest)
#
# A strip is given as rows that may lie anywhere in one buffer (the flipped view of a page):
# ``data`` holds them, row ``r`` starts at ``start + r * row_stride`` (the stride may be
# negative) and is ``row_bytes`` long. Every band of ``block_rows`` rows is one Deflate block:
# a first pass counts its bytes (and updates the Adler-32), the code is built, and a second pass
# writes the codes while the band is still in the cache. The bits go through a 64-bit
# accumulator into 32-bit words (``out`` is viewed as little-endian uint32, as on every
# platform numba supports); the bytes of two pixels are coded with one lookup in a table of
# the pairs of byte values the band holds.

#: RFC 1951 limits: 15-bit literal codes, 7-bit code-length codes, 65535 bytes per stored block.
DEFLATE_MAX_BITS = 15
_CODE_LENGTH_MAX_BITS = 7
_STORED_MAX_BYTES = 65535
#: Literal/length symbols sent in a dynamic header: the 256 byte values and end-of-block (256).
_N_LITERALS = 257
#: The order in which the code-length code's lengths are sent (RFC 1951, 3.2.7).
_CODE_LENGTH_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], np.int64)
_ADLER_MOD = 65521
#: Bytes the Adler-32 sums may take before they must be reduced (zlib's NMAX: no overflow of
#: 32 bits; the sums here are int64, the bound keeps them as zlib keeps them).
_ADLER_NMAX = 5552


@_jit
def deflate_code_lengths(counts, max_bits, lengths):
    """The optimal prefix code lengths of at most ``max_bits`` bits for symbols occurring
    ``counts`` times (package-merge): ``lengths`` is set, 0 for a symbol that does not occur.
    With one symbol occurring it gets length 1 (a code Deflate decoders accept for one symbol);
    with none, all lengths are 0. Requires fewer than ``2**max_bits`` symbols.

    Returns the total coded bits, ``sum(counts * lengths)``.
    """
    n_symbols = counts.size
    lengths[:] = 0
    symbols = np.empty(n_symbols, np.int64)
    n = 0
    for s in range(n_symbols):
        if counts[s] > 0:
            symbols[n] = s
            n += 1
    if n == 0:
        return 0
    if n == 1:
        lengths[symbols[0]] = 1
        return counts[symbols[0]]
    used_symbols = symbols[:n]
    weights = counts[used_symbols].astype(np.int64)
    order = np.argsort(weights, kind="mergesort")  # stable: ties keep symbol order
    leaf_weight = weights[order]
    leaf_symbol = used_symbols[order]
    # Level max_bits holds the leaves; each level above merges the leaves with the pairs
    # ("packages") of the level below, both in increasing weight (a leaf first on a tie).
    is_package = np.zeros((max_bits + 1, 2 * n), np.bool_)
    level = leaf_weight.copy()
    for depth in range(max_bits - 1, 0, -1):
        n_packages = level.size // 2
        merged = np.empty(n + n_packages, np.int64)
        i = j = 0
        package = 0
        for k in range(n + n_packages):
            if j < n_packages:
                package = level[2 * j] + level[2 * j + 1]
            if j >= n_packages or (i < n and leaf_weight[i] <= package):
                merged[k] = leaf_weight[i]
                i += 1
            else:
                merged[k] = package
                is_package[depth, k] = True
                j += 1
        level = merged
    # The 2n - 2 lightest items of level 1 are the solution; a package taken at a level takes
    # the two items it was made of at the level below, and every leaf taken at a level adds
    # one bit to its symbol's length (the lightest leaves are the ones taken).
    taken = 2 * n - 2
    for depth in range(1, max_bits + 1):
        n_packages = 0
        if depth < max_bits:
            for k in range(taken):
                if is_package[depth, k]:
                    n_packages += 1
        for k in range(taken - n_packages):
            lengths[leaf_symbol[k]] += 1
        taken = 2 * n_packages
    total = 0
    for s in range(n_symbols):
        total += counts[s] * lengths[s]
    return total


@_jit
def deflate_canonical_codes(lengths, codes):
    """The canonical Huffman codes of ``lengths`` (RFC 1951, 3.2.2), bit-reversed into
    ``codes`` so that they can be sent least significant bit first."""
    max_length = 0
    for length in lengths:
        max_length = max(max_length, length)
    count = np.zeros(max_length + 2, np.int64)
    for length in lengths:
        count[length] += 1
    count[0] = 0
    next_code = np.zeros(max_length + 2, np.int64)
    code = 0
    for bits in range(1, max_length + 1):
        code = (code + count[bits - 1]) << 1
        next_code[bits] = code
    for s in range(lengths.size):
        length = lengths[s]
        codes[s] = 0
        if length:
            code = next_code[length]
            next_code[length] += 1
            reversed_code = 0
            for _ in range(length):
                reversed_code = (reversed_code << 1) | (code & 1)
                code >>= 1
            codes[s] = reversed_code


@_jit
def _length_runs(lengths, symbols, extras, n):
    """Code lengths as RFC 1951's code-length alphabet (0-15 a length, 16 the previous one 3-6
    times, 17 zero 3-10 times, 18 zero 11-138 times) into ``symbols`` / ``extras`` (the
    repeat count minus its minimum) from index ``n`` on; returns the index after them."""
    i = 0
    while i < lengths.size:
        length = lengths[i]
        run = 1
        while i + run < lengths.size and lengths[i + run] == length:
            run += 1
        i += run
        if length == 0:
            while run >= 11:
                repeat = min(run, 138)
                symbols[n] = 18
                extras[n] = repeat - 11
                n += 1
                run -= repeat
            if run >= 3:
                symbols[n] = 17
                extras[n] = run - 3
                n += 1
                run = 0
        else:
            symbols[n] = length
            extras[n] = 0
            n += 1
            run -= 1
            while run >= 3:
                repeat = min(run, 6)
                symbols[n] = 16
                extras[n] = repeat - 3
                n += 1
                run -= repeat
        for _ in range(run):
            symbols[n] = length
            extras[n] = 0
            n += 1
    return n


_RUN_EXTRA_BITS = np.array([0] * 16 + [2, 3, 7], np.int64)


@_jit
def _dynamic_header(literal_lengths, distance_lengths, header_symbols, header_extras, header_lengths, header_codes):
    """Plan the dynamic block header for these literal (257) and distance code lengths:
    the runs of both sequences (``header_symbols`` / ``header_extras``, each sequence on its
    own, as zlib sends them), the code-length code (``header_lengths`` / ``header_codes``, 19
    symbols). Returns ``(n_runs, n_literal_runs, hclen, bits)``: the runs, how many of them
    belong to the literal lengths, HCLEN (code-length code lengths sent) and the header's size
    in bits after the 3 block-type bits."""
    n_literal_runs = _length_runs(literal_lengths, header_symbols, header_extras, 0)
    n_runs = _length_runs(distance_lengths, header_symbols, header_extras, n_literal_runs)
    counts = np.zeros(19, np.int64)
    for k in range(n_runs):
        counts[header_symbols[k]] += 1
    deflate_code_lengths(counts, _CODE_LENGTH_MAX_BITS, header_lengths)
    deflate_canonical_codes(header_lengths, header_codes)
    hclen = 19
    while hclen > 4 and header_lengths[_CODE_LENGTH_ORDER[hclen - 1]] == 0:
        hclen -= 1
    bits = 5 + 5 + 4 + 3 * hclen
    for k in range(n_runs):
        symbol = header_symbols[k]
        bits += header_lengths[symbol] + _RUN_EXTRA_BITS[symbol]
    return n_runs, n_literal_runs, hclen, bits


@_inline
def _put(out, acc, n_bits, word, value, bits):
    """Append ``bits`` bits of ``value`` to the stream: ``(acc, n_bits, word)`` after it."""
    acc |= value << n_bits
    n_bits += bits
    if n_bits >= 32:
        out[word] = acc & 0xFFFFFFFF
        acc >>= 32
        n_bits -= 32
        word += 1
    return acc, n_bits, word


@_inline
def _to_byte_boundary(out, acc, n_bits, word):
    n_bits += (-n_bits) & 7
    if n_bits >= 32:
        out[word] = acc & 0xFFFFFFFF
        acc >>= 32
        n_bits -= 32
        word += 1
    return acc, n_bits, word


#: Bands from this size on are coded two bytes per lookup.
_PAIR_MIN_BYTES = 65536
#: Literal/length code lengths of the fixed code (RFC 1951, 3.2.6): all 288 symbols, which
#: make the canonical codes; only the first 257 are used here.
_FIXED_LENGTHS = np.array([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8, np.int64)


@_jit
def _count_band(data, start, row_stride, first_row, last_row, row_bytes, counts, adler):
    """Add the bytes of rows ``first_row`` to ``last_row`` (exclusive) to ``counts`` (four
    tables of 256, so that a run of one value does not wait on its own increments) and carry
    the Adler-32 sums ``adler`` (s1, s2) over them."""
    s1 = adler[0]
    s2 = adler[1]
    for r in range(first_row, last_row):
        row_start = start + r * row_stride
        # Loops over ranges from 0 (here and below): the compiled indexing then needs no
        # negative-index handling.
        for piece_start in range(0, row_bytes, 1 << 20):  # the int64 sums cannot overflow in 2**20
            piece = data[row_start + piece_start : row_start + min(row_bytes, piece_start + (1 << 20))]
            n_quads = piece.size // 4
            for k in range(n_quads):
                b0 = piece[4 * k]
                b1 = piece[4 * k + 1]
                b2 = piece[4 * k + 2]
                b3 = piece[4 * k + 3]
                counts[b0] += 1
                counts[256 + b1] += 1
                counts[512 + b2] += 1
                counts[768 + b3] += 1
                s1 += b0
                s2 += s1
                s1 += b1
                s2 += s1
                s1 += b2
                s2 += s1
                s1 += b3
                s2 += s1
            for k in range(4 * n_quads, piece.size):
                b0 = piece[k]
                counts[b0] += 1
                s1 += b0
                s2 += s1
            s1 %= _ADLER_MOD
            s2 %= _ADLER_MOD
    adler[0] = s1
    adler[1] = s2


@_jit
def _code_band(data, start, row_stride, first_row, last_row, row_bytes, single, pair, use_pairs, out, state):
    """Write the codes of the rows' bytes: ``single[v]`` is ``code << 5 | length`` of byte
    value ``v``, ``pair[a | b << 8]`` the same of the bytes ``a, b`` (with ``use_pairs``);
    ``state`` is the bit writer's (accumulator, bits in it, next word of ``out``)."""
    acc = state[0]
    n_bits = state[1]
    word = state[2]
    words = data[: data.size & ~1].view(np.uint16)  # two bytes per load (little-endian: a | b << 8)
    for r in range(first_row, last_row):
        row_start = start + r * row_stride
        n_pairs = row_bytes // 2 if use_pairs else 0
        if row_start % 2 == 0:
            row_words = words[row_start // 2 : row_start // 2 + n_pairs]
            for k in range(n_pairs):
                entry = pair[row_words[k]]
                acc |= (entry >> 5) << n_bits
                n_bits += entry & 31
                out[word] = acc & 0xFFFFFFFF  # always stored, kept only when full (no branch)
                full = n_bits >> 5  # 0 or 1: at most 31 + 30 bits are pending
                acc >>= full << 5
                n_bits &= 31
                word += full
        else:
            row = data[row_start : row_start + row_bytes]
            for k in range(n_pairs):
                entry = pair[np.int64(row[2 * k]) | (np.int64(row[2 * k + 1]) << 8)]
                acc |= (entry >> 5) << n_bits
                n_bits += entry & 31
                out[word] = acc & 0xFFFFFFFF
                full = n_bits >> 5
                acc >>= full << 5
                n_bits &= 31
                word += full
        row = data[row_start : row_start + row_bytes]
        for k in range(2 * n_pairs, row_bytes):
            entry = single[row[k]]
            acc |= (entry >> 5) << n_bits
            n_bits += entry & 31
            out[word] = acc & 0xFFFFFFFF
            full = n_bits >> 5
            acc >>= full << 5
            n_bits &= 31
            word += full
    state[0] = acc
    state[1] = n_bits
    state[2] = word


@_jit
def deflate_huffman_encode(data, start, row_stride, n_rows, row_bytes, block_rows, out):
    """Encode rows of bytes as one zlib stream of Huffman-only Deflate blocks; returns its
    length in bytes.

    The stream: the zlib header 78 01; per band of ``block_rows`` rows one block, the smallest
    of a dynamic block (the optimal 15-bit-limited code of the band's bytes, all 257 literal
    code lengths and two 1-bit distance codes sent, as zlib does for Huffman-only data), a
    block with the fixed code, or stored blocks (incompressible bands); the last block
    final; the Adler-32 of the bytes, big-endian.

    Args:
        data: uint8, the buffer the rows lie in.
        start: index in ``data`` of row 0's first byte.
        row_stride: from one row's first byte to the next one's (negative for a flipped view).
        n_rows, row_bytes: the rows (either may be 0: the stream of no bytes).
        block_rows: rows per block (at least 1).
        out: uint32, room for :func:`deflate_huffman_bound` bytes.
    """
    counts = np.zeros(4 * 256, np.int64)
    literal_counts = np.zeros(_N_LITERALS, np.int64)
    lengths = np.zeros(_N_LITERALS, np.int64)
    codes = np.zeros(_N_LITERALS, np.int64)
    fixed_lengths = _FIXED_LENGTHS.copy()
    fixed_codes = np.zeros(fixed_lengths.size, np.int64)
    deflate_canonical_codes(fixed_lengths, fixed_codes)
    distance_lengths = np.ones(2, np.int64)
    header_symbols = np.zeros(_N_LITERALS + 2, np.int64)
    header_extras = np.zeros(_N_LITERALS + 2, np.int64)
    header_lengths = np.zeros(19, np.int64)
    header_codes = np.zeros(19, np.int64)
    single = np.zeros(256, np.int64)
    pair = np.empty(65536 if n_rows * row_bytes >= _PAIR_MIN_BYTES else 0, np.int64)
    used = np.zeros(256, np.int64)
    adler = np.array([1, 0], np.int64)
    state = np.zeros(3, np.int64)
    acc = np.int64(0)
    n_bits = np.int64(0)
    word = np.int64(0)
    acc, n_bits, word = _put(out, acc, n_bits, word, 0x0178, 16)  # CMF 0x78 (32K window), FLG 0x01
    n_blocks = max(1, -(-n_rows // block_rows))
    for block in range(n_blocks):
        first_row = block * block_rows
        last_row = min(n_rows, first_row + block_rows)
        final = 1 if block == n_blocks - 1 else 0
        counts[:] = 0
        _count_band(data, start, row_stride, first_row, last_row, row_bytes, counts, adler)
        band_bytes = (last_row - first_row) * row_bytes
        n_used = 0
        for v in range(256):
            literal_counts[v] = counts[v] + counts[256 + v] + counts[512 + v] + counts[768 + v]
            if literal_counts[v]:
                used[n_used] = v
                n_used += 1
        literal_counts[256] = 1  # end of block
        if n_used == 0:
            literal_counts[0] = 1  # a code needs two symbols; this one is never sent
        # The block's size in each form, in bits, from here.
        dynamic_bits = 3 + deflate_code_lengths(literal_counts, DEFLATE_MAX_BITS, lengths)
        if n_used == 0:
            literal_counts[0] = 0
        n_runs, n_literal_runs, hclen, header_bits = _dynamic_header(
            lengths, distance_lengths, header_symbols, header_extras, header_lengths, header_codes
        )
        dynamic_bits += header_bits
        fixed_bits = 3
        for v in range(_N_LITERALS):
            fixed_bits += literal_counts[v] * fixed_lengths[v]
        n_stored = max(1, -(-band_bytes // _STORED_MAX_BYTES))
        stored_bits = 8 * band_bytes + n_stored * 35 + ((-(n_bits + 3)) & 7) + 5 * (n_stored - 1)
        if stored_bits < dynamic_bits and stored_bits < fixed_bits:  # never for no bytes
            remaining = band_bytes
            left_in_block = 0
            for r in range(first_row, last_row):
                row = start + r * row_stride
                for j in range(row, row + row_bytes):
                    if left_in_block == 0:
                        left_in_block = min(remaining, _STORED_MAX_BYTES)
                        last = final if left_in_block == remaining else 0
                        acc, n_bits, word = _put(out, acc, n_bits, word, last, 3)  # BTYPE 00
                        acc, n_bits, word = _to_byte_boundary(out, acc, n_bits, word)
                        acc, n_bits, word = _put(out, acc, n_bits, word, left_in_block, 16)
                        acc, n_bits, word = _put(out, acc, n_bits, word, left_in_block ^ 0xFFFF, 16)
                    acc, n_bits, word = _put(out, acc, n_bits, word, np.int64(data[j]), 8)
                    left_in_block -= 1
                    remaining -= 1
            continue
        if fixed_bits <= dynamic_bits:
            block_lengths = fixed_lengths
            block_codes = fixed_codes
            acc, n_bits, word = _put(out, acc, n_bits, word, final | (1 << 1), 3)
        else:
            block_lengths = lengths
            deflate_canonical_codes(lengths, codes)
            block_codes = codes
            acc, n_bits, word = _put(out, acc, n_bits, word, final | (2 << 1), 3)
            acc, n_bits, word = _put(out, acc, n_bits, word, _N_LITERALS - 257, 5)
            acc, n_bits, word = _put(out, acc, n_bits, word, distance_lengths.size - 1, 5)
            acc, n_bits, word = _put(out, acc, n_bits, word, hclen - 4, 4)
            for k in range(hclen):
                acc, n_bits, word = _put(out, acc, n_bits, word, header_lengths[_CODE_LENGTH_ORDER[k]], 3)
            for k in range(n_runs):
                symbol = header_symbols[k]
                acc, n_bits, word = _put(out, acc, n_bits, word, header_codes[symbol], header_lengths[symbol])
                extra = _RUN_EXTRA_BITS[symbol]
                if extra:
                    acc, n_bits, word = _put(out, acc, n_bits, word, header_extras[k], extra)
        for k in range(n_used):
            v = used[k]
            single[v] = (block_codes[v] << 5) | block_lengths[v]
        use_pairs = band_bytes >= max(_PAIR_MIN_BYTES, 4 * n_used * n_used) and row_bytes >= 2
        if use_pairs:
            for a in range(n_used):
                va = used[a]
                code_a = block_codes[va]
                length_a = block_lengths[va]
                for b in range(n_used):
                    vb = used[b]
                    pair[va | (vb << 8)] = (
                        ((code_a | (block_codes[vb] << length_a)) << 5) | (length_a + block_lengths[vb])
                    )
        state[0] = acc
        state[1] = n_bits
        state[2] = word
        _code_band(data, start, row_stride, first_row, last_row, row_bytes, single, pair, use_pairs, out, state)
        acc = state[0]
        n_bits = state[1]
        word = state[2]
        acc, n_bits, word = _put(out, acc, n_bits, word, block_codes[256], block_lengths[256])
    # To a byte boundary, then the Adler-32 (big-endian) and what is left in the accumulator.
    acc, n_bits, word = _to_byte_boundary(out, acc, n_bits, word)
    checksum = (adler[1] << 16) | adler[0]
    for shift in (24, 16, 8, 0):
        acc, n_bits, word = _put(out, acc, n_bits, word, (checksum >> shift) & 0xFF, 8)
    out[word] = acc & 0xFFFFFFFF
    return 4 * word + n_bits // 8


def deflate_huffman_bound(n_bytes: int, n_blocks: int) -> int:
    """Bytes of ``out`` that :func:`deflate_huffman_encode` may use for ``n_bytes`` in
    ``n_blocks`` blocks: no block is larger than its bytes stored, 5 bytes per stored block of
    at most 65535; then the zlib header and trailer, and a word of slack (whole words are
    written), rounded up to whole words."""
    stored_blocks = n_bytes // _STORED_MAX_BYTES + n_blocks + 1
    return 4 * (-(-(n_bytes + 5 * stored_blocks + 6 + 8) // 4))


# --------------------------------------------------------------------------------------------
# TIFF LZW (Compression 5): the codes of the chapter "LZW Compression" of the TIFF Revision 6.0
# document, as libtiff (``libtiff/tif_lzw.c``) and imagecodecs (``imcd.c``) write them
#
# Codes are written most significant bit first, 9 to 12 bits wide. The stream starts with
# ClearCode (256) and ends with EndOfInformation (257); new strings get codes from 258 on. The
# width grows one code early, as every TIFF reader expects: the code written after the string
# with code 511 was added is 10 bits wide (1023: 11, 2047: 12). When code 4095 has been given
# out, ClearCode is written in 12 bits and the table starts again from 258 at 9 bits; this is
# imagecodecs' rule, so that the bytes here are imagecodecs' byte for byte
# (``tests/test_kernels.py``). (libtiff, and so RELION, clears once code 4093 is given out, and
# also earlier where its compression ratio falls: its strips differ in bytes, never in what they
# decode to.) The parse is greedy: the longest string in the table is coded, which makes the
# output a function of the input and that rule alone.
#
# The table is a hash of (prefix code, next byte) -> code with linear probing, 64-bit slots
# holding ``generation << 32 | key << 12 | code``: a slot of an earlier generation is empty, so
# a reset is one increment of the generation rather than a clear of the table.

LZW_CLEAR = 256
LZW_EOI = 257
LZW_FIRST = 258
#: After this code has been given out the table is reset (ClearCode).
LZW_LAST = 4095
#: 32768 slots (256 KiB) for at most 3838 strings: a quarter of 8192 slots' probes on random
#: bytes and float32 frames, 1.5-2.3x as fast; 16384 slots are as fast on sparse counts only.
_LZW_HASH_BITS = 15
_LZW_HASH_MASK = (1 << _LZW_HASH_BITS) - 1
_LZW_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: the top bits of the product


@_inline
def _put_msb(out, acc, n_bits, pos, value, bits):
    """Append ``bits`` bits of ``value``, most significant first: ``(acc, n_bits, pos)``
    after it. Four whole bytes at a time go to ``out``; fewer than 32 bits stay in ``acc``."""
    acc = (acc << bits) | value
    n_bits += bits
    if n_bits >= 32:
        n_bits -= 32
        word = acc >> n_bits
        out[pos] = (word >> 24) & 0xFF
        out[pos + 1] = (word >> 16) & 0xFF
        out[pos + 2] = (word >> 8) & 0xFF
        out[pos + 3] = word & 0xFF
        pos += 4
        acc &= (1 << n_bits) - 1
    return acc, n_bits, pos


@_inline
def _flush_msb(out, acc, n_bits, pos):
    """The bits left in ``acc``, padded with zeros to whole bytes; returns the stream's length."""
    while n_bits >= 8:
        n_bits -= 8
        out[pos] = (acc >> n_bits) & 0xFF
        pos += 1
    # Where the bits end on a byte boundary imagecodecs writes one zero byte more (after
    # EndOfInformation, which readers stop at): so does this, for the same bytes.
    out[pos] = (acc << (8 - n_bits)) & 0xFF
    return pos + 1


@_jit
def lzw_encode(data, start, row_stride, n_rows, row_bytes, out):
    """Encode rows of bytes as one TIFF LZW strip (see above); returns its length in bytes.

    Args:
        data: uint8, the buffer the rows lie in.
        start: index in ``data`` of row 0's first byte.
        row_stride: from one row's first byte to the next one's (negative for a flipped view).
        n_rows, row_bytes: the rows (either may be 0: ClearCode and EndOfInformation only).
        out: uint8, room for :func:`lzw_bound` bytes.
    """
    acc = np.int64(0)
    n_bits = np.int64(0)
    pos = np.int64(0)
    width = np.int64(9)
    acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_CLEAR, width)
    if n_rows == 0 or row_bytes == 0:
        acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_EOI, width)
        return _flush_msb(out, acc, n_bits, pos)
    table = np.zeros(1 << _LZW_HASH_BITS, np.int64)
    generation = np.int64(1)
    next_code = np.int64(LZW_FIRST)
    omega = np.int64(data[start])
    for r in range(n_rows):
        row = start + r * row_stride
        first = row + 1 if r == 0 else row
        for j in range(first, row + row_bytes):
            k = np.int64(data[j])
            key = (omega << 8) | k
            tag = (generation << 20) | key
            h = ((key * _LZW_HASH_MULTIPLIER) & 0xFFFFFFFF) >> (32 - _LZW_HASH_BITS)
            found = False
            while True:
                slot = table[h]
                if (slot >> 12) == tag:
                    omega = slot & 0xFFF
                    found = True
                    break
                if (slot >> 32) != generation:
                    break  # empty (or of an earlier table)
                h = (h + 1) & _LZW_HASH_MASK
            if found:
                continue
            table[h] = (tag << 12) | next_code
            next_code += 1
            # _put_msb written out: through the inlined function this loop ran at about half the
            # speed on random bytes (63 against 115 MB/s), as if numba kept the tuple in memory.
            acc = (acc << width) | omega
            n_bits += width
            if n_bits >= 32:
                n_bits -= 32
                word = acc >> n_bits
                out[pos] = (word >> 24) & 0xFF
                out[pos + 1] = (word >> 16) & 0xFF
                out[pos + 2] = (word >> 8) & 0xFF
                out[pos + 3] = word & 0xFF
                pos += 4
                # (the bits above the n_bits pending ones are never read: no mask needed)
            omega = k
            if next_code == 512 or next_code == 1024 or next_code == 2048:
                width += 1
            elif next_code == LZW_LAST + 1:
                acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_CLEAR, width)
                generation += 1
                next_code = LZW_FIRST
                width = 9
    acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, omega, width)
    # The decoder adds a string after reading that last code, and widens then as always.
    if next_code == 511 or next_code == 1023 or next_code == 2047:
        width += 1
    acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_EOI, width)
    return _flush_msb(out, acc, n_bits, pos)


def lzw_bound(n_bytes: int) -> int:
    """Bytes of ``out`` that :func:`lzw_encode` may use for ``n_bytes``: at most one code per
    input byte, one ClearCode per 3838 codes and one more at the start, EndOfInformation, each at
    most 12 bits."""
    n_codes = n_bytes + n_bytes // (LZW_LAST + 1 - LZW_FIRST) + 3
    return -(-(12 * n_codes) // 8)
