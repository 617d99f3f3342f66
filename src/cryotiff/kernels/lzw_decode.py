"""TIFF LZW (Compression 5): the compiled decoder that verifies LZW strips.

It is the check of the compiled encoder (:mod:`cryotiff.kernels.lzw`) and shares no code with
it: written separately from the chapter "LZW Compression" of the TIFF Revision 6.0 document.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from cryotiff.kernels._jit import _inline, _jit

# Codes are read most significant bit first, 9 to 12 bits wide. ClearCode (256) empties the
# table (new strings get codes from 258 on) and sets the width back to 9 bits, wherever it comes:
# after code 4095 as imagecodecs writes it, after code 4093 or wherever its compression ratio
# falls as libtiff (``libtiff/tif_lzw.c``) writes it, or several in a row. EndOfInformation (257)
# ends the strip; bytes after it (imagecodecs' zero byte) are ignored. The width grows one code
# early: once the reader has added the string with code 510 (1022, 2046), the next code is 10
# (11, 12) bits wide. A stream that does not begin with ClearCode is read as if it did.
#
# Every string in the table is a run of bytes already in the buffer: the string added after
# reading a code is the previous code's string followed by the first byte of this code's, which
# is where the previous string was written and one byte more. So the table holds per code
# ``(offset in the buffer, length)`` and decoding a code is a copy of earlier bytes, no chain
# of prefixes. The 256 single-byte strings are the bytes 0..255 written at the start of the
# buffer (the decoded strip follows them at LZW_DECODE_ORIGIN), so a literal is a copy like any
# other code. A string that lies 8 or more bytes back is copied in 8-byte words, most of them in
# one (the bytes past its end are overwritten by the next strings, or lie past the strip); a
# string closer than that (a code naming the string being added, which is the previous string
# and its own first byte) is copied forward a byte at a time, each byte read after it is written.
# The codes are read from src with one 8-byte load each where 8 bytes are left.
#
# Every index is checked before it is used: a corrupt stream, a code not in the table, more
# bytes than the buffer holds and a stream that ends before EndOfInformation give a negative
# status, never a read or write outside the arrays. (The indices are cast to np.uintp where
# they are known not to be negative: numba then drops its wrap-around of negative indices.)

#: Statuses of :func:`lzw_decode_into` (a negative return) and :func:`lzw_decodes_to`.
LZW_DECODE_CORRUPT = -1  #: a code not in the table (or a string code right after ClearCode)
LZW_DECODE_OVERFLOW = -2  #: the strip decodes to more bytes than the buffer (or the rows) hold
LZW_DECODE_TRUNCATED = -3  #: the data end before EndOfInformation
#: :func:`lzw_decodes_to`: the strip decodes, but not to the rows' bytes (or not to as many).
LZW_DECODE_DIFFERENT = 1
LZW_DECODE_SAME = 0
#: Where the decoded bytes start in the buffer of :func:`lzw_decode_into`: after the 256 bytes
#: that are the single-byte strings.
LZW_DECODE_ORIGIN = 256

_CLEAR_CODE = 256
_END_OF_INFORMATION = 257
_FIRST_STRING_CODE = 258
_TABLE_CODES = 4096
#: Bytes of one word copy (``_copy_word``).
_WORD = 8


@intrinsic
def _copy_word(typingctx, buffer, to, from_):
    """``buffer[to : to + 8] = buffer[from_ : from_ + 8]`` as one unaligned 8-byte load and store
    (numba does not merge byte accesses into words). Unchecked: the caller keeps both inside
    ``buffer``."""
    signature = types.void(buffer, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        word_pointer = ir.IntType(64).as_pointer()
        source = builder.bitcast(builder.gep(data, [args[2]]), word_pointer)
        target = builder.bitcast(builder.gep(data, [args[1]]), word_pointer)
        builder.store(builder.load(source, align=1), target, align=1)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _three_bytes_at(typingctx, src, byte):
    """``src[byte] << 16 | src[byte + 1] << 8 | src[byte + 2]``, read as one unaligned 8-byte
    load. Unchecked: the caller keeps ``byte + 8`` inside ``src``."""
    signature = types.int64(src, types.intp)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        word = ir.IntType(64)
        loaded = builder.load(builder.bitcast(builder.gep(data, [args[1]]), word.as_pointer()), align=1)
        big_endian = builder.call(builder.module.declare_intrinsic("llvm.bswap", [word]), [loaded])
        return builder.lshr(big_endian, ir.Constant(word, 40))

    return signature, codegen


@_inline
def _long_strings(n_src, n_bytes):
    """Whether a strip of ``n_src`` bytes that decodes to ``n_bytes`` has strings of 8 bytes or
    more on average (codes of at most 12 bits: ``n_src`` at most 12 / 64 of ``n_bytes``). Its
    strings are then copied as four words each (see :func:`_decode`): 1.4-1.8x as fast on
    --gain pages and EER pages at upsampling 2 (11.9 % and 9.1 % of their bytes), 0.8x on K2
    counts (27.8 %), whose strings of 3-8 bytes take one word."""
    return n_src * 64 <= n_bytes * 12


@_jit
def lzw_decode_into(src, buffer):
    """Decode the TIFF LZW strip ``src`` (uint8) into ``buffer`` (uint8): its first 256 bytes
    become the bytes 0..255 (the single-byte strings), the strip's bytes follow from
    :data:`LZW_DECODE_ORIGIN` on. Returns the number of the strip's bytes when EndOfInformation
    is reached, or a negative status (``LZW_DECODE_*``). Bytes of ``buffer`` after the strip's
    may have been written too."""
    if _long_strings(src.size, buffer.size - LZW_DECODE_ORIGIN - 1):
        return _decode(src, buffer, _NO_ROWS, 0, 0, 0, 0, False, True)
    return _decode(src, buffer, _NO_ROWS, 0, 0, 0, 0, False, False)


#: Rows for :func:`_decode` when it only decodes.
_NO_ROWS = np.zeros(1, np.uint8)
#: The most bytes a strip decodes to between two ClearCodes: at most 3839 codes follow one
#: (the first a single byte; each adds a string, and once string 4095 is added the next must be
#: ClearCode), and the i-th names a string of at most i bytes (each string added is one longer
#: than one before it), so at most 1 + 2 + ... + 3839 bytes.
LZW_SEGMENT_MAX_BYTES = (_TABLE_CODES - _FIRST_STRING_CODE + 1) * (_TABLE_CODES - _FIRST_STRING_CODE + 2) // 2


@_inline
def _same_as_rows(buffer, n_decoded, data, start, row_stride, row_bytes, done):
    """Whether ``buffer[LZW_DECODE_ORIGIN:][:n_decoded]`` equals the rows' bytes from the
    ``done``-th on (row ``r`` at ``data[start + r * row_stride :][:row_bytes]``); the caller has
    checked that the rows hold that many more."""
    if n_decoded == 0:
        return True
    row = done // row_bytes
    column = done - row * row_bytes
    decoded = np.int64(LZW_DECODE_ORIGIN)
    left = n_decoded
    while left > 0:
        n = min(left, row_bytes - column)
        at = start + row * row_stride + column
        differ = np.int64(0)
        for j in range(n):  # no early exit within a piece, so that the loop vectorises
            differ |= np.int64(buffer[np.uintp(decoded + j)]) ^ np.int64(data[np.uintp(at + j)])
        if differ:
            return False
        decoded += n
        left -= n
        row += 1
        column = 0
    return True


@_inline
def _decode(src, buffer, data, start, row_stride, n_rows, row_bytes, compare, long_strings):
    """:func:`lzw_decode_into`, or with ``compare`` :func:`lzw_decodes_to`: then at each
    ClearCode (after which no code names an earlier string) and at EndOfInformation the bytes
    decoded since the last one are compared with the rows where they belong, and the buffer is
    written from its start again, so that it needs to hold only one table's bytes.

    A string is copied as whole 8-byte words where its source lies 8 bytes or more before where
    it goes (each word then reads bytes already final, also those this copy wrote: a string may
    end with the first byte of its own copy). With ``long_strings`` every string of up to 32
    bytes is copied as four words, with no test of its length beyond that; the bytes written
    after its end are written again by the next strings before anything reads them. Inlined with
    ``compare`` and ``long_strings`` constants, so each combination is compiled on its own."""
    n_bytes = n_rows * row_bytes
    done = np.int64(0)  # compare: the rows' bytes found equal so far
    n_src = src.size
    n_buffer = buffer.size
    if n_buffer < LZW_DECODE_ORIGIN:
        return LZW_DECODE_OVERFLOW
    string_start = np.empty(_TABLE_CODES, np.int64)
    string_length = np.empty(_TABLE_CODES, np.int64)
    for value in range(256):
        buffer[value] = value
        string_start[value] = value
        string_length[value] = 1
    n_src_bits = n_src * 8
    bit = np.int64(0)  # the next code's first bit in src
    width = np.int64(9)
    widen_at = np.int64(511)  # the next code that, once added, makes the codes one bit wider
    next_code = np.int64(_FIRST_STRING_CODE)
    written = np.int64(LZW_DECODE_ORIGIN)  # buffer[:written] is final
    last_word = n_buffer - _WORD  # the last offset a whole word can be written at
    last_block = n_buffer - 4 * _WORD  # and four words
    previous_start = np.int64(0)
    previous_length = np.int64(0)  # 0: no string since ClearCode
    while True:
        if bit + width > n_src_bits:
            return LZW_DECODE_TRUNCATED
        # The code lies in the 3 bytes from bit // 8 (at most 7 + 12 bits); past the end of src
        # they are read as zeros (the check above keeps the code itself inside src).
        byte = bit >> 3
        if byte + 8 <= n_src:
            three = _three_bytes_at(src, byte)
        elif byte + 3 <= n_src:
            three = (np.int64(src[np.uintp(byte)]) << 16) | (np.int64(src[np.uintp(byte + 1)]) << 8) \
                | np.int64(src[np.uintp(byte + 2)])
        else:
            three = np.int64(src[byte]) << 16
            if byte + 1 < n_src:
                three |= np.int64(src[byte + 1]) << 8
        code = (three >> (24 - width - (bit & 7))) & ((np.int64(1) << width) - 1)
        bit += width
        if (code >> 1) == _CLEAR_CODE >> 1:  # ClearCode or EndOfInformation: one test for both
            if compare:
                n_decoded = written - LZW_DECODE_ORIGIN
                if n_decoded > n_bytes - done:
                    return LZW_DECODE_DIFFERENT  # more bytes than the rows hold
                if not _same_as_rows(buffer, n_decoded, data, start, row_stride, row_bytes, done):
                    return LZW_DECODE_DIFFERENT
                done += n_decoded
                written = LZW_DECODE_ORIGIN
                if code == _END_OF_INFORMATION:
                    return LZW_DECODE_SAME if done == n_bytes else LZW_DECODE_DIFFERENT
            if code == _END_OF_INFORMATION:
                return written - LZW_DECODE_ORIGIN
            width = 9
            widen_at = 511
            next_code = _FIRST_STRING_CODE
            previous_length = 0
            continue
        if previous_length:
            if next_code == _TABLE_CODES:
                return LZW_DECODE_CORRUPT  # a full table must be followed by ClearCode
            string_start[next_code] = previous_start
            string_length[next_code] = previous_length + 1
            next_code += 1
            if next_code == widen_at:  # 511, 1023, 2047
                width += 1
                widen_at = 2 * widen_at + 1 if width < 12 else 2 * _TABLE_CODES
        if code >= next_code:
            return LZW_DECODE_CORRUPT  # beyond the table, or a string code right after ClearCode
        source = string_start[code]
        length = string_length[code]
        if long_strings and written <= last_block and length <= 4 * _WORD and written - source >= _WORD:
            _copy_word(buffer, written, source)  # most strings of these strips: four words
            _copy_word(buffer, written + _WORD, source + _WORD)
            _copy_word(buffer, written + 2 * _WORD, source + 2 * _WORD)
            _copy_word(buffer, written + 3 * _WORD, source + 3 * _WORD)
        elif written <= last_word and length <= _WORD and written - source >= _WORD:
            _copy_word(buffer, written, source)  # most strings: one word, bytes already final
        elif length > n_buffer - written:
            return LZW_DECODE_OVERFLOW
        elif written - source >= _WORD and written + length + _WORD <= n_buffer:
            for offset in range(0, length, _WORD):  # each word reads bytes already final
                _copy_word(buffer, written + offset, source + offset)
        else:
            for offset in range(length):
                buffer[np.uintp(written + offset)] = buffer[np.uintp(source + offset)]
        previous_start = written
        previous_length = length
        written += length


def lzw_decode_buffer_bytes(n_bytes: int) -> int:
    """Bytes of a buffer of :func:`lzw_decode_into` for a strip of ``n_bytes``: the 256
    single-byte strings, the strip and one spare byte (which tells a strip that decodes to more
    bytes from one that decodes to exactly these)."""
    return LZW_DECODE_ORIGIN + n_bytes + 1


def lzw_check_buffer_bytes(n_bytes: int) -> int:
    """Bytes of the buffer of :func:`lzw_decodes_to` for a strip of ``n_bytes``: as
    :func:`lzw_decode_buffer_bytes`, but never more than one table's bytes need
    (:data:`LZW_SEGMENT_MAX_BYTES`, 7.4 MB): a strip of 57 MB is checked in 7.4 MB."""
    return LZW_DECODE_ORIGIN + min(n_bytes, LZW_SEGMENT_MAX_BYTES) + 1


@_jit
def lzw_decodes_to(src, data, start, row_stride, n_rows, row_bytes, buffer):
    """Whether the TIFF LZW strip ``src`` decodes to exactly the rows' bytes: ``LZW_DECODE_SAME``,
    ``LZW_DECODE_DIFFERENT`` (other bytes, or fewer or more of them) or the negative status of
    :func:`lzw_decode_into` (``LZW_DECODE_OVERFLOW`` also where the bytes between two ClearCodes
    do not fit the buffer: more than the rows hold, or than any stream decodes to there).

    The bytes are decoded as :func:`lzw_decode_into` decodes them and compared with the rows one
    table at a time (from one ClearCode to the next, at most :data:`LZW_SEGMENT_MAX_BYTES`), while
    they are still in the cache.

    Args:
        src: uint8, the strip.
        data, start, row_stride, n_rows, row_bytes: the rows, as :func:`cryotiff.kernels.lzw_encode`
            takes them (row ``r`` is ``data[start + r * row_stride :][:row_bytes]``).
        buffer: uint8, :func:`lzw_check_buffer_bytes` of ``n_rows * row_bytes`` (or more).
    """
    n_room = LZW_DECODE_ORIGIN + min(n_rows * row_bytes, LZW_SEGMENT_MAX_BYTES) + 1
    if buffer.size < n_room:
        return LZW_DECODE_OVERFLOW
    if _long_strings(src.size, n_rows * row_bytes):
        return _decode(src, buffer[:n_room], data, start, row_stride, n_rows, row_bytes, True, True)
    return _decode(src, buffer[:n_room], data, start, row_stride, n_rows, row_bytes, True, False)
