"""The EER container: IFDs, bitstream encodings, acquisition metadata, raw frames' data.

An EER file is a BigTIFF with one IFD per raw detector frame. Tag 259 (Compression) names the
bitstream scheme: 65000 (8-bit runs, 4-bit symbols), 65001 (7-bit runs, 4-bit symbols) or 65002
(widths in the private tags 65007 = run bits, 65008 = horizontal and 65009 = vertical sub-pixel
bits). Tag 65001 of the first IFD holds the acquisition metadata XML (``totalDose``,
``numberOfFrames``, ``sensorPixelSize``...), which tifffile parses into ``TiffFile.eer_metadata``.
RELION reads the first IFD's tags only; here every frame IFD is checked against it, and every
frame's data against the file's size. Messages number raw frames and IFDs from 1
(``raw frame 2 (IFD 3)``: the two differ by one after a leading final-image IFD); the ``index``
arguments of the API are 0-based. The library never prints: messages are returned as strings.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tifffile

from cryotiff.errors import CryotiffError, EerFormatError
from cryotiff.io import Movie, MovieInfo, capture_tifffile_log, open_regular_file, pread_exactly, will_need
from cryotiff.io.tiff_errors import problem_of_file, tifffile_problem, why_no_page

COMPRESSION_EER_8BIT = 65000
COMPRESSION_EER_7BIT = 65001
COMPRESSION_EER_VARIABLE = 65002
EER_COMPRESSIONS = (COMPRESSION_EER_8BIT, COMPRESSION_EER_7BIT, COMPRESSION_EER_VARIABLE)
TAG_RLE_BITS = 65007
TAG_HORIZONTAL_BITS = 65008
TAG_VERTICAL_BITS = 65009
SUPPORTED_DETECTOR_SIZES = (4096, 2048)
LEGACY_EER_FOOTER = b"ThermoFisherECComprOK000"


def is_eer_path(path: str | os.PathLike[str]) -> bool:
    """True when the extension (after the last dot) is exactly ``eer`` or ``ecc`` (RELION's test,
    case-sensitive)."""
    name = os.fspath(path)
    return "." in name and name.rsplit(".", 1)[1] in ("eer", "ecc")


# --------------------------------------------------------------------------------------------
# Encodings


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

    @property
    def overflow_skip_bits(self) -> int:
        """Symbol bits after an overflow code: 65000 always carries a symbol field ("bit waste"
        of the old prototype files, skipped as RELION skips it; imagecodecs does not), the
        others none."""
        return self.symbol_bits if self.compression == COMPRESSION_EER_8BIT else 0


def max_frame_nbytes(n_pixels: int, encoding: EerEncoding) -> int:
    """Generous upper bound of the bytes one raw frame's stream can occupy: twice what a frame
    with an event on every pixel needs (one ``run + symbol`` code per pixel and a final run),
    plus 4 KiB. More data than this is a damaged IFD, whatever the vendor's padding."""
    bits = n_pixels * (encoding.rle_bits + encoding.symbol_bits) + encoding.rle_bits
    return 2 * -(-bits // 8) + 4096


# --------------------------------------------------------------------------------------------
# Metadata


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


# --------------------------------------------------------------------------------------------
# The reader


@dataclass
class _Structure:
    strips: list[list[tuple[int, int]]]
    encoding: EerEncoding
    size: int
    final_image: bool
    metadata: dict[str, Any] = field(default_factory=dict)


class EerContainer(Movie):
    """An EER file opened for reading (context manager): its IFDs, encoding, metadata and the
    raw frames' data; :class:`cryotiff.io.eer.EerMovie` adds decoding and rendering.

    Attributes:
        info: header facts; ``n_frames`` = raw detector frames (a leading final-image IFD with
            compression 1 is skipped); ``shape_yx`` = detector size; ``extra`` holds
            ``compression``, ``rle_bits``, ``horizontal_bits``, ``vertical_bits``,
            ``final_image_ifd`` and ``sensor_pixel_size_angstrom`` (from the metadata, or None).
        metadata: acquisition metadata of tag 65001 (``TiffFile.eer_metadata``), {} when absent.
        encoding: the bitstream scheme.
        log_messages: warnings tifffile logged while reading the structure (not printed).

    Reading is thread-safe: strips are read with ``os.pread`` (``os.preadv`` into a buffer of
    the calling thread); the frame data buffers are per thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._read_lock = threading.Lock()
        self._local = threading.local()
        self.log_messages: list[str] = []
        # The structure and the frames are read through this one descriptor, opened so that a
        # named pipe at the name cannot block it.
        self._fd = open_regular_file(self.path, "an EER movie", EerFormatError)
        try:
            structure = self._read_structure()
        except BaseException:
            self.close()
            raise
        self._strips = structure.strips
        self.encoding = structure.encoding
        self.detector_size = structure.size
        self.metadata: dict[str, Any] = structure.metadata
        n = len(self._strips)
        self._frame_nbytes = [sum(count for _, count in strips) for strips in self._strips]
        total_bytes = sum(self._frame_nbytes)
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
        try:
            file_size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise EerFormatError(f"{self.path}: cannot open the file ({exc.strerror}).") from None
        # tifffile reads a file object of its own (its offset moves), made on a duplicate of the
        # descriptor: the same file, closed with it.
        handle = open(os.fspath(self.path), "rb", opener=lambda *_: os.dup(self._fd))  # noqa: SIM115
        with handle, capture_tifffile_log() as log:
            try:
                with tifffile.TiffFile(handle) as tif:
                    structure = self._parse(tif, file_size, handle)
            except CryotiffError:
                raise
            except Exception as exc:  # tifffile, struct, numpy, XML: a damaged file
                if self._has_legacy_footer():
                    raise EerFormatError(
                        f"{self.path}: legacy (headerless, non-TIFF) EER files are not supported."
                    ) from None
                detail = (tifffile_problem(log.messages[-1]) if log.messages
                          else problem_of_file(self.path, exc, handle))
                raise EerFormatError(f"{self.path}: {detail}.") from None
        self.log_messages = log.messages
        if log.errors:  # a damaged IFD: tifffile would silently report fewer frames
            raise EerFormatError(f"{self.path}: {tifffile_problem(log.errors[0])}.")
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
            size = os.fstat(self._fd).st_size
            if size < len(LEGACY_EER_FOOTER):
                return False
            return pread_exactly(self._fd, len(LEGACY_EER_FOOTER), size - len(LEGACY_EER_FOOTER)) == LEGACY_EER_FOOTER
        except OSError:
            return False

    def _parse(self, tif: tifffile.TiffFile, file_size: int, handle) -> _Structure:
        pages = tif.pages
        n_pages = len(pages)
        if n_pages == 0:
            raise EerFormatError(f"{self.path}: {why_no_page(self.path, file_size, handle)}.")
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
        # RELION 5.0.1 accepts only 7/1/1. We also read 7/2/2 and the other run widths that
        # imagecodecs decodes too (run + symbol bits 9 to 16; the kernel is tested against it),
        # with 1 or 2 sub-pixel bits per axis: RELION's rendering table is defined for those only.
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

    def fileno(self) -> int:
        """The descriptor the frames are read through."""
        if self._fd is None:
            raise ValueError(f"{self.path}: the movie is closed.")
        return self._fd

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

    def frame_nbytes(self, index: int) -> int:
        """Bytes of raw frame ``index``'s data (all its strips; 0-based)."""
        return self._frame_nbytes[index]

    def frame_data(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The data of raw frames ``start .. stop-1`` (0-based), each frame's strips concatenated
        (RELION decodes them as one stream): ``(stream, starts, n_bytes)``, where frame
        ``start + k`` is ``stream[starts[k] : starts[k] + n_bytes[k]]``.

        ``stream`` is this thread's buffer, reused by its next call: read it before then. Reused
        buffers spare the page faults of fresh arrays, which would serialise the threads.
        """
        fd = self._fd
        if fd is None:
            raise EerFormatError(f"{self.path}: the movie is closed.")
        n_bytes = np.array(self._frame_nbytes[start:stop], np.int64)
        starts = np.zeros(n_bytes.size, np.int64)
        np.cumsum(n_bytes[:-1], out=starts[1:])
        total = int(n_bytes.sum())
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.size < total:
            buffer = self._local.buffer = np.empty(max(total, 1 << 20), np.uint8)
        position = 0
        for index in range(start, stop):
            for offset, count in self._strips[index]:
                view = memoryview(buffer[position : position + count])
                try:
                    if hasattr(os, "preadv"):
                        got = os.preadv(fd, [view], offset)
                    else:  # no preadv (Windows): serialise seek + read
                        with self._read_lock:
                            os.lseek(fd, offset, os.SEEK_SET)
                            got = _read_into(fd, view)
                except OSError as exc:
                    raise EerFormatError(
                        f"{self.path}: cannot read raw frame {index + 1} ({exc.strerror})."
                    ) from None
                if got != count:
                    raise EerFormatError(
                        f"{self.path}: raw frame {index + 1} is cut short (the file shrank?)."
                    )
                position += count
        # The frames that follow (as many as these) are likely read next: let the disk start on
        # them while these are decoded.
        span_start = span_end = 0
        for index in range(stop, min(stop + (stop - start), self.info.n_frames)):
            for offset, count in self._strips[index]:
                if offset != span_end:  # strips one after the other are advised as one range
                    will_need(fd, span_start, span_end - span_start)
                    span_start = offset
                span_end = offset + count
        will_need(fd, span_start, span_end - span_start)
        return buffer[:total], starts, n_bytes

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.info.n_frames:
            raise IndexError(f"raw frame {index} out of range 0..{self.info.n_frames - 1}")


def _read_into(fd: int, view: memoryview) -> int:
    data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)

