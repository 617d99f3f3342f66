"""Reading and rendering EER (Electron Event Representation) movies, as RELION 5.0.1 does.

An EER file is a BigTIFF with one IFD per raw detector frame. Tag 259 (Compression) names the
bitstream scheme: 65000 (8-bit runs, 4-bit symbols), 65001 (7-bit runs, 4-bit symbols) or 65002
(widths in the private tags 65007 = run bits, 65008 = horizontal and 65009 = vertical sub-pixel
bits). The strips of one IFD are concatenated into one LSB-first bitstream of
``run, [symbol]`` codes; a run of ``2**bits - 1`` is an overflow code that carries no event.
Tag 65001 of the first IFD holds the acquisition metadata XML (``totalDose``, ``numberOfFrames``,
``sensorPixelSize``...), which tifffile parses into ``TiffFile.eer_metadata``.

Rendering follows RELION's table (spec 11.4): upsampling 1 = physical grid, 2 = 2x, 3 = 4x
(16K), -1 = 2x binned. Counts are returned in EER raster orientation (row 0 = raster row 0); the
TIFF writer flips. The library never prints: messages are returned as strings. Messages number
raw frames and IFDs from 1 (``raw frame 2 (IFD 3)``: the two differ by one after a leading
final-image IFD); the ``index`` arguments of the API are 0-based.

65000 is decoded here, vectorised (:func:`decode_eer_8bit`), because RELION and imagecodecs read
it differently (RELION's reading is followed). 65001/65002 frames are decoded by
``imagecodecs.eer_decode`` into a ``W*H`` bool image (the GIL released), which is then scanned for
the events; a bit count catches a stream that ends before ``W*H`` pixels, which imagecodecs does
not report (:func:`required_bits`). Page tasks on several threads render in parallel because
decoding and summing spend their time in calls that release the GIL. :meth:`EerMovie.render`
adds the events of a few frames at a time band by band, so the counts of one band stay in the
CPU cache while they are added to.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import imagecodecs
import numpy as np
import tifffile

from cryotiff.errors import CryotiffError, EerFormatError, OptionError
from cryotiff.io import Movie, MovieInfo, capture_tifffile_log, check_regular_file

COMPRESSION_EER_8BIT = 65000
COMPRESSION_EER_7BIT = 65001
COMPRESSION_EER_VARIABLE = 65002
EER_COMPRESSIONS = (COMPRESSION_EER_8BIT, COMPRESSION_EER_7BIT, COMPRESSION_EER_VARIABLE)
TAG_RLE_BITS = 65007
TAG_HORIZONTAL_BITS = 65008
TAG_VERTICAL_BITS = 65009
SUPPORTED_DETECTOR_SIZES = (4096, 2048)
UPSAMPLING_VALUES = (-1, 1, 2, 3)
LEGACY_EER_FOOTER = b"ThermoFisherECComprOK000"

# Frames decoded ahead of the one being summed when an executor is given (memory: a few frames).
_FRAMES_IN_FLIGHT = 4


# --------------------------------------------------------------------------------------------
# Messages (RELION's texts; the CLI prints them)


def corrupt_frame_warning(movie: str, frame_1based: int) -> str:
    """RELION's stderr warning for a frame whose runs do not add up to ``W*H`` pixels."""
    return (
        f"WARNING: The number of pixels is not right in {movie} frame {frame_1based}. "
        "Probably this frame is corrupted. This frame is skipped."
    )


def found_frames_message(n_raw_frames: int) -> str:
    """RELION's stdout line before rendering: `` Found <N> raw frames``."""
    return f" Found {n_raw_frames} raw frames"


def rendering_message(start: int, stop: int) -> str:
    """RELION's stdout line per output page, for raw frames ``start .. stop-1`` (0-based): RELION
    prints 1-based inclusive numbers."""
    return f" Rendering EER (hardware) frame {start + 1} to {stop}"


def is_eer_path(path: str | os.PathLike[str]) -> bool:
    """True when the extension (after the last dot) is exactly ``eer`` or ``ecc`` (RELION's test,
    case-sensitive)."""
    name = os.fspath(path)
    return "." in name and name.rsplit(".", 1)[1] in ("eer", "ecc")


def check_upsampling_value(upsampling: int) -> None:
    """Reject values RELION rejects while parsing options (OptionError, RELION's text)."""
    if upsampling not in UPSAMPLING_VALUES:
        raise OptionError("eer_upsampling must be -1, 1, 2 or 3")


def output_size(detector_size: int, upsampling: int) -> int:
    """Side of the rendered image: ``det`` (1), ``2 det`` (2), ``4 det`` (3), ``det / 2`` (-1)."""
    check_upsampling_value(upsampling)
    if upsampling == -1:
        return detector_size // 2
    return detector_size << (upsampling - 1)


def counts_dtype(n_raw_frames: int, upsampling: int) -> np.dtype:
    """uint16, or uint32 when a sum of ``n_raw_frames`` could exceed 65535: each frame adds at
    most 1 per output pixel (at most 4 when binned, upsampling -1)."""
    max_possible = n_raw_frames * (4 if upsampling == -1 else 1)
    return np.dtype(np.uint16 if max_possible <= 0xFFFF else np.uint32)


# --------------------------------------------------------------------------------------------
# Bitstream helpers


@dataclass(frozen=True)
class EerEncoding:
    """Bitstream scheme of a movie.

    Attributes:
        compression: tag 259 of the frame IFDs (65000, 65001 or 65002).
        rle_bits: run field width (65000: 8, 65001: 7, 65002: tag 65007).
        horizontal_bits: sub-pixel bits in x (2, or tag 65008 for 65002).
        vertical_bits: sub-pixel bits in y (2, or tag 65009, else 65008, for 65002).
    """

    compression: int
    rle_bits: int
    horizontal_bits: int
    vertical_bits: int

    @property
    def symbol_bits(self) -> int:
        return self.horizontal_bits + self.vertical_bits

    @property
    def max_run(self) -> int:
        return (1 << self.rle_bits) - 1


def required_bits(positions: np.ndarray, n_pixels: int, rle_bits: int, symbol_bits: int) -> int:
    """Bits a valid variable-length (65001/65002) stream with these events needs, up to and
    including the code that ends the frame at exactly ``n_pixels``.

    Given the event positions, the code sequence is unique: before each event ``gap // maxrun``
    overflow codes and one ``run + symbol`` code; after the last event ``ceil(tail / maxrun)``
    run-only codes. An event on the last pixel ends the frame by itself: its events then account
    for every pixel, and no closing run code is needed (Thermo Fisher's writer leaves it out;
    RELION reads the next run field and keeps the frame only when it is 0; see
    docs/differences-from-relion.md). So a frame whose decoded events need more bits than the
    frame's data holds ran out of data (RELION reads on into the next frame's bytes and then,
    almost always, skips the frame; cryotiff stops at the end of the frame's data).
    """
    max_run = (1 << rle_bits) - 1
    n = int(positions.size)
    if n:
        gaps = np.diff(positions, prepend=-1) - 1
        n_overflow = int((gaps // max_run).sum())
        tail = n_pixels - 1 - int(positions[-1])
    else:
        n_overflow, tail = 0, n_pixels
    n_final = -(-tail // max_run)
    return n * (rle_bits + symbol_bits) + rle_bits * (n_overflow + n_final)


def max_frame_nbytes(n_pixels: int, encoding: EerEncoding) -> int:
    """Generous upper bound of the bytes one raw frame's stream can occupy: twice what a frame
    with an event on every pixel needs (one ``run + symbol`` code per pixel and a final run),
    plus 4 KiB. More data than this is a damaged IFD, whatever the vendor's padding."""
    bits = n_pixels * (encoding.rle_bits + encoding.symbol_bits) + encoding.rle_bits
    return 2 * -(-bits // 8) + 4096


def decode_eer_8bit(data: bytes, n_pixels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode a 65000 stream (8-bit runs, 4-bit symbols) into ``(positions, symbols)``, or None
    when the runs do not end at exactly ``n_pixels`` within the data (a corrupt frame). An event
    on the last pixel ends the frame (see :func:`required_bits`).

    RELION and imagecodecs disagree here: RELION skips the 4 symbol bits after an overflow code
    255 ("bit waste" of the old prototype files, which always carry a symbol field), imagecodecs
    does not. We follow RELION, which is the reference for parity. With that rule every code is
    exactly 12 bits, so the stream is an array of 12-bit codes and the decoding vectorises: a
    cumulative sum of the pixels each code consumes gives every event's position.
    """
    n_bits = 8 * len(data)
    n_full = n_bits // 12
    # A final code with only its 8 run bits in the data can still end the frame.
    n_codes = n_full + (1 if n_bits - 12 * n_full >= 8 else 0)
    if n_codes == 0:
        return None
    n_words = (n_codes + 1) // 2
    raw = np.zeros(3 * n_words, dtype=np.uint32)
    raw[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = raw[0::3] | (raw[1::3] << 8) | (raw[2::3] << 16)
    codes = np.empty(2 * n_words, dtype=np.uint32)
    codes[0::2] = words & 0xFFF
    codes[1::2] = words >> 12
    codes = codes[:n_codes]
    runs = codes & 0xFF
    is_event = runs != 0xFF
    # Position reached after adding each code's run (before its event is placed), and after the
    # code (its event placed).
    after_code = np.cumsum(runs + is_event, dtype=np.int64)
    after_run = after_code - is_event
    reached = np.flatnonzero(after_code >= n_pixels)
    if reached.size == 0:
        return None
    end = int(reached[0])
    if after_run[end] == n_pixels:  # a run reaches the end: RELION stops before its event
        pass
    elif after_run[end] == n_pixels - 1 and end < n_full:  # an event on the last pixel, 12 bits
        end += 1
    else:  # a run overshoots, or the last pixel's symbol lies beyond the data
        return None
    events = is_event[:end]
    return after_run[:end][events], (codes[:end][events] >> 8).astype(np.uint8)


def symbols_7bit(
    stream: bytes, positions: np.ndarray, rle_bits: int, symbol_bits: int
) -> np.ndarray:
    """Stored symbols of the events of a valid 65001/65002 stream whose event positions are known.

    The code sequence follows from the positions (see :func:`required_bits`): event ``j``'s code
    starts after ``j`` event codes and all overflow codes up to it, and its symbol follows the
    run field. So the symbols are a vectorised gather from the stream (the same as
    ``imagecodecs.eer_decode(..., superres=k)`` gives, tested). This is cheaper than a second
    imagecodecs decode at the output resolution, whose image would be up to 16x larger.
    """
    max_run = (1 << rle_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    symbol_bit = np.cumsum(gaps // max_run)  # overflow codes up to each event
    symbol_bit *= rle_bits
    symbol_bit += np.arange(rle_bits, rle_bits + (rle_bits + symbol_bits) * positions.size,
                            rle_bits + symbol_bits, dtype=np.int64)
    # symbol_bits + 7 <= 15 bits: two bytes hold the field (the stream is padded by 2 bytes);
    # gathered from an aligned copy of every byte's 16-bit window (one fast take).
    raw = np.frombuffer(stream, dtype=np.uint8)
    pairs = np.ndarray((raw.size - 1,), dtype="<u2", buffer=raw, offset=0, strides=(1,)).copy()
    two = pairs.take(symbol_bit >> 3) >> (symbol_bit & 7).astype(np.uint16)
    return (two & ((1 << symbol_bits) - 1)).astype(np.uint8)


def decode_eer_frame(
    data: bytes,
    shape: tuple[int, int],
    encoding: EerEncoding,
    *,
    need_symbols: bool = False,
    buffer: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Events of one raw frame: ``(positions, symbols)``, or None when the frame is corrupt.

    ``positions`` are raster indices on the physical grid (sorted, int64), ``symbols`` the stored
    sub-pixel symbols (uint8; always for 65000, else only with ``need_symbols``). A frame is corrupt
    when its runs do not end at exactly ``rows * cols`` pixels within its data: the stream runs out
    or a run overshoots. ``buffer`` (bool, ``shape``, all False) is an optional scratch array for
    imagecodecs; it is all False again on return.
    """
    if encoding.compression == COMPRESSION_EER_8BIT:
        return decode_eer_8bit(data, shape[0] * shape[1])
    return _decode_with_imagecodecs(data, shape, encoding, need_symbols, buffer)


def _decode_with_imagecodecs(
    data: bytes,
    shape: tuple[int, int],
    encoding: EerEncoding,
    need_symbols: bool,
    buffer: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The events of a 65001/65002 frame: ``imagecodecs.eer_decode`` into a bool image (the GIL
    released), a scan of the image for the events, and a bit count for a stream that ends early
    (imagecodecs returns the image it has so far; see :func:`required_bits`).
    """
    # imagecodecs needs an even length, and it stops when fewer than run + symbol bits remain,
    # even where a final run-only code would fit: two zero bytes let it finish a valid stream.
    # Events it reads from the padding (a stream that ran out) make the frame fail the bit count.
    stream = data + b"\0" * (2 + len(data) % 2)
    if buffer is None:
        buffer = np.zeros(shape, dtype=np.bool_)
    try:
        imagecodecs.eer_decode(
            stream,
            shape,
            encoding.rle_bits,
            encoding.horizontal_bits,
            encoding.vertical_bits,
            out=buffer,
        )
    except (RuntimeError, ValueError):  # ImcdError (a RuntimeError): a run overshoots
        # imagecodecs reads one more run field after an event on the last pixel and fails when it
        # is not 0; such a frame is complete (its events account for every pixel), so it is kept
        # when the bit count below agrees. Any other overshoot is a corrupt frame.
        if not buffer.reshape(-1)[-1]:
            buffer.fill(False)
            return None
    positions = _take_events(buffer.reshape(-1), dense=len(data) > _DENSE_BYTES_PER_PIXEL * buffer.size)
    total = shape[0] * shape[1]
    if required_bits(positions, total, encoding.rle_bits, encoding.symbol_bits) > 8 * len(data):
        return None
    if not need_symbols:
        return positions, None
    return positions, symbols_7bit(stream, positions, encoding.rle_bits, encoding.symbol_bits)


# Above about 0.012 e/pixel (0.02 bytes of stream per pixel) scanning 8 pixels at a time is faster
# than numpy's flatnonzero (Falcon 4 at 0.025 e/pixel: 5.9 against 7.8 ms per 4K frame); below, it
# is slower (0.01 e/pixel: 5.3 against 4.3 ms). Measured on the 2-core development machine.
_DENSE_BYTES_PER_PIXEL = 0.02


def _take_events(flat: np.ndarray, dense: bool = True) -> np.ndarray:
    """Indices of the True pixels of a flat bool image, which is all False again on return.

    ``dense``: scan 8 pixels at a time (a Falcon 4 frame at 0.025 e/pixel has 4 in 5 such words
    empty), then the non-empty words; numpy's fast nonzero path is the one for bool arrays, hence
    the ``!= 0`` and the bool view. Clearing only the non-empty words is cheaper than a fill.
    """
    if not dense or flat.size % 8 or flat.ctypes.data % 8:
        positions = np.flatnonzero(flat)
        flat[positions] = False
        return positions
    words = flat.view(np.uint64)
    busy = np.flatnonzero(words != 0)
    values = words[busy]
    words[busy] = 0
    inside = np.flatnonzero(values.view(np.bool_))
    return (busy[inside >> 3] << 3) | (inside & 7)


def _subpixels(
    symbols: np.ndarray, horizontal_bits: int, vertical_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel x and y from stored symbols: the MSB of each field is flipped (RELION XORs 0x0A
    for 2+2 bits and 3 for 1+1 bits)."""
    s = symbols.astype(np.int64)
    xs = (s & ((1 << horizontal_bits) - 1)) ^ (1 << (horizontal_bits - 1))
    ys = ((s >> horizontal_bits) & ((1 << vertical_bits) - 1)) ^ (1 << (vertical_bits - 1))
    return xs, ys


# Raw frames whose events are added together, band by band, and at most this many events (memory:
# their output indices, 8 bytes per event: 3.4 MB per 4K frame at 0.025 e/pixel, 32 MB at most).
_FRAMES_PER_BATCH = 8
_EVENTS_PER_BATCH = 1 << 22
# Output bytes per band: about one core's L2 cache.
_BAND_BYTES = 1 << 21


class _BandedSum:
    """Adds the events of raw frames to ``counts`` on the output grid of ``upsampling``.

    A frame's events are sorted by physical raster index and touch nearly every cache line of the
    counts, so adding frame after frame streams the whole counts array through memory once per
    frame. Instead, the events of a batch of frames are added one band of physical rows at a
    time (a band is a slice of each frame's events): the band's counts stay in the cache while
    all frames of the batch add to it. Each add is a fancy-index ``+= 1`` over indices that do
    not repeat (for binning, each of the 2x2 parities is added on its own).
    """

    def __init__(
        self, counts: np.ndarray, detector_size: int, upsampling: int, encoding: EerEncoding
    ) -> None:
        self.flat = counts.reshape(-1)
        self.upsampling = upsampling
        self.need_symbols = upsampling in (2, 3)
        width = detector_size
        self.width = width
        self.shift = width.bit_length() - 1  # detector sizes are powers of 2
        self.size = counts.shape[1]
        self.factor = 1 << max(upsampling - 1, 0)
        if self.need_symbols:
            # Output offset inside the factor x factor block of each stored symbol (spec 11.4).
            drop = encoding.horizontal_bits - (upsampling - 1)  # sub-pixel bits not used at 2x
            xs, ys = _subpixels(
                np.arange(1 << encoding.symbol_bits), encoding.horizontal_bits,
                encoding.vertical_bits,
            )
            self.symbol_offset = (ys >> drop) * self.size + (xs >> drop)
        bytes_per_row = counts.nbytes // width  # output bytes per physical row
        rows = max(2, _BAND_BYTES // max(bytes_per_row, 1)) // 2 * 2  # even: binning pairs rows
        self.bounds = np.append(np.arange(0, width, rows), width) * width
        self.n_bands = self.bounds.size - 1
        self.batch: list[tuple[np.ndarray, list[int]]] = []
        self.n_frames = 0
        self.n_events = 0

    def add(self, positions: np.ndarray, symbols: np.ndarray | None) -> None:
        """Queue the events of one frame (physical raster indices, sorted; stored symbols)."""
        if self.upsampling == 1:
            self._queue(positions, positions)
        elif self.upsampling == -1:
            # Up to 4 events of a frame share an output pixel: one add per 2x2 parity.
            parity = ((positions >> self.shift) & 1) * 2 + (positions & 1)
            order = np.argsort(parity.astype(np.uint8), kind="stable")  # radix; keeps rows sorted
            ends = np.cumsum(np.bincount(parity, minlength=4)).tolist()
            by_parity = positions[order]
            begin = 0
            for stop in ends:
                part = by_parity[begin:stop]
                begin = stop
                y0 = part >> self.shift
                self._queue(part, (y0 >> 1) * self.size + ((part & (self.width - 1)) >> 1))
        else:
            assert symbols is not None
            f = self.factor
            # (f*y0 + ys) * size + f*x0 + xs with size = f*width, pos = y0*width + x0:
            # f * (pos + (f-1)*width*y0) + offset(symbol), in place
            index = positions >> self.shift
            index *= (f - 1) * self.width
            index += positions
            index *= f
            index += self.symbol_offset.take(symbols)
            self._queue(positions, index)
        self.n_frames += 1
        self.n_events += positions.size
        if self.n_frames >= _FRAMES_PER_BATCH or self.n_events >= _EVENTS_PER_BATCH:
            self.flush()

    def _queue(self, positions: np.ndarray, index: np.ndarray) -> None:
        self.batch.append((index, np.searchsorted(positions, self.bounds).tolist()))

    def flush(self) -> None:
        """Add the queued frames to the counts."""
        flat = self.flat
        for band in range(self.n_bands):
            for index, edges in self.batch:
                begin, stop = edges[band], edges[band + 1]
                if stop > begin:
                    flat[index[begin:stop]] += 1
        self.batch = []
        self.n_frames = 0
        self.n_events = 0


@dataclass
class _DecodedFrame:
    index: int
    positions: np.ndarray | None  # physical raster indices; None = corrupt
    symbols: np.ndarray | None  # stored symbol of each event (when sub-pixels are needed)


@dataclass
class RenderResult:
    """Counts of raw frames ``start .. stop-1`` summed on the output grid.

    Attributes:
        counts: uint16 (or uint32 when uint16 could wrap) array, EER raster orientation.
        corrupt_frames: 0-based indices of frames left out because their runs did not add up.
        max_count: the largest count (to choose or check the output sample type).
        start, stop: the raw frame range (0-based, half-open).
        upsampling: the ``--eer_upsampling`` value used.
    """

    counts: np.ndarray
    corrupt_frames: list[int]
    max_count: int
    start: int
    stop: int
    upsampling: int

    def corrupt_frame_warnings(self, movie: str) -> list[str]:
        """RELION's warning line for each skipped frame (1-based frame numbers)."""
        return [corrupt_frame_warning(movie, i + 1) for i in self.corrupt_frames]


# --------------------------------------------------------------------------------------------
# The reader


@dataclass
class _Structure:
    strips: list[list[tuple[int, int]]]
    encoding: EerEncoding
    size: int
    final_image: bool
    metadata: dict[str, Any] = field(default_factory=dict)


class EerMovie(Movie):
    """An EER movie opened for reading (context manager).

    Attributes:
        info: header facts; ``n_frames`` = raw detector frames (a leading final-image IFD with
            compression 1 is skipped); ``shape_yx`` = detector size; ``extra`` holds
            ``compression``, ``rle_bits``, ``horizontal_bits``, ``vertical_bits``,
            ``final_image_ifd`` and ``sensor_pixel_size_angstrom`` (from the metadata, or None).
        metadata: acquisition metadata of tag 65001 (``TiffFile.eer_metadata``), {} when absent.
        encoding: the bitstream scheme.
        log_messages: warnings tifffile logged while reading the structure (not printed).

    ``render`` and ``read_frame`` are thread-safe: strips are read with ``os.pread`` and decode
    buffers are per thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._read_lock = threading.Lock()
        self._local = threading.local()
        self.log_messages: list[str] = []
        structure = self._read_structure()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise EerFormatError(f"{self.path}: cannot open the file ({exc.strerror}).") from None
        self._strips = structure.strips
        self.encoding = structure.encoding
        self.detector_size = structure.size
        self.metadata: dict[str, Any] = structure.metadata
        n = len(self._strips)
        total_bytes = sum(count for strips in self._strips for _, count in strips)
        self.info = MovieInfo(
            path=self.path,
            kind="eer",
            n_frames=n,
            shape_yx=(self.detector_size, self.detector_size),
            dtype=np.dtype(np.uint8),
            mrc_mode=None,
            # RELION writes no pixel size for EER output, and the rendered pixel depends on the
            # upsampling; the sensor pixel size is in extra.
            pixel_size_angstrom=None,
            frame_nbytes=total_bytes // n,
            extra={
                "compression": self.encoding.compression,
                "rle_bits": self.encoding.rle_bits,
                "horizontal_bits": self.encoding.horizontal_bits,
                "vertical_bits": self.encoding.vertical_bits,
                "final_image_ifd": structure.final_image,
                "sensor_pixel_size_angstrom": sensor_pixel_size_angstrom(self.metadata),
            },
        )

    # -- structure ---------------------------------------------------------------------------

    def _read_structure(self) -> _Structure:
        # Before tifffile opens it: a named pipe would block the open for ever.
        file_size = check_regular_file(self.path, "an EER movie", EerFormatError)
        with capture_tifffile_log() as log:
            try:
                with tifffile.TiffFile(self.path) as tif:
                    structure = self._parse(tif)
            except CryotiffError:
                raise
            except Exception as exc:  # tifffile, struct, numpy, XML: a damaged file
                if self._has_legacy_footer():
                    raise EerFormatError(
                        f"{self.path}: legacy (headerless, non-TIFF) EER files are not supported."
                    ) from None
                detail = "; ".join(log.messages[-2:]) or f"{type(exc).__name__}: {exc}"
                raise EerFormatError(
                    f"{self.path}: not a readable EER (TIFF) file ({detail})."
                ) from None
        self.log_messages = log.messages
        if log.errors:  # a damaged IFD: tifffile would silently report fewer frames
            raise EerFormatError(f"{self.path}: damaged EER (TIFF) structure ({log.errors[0]}).")
        first_ifd = 2 if structure.final_image else 1
        limit = max_frame_nbytes(structure.size * structure.size, structure.encoding)
        for k, strips in enumerate(structure.strips):
            where = f"raw frame {k + 1} (IFD {k + first_ifd})"
            for offset, count in strips:
                if offset < 0 or count < 0 or offset + count > file_size:
                    raise EerFormatError(
                        f"{self.path}: the data of {where} lie beyond the end of the "
                        f"file ({file_size} bytes); the file is truncated or damaged."
                    )
            # Memory stays a few frames deep only if a frame's data are of a plausible size.
            nbytes = sum(count for _, count in strips)
            if nbytes > limit:
                raise EerFormatError(
                    f"{self.path}: {where} holds {nbytes} bytes of data, more than a "
                    f"{structure.size}x{structure.size} frame can need (at most {limit} bytes, "
                    "twice what an event on every pixel takes); the file is damaged."
                )
        return structure

    def _has_legacy_footer(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() < len(LEGACY_EER_FOOTER):
                    return False
                fh.seek(-len(LEGACY_EER_FOOTER), os.SEEK_END)
                return fh.read() == LEGACY_EER_FOOTER
        except OSError:
            return False

    def _parse(self, tif: tifffile.TiffFile) -> _Structure:
        pages = tif.pages
        n_pages = len(pages)
        if n_pages == 0:
            raise EerFormatError(f"{self.path}: the TIFF file has no IFD.")
        first = pages[0]
        # TIA can write a leading "final image" (a sum, compression 1); RELION fails on it.
        final_image = int(first.compression) == 1
        first_frame = 1 if final_image else 0
        if first_frame >= n_pages:
            raise EerFormatError(f"{self.path}: the file holds no EER frame.")
        frame0 = pages[first_frame]
        compression = int(frame0.compression)
        if compression not in EER_COMPRESSIONS:
            raise EerFormatError(
                f"{self.path}: Unknown compression scheme for EER: {compression}"
            )
        width, height = int(frame0.imagewidth), int(frame0.imagelength)
        if width != height or width not in SUPPORTED_DETECTOR_SIZES:
            raise EerFormatError(
                f"{self.path}: Currently we support only 4096x4096 or 2048x2048 pixel EER movies "
                f"(this one is {width}x{height})."
            )
        encoding = self._encoding(frame0, compression)
        strips: list[list[tuple[int, int]]] = []
        for k in range(first_frame, n_pages):
            page = pages[k]
            # Messages number IFDs and raw frames from 1; they differ by one after a final image.
            where = f"raw frame {k - first_frame + 1} (IFD {k + 1})"
            if (
                int(page.compression) != compression
                or int(page.imagewidth) != width
                or int(page.imagelength) != height
            ):
                raise EerFormatError(
                    f"{self.path}: {where} (compression {int(page.compression)}, "
                    f"{int(page.imagewidth)}x{int(page.imagelength)}) differs from raw frame 1 "
                    f"(compression {compression}, {width}x{height})."
                )
            offsets, counts = page.dataoffsets, page.databytecounts
            if len(offsets) != len(counts) or not offsets:
                raise EerFormatError(f"{self.path}: {where} has inconsistent strip tags.")
            strips.append([(int(o), int(c)) for o, c in zip(offsets, counts)])
        metadata = tif.eer_metadata
        if not metadata:
            # The acquisition XML normally sits in the first IFD; after a final image, look at the
            # first frame too.
            metadata = frame0.eer_tags if hasattr(frame0, "eer_tags") else None
        return _Structure(strips, encoding, width, final_image, dict(metadata or {}))

    def _encoding(self, page: Any, compression: int) -> EerEncoding:
        if compression == COMPRESSION_EER_8BIT:
            return EerEncoding(compression, 8, 2, 2)
        if compression == COMPRESSION_EER_7BIT:
            return EerEncoding(compression, 7, 2, 2)
        rle = page.tags.valueof(TAG_RLE_BITS)
        horizontal = page.tags.valueof(TAG_HORIZONTAL_BITS)
        vertical = page.tags.valueof(TAG_VERTICAL_BITS, horizontal)  # RELION: 65009 <- 65008
        if rle is None or horizontal is None:
            raise EerFormatError(
                f"{self.path}: compression 65002 without the tags 65007 (run bits) and 65008 "
                "(sub-pixel bits)."
            )
        rle, horizontal, vertical = int(rle), int(horizontal), int(vertical)
        # RELION 5.0.1 accepts only 7/1/1. We also read 7/2/2 and the other run widths
        # imagecodecs decodes (run + symbol bits 9 to 16), with 1 or 2 sub-pixel bits per axis:
        # RELION's rendering table is defined for those only.
        if not (
            4 <= rle <= 14
            and horizontal == vertical
            and horizontal in (1, 2)
            and 8 < rle + horizontal + vertical <= 16
        ):
            raise EerFormatError(
                f"{self.path}: Unsupported compression scheme: type = 65002, rle_bits = {rle}, "
                f"subpix_h = {horizontal}, subpix_v = {vertical}"
            )
        return EerEncoding(compression, rle, horizontal, vertical)

    # -- frames ------------------------------------------------------------------------------

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._local = threading.local()

    def __del__(self) -> None:  # last resort; use the context manager
        try:
            self.close()
        except Exception:
            pass

    def _frame_stream(self, index: int) -> bytes:
        """All strips of raw frame ``index`` concatenated (RELION decodes them as one stream)."""
        fd = self._fd
        if fd is None:
            raise EerFormatError(f"{self.path}: the movie is closed.")
        parts = []
        for offset, count in self._strips[index]:
            try:
                if hasattr(os, "pread"):
                    part = os.pread(fd, count, offset)
                else:  # no pread (Windows): serialise seek + read
                    with self._read_lock:
                        os.lseek(fd, offset, os.SEEK_SET)
                        part = os.read(fd, count)
            except OSError as exc:
                raise EerFormatError(
                    f"{self.path}: cannot read raw frame {index + 1} ({exc.strerror})."
                ) from None
            if len(part) != count:
                raise EerFormatError(
                    f"{self.path}: raw frame {index + 1} is cut short (the file shrank?)."
                )
            parts.append(part)
        return b"".join(parts)

    def _decode(self, index: int, need_symbols: bool = False) -> _DecodedFrame:
        data = self._frame_stream(index)
        size = self.detector_size
        decoded = decode_eer_frame(
            data, (size, size), self.encoding, need_symbols=need_symbols, buffer=self._buffer()
        )
        if decoded is None:
            return _DecodedFrame(index, None, None)
        return _DecodedFrame(index, decoded[0], decoded[1])

    def _buffer(self) -> np.ndarray | None:
        """This thread's scratch image for imagecodecs, None for 65000. Fresh 16 MB arrays per
        frame would cost page faults that serialise the threads."""
        if self.encoding.compression == COMPRESSION_EER_8BIT:
            return None
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            size = self.detector_size
            buffer = self._local.buffer = np.zeros((size, size), dtype=np.bool_)
        return buffer

    def read_frame(self, index: int) -> np.ndarray:
        """Raw frame ``index`` (0-based) on the physical grid: uint8 0/1, EER raster order.

        Raises CorruptEerFrameError when the frame's runs do not add up to ``W*H`` pixels.
        """
        self._check_index(index)
        frame = self._decode(index)
        if frame.positions is None:
            raise CorruptEerFrameError(
                f"{self.path}: raw frame {index + 1} is corrupt (its runs do not add up to "
                f"{self.detector_size}x{self.detector_size} pixels)."
            )
        out = np.zeros(self.detector_size * self.detector_size, dtype=np.uint8)
        out[frame.positions] = 1
        return out.reshape(self.detector_size, self.detector_size)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.info.n_frames:
            raise IndexError(f"raw frame {index} out of range 0..{self.info.n_frames - 1}")

    # -- rendering ---------------------------------------------------------------------------

    def output_size(self, upsampling: int) -> int:
        """Side of the rendered image for this detector."""
        self.check_upsampling(upsampling)
        return output_size(self.detector_size, upsampling)

    def check_upsampling(self, upsampling: int) -> None:
        """Reject what RELION rejects (its texts, prefixed with the movie name)."""
        check_upsampling_value(upsampling)
        if upsampling in (-1, 3):
            if self.encoding.horizontal_bits == 1:
                raise OptionError(
                    f"{self.path}: For subpixel_bits = 2, eer_upsamling must be 1 or 2."
                )
            if self.detector_size == 2048:
                raise OptionError(
                    f"{self.path}: Invalid EER upsamle for 2K images. This must be 2 or 1."
                )

    def render(
        self,
        start: int,
        stop: int,
        upsampling: int = 1,
        executor: Executor | None = None,
    ) -> RenderResult:
        """Sum raw frames ``start .. stop-1`` (0-based, half-open) on the output grid.

        Corrupt frames are left out and listed in the result. ``executor`` (a thread pool)
        decodes and checks frames in parallel; summing happens in the calling thread, a few
        frames behind. It must not be the pool this call runs on (its tasks would wait for
        decodes queued behind themselves); the conversion pipeline passes none and gets its
        parallelism from rendering several pages at once, which works because decoding and
        summing spend their time in calls that release the GIL. Sums are uint16 unless they could
        exceed 65535 (more than 65535 frames, or 16383 frames binned), then uint32.

        Memory besides the counts: the frames in flight (a few MB of events each) and a batch of
        output indices (at most 8 frames or 4M events, 32 MB).
        """
        self.check_upsampling(upsampling)
        n = self.info.n_frames
        if not (0 <= start < stop <= n):
            raise OptionError(
                f"{self.path}: invalid raw frame range {start + 1} to {stop} requested; the movie "
                f"has {n} raw frames. Invalid frame range was requested."
            )
        size = output_size(self.detector_size, upsampling)
        counts = np.zeros((size, size), dtype=counts_dtype(stop - start, upsampling))
        bands = _BandedSum(counts, self.detector_size, upsampling, self.encoding)
        corrupt: list[int] = []
        for frame in self._decoded_frames(start, stop, executor, bands.need_symbols):
            if frame.positions is None:
                corrupt.append(frame.index)
            else:
                bands.add(frame.positions, frame.symbols)
        bands.flush()
        return RenderResult(
            counts=counts,
            corrupt_frames=sorted(corrupt),
            max_count=int(counts.max()),
            start=start,
            stop=stop,
            upsampling=upsampling,
        )

    def corrupt_frames(
        self, start: int = 0, stop: int | None = None, executor: Executor | None = None
    ) -> list[int]:
        """0-based indices of corrupt raw frames in ``start .. stop-1`` (decodes the frames)."""
        stop = self.info.n_frames if stop is None else stop
        return [f.index for f in self._decoded_frames(start, stop, executor) if f.positions is None]

    def _decoded_frames(
        self, start: int, stop: int, executor: Executor | None, need_symbols: bool = False
    ) -> Iterator[_DecodedFrame]:
        if executor is None:
            for index in range(start, stop):
                yield self._decode(index, need_symbols)
            return
        pending: deque[Future[_DecodedFrame]] = deque()
        indices = iter(range(start, stop))
        try:
            for index in indices:
                pending.append(executor.submit(self._decode, index, need_symbols))
                if len(pending) >= _FRAMES_IN_FLIGHT:
                    break
            while pending:
                done = pending.popleft()
                nxt = next(indices, None)
                if nxt is not None:
                    pending.append(executor.submit(self._decode, nxt, need_symbols))
                yield done.result()
        finally:
            for fut in pending:
                fut.cancel()
            for fut in pending:
                if not fut.cancelled():
                    fut.exception()  # wait, so the file is not closed under a running decode


class CorruptEerFrameError(EerFormatError):
    """A raw EER frame whose runs do not add up to the frame size (``read_frame`` only;
    ``render`` skips such frames and reports them)."""


# --------------------------------------------------------------------------------------------
# Grouping and dose


def plan_groups(
    n_raw_frames: int, grouping: int, *, movie: str = ""
) -> tuple[list[tuple[int, int]], int]:
    """Output pages of ``--eer_grouping``: ``(pages, n_dropped)``.

    ``pages`` are ``(start, stop)`` raw frame ranges (0-based, half-open), ``floor(N / g)`` of
    them; the ``N mod g`` leftover frames at the end are dropped, as in RELION. RELION loses the
    last frame when g = 1 (its loop runs ``f < N``); here g = 1 gives N pages. ``g <= 0`` and
    ``g > N`` (RELION then writes a TIFF without any page) raise OptionError.
    """
    where = f"{movie}: " if movie else ""
    if grouping <= 0:
        raise OptionError(
            f"{where}--eer_grouping must be a positive number of raw frames (got {grouping})."
        )
    if grouping > n_raw_frames:
        raise OptionError(
            f"{where}--eer_grouping {grouping} is larger than the number of raw frames "
            f"({n_raw_frames}); no output frame could be made."
        )
    n_pages = n_raw_frames // grouping
    pages = [(k * grouping, (k + 1) * grouping) for k in range(n_pages)]
    return pages, n_raw_frames - n_pages * grouping


def _metadata_number(metadata: Mapping[str, Any], key: str) -> float | None:
    value = metadata.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sensor_pixel_size_angstrom(metadata: Mapping[str, Any]) -> float | None:
    """Pixel size (at the specimen, physical grid) in Angstrom from ``sensorPixelSize.width`` and
    ``.height`` (metres) of the EER acquisition metadata, their geometric mean; None if absent."""
    sizes = []
    for key in ("sensorPixelSize.width", "sensorPixelSize.height"):
        value = _metadata_number(metadata, key)
        unit = metadata.get(f"{key}.unit", "m")
        if value is not None and value > 0 and unit == "m":
            sizes.append(value * 1e10)
    if not sizes:
        return None
    return math.sqrt(sizes[0] * sizes[-1])


def grouping_for_dose(
    metadata: Mapping[str, Any],
    dose_per_fraction_e_per_A2: float,
    *,
    movie: str = "",
    pixel_size_angstrom: float | None = None,
) -> tuple[int, float]:
    """``(grouping, dose_per_raw_frame_e_per_A2)`` for a target dose per output fraction.

    The dose per raw frame comes from the EER acquisition metadata (tag 65001):
    ``totalDose`` (electrons per physical pixel) / ``numberOfFrames`` / pixel area, with the pixel
    size from ``sensorPixelSize.width``/``.height`` (metres) unless ``pixel_size_angstrom`` is
    given. The grouping is ``round(dose_per_fraction / dose_per_raw_frame)`` (halves up), at
    least 1. Missing or implausible fields raise OptionError naming the movie.
    """
    where = f"{movie}: " if movie else ""
    if not (math.isfinite(dose_per_fraction_e_per_A2) and dose_per_fraction_e_per_A2 > 0):
        raise OptionError(f"{where}the dose per fraction must be a positive number of e/A^2.")
    total_dose = _metadata_number(metadata, "totalDose")
    n_frames = _metadata_number(metadata, "numberOfFrames")
    missing = [
        name
        for name, value in (("totalDose", total_dose), ("numberOfFrames", n_frames))
        if value is None or value <= 0
    ]
    if pixel_size_angstrom is None:
        pixel_size_angstrom = sensor_pixel_size_angstrom(metadata)
        if pixel_size_angstrom is None:
            missing.append("sensorPixelSize")
    if missing:
        raise OptionError(
            f"{where}the EER acquisition metadata lacks {', '.join(missing)}; cannot derive the "
            "grouping from a dose. Use --eer_grouping instead."
        )
    unit = metadata.get("totalDose.unit", "e/pixel")
    if unit != "e/pixel":
        raise OptionError(f"{where}unexpected unit of totalDose in the EER metadata: {unit!r}.")
    # A sensor pixel size in metres misread as micrometres, or similar, shows up here.
    if not 0.01 <= pixel_size_angstrom <= 1000:
        raise OptionError(
            f"{where}implausible pixel size {pixel_size_angstrom:g} A in the EER metadata."
        )
    assert total_dose is not None and n_frames is not None
    dose_per_raw_frame = total_dose / n_frames / (pixel_size_angstrom * pixel_size_angstrom)
    grouping = max(1, math.floor(dose_per_fraction_e_per_A2 / dose_per_raw_frame + 0.5))
    return grouping, dose_per_raw_frame
