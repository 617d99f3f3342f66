"""TIFF LZW (Compression 5): the compiled encoder."""

from __future__ import annotations

import numpy as np

from cryotiff.kernels._jit import _inline, _jit

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
# The table, (prefix code, next byte) -> code, is in two parts that share no byte value:
#
# * For the strip's most frequent byte values (a histogram of 4096 bytes spread over it), a
#   direct-indexed child table, 0 for "no such string" (codes are >= 258): 4 values (4 uint16 per
#   code, 32 KiB, the L1 cache's size) where the 4 most frequent cover at least 98.5 % of the
#   sample (EER pages at upsampling 2; the four bytes of integers in float32, as on --gain pages),
#   else 8 values (64 KiB; counts with more values). A code's children are cleared when the code
#   is given out, so a reset clears only the 256 single-byte codes' rows. On cryo-EM pages nearly
#   every byte is one of these values, and a lookup there is one load instead of a hash and a
#   probe. The walk keeps the current string as its row's first index (``node``, the code times
#   the values per code), so that the load of the next child is the only step between one byte
#   and the next. Against the hash alone: 1.1-1.4x the speed on K2 counts, 1.4-1.7x on EER pages
#   at upsampling 2 and on --gain pages, and 1.15-1.3x again with 4 values and the row index
#   (docs/benchmarks/vs-relion.md).
# * For every other byte value, a hash with linear probing, 64-bit slots holding
#   ``generation << 32 | key << 12 | code``: a slot of an earlier generation is empty, so a reset
#   is one increment of the generation rather than a clear of the table.
#
# Which values are direct only changes where a string is looked up, never which strings exist,
# so the bytes written do not depend on the sample.

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
#: Byte values with a direct child table, as a power of two: 4 or 8 (16 were slower on every
#: page measured). 4 where the 4 most frequent values cover this fraction of the sample: 4 values
#: were 1.1-1.26x as fast as 8 on float32 integers and EER pages at upsampling 2 and 0.76-0.97x on
#: K2 counts and other 8-bit counts, whose top 4 cover 86-98.3 % (same-run medians).
_LZW_FEW_BITS = 2
_LZW_MANY_BITS = 3
_LZW_MANY_VALUES = 1 << _LZW_MANY_BITS
_LZW_FEW_COVERAGE = 0.985
#: Bytes of a strip whose histogram picks the direct values.
_LZW_SAMPLE_BYTES = 4096


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


@_inline
def _frequent_bytes(data, start, row_stride, n_rows, row_bytes):
    """``(slot_of, direct_bits)``: ``slot_of[value]`` is 0 to ``2**direct_bits - 1`` for the
    (at most) 4 or 8 most frequent byte values among :data:`_LZW_SAMPLE_BYTES` bytes spread evenly
    over the rows (4 where they cover :data:`_LZW_FEW_COVERAGE` of those bytes), -1 for every
    other value."""
    histogram = np.zeros(256, np.int64)
    total = n_rows * row_bytes
    n_sample = min(total, _LZW_SAMPLE_BYTES)
    step = total // n_sample
    row = np.int64(0)
    column = np.int64(0)
    for _ in range(n_sample):
        histogram[data[start + row * row_stride + column]] += 1
        column += step
        while column >= row_bytes and row < n_rows - 1:
            column -= row_bytes
            row += 1
        if column >= row_bytes:
            break
    n_sampled = np.int64(0)
    for v in range(256):
        n_sampled += histogram[v]
    slot_of = np.full(256, -1, np.int64)
    few_cover = np.int64(0)  # sampled bytes of the 4 most frequent values
    for slot in range(_LZW_MANY_VALUES):
        most = np.int64(0)
        value = -1
        for v in range(256):
            if histogram[v] > most:
                most = histogram[v]
                value = v
        if value < 0:
            break
        slot_of[value] = slot
        if slot < (1 << _LZW_FEW_BITS):
            few_cover += most
        histogram[value] = 0
    if few_cover < _LZW_FEW_COVERAGE * n_sampled:
        return slot_of, _LZW_MANY_BITS
    for v in range(256):
        if slot_of[v] >= (1 << _LZW_FEW_BITS):
            slot_of[v] = -1
    return slot_of, _LZW_FEW_BITS


@_inline
def _encode_rows(data, start, row_stride, n_rows, row_bytes, out, slot_of, direct_bits):
    """:func:`lzw_encode` of at least one byte, with the direct values ``slot_of`` of
    :func:`_frequent_bytes`. Inlined with ``direct_bits`` a constant (2 or 3), so each table
    layout is compiled on its own."""
    acc = np.int64(0)
    n_bits = np.int64(0)
    pos = np.int64(0)
    width = np.int64(9)
    acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_CLEAR, width)
    children = np.zeros((LZW_LAST + 1) << direct_bits, np.uint16)  # the direct part
    table = np.zeros(1 << _LZW_HASH_BITS, np.int64)  # the hashed part
    generation = np.int64(1)
    next_code = np.int64(LZW_FIRST)
    node = np.int64(data[start]) << direct_bits  # the string's row: its code << direct_bits
    for r in range(n_rows):
        row = start + r * row_stride
        first = row + 1 if r == 0 else row
        for j in range(first, row + row_bytes):
            k = np.int64(data[np.uint64(j)])  # (j >= 0: unsigned, no wraparound test)
            direct_slot = slot_of[k]
            if direct_slot >= 0:
                child = node + direct_slot
                code = np.int64(children[child])
                if code != 0:
                    node = code
                    continue
                children[child] = next_code << direct_bits
            else:
                key = ((node >> direct_bits) << 8) | k
                tag = (generation << 20) | key
                h = ((key * _LZW_HASH_MULTIPLIER) & 0xFFFFFFFF) >> (32 - _LZW_HASH_BITS)
                found = False
                while True:
                    slot = table[h]
                    if (slot >> 12) == tag:
                        node = (slot & 0xFFF) << direct_bits
                        found = True
                        break
                    if (slot >> 32) != generation:
                        break  # empty (or of an earlier table)
                    h = (h + 1) & _LZW_HASH_MASK
                if found:
                    continue
                table[h] = (tag << 12) | next_code
            # The new string has no children yet (its row may hold an earlier table's).
            first_child = next_code << direct_bits
            for c in range(first_child, first_child + (1 << direct_bits)):
                children[c] = 0
            next_code += 1
            # _put_msb written out: through the inlined function this loop ran at about half the
            # speed on random bytes (63 against 115 MB/s), as if numba kept the tuple in memory.
            acc = (acc << width) | (node >> direct_bits)
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
            node = k << direct_bits
            if next_code == 512 or next_code == 1024 or next_code == 2048:
                width += 1
            elif next_code == LZW_LAST + 1:
                acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_CLEAR, width)
                generation += 1
                next_code = LZW_FIRST
                width = 9
                children[: 256 << direct_bits] = 0  # the single bytes' rows (the others: above)
    acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, node >> direct_bits, width)
    # The decoder adds a string after reading that last code, and widens then as always.
    if next_code == 511 or next_code == 1023 or next_code == 2047:
        width += 1
    acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_EOI, width)
    return _flush_msb(out, acc, n_bits, pos)


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
    if n_rows == 0 or row_bytes == 0:
        acc, n_bits, pos = _put_msb(out, np.int64(0), np.int64(0), np.int64(0), LZW_CLEAR, 9)
        acc, n_bits, pos = _put_msb(out, acc, n_bits, pos, LZW_EOI, 9)
        return _flush_msb(out, acc, n_bits, pos)
    slot_of, direct_bits = _frequent_bytes(data, start, row_stride, n_rows, row_bytes)
    if direct_bits == _LZW_FEW_BITS:
        return _encode_rows(data, start, row_stride, n_rows, row_bytes, out, slot_of, _LZW_FEW_BITS)
    return _encode_rows(data, start, row_stride, n_rows, row_bytes, out, slot_of, _LZW_MANY_BITS)


def lzw_bound(n_bytes: int) -> int:
    """Bytes of ``out`` that :func:`lzw_encode` may use for ``n_bytes``: at most one code per
    input byte, one ClearCode per 3838 codes and one more at the start, EndOfInformation, each at
    most 12 bits."""
    n_codes = n_bytes + n_bytes // (LZW_LAST + 1 - LZW_FIRST) + 3
    return -(-(12 * n_codes) // 8)
