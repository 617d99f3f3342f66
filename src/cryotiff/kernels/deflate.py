"""Deflate with Huffman codes only: a standard zlib stream (compiled encoder)."""

from __future__ import annotations

import numpy as np

from cryotiff.kernels._jit import _inline, _jit

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
# the pairs of byte values the band holds, and four bytes (two lookups) go into the
# accumulator between two flushes (with 15-bit codes a test adds a flush where needed).

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
def _code_band(data, start, row_stride, first_row, last_row, row_bytes, single, out, state):
    """Write the codes of the rows' bytes one at a time (a band without a table of pairs: too
    short for one, or holding too many byte values): ``single[v]`` is ``code << 5 | length`` of
    byte value ``v``; ``state`` is the bit writer's (accumulator, bits in it, next word of
    ``out``)."""
    acc = state[0]
    n_bits = state[1]
    word = state[2]
    for r in range(first_row, last_row):
        row = data[start + r * row_stride : start + r * row_stride + row_bytes]
        for k in range(row_bytes):
            entry = single[row[k]]
            acc |= (entry >> 5) << n_bits
            n_bits += entry & 31
            out[word] = acc & 0xFFFFFFFF  # always stored, kept only when full (no branch)
            full = n_bits >> 5  # 0 or 1: at most 31 + 15 bits are pending
            acc >>= full << 5
            n_bits &= 31
            word += full
    state[0] = acc
    state[1] = n_bits
    state[2] = word


#: Longest literal code with which a band is coded four bytes per flush of the bit writer
#: without a test (:func:`_code_band_quads`): the at most 7 bits still pending and two pair
#: codes of at most 2 x 14 bits fit in the 64-bit accumulator. With 15-bit codes a flush is
#: put between the two pairs where the second might not fit (:func:`_code_band_quads_guarded`).
_QUAD_MAX_BITS = 14


@_inline
def _store_u64_le(out8, index, value):
    """``value`` into the 8 bytes ``out8[index : index + 8]``, little-endian (one store once
    compiled: unsigned indices let the compiler merge the eight)."""
    i = np.uint64(index)
    for k in range(8):
        out8[i + np.uint64(k)] = np.uint8((value >> np.uint64(8 * k)) & np.uint64(0xFF))


@_inline
def _flush_bytes(out8, pos, acc, n_bits):
    """Store the accumulator whole at the stream's next unfinished byte ``pos`` and keep in it
    only the bits of its last, unfinished byte: ``(pos, acc, n_bits)`` after it (at most 63
    bits may be pending: a shift by 64 would keep them)."""
    _store_u64_le(out8, pos, acc)
    return pos + (n_bits >> np.uint64(3)), acc >> (n_bits & np.uint64(56)), n_bits & np.uint64(7)


@_inline
def _add_pair_codes(out8, pos, acc, n_bits, first, second, guarded):
    """Put the pair codes ``first`` and ``second`` (``code << 5 | length``) into the
    accumulator, then flush (:func:`_flush_bytes`); ``guarded``: flush between the two as well
    where the second might not fit. Returns ``(pos, acc, n_bits)``."""
    acc |= (first >> np.uint64(5)) << n_bits
    n_bits += first & np.uint64(31)
    if guarded and n_bits > np.uint64(33):  # 34 + 30 bits of a second pair would be 64
        pos, acc, n_bits = _flush_bytes(out8, pos, acc, n_bits)
    acc |= (second >> np.uint64(5)) << n_bits
    n_bits += second & np.uint64(31)
    pos, acc, n_bits = _flush_bytes(out8, pos, acc, n_bits)
    return pos, acc, n_bits


@_inline
def _code_quads(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state, guarded):
    """Write the codes of the rows' bytes four at a time (two lookups in ``pair``, whose entry
    ``pair[a | b << 8]`` is ``code << 5 | length`` of the bytes ``a, b``; ``single`` the same of
    one byte, for the bytes after a row's last four), with one flush of the bit writer per step
    instead of one per pair: the accumulator is stored whole at the next unfinished byte, and
    the stores past the stream's end are overwritten by the next ones (``out`` has the room:
    :func:`deflate_huffman_bound`). ``state`` is the word writer's of :func:`_code_band`, taken
    over at the start and handed back at the end."""
    out8 = out.view(np.uint8)
    # From the word writer: the accumulator holds the bits of out[word] onwards.
    acc = np.uint64(state[0])
    n_bits = np.uint64(state[1])
    pos = np.uint64(4 * state[2])
    pos, acc, n_bits = _flush_bytes(out8, pos, acc, n_bits)
    words = data[: data.size & ~1].view(np.uint16)  # two bytes per load (little-endian: a | b << 8)
    for r in range(first_row, last_row):
        row_start = start + r * row_stride
        n_quads = row_bytes // 4
        row = data[row_start : row_start + row_bytes]
        if row_start % 2 == 0:
            row_words = words[row_start // 2 : row_start // 2 + 2 * n_quads]
            for k in range(n_quads):
                pos, acc, n_bits = _add_pair_codes(
                    out8, pos, acc, n_bits, np.uint64(pair[row_words[2 * k]]), np.uint64(pair[row_words[2 * k + 1]]),
                    guarded,
                )
        else:
            for k in range(n_quads):
                first = pair[np.int64(row[4 * k]) | (np.int64(row[4 * k + 1]) << 8)]
                second = pair[np.int64(row[4 * k + 2]) | (np.int64(row[4 * k + 3]) << 8)]
                pos, acc, n_bits = _add_pair_codes(out8, pos, acc, n_bits, np.uint64(first), np.uint64(second), guarded)
        for k in range(4 * n_quads, row_bytes):
            entry = np.uint64(single[row[k]])
            acc |= (entry >> np.uint64(5)) << n_bits
            n_bits += entry & np.uint64(31)
            pos, acc, n_bits = _flush_bytes(out8, pos, acc, n_bits)
    # Back to the word writer: the bytes of the unfinished word go back into the accumulator
    # (at most 3 bytes and 7 bits: 31 bits).
    word = pos >> np.uint64(2)
    for k in range(np.int64(pos & np.uint64(3)) - 1, -1, -1):
        acc = (acc << np.uint64(8)) | np.uint64(out8[4 * word + np.uint64(k)])
        n_bits += np.uint64(8)
    state[0] = np.int64(acc)
    state[1] = np.int64(n_bits)
    state[2] = np.int64(word)


# Two top-level functions, each compiled with its own constant, so that the unguarded step
# has no test in it.
@_jit
def _code_band_quads(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state):
    """:func:`_code_quads` for codes of at most :data:`_QUAD_MAX_BITS` bits."""
    _code_quads(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state, False)


@_jit
def _code_band_quads_guarded(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state):
    """:func:`_code_quads` for codes of up to 15 bits."""
    _code_quads(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state, True)


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
        max_length = 0
        for k in range(n_used):
            max_length = max(max_length, block_lengths[used[k]])
        if not use_pairs:
            _code_band(data, start, row_stride, first_row, last_row, row_bytes, single, out, state)
        elif max_length <= _QUAD_MAX_BITS:
            _code_band_quads(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state)
        else:
            _code_band_quads_guarded(data, start, row_stride, first_row, last_row, row_bytes, single, pair, out, state)
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
