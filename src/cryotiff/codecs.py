"""Every compression decision in one place: codec names, TIFF codes, levels, the ``auto`` policy.

A :class:`StripCodec` turns the bytes of one TIFF strip into compressed bytes and back. Every
encoder here releases the GIL (imagecodecs' LZW too, since at least imagecodecs 2026.3.6:
1.99x encoding and 1.90x decoding on two threads, ``benchmarks/bench_vs_relion.py --kernels``),
so strips of different frames are encoded concurrently in threads. Every Deflate strip is verified by ISA-L's inflater (the
``isal`` package), which none of the encoders shares code with; every LZW strip by a decoder
that shares no code with its encoder: imagecodecs' decoder checks imagecodecs' encoder, and
cryotiff's compiled decoder (:func:`cryotiff.kernels.lzw_decodes_to`) its compiled encoder.

``--compression auto`` is a measured policy (:func:`choose_auto_codec`, explained with its
measurements in ``docs/compression-policy.md``): it tries a few fast encoders that all write
standard TIFF Deflate (Compression 8) or LZW (5) on a sample of the movie's first page and keeps
the smallest of those that are at least as fast as the codec RELION would have used for the
movie. The speeds come from a table measured offline, so timing noise never changes a decision;
the data only decide through the compressed sizes.
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable

import imagecodecs
import numpy as np
from isal import igzip_lib
from numpy.lib.stride_tricks import as_strided
from zlib_ng import zlib_ng

from .errors import OptionError

#: TIFF Compression tag (259) values.
COMPRESSION_NONE = 1
COMPRESSION_LZW = 5
#: Standard Deflate ("Adobe Deflate", code 8), which every reader accepts. RELION writes the
#: legacy code 32946, for which recent libtiff warns on every page; the stream is the same.
COMPRESSION_DEFLATE = 8
COMPRESSION_LZMA = 34925
COMPRESSION_ZSTD = 50000

#: Codecs the user names with ``--compression``. ``zip`` is RELION's alias of ``deflate``.
COMPRESSION_NAMES = ("auto", "none", "lzw", "deflate", "zip", "zstd", "lzma")

#: The opt-in codecs, which also take a level as ``zstd:LEVEL`` / ``lzma:LEVEL``.
OPT_IN_CODECS = {"zstd": COMPRESSION_ZSTD, "lzma": COMPRESSION_LZMA}

#: libdeflate's level range (zlib's is 1-9; 10-12 are libdeflate's slow, strongest levels).
DEFLATE_LEVELS = range(1, 13)
ZSTD_LEVELS = range(1, 23)
LZMA_LEVELS = range(0, 10)
#: Levels of the opt-in codecs when none is given: the libraries' own defaults.
DEFAULT_LEVELS = {"deflate": 6, "zstd": 3, "lzma": 6}


class CompressionChoices(tuple):
    """The names accepted by ``--compression``, as argparse ``choices``.

    Membership also accepts ``zstd:LEVEL`` and ``lzma:LEVEL`` (any integer; the range is
    checked by :func:`validate_options` with a message naming it), while argparse still lists
    the plain names in its "invalid choice" message.
    """

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        try:
            name, _ = split_compression(value)
        except OptionError:
            return False
        return tuple.__contains__(self, name)


COMPRESSION_CHOICES = CompressionChoices(COMPRESSION_NAMES)

#: Printed once by the command line when an opt-in codec is chosen.
OPT_IN_CODEC_WARNING = (
    "WARNING: --compression {name} writes TIFF Compression {code} ({title}), which is not baseline "
    "TIFF. Only readers whose libtiff was built with {library} (libtiff >= {libtiff}) or that use "
    "tifffile/imagecodecs can open these files. Known not to: IMOD (its bundled libtiff), older "
    "system libtiff builds and the RELION, MotionCor2/3, cryoSPARC and Warp installations linked "
    "to one. Use --compression auto, lzw or deflate for files that every reader must open."
)
_OPT_IN_DETAILS = {
    "zstd": ("ZSTD", "libzstd", "4.0.10"),
    "lzma": ("LZMA2", "liblzma", "4.0"),
}

#: The programs that read cryo-EM movie TIFFs; all of them decode LZW and Deflate.
MOVIE_READERS = "RELION, MotionCor2/3, cryoSPARC, Warp, IMOD, any libtiff"

#: Which programs decode each TIFF compression, for the ``--benchmark`` table.
READERS = {
    COMPRESSION_NONE: "all movie readers",
    COMPRESSION_LZW: "all movie readers",
    COMPRESSION_DEFLATE: "all movie readers",
    COMPRESSION_ZSTD: "libtiff>=4.0.10 built with zstd, tifffile; not IMOD",
    COMPRESSION_LZMA: "libtiff>=4.0 built with lzma, tifffile; not IMOD",
}


@dataclass(frozen=True)
class StripCodec:
    """One TIFF compression scheme with its parameters.

    Attributes:
        name: ``none``, ``lzw``, ``deflate``, ``zstd`` or ``lzma``.
        tiff_code: value of the TIFF Compression tag (259).
        level: compression level, or None where the scheme has none.
        variant: for deflate, the encoder when it is not libdeflate at ``level``:
            ``huffman`` (Huffman-only: cryotiff's compiled encoder,
            :func:`cryotiff.kernels.deflate_huffman_encode`, or zlib-ng's ``Z_HUFFMAN_ONLY``, see
            :func:`huffman_encoder_for`), ``rle`` (zlib-ng ``Z_RLE``) or ``zlib`` (zlib at
            ``level``, RELION's encoder). Every variant writes a standard zlib stream.
        library: the library that encodes, where the variant does not say
            (:data:`HUFFMAN_ENCODERS`); None for the variant's own.
    """

    name: str
    tiff_code: int
    level: int | None
    _encode: Callable[[bytes | memoryview], bytes]
    #: ``_decode(data)`` or ``_decode(data, nbytes)``.
    _decode: Callable[..., bytes]
    variant: str | None = None
    #: ``[bytes of the largest strip encoded so far]``, shared with the decoder: a size hint that
    #: lets it write straight into a buffer of the right size (about twice as fast as letting it
    #: grow one; all strips of a movie but the last row strip have the same size).
    _largest_strip: list = field(default_factory=lambda: [0], compare=False, repr=False)
    #: For the streaming encoders (zlib-ng): ``_compressor()`` gives a fresh compress object.
    _compressor: Callable[[], object] | None = field(default=None, compare=False, repr=False)
    #: For encoders that read rows where they lie (the compiled kernels): ``_encode_rows(rows)``.
    _encode_rows: Callable[[np.ndarray], bytes] | None = field(default=None, compare=False, repr=False)
    #: For decoders that check a strip against its rows where they lie (Deflate by ISA-L as it
    #: inflates, the compiled encoder's LZW by the compiled decoder): ``_rows_check(data, rows)``;
    #: otherwise the strip is decoded whole by ``_decode`` and compared.
    _rows_check: Callable[[bytes, np.ndarray], bool] | None = field(default=None, compare=False, repr=False)
    library: str | None = None

    def encode(self, data: bytes | memoryview | np.ndarray) -> bytes:
        """Compress one strip (any C-contiguous buffer)."""
        size = memoryview(data).nbytes
        if size > self._largest_strip[0]:
            self._largest_strip[0] = size
        return self._encode(data)

    def encode_rows(self, rows: np.ndarray) -> bytes:
        """Compress one strip given as its rows: a 2-D uint8 array of row bytes whose rows may lie
        anywhere in memory (the flipped view of a page). The streaming encoders take it a few rows
        at a time, so no contiguous copy of the strip is made; their bytes are those of
        :meth:`encode` of the contiguous strip (the same input, fed in pieces). The compiled
        encoders (Huffman-only Deflate, LZW) read the rows where they lie."""
        if self._encode_rows is None and self._compressor is None:
            return self.encode(np.ascontiguousarray(rows))
        if rows.nbytes > self._largest_strip[0]:
            self._largest_strip[0] = rows.nbytes
        if self._encode_rows is not None:
            return self._encode_rows(rows)
        compressor = self._compressor()
        step = _rows_per_piece(rows)
        parts = [compressor.compress(np.ascontiguousarray(rows[first : first + step])) for first in range(0, rows.shape[0], step)]
        parts.append(compressor.flush())
        return b"".join(parts)

    def decodes_to(self, data: bytes, rows: np.ndarray) -> bool:
        """Whether ``data`` decodes to exactly the bytes of ``rows`` (as :meth:`encode_rows`
        takes them). Raises what the decoder raises for a stream it cannot decode. Deflate
        strips are inflated by ISA-L a few rows at a time and compared as they come (the
        decoded strip is never held whole; the zlib stream's Adler-32 is checked at its end);
        the others are decoded whole."""
        if self._rows_check is not None:
            return self._rows_check(data, rows)
        step = _rows_per_piece(rows)
        decoded = np.frombuffer(self.decode(data), dtype=np.uint8)  # sized by the largest strip
        if decoded.size != rows.size:
            return False
        decoded = decoded.reshape(rows.shape)
        # Piece by piece: a whole-strip comparison would make a strip-sized temporary.
        return all(
            np.array_equal(decoded[first : first + step], rows[first : first + step])
            for first in range(0, rows.shape[0], step)
        )

    def decode(self, data: bytes, nbytes: int | None = None) -> bytes:
        """Decompress one strip; ``nbytes`` is its decoded size when known (otherwise the size
        of the largest strip this codec encoded is the hint)."""
        return self._decode(data) if nbytes is None else self._decode(data, nbytes)

    @property
    def label(self) -> str:
        """Short name for tables and ``MovieResult.codec``: ``lzw``, ``deflate-6``,
        ``deflate-huffman``, ``zstd-3``..."""
        if self.variant in ("huffman", "rle"):
            return f"{self.name}-{self.variant}"
        if self.variant == "zlib":
            return f"zlib-{self.level}"
        return self.name if self.level is None else f"{self.name}-{self.level}"

    @property
    def encoder(self) -> str:
        """The library that encodes: ``imagecodecs`` (LZW of movies that load no compiled kernel),
        ``libdeflate``, ``cryotiff`` (Huffman-only Deflate and LZW, compiled with numba),
        ``zlib-ng`` (RLE Deflate, and Huffman-only Deflate of movies that load no compiled
        kernel), ``zlib``
        (RELION's Deflate), ``libzstd``, ``liblzma``, or ``-`` for none."""
        return self.library or _ENCODER_LIBRARIES[self.variant or self.name]

    @property
    def is_baseline(self) -> bool:
        """True for the schemes every movie reader decodes (none, LZW, Deflate)."""
        return self.tiff_code in (COMPRESSION_NONE, COMPRESSION_LZW, COMPRESSION_DEFLATE)

    @property
    def readers(self) -> str:
        return READERS[self.tiff_code]


# --------------------------------------------------------------------------- encoders and decoders

_ENCODER_LIBRARIES = {
    "none": "-", "lzw": "imagecodecs", "deflate": "libdeflate", "huffman": "cryotiff", "rle": "zlib-ng",
    "zlib": "zlib", "zstd": "libzstd", "lzma": "liblzma",
}


#: Bytes of rows the streaming encoder and decoder take at a time (they stay in the cache).
_PIECE_BYTES = 1 << 18


def _rows_per_piece(rows: np.ndarray) -> int:
    return max(1, _PIECE_BYTES // max(rows.shape[1], 1))


def _identity(data, nbytes: int | None = None) -> bytes:
    return bytes(data)


def _sized(
    name: str,
    tiff_code: int,
    level: int | None,
    encode: Callable[[bytes], bytes],
    decoder: Callable[..., bytes],
    variant: str | None = None,
) -> StripCodec:
    """A codec whose decoder gets the size hint (see :func:`_decode_sized`)."""
    largest_strip = [0]

    def decode(data: bytes, nbytes: int | None = None) -> bytes:
        return _decode_sized(decoder, data, nbytes or largest_strip[0])

    rows_check = _inflates_to if tiff_code == COMPRESSION_DEFLATE else None
    return StripCodec(name, tiff_code, level, encode, decode, variant, largest_strip, _rows_check=rows_check)


def _decode_sized(decoder: Callable[..., bytes], data: bytes, nbytes: int | None) -> bytes:
    """``decoder(data, out=nbytes + 1)``, or without a size when that fails or may have cut the
    output short. One spare byte tells a complete strip from a truncated one: imagecodecs' LZW
    silently stops at ``out`` bytes, libdeflate raises."""
    if nbytes:
        try:
            decoded = decoder(data, out=nbytes + 1)
        except Exception:  # too small a buffer or a damaged stream: decide below, unsized
            decoded = None
        if decoded is not None and len(decoded) <= nbytes:
            return decoded
    return decoder(data)


#: libdeflate decodes every zlib stream, whichever encoder wrote it, and is the fastest decoder.
_DEFLATE_DECODER = imagecodecs.deflate_decode


def _inflates_to(data: bytes, rows: np.ndarray) -> bool:
    """Whether the zlib stream ``data`` inflates (ISA-L) to exactly the bytes of ``rows``, the
    stream ending there with a correct Adler-32. A piece of rows at a time is inflated and
    compared; ISA-L releases the GIL while it inflates. Raises ``isal.igzip_lib.IsalError`` for
    a stream it cannot decode (a damaged one, a wrong checksum)."""
    row_bytes = rows.shape[1]
    if rows.size == 0:
        return not igzip_lib.decompress(data, igzip_lib.DECOMP_ZLIB, bufsize=1)
    step = _rows_per_piece(rows)
    inflater = igzip_lib.IgzipDecompressor(igzip_lib.DECOMP_ZLIB)
    done = 0
    pending = b""  # bytes of a row begun in the last piece (when a piece is not whole rows)
    while done < rows.shape[0]:
        if inflater.eof:
            return False  # the stream ends before the rows do
        piece = inflater.decompress(data, step * row_bytes - len(pending))
        data = b""  # the inflater keeps what it has not consumed
        if not piece:
            return False  # the stream is cut short
        if pending:
            piece, pending = pending + piece, b""
        n_rows, rest = divmod(len(piece), row_bytes)
        if rest:
            piece, pending = piece[: n_rows * row_bytes], piece[n_rows * row_bytes :]
        if done + n_rows > rows.shape[0] or (pending and done + n_rows == rows.shape[0]):
            return False
        # (a copy of the rows and one memcmp: 2.4x as fast as numpy's element-wise comparison)
        if n_rows and rows[done : done + n_rows].tobytes() != piece:
            return False
        done += n_rows
    # Every row matched: the stream must end here (its checksum is checked on the way).
    if pending or (not inflater.eof and inflater.decompress(b"", 1)):
        return False
    return inflater.eof and not inflater.unused_data


def _row_span(rows: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(data, start, row_stride)``: a read-only 1-D uint8 view of the memory that the rows of
    a 2-D uint8 array lie in (whose rows are contiguous; their order and spacing may be any),
    with row ``r`` at ``data[start + r * row_stride :][:row_bytes]``, as the Huffman-only kernel
    takes them. One read-only type, so that the kernel has one specialisation."""
    n_rows, row_bytes = rows.shape
    if rows.size == 0:
        data = np.zeros(1, np.uint8)
        data.flags.writeable = False
        return data, 0, 0
    if row_bytes > 1 and rows.strides[1] != 1:
        rows = np.ascontiguousarray(rows)
    stride = rows.strides[0] if n_rows > 1 else row_bytes
    lowest = rows[-1] if stride < 0 else rows[0]
    span = (n_rows - 1) * abs(stride) + row_bytes
    data = as_strided(lowest, shape=(span,), strides=(1,), writeable=False)
    return data, (n_rows - 1) * -stride if stride < 0 else 0, stride


def _huffman_encode_rows(rows: np.ndarray) -> bytes:
    """Huffman-only Deflate of a strip given as its rows (see :func:`_row_span`), one block per
    strip (adaptive blocks of 64 KiB to 4 MiB were no smaller on detector frames, simulated
    or real; docs/compression-policy.md)."""
    from . import kernels  # numba: imported by the runs that encode with it

    _check_rows("Huffman-only", rows)
    n_rows, row_bytes = rows.shape
    data, start, stride = _row_span(rows)
    out = np.empty(kernels.deflate_huffman_bound(rows.size, 1) // 4, np.uint32)
    n_bytes = kernels.deflate_huffman_encode(data, start, stride, n_rows, row_bytes, max(n_rows, 1), out)
    return out.view(np.uint8)[:n_bytes].tobytes()


def _as_one_row(data) -> np.ndarray:
    """One contiguous strip (any buffer) as a 1-row 2-D uint8 array, for the row encoders."""
    flat = np.frombuffer(memoryview(data).cast("B"), np.uint8) if not isinstance(data, np.ndarray) else data
    return np.ascontiguousarray(flat).reshape(-1).view(np.uint8).reshape(1, -1)


def _check_rows(encoder: str, rows: np.ndarray) -> None:
    """The kernels read raw memory without bounds checks: anything but 2-D uint8 rows is refused
    here rather than read out of bounds."""
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise TypeError(f"{encoder} encoder: rows must be 2-D uint8, not {rows.ndim}-D {rows.dtype}")


def _huffman_encode(data) -> bytes:
    """Huffman-only Deflate of one contiguous strip (any buffer)."""
    return _huffman_encode_rows(_as_one_row(data))


def _lzw_encode_rows(rows: np.ndarray) -> bytes:
    """TIFF LZW of a strip given as its rows (see :func:`_row_span`), by the compiled kernel:
    byte for byte what ``imagecodecs.lzw_encode`` writes for the same bytes."""
    from . import kernels  # numba: imported by the runs that encode with it

    _check_rows("LZW", rows)
    data, start, stride = _row_span(rows)
    out = np.empty(kernels.lzw_bound(rows.size), np.uint8)
    n_bytes = kernels.lzw_encode(data, start, stride, rows.shape[0], rows.shape[1], out)
    return out[:n_bytes].tobytes()


def _lzw_encode(data) -> bytes:
    """TIFF LZW of one contiguous strip (any buffer), by the compiled kernel."""
    return _lzw_encode_rows(_as_one_row(data))


def _lzw_decodes_to(data: bytes, rows: np.ndarray) -> bool:
    """Whether the TIFF LZW strip ``data`` decodes to exactly the bytes of ``rows`` (see
    :func:`_row_span`), by the compiled decoder (:func:`cryotiff.kernels.lzw_decodes_to`, which
    shares no code with the compiled encoder): it decodes into a buffer of one table's bytes at
    most (7.4 MB) and compares them with the rows where they lie, table by table. As with
    imagecodecs' decoder, a stream that ends early or decodes to other bytes (or more of them)
    is False; one with a code that is not in its table raises ValueError."""
    from . import kernels  # numba: imported by the runs that encode with it

    _check_rows("LZW", rows)
    span, start, stride = _row_span(rows)
    buffer = np.empty(kernels.lzw_check_buffer_bytes(rows.size), np.uint8)
    status = kernels.lzw_decodes_to(
        np.frombuffer(data, np.uint8), span, start, stride, rows.shape[0], rows.shape[1], buffer
    )
    if status == kernels.LZW_DECODE_CORRUPT:
        raise ValueError("a corrupt LZW stream: a code that is not in its table")
    return status == kernels.LZW_DECODE_SAME


def _zlib_ng_compressor(strategy: int) -> Callable[[], object]:
    return lambda: zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, strategy)


def _zlib_strategy_encoder(strategy: int) -> Callable[[bytes], bytes]:
    """zlib-ng with ``Z_RLE`` (or ``Z_HUFFMAN_ONLY``, the size reference of the tests): plain
    Deflate streams.

    zlib-ng (the ``zlib-ng`` package, zlib's API) writes byte for byte the stream zlib writes
    with these strategies and parameters, about twice as fast (docs/benchmarks/vs-relion.md;
    ``tests/test_codecs.py`` compares the bytes). memLevel 9 doubles the block length (32767
    symbols), which is both smaller (fewer Huffman table headers) and faster on cryo-EM frames.
    The level only selects "compress" (vs. store) for these strategies. The GIL is released
    while it compresses.
    """

    new_compressor = _zlib_ng_compressor(strategy)

    def encode(data) -> bytes:
        compressor = new_compressor()
        return compressor.compress(data) + compressor.flush()

    return encode


def _check_level(name: str, level: int, allowed: range) -> None:
    if level not in allowed:
        raise OptionError(f"{name} level must be {allowed.start}..{allowed.stop - 1}; got {level}")


def make_codec(
    name: str, level: int | None = None, *, huffman_encoder: str = "cryotiff", lzw_encoder: str = "imagecodecs"
) -> StripCodec:
    """Return the codec called ``name`` at ``level``.

    ``name`` is a ``--compression`` name (``zip`` = ``deflate``, libdeflate at ``level``) or one
    of the deflate encoders of the ``auto`` policy and the benchmark: ``deflate-huffman``,
    ``deflate-rle``, ``zlib`` (zlib at ``level``, RELION's encoder). The TIFF Compression tag is
    1 (none), 5 (lzw), 8 (all deflate encoders), 50000 (zstd) or 34925 (lzma).
    ``huffman_encoder`` (one of :data:`HUFFMAN_ENCODERS`) encodes ``deflate-huffman``,
    ``lzw_encoder`` (one of :data:`LZW_ENCODERS`) ``lzw``.

    Raises:
        OptionError: unknown name or a level outside the codec's range.
    """
    if name == "zip":
        name = "deflate"
    if name == "none":
        return StripCodec("none", COMPRESSION_NONE, None, _identity, _identity)
    if name == "lzw":
        # Either encoder writes the same bytes. imagecodecs' decoder checks imagecodecs' strips;
        # the compiled decoder, written separately from the compiled encoder, checks the
        # compiled encoder's (numba is loaded for those anyway; it is 2-4x as fast).
        if lzw_encoder == "imagecodecs":
            return _sized("lzw", COMPRESSION_LZW, None, imagecodecs.lzw_encode, imagecodecs.lzw_decode)
        if lzw_encoder != "cryotiff":
            raise ValueError(f"unknown LZW encoder {lzw_encoder!r}")
        codec = _sized("lzw", COMPRESSION_LZW, None, _lzw_encode, imagecodecs.lzw_decode)
        return dataclasses.replace(
            codec, _encode_rows=_lzw_encode_rows, _rows_check=_lzw_decodes_to, library="cryotiff"
        )
    if name == "deflate":
        level = DEFAULT_LEVELS["deflate"] if level is None else level
        _check_level("deflate", level, DEFLATE_LEVELS)
        # libdeflate writes zlib-wrapped streams like zlib does, at about zlib's ratio and several
        # times its speed (docs/compression-policy.md).
        return _sized(
            "deflate",
            COMPRESSION_DEFLATE,
            level,
            lambda data: imagecodecs.deflate_encode(data, level=level),
            _DEFLATE_DECODER,
        )
    if name == "deflate-huffman":
        if huffman_encoder == "zlib-ng":
            codec = _sized("deflate", COMPRESSION_DEFLATE, None, _zlib_strategy_encoder(zlib_ng.Z_HUFFMAN_ONLY),
                           _DEFLATE_DECODER, "huffman")
            return dataclasses.replace(codec, _compressor=_zlib_ng_compressor(zlib_ng.Z_HUFFMAN_ONLY), library="zlib-ng")
        if huffman_encoder != "cryotiff":
            raise ValueError(f"unknown Huffman-only encoder {huffman_encoder!r}")
        codec = _sized("deflate", COMPRESSION_DEFLATE, None, _huffman_encode, _DEFLATE_DECODER, "huffman")
        return dataclasses.replace(codec, _encode_rows=_huffman_encode_rows)
    if name == "deflate-rle":
        codec = _sized(
            "deflate", COMPRESSION_DEFLATE, None, _zlib_strategy_encoder(zlib_ng.Z_RLE), _DEFLATE_DECODER, "rle"
        )
        return dataclasses.replace(codec, _compressor=_zlib_ng_compressor(zlib_ng.Z_RLE))
    if name == "zlib":
        level = DEFAULT_LEVELS["deflate"] if level is None else level
        _check_level("zlib", level, range(1, 10))
        return _sized(
            "deflate",
            COMPRESSION_DEFLATE,
            level,
            lambda data: zlib.compress(data, level),
            _DEFLATE_DECODER,
            "zlib",
        )
    if name == "zstd":
        level = DEFAULT_LEVELS["zstd"] if level is None else level
        _check_level("zstd", level, ZSTD_LEVELS)
        return StripCodec(
            "zstd",
            COMPRESSION_ZSTD,
            level,
            lambda data: imagecodecs.zstd_encode(data, level=level),
            lambda data, nbytes=None: imagecodecs.zstd_decode(data),  # its frame header holds the size
        )
    if name == "lzma":
        level = DEFAULT_LEVELS["lzma"] if level is None else level
        _check_level("lzma", level, LZMA_LEVELS)
        return StripCodec(
            "lzma",
            COMPRESSION_LZMA,
            level,
            lambda data: imagecodecs.lzma_encode(data, level=level),
            lambda data, nbytes=None: imagecodecs.lzma_decode(data),
        )
    raise OptionError(f"--compression must be one of {', '.join(COMPRESSION_NAMES)}; got '{name}'")


def make_codec_from_label(
    label: str, *, huffman_encoder: str = "cryotiff", lzw_encoder: str = "imagecodecs"
) -> StripCodec:
    """The codec whose :attr:`StripCodec.label` is ``label`` (``deflate-12``, ``zlib-6``,
    ``deflate-huffman``, ``zstd-3``, ``lzw``...); ``huffman_encoder`` and ``lzw_encoder`` as
    in :func:`make_codec`."""
    if label in ("deflate-huffman", "deflate-rle", "none", "lzw"):
        return make_codec(label, huffman_encoder=huffman_encoder, lzw_encoder=lzw_encoder)
    name, _, level = label.rpartition("-")
    if not name or not level.isdigit():
        raise OptionError(f"unknown codec '{label}'")
    return make_codec(name, int(level))


# --------------------------------------------------------------------------- options


def split_compression(compression: str) -> tuple[str, int | None]:
    """``"zstd:9"`` -> ``("zstd", 9)``; ``"lzw"`` -> ``("lzw", None)``.

    Raises:
        OptionError: a level that is not an integer, or a level given to a codec without one.
    """
    name, colon, level_text = compression.partition(":")
    if not colon:
        return name, None
    if name not in OPT_IN_CODECS:
        raise OptionError(
            f"--compression {compression}: only zstd and lzma take a level after ':' "
            "(deflate uses --deflate_level)"
        )
    try:
        return name, int(level_text)
    except ValueError:
        raise OptionError(f"--compression {compression}: the level must be an integer") from None


def validate_options(compression: str, deflate_level: int) -> None:
    """Check ``--compression`` and ``--deflate_level`` before any file is touched (RELION checks
    them when the first page is written, leaving a ``.tmp`` behind).

    Raises:
        OptionError: an unknown codec or a level outside its range.
    """
    name, level = split_compression(compression)
    if name not in COMPRESSION_NAMES:
        make_codec(name)  # raises the OptionError with the list of choices
    _check_level("deflate", deflate_level, DEFLATE_LEVELS)
    if name in OPT_IN_CODECS:
        make_codec(name, level)


def opt_in_warning(compression: str) -> str | None:
    """The warning to print once when ``compression`` writes files some readers cannot open."""
    name, level = split_compression(compression)
    if name not in OPT_IN_CODECS:
        return None
    title, library, libtiff = _OPT_IN_DETAILS[name]
    shown = f"{name}:{DEFAULT_LEVELS[name] if level is None else level}"
    return OPT_IN_CODEC_WARNING.format(
        name=shown, code=OPT_IN_CODECS[name], title=title, library=library, libtiff=libtiff
    )


# --------------------------------------------------------------------------- RELION's rule


def relion_auto_codec(width: int, is_eer: bool, deflate_level: int = 6, *, lzw_encoder: str = "imagecodecs") -> StripCodec:
    """RELION's ``auto`` rule (``decide_filter``): deflate for 4096-wide non-EER movies ("likely
    Falcon"), LZW for everything else (K2, K3, EER output). RELION's deflate is zlib at
    ``deflate_level``; this returns libdeflate at the same level (same ratio, faster).
    ``lzw_encoder`` as in :func:`make_codec`."""
    if width == 4096 and not is_eer:
        return make_codec("deflate", deflate_level)
    return make_codec("lzw", lzw_encoder=lzw_encoder)


def relion_codec_kind(width: int, is_eer: bool) -> str:
    """``zlib-6`` or ``lzw``: RELION's own encoder for such a movie (for speed comparisons)."""
    return "zlib-6" if width == 4096 and not is_eer else "lzw"


# --------------------------------------------------------------------------- the auto policy

#: The encoders ``auto`` chooses from: all write TIFF Deflate (8) or LZW (5), which RELION,
#: MotionCor2/3, cryoSPARC, Warp and IMOD read. Listed fastest-first on typical data, which is
#: the order that breaks a tie in size.
AUTO_CANDIDATES = ("deflate-1", "lzw", "deflate-huffman", "deflate-rle", "deflate-6")

#: Single-thread throughput in MB of input per second of what cryotiff spends on a strip with
#: default options: encoding it and decoding it again for the verification. Indexed by the data
#: class, which is the LZW output in bits per input byte on the same sample (0.2: sparse counts,
#: 2.3: K2 at 1 e/px/frame, 4.9: Falcon 16-bit, 7: float32), interpolated linearly and held
#: constant beyond the ends. ``zlib-6`` is RELION's deflate (cryotiff never writes it in auto).
#: Measured with ``python benchmarks/bench_codecs.py speed-table`` (docs/compression-policy.md);
#: fixed offline so that timing noise can never change a movie's codec.
PIPELINE_MB_PER_S: dict[str, tuple[tuple[float, float], ...]] = {
    "lzw": ((0.21, 136.0), (0.63, 114.0), (1.63, 96.0), (2.27, 93.0), (2.97, 89.0), (3.67, 77.0), (4.91, 62.0), (7.22, 68.0)),
    "deflate-huffman": ((0.21, 126.0), (0.63, 122.0), (1.63, 118.0), (2.27, 111.0), (2.97, 110.0), (3.67, 101.0), (4.91, 86.0), (7.22, 96.0)),
    "deflate-rle": ((0.21, 385.0), (0.63, 178.0), (1.63, 84.0), (2.27, 82.0), (2.97, 90.0), (3.67, 81.0), (4.91, 95.0), (7.22, 95.0)),
    "deflate-1": ((0.21, 343.0), (0.63, 260.0), (1.63, 193.0), (2.27, 206.0), (2.97, 208.0), (3.67, 171.0), (4.91, 122.0), (7.22, 112.0)),
    "deflate-6": ((0.21, 271.0), (0.63, 78.0), (1.63, 39.0), (2.27, 27.0), (2.97, 22.0), (3.67, 25.0), (4.91, 53.0), (7.22, 68.0)),
    "zlib-6": ((0.21, 112.0), (0.63, 30.0), (1.63, 11.0), (2.27, 9.0), (2.97, 7.0), (3.67, 6.0), (4.91, 9.0), (7.22, 22.0)),
}

#: RELION's zlib-6 encodes a Falcon movie at about 10.6 MB/s on one core; ``auto`` never uses an
#: encoder slower than five times that, so the default stays fast when RELION's would be slow.
RELION_DEFLATE6_MB_PER_S = 10.6
AUTO_MIN_MB_PER_S = 5 * RELION_DEFLATE6_MB_PER_S
#: A candidate must beat the floor by this factor: the table's figures are good to about 10 %
#: (repeated measurements on a loaded machine), and a near tie must not pick a codec that turns
#: out slower in practice. RELION's own codec (LZW) needs no margin to stay eligible.
AUTO_SPEED_MARGIN = 1.1

#: The sample ``auto`` compresses: about 1/32 of the first page in 8 bands spread over its rows
#: (trying every candidate then costs well under half a frame's encode), never less than
#: 512 KiB (or the whole page when smaller), so that stream headers do not decide.
AUTO_SAMPLE_FRACTION = 1 / 32
AUTO_SAMPLE_MIN_BYTES = 512 * 1024
AUTO_SAMPLE_BANDS = 8


def pipeline_speed_mb_per_s(label: str, lzw_bits_per_byte: float) -> float:
    """Interpolated :data:`PIPELINE_MB_PER_S` of ``label`` for data of this class."""
    points = PIPELINE_MB_PER_S[label]
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    return float(np.interp(lzw_bits_per_byte, xs, ys))


@dataclass(frozen=True)
class AutoDecision:
    """What :func:`choose_auto_codec` tried and why it chose.

    Attributes:
        codec: the chosen codec (its label goes to ``MovieResult.codec``, its TIFF code to the
            Compression tag).
        sample_bytes: bytes of the sample every candidate compressed.
        sizes: compressed bytes of the sample per candidate label (the ineligible ones were not
            tried).
        speeds_mb_per_s: tabulated speed per candidate label for this data class.
        floor_mb_per_s: the speed another candidate needed: RELION's codec's, at least
            :data:`AUTO_MIN_MB_PER_S`, times :data:`AUTO_SPEED_MARGIN`.
        relion_codec: ``lzw`` or ``zlib-6``: what RELION would have used.
        lzw_bits_per_byte: the data class.
    """

    codec: StripCodec
    sample_bytes: int
    sizes: dict[str, int]
    speeds_mb_per_s: dict[str, float]
    floor_mb_per_s: float
    relion_codec: str
    lzw_bits_per_byte: float

    @property
    def eligible(self) -> tuple[str, ...]:
        return tuple(label for label in AUTO_CANDIDATES if label in self.sizes)


def policy_sample(page: np.ndarray, rows_per_strip: int | None = None) -> list[np.ndarray]:
    """The strips of the sample ``auto`` compresses, from one page (raster order).

    The sample is :data:`AUTO_SAMPLE_BANDS` bands of rows spread evenly over the page, in TIFF
    scanline order, together about :data:`AUTO_SAMPLE_FRACTION` of it. With ``rows_per_strip``
    (``--line_by_line``) each row is its own strip, as in the file, so that per-strip headers
    count as they will.
    """
    flipped = page[::-1]  # a view: only the sampled rows are copied
    n_rows = flipped.shape[0]
    row_bytes = flipped[:1].nbytes
    wanted_bytes = max(page.nbytes * AUTO_SAMPLE_FRACTION, AUTO_SAMPLE_MIN_BYTES)
    wanted_rows = int(np.ceil(wanted_bytes / max(row_bytes, 1)))
    if wanted_rows >= n_rows:
        sample = np.ascontiguousarray(flipped)
    else:
        band_rows = -(-wanted_rows // AUTO_SAMPLE_BANDS)
        starts = np.linspace(0, n_rows - band_rows, AUTO_SAMPLE_BANDS).astype(int)
        sample = np.concatenate([flipped[start : start + band_rows] for start in starts])
    sample = sample.view(np.uint8).reshape(sample.shape[0], -1)
    if rows_per_strip == 1:
        return list(sample)
    return [np.ascontiguousarray(sample)]


def choose_auto_codec(
    page: np.ndarray, width: int, is_eer: bool, rows_per_strip: int | None = None, *,
    huffman_encoder: str = "cryotiff", lzw_encoder: str = "imagecodecs",
) -> AutoDecision:
    """The ``auto`` policy for one movie, decided on its first page.

    1. Compress the sample (:func:`policy_sample`) with LZW; its bits per input byte is the data
       class that indexes the speed table :data:`PIPELINE_MB_PER_S`.
    2. The floor is the tabulated speed of RELION's codec for the movie (LZW, or zlib-6 for
       4096-wide non-EER movies), at least :data:`AUTO_MIN_MB_PER_S`, times
       :data:`AUTO_SPEED_MARGIN`.
    3. Every candidate of :data:`AUTO_CANDIDATES` whose tabulated speed reaches the floor, and
       RELION's codec itself when it is LZW, compresses the same sample; the smallest wins
       (ties: earlier in the list).

    ``huffman_encoder`` encodes ``deflate-huffman`` (:func:`huffman_encoder_for`; the two write
    streams of the same size within 0.3 % on detector frames, so the choice does not depend on
    it); ``lzw_encoder`` encodes ``lzw`` (:func:`lzw_encoder_for`; the two write the same bytes).
    The same page always gives the same codec.
    """
    strips = policy_sample(page, rows_per_strip)
    sample_bytes = sum(strip.nbytes for strip in strips)

    def compressed_size(label: str) -> int:
        # LZW is measured with imagecodecs' encoder whichever encodes the movie: the same bytes,
        # and a movie that ends up in Deflate then never loads the compiled LZW encoder.
        codec = make_codec_from_label(label, huffman_encoder=huffman_encoder, lzw_encoder="imagecodecs")
        return sum(len(codec.encode(strip)) for strip in strips)

    sizes = {"lzw": compressed_size("lzw")}
    lzw_bits_per_byte = 8.0 * sizes["lzw"] / max(sample_bytes, 1)
    relion_codec = relion_codec_kind(width, is_eer)
    relion_speed = pipeline_speed_mb_per_s(relion_codec, lzw_bits_per_byte)
    floor = max(relion_speed, AUTO_MIN_MB_PER_S) * AUTO_SPEED_MARGIN
    speeds = {label: pipeline_speed_mb_per_s(label, lzw_bits_per_byte) for label in AUTO_CANDIDATES}
    for label in AUTO_CANDIDATES:
        if label not in sizes and speeds[label] >= floor:
            sizes[label] = compressed_size(label)
    if relion_codec != "lzw" and speeds["lzw"] < floor:
        # LZW was compressed to find the data class; it competes only where it is fast enough.
        del sizes["lzw"]
    if not sizes:  # no candidate reaches the floor (on no measured data): the fastest one
        fastest = max(AUTO_CANDIDATES, key=lambda label: speeds[label])
        sizes[fastest] = compressed_size(fastest)
    best = min(sizes, key=lambda label: (sizes[label], AUTO_CANDIDATES.index(label)))
    return AutoDecision(
        codec=make_codec_from_label(best, huffman_encoder=huffman_encoder, lzw_encoder=lzw_encoder),
        sample_bytes=sample_bytes,
        sizes=sizes,
        speeds_mb_per_s=speeds,
        floor_mb_per_s=floor,
        relion_codec=relion_codec,
        lzw_bits_per_byte=lzw_bits_per_byte,
    )


#: The encoders of ``deflate-huffman``: cryotiff's compiled kernel and zlib-ng's ``Z_HUFFMAN_ONLY``.
HUFFMAN_ENCODERS = ("cryotiff", "zlib-ng")

#: Movies with at least this many bytes of frames have their Huffman-only Deflate and their LZW
#: encoded by the compiled kernels even when nothing else of theirs needs numba. Loading numba
#: and a kernel costs about 0.5 s of CPU and 110 MiB of memory once per process; the Huffman-only
#: kernel then saves 3.1 ms per MB of K2 counts (encode 464 against zlib-ng's 181 MB/s, ISA-L's
#: check of zlib-ng's streams 720 against 583 MB/s) and 6.3 ms per MB of Falcon frames (452
#: against 127 MB/s): it pays from about 160 MB (K2) or 80 MB (Falcon); the LZW kernel saves
#: about 5 ms per MB (about 200 against imagecodecs' 100 MB/s) and its compiled verification
#: about 4 ms more (600-900 against imagecodecs' 150-220 MB/s), paying from about 60 MB.
#: Measured in docs/benchmarks/vs-relion.md.
COMPILED_ENCODERS_MIN_MOVIE_BYTES = 200_000_000

#: The encoders of ``lzw``: cryotiff's compiled kernel and imagecodecs' (the same bytes).
LZW_ENCODERS = ("cryotiff", "imagecodecs")


def compiled_encoders_pay(movie_bytes: int, loads_kernels: bool) -> bool:
    """Whether a movie's strips are encoded by the compiled kernels (:mod:`cryotiff.kernels`):
    where the movie's pages need numba anyway (``loads_kernels``: EER rendering, the gain
    arithmetic) or where it is long enough for a kernel to repay loading numba
    (:data:`COMPILED_ENCODERS_MIN_MOVIE_BYTES`). Otherwise a short movie of plain integer frames
    never loads numba. Decided from the movie alone, so the same movie always gets the same
    bytes."""
    return loads_kernels or movie_bytes >= COMPILED_ENCODERS_MIN_MOVIE_BYTES


def huffman_encoder_for(movie_bytes: int, loads_kernels: bool) -> str:
    """``cryotiff`` (the compiled kernel) or ``zlib-ng``: what encodes a movie's Huffman-only
    Deflate (:func:`compiled_encoders_pay`). Both write standard Deflate of the same size within
    0.3 %."""
    return "cryotiff" if compiled_encoders_pay(movie_bytes, loads_kernels) else "zlib-ng"


def lzw_encoder_for(movie_bytes: int, loads_kernels: bool) -> str:
    """``cryotiff`` (the compiled kernel) or ``imagecodecs``: what encodes a movie's LZW
    (:func:`compiled_encoders_pay`). Both write the same bytes."""
    return "cryotiff" if compiled_encoders_pay(movie_bytes, loads_kernels) else "imagecodecs"


def _first_page(source) -> np.ndarray:
    """Page 0 of a page source (anything with ``page(index)`` and ``dtype``), made once.

    The policy needs the first page before the encoder asks for it. So that an expensive page
    (an EER render, a gain-corrected frame) is not made twice, the source hands this same array
    to the first ``page(0)`` call that follows, then forgets it (and ignores it if the source's
    sample type changed in between, as when a float movie is rewritten as a wider type).
    """
    page = source.page(0)
    dtype = source.dtype
    make_page = source.page
    cache = [page]
    lock = threading.Lock()

    def page_once(index: int) -> np.ndarray:
        if index == 0:
            with lock:
                cached = cache.pop() if cache else None
                if source.__dict__.get("page") is page_once:
                    del source.page  # back to the class's method
            if cached is not None and source.dtype == dtype:
                return cached
        return make_page(index)

    try:
        source.page = page_once
    except AttributeError:  # a source that cannot take the hand-over makes page 0 again
        pass
    return page


def resolve_codec(
    compression: str,
    deflate_level: int,
    width: int,
    is_eer: bool,
    *,
    sample=None,
    rows_per_strip: int | None = None,
    huffman_encoder: str = "cryotiff",
    lzw_encoder: str = "imagecodecs",
) -> StripCodec:
    """The codec for one movie from ``--compression`` and ``--deflate_level``.

    Args:
        compression: ``auto``, ``none``, ``lzw``, ``deflate``/``zip`` (libdeflate at
            ``deflate_level``), ``zstd[:LEVEL]`` or ``lzma[:LEVEL]``.
        deflate_level: ``--deflate_level`` (1-12).
        width: frame width in pixels (RELION's rule looks at it).
        is_eer: the pages are rendered EER (RELION always uses LZW for them).
        sample: for ``auto``: the first page (an array), or the page source itself (its page 0
            is made once and handed on to the encoder, see :func:`_first_page`). Without one,
            ``auto`` falls back to RELION's width rule (:func:`relion_auto_codec`).
        rows_per_strip: 1 for ``--line_by_line`` (the sample is then encoded row by row);
            None for one strip per frame.
        huffman_encoder: what encodes ``deflate-huffman`` (:func:`huffman_encoder_for`).
        lzw_encoder: what encodes ``lzw`` (:func:`lzw_encoder_for`).

    The result's ``tiff_code`` is the TIFF Compression tag (259).
    """
    name, level = split_compression(compression)
    if name == "auto":
        if sample is None or getattr(sample, "n_pages", 1) == 0:
            return relion_auto_codec(width, is_eer, deflate_level, lzw_encoder=lzw_encoder)
        page = _first_page(sample) if hasattr(sample, "page") else np.asarray(sample)
        return choose_auto_codec(
            page, width, is_eer, rows_per_strip, huffman_encoder=huffman_encoder, lzw_encoder=lzw_encoder
        ).codec
    if name in ("deflate", "zip"):
        return make_codec("deflate", deflate_level)
    return make_codec(name, level, lzw_encoder=lzw_encoder)
