"""EER: raw frames' bitstreams -> their events, recorded or added into a page (compiled)."""

from __future__ import annotations

import numpy as np

from cryotiff.kernels._jit import _inline, _jit

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
# _PLACED counts the events recorded (EER_RECORD only).
_BUFFERED, _NEXT_BYTE, _CONSUMED, _PIXEL, _PLACED, _PENDING, _STATUS = range(7)
EER_STATE_FIELDS = 7


@_inline
def _load_u64_le(stream, index):
    """The 8 bytes ``stream[index : index + 8]`` as a little-endian uint64 (one load once compiled)."""
    i = np.uint64(index)
    value = np.uint64(0)
    for k in range(8):
        value |= np.uint64(stream[i + np.uint64(k)]) << np.uint64(8 * k)
    return value


@_inline
def _page_index(placement, pixel, offset, width_shift, factor):
    """Where an adding placement adds an event at physical ``pixel``: its index in the flat page
    (``offset``: the event's offset inside its output block, :data:`EER_ADD_UPSAMPLED`). Scalars
    only: arrays handed to an inlined function cost reference counting in the loop."""
    width_mask = (1 << width_shift) - 1
    if placement == EER_ADD_PHYSICAL:
        return pixel
    if placement == EER_ADD_UPSAMPLED:
        out_width = (1 << width_shift) * factor
        return ((pixel >> width_shift) * factor) * out_width + (pixel & width_mask) * factor + offset
    return ((pixel >> width_shift) >> 1) * ((1 << width_shift) >> 1) + ((pixel & width_mask) >> 1)


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
    end_byte = start + n_bytes
    buffer = bits[0]  # bits not yet consumed, the next one lowest
    n_buffered = state[_BUFFERED]
    next_byte = state[_NEXT_BYTE]
    consumed = state[_CONSUMED]
    pixel = state[_PIXEL]
    placed = state[_PLACED]
    symbol = state[_PENDING]  # -1: no event waiting to be placed
    status = EER_PAUSED
    code_bits = rle_bits + symbol_bits
    overflow_bits = rle_bits + overflow_skip_bits
    refill_below = max(code_bits, overflow_bits)
    fast_end_byte = start + min(n_bytes, n_data_bits >> 3)  # the fast stretch loads below it
    while True:
        if symbol < 0:
            # The fast stretch, nearly all of a frame: while 8 bytes of data lie ahead, no field
            # can reach beyond the data, so codes are read without the bit-count checks. A
            # refill ORs in the 8 bytes at next_byte shifted past the buffered bits and counts
            # the whole bytes that fitted (the buffer then holds 56-63 bits; the bits above
            # n_buffered are the following bytes' own, which the next refill ORs in again at
            # the same places, so they change nothing). It stops before a code whose run
            # reaches the stop pixel: the careful loop below reads that one, and the frame's
            # last 8 bytes. Indices are unsigned so that the compiler adds no negative-index
            # wraparound, which also lets it merge the eight byte loads into one.
            if next_byte + 8 <= fast_end_byte:
                while next_byte + 8 <= fast_end_byte:
                    if n_buffered < refill_below:
                        buffer |= _load_u64_le(stream, next_byte) << np.uint64(n_buffered)
                        next_byte += (63 - n_buffered) >> 3
                        n_buffered |= 56
                    run = np.int64(buffer & np.uint64(max_run))
                    if pixel + run >= stop_pixel:
                        break
                    pixel += run
                    if run == max_run:  # an overflow code: no event
                        buffer >>= np.uint64(overflow_bits)
                        n_buffered -= overflow_bits
                        continue
                    symbol = np.int64((buffer >> np.uint64(rle_bits)) & np.uint64(symbol_mask))
                    buffer >>= np.uint64(code_bits)
                    n_buffered -= code_bits
                    if placement == EER_RECORD:
                        positions[np.uint64(placed)] = pixel
                        symbols[np.uint64(placed)] = symbol
                        placed += 1  # only here: a count kept live in the loop costs 15 %
                    else:
                        offset = symbol_offset[np.uint64(symbol)] if placement == EER_ADD_UPSAMPLED else 0
                        counts[np.uint64(_page_index(placement, pixel, offset, width_shift, factor))] += increment
                    pixel += 1
                symbol = -1
                # Within the fast stretch every buffered bit was read from the data.
                consumed = 8 * (next_byte - start) - n_buffered
                if pixel == n_pixels:  # an event on the last pixel ended the frame
                    status = EER_COMPLETE
                    break
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
        if placement == EER_RECORD:
            positions[np.uint64(placed)] = pixel
            symbols[np.uint64(placed)] = symbol
            placed += 1
        else:
            offset = symbol_offset[np.uint64(symbol)] if placement == EER_ADD_UPSAMPLED else 0
            counts[np.uint64(_page_index(placement, pixel, offset, width_shift, factor))] += increment
        symbol = -1
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
def _eer_walk_any(
    stream, start, n_bytes, n_data_bits, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    placement, width_shift, factor, symbol_offset, counts, increment, positions, symbols,
    state, bits, stop_pixel,
):
    """:func:`_eer_walk` for any placement, compiled once: for :func:`eer_place_events` and for
    taking back a corrupt frame, where speed matters little (the per-placement adders inline
    their own walk)."""
    return _eer_walk(
        stream, start, n_bytes, n_data_bits, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        placement, width_shift, factor, symbol_offset, counts, increment, positions, symbols,
        state, bits, stop_pixel,
    )


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
        The number of events recorded (:data:`EER_RECORD`; the adding placements count none)
        when the frame is complete; ``-1 - recorded`` when it is corrupt (the events placed before
        the corruption showed are not taken back here).
    """
    state = np.empty(EER_STATE_FIELDS, np.int64)
    bits = np.empty(1, np.uint64)
    _eer_start(state, bits, 0)
    status = _eer_walk_any(
        stream, 0, stream.size, n_data_bits, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        placement, width_shift, factor, symbol_offset, counts, increment, positions, symbols,
        state, bits, n_pixels,
    )
    placed = state[_PLACED]
    return placed if status == EER_COMPLETE else -1 - placed


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
    # One compiled function per placement, each compiled (and cached) when first used: the
    # placement is then a constant and its tests leave the per-event loop (about 10 % faster).
    _ADD_FRAMES[placement](
        stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        width_shift, factor, symbol_offset, counts, band_pixels, complete,
    )


@_inline
def _add_bands(
    stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    placement, width_shift, factor, symbol_offset, counts, band_pixels, complete,
):
    """:func:`eer_add_frames` for one placement."""
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
            _eer_walk_any(
                stream, starts[k], n_bytes[k], 8 * n_bytes[k], n_pixels, rle_bits, symbol_bits,
                overflow_skip_bits, placement, width_shift, factor, symbol_offset, counts, -1,
                no_positions, no_symbols, states[k], bits[k], n_pixels,
            )


# Three top-level functions rather than closures made by one factory, so that each is compiled
# and cached on its own, under its own name.
@_jit
def _add_frames_physical(
    stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    width_shift, factor, symbol_offset, counts, band_pixels, complete,
):
    _add_bands(
        stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        EER_ADD_PHYSICAL, width_shift, factor, symbol_offset, counts, band_pixels, complete,
    )


@_jit
def _add_frames_upsampled(
    stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    width_shift, factor, symbol_offset, counts, band_pixels, complete,
):
    _add_bands(
        stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        EER_ADD_UPSAMPLED, width_shift, factor, symbol_offset, counts, band_pixels, complete,
    )


@_jit
def _add_frames_binned(
    stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
    width_shift, factor, symbol_offset, counts, band_pixels, complete,
):
    _add_bands(
        stream, starts, n_bytes, n_pixels, rle_bits, symbol_bits, overflow_skip_bits,
        EER_ADD_BINNED, width_shift, factor, symbol_offset, counts, band_pixels, complete,
    )


_ADD_FRAMES = {
    EER_ADD_PHYSICAL: _add_frames_physical,
    EER_ADD_UPSAMPLED: _add_frames_upsampled,
    EER_ADD_BINNED: _add_frames_binned,
}
