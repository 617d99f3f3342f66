"""TIFF movies: the reader (TIFF input, for example LZW TIFF from SerialEM) and the atomic writer.

Orientation, in one place: RELION, IMOD, MotionCor2 and SerialEM flip the Y axis whenever they
read or write TIFF (scanline 0 of the file holds the *last* row of the frame in memory). The
writer therefore writes row ``ny - 1 - r`` as scanline ``r``, and the reader flips back, so a
frame read from a TIFF movie is in the same raster order as one read from the MRC it came from.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InputError, OutputError, TiffFormatError, VerificationError
from . import Movie, MovieInfo, capture_tifffile_log, open_regular_stream, open_to_read, special_file_kind
from .atomic import AtomicFile, CheckedDirectory, WrittenFile
from .memory import refuse_frames_beyond_memory
from .tiff_errors import io_failure, problem_of_file, tifffile_problem, why_no_page
from .tiff_ifd import RESOLUTION_TAG_CODES, TYPE_NAMES, remove_ifd_entries

#: Sample types every reader of movie TIFFs accepts (RELION's TIFF reader: u8, i8, u16, i16, f32).
TIFF_SAMPLE_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.float32)

#: Size above which a movie is written as BigTIFF. Classic TIFF addresses 4 GiB; keep a margin for
#: IFDs and for codecs that expand incompressible data.
BIGTIFF_THRESHOLD_BYTES = 2**32 - 2**26

#: Frame sizes (w x h) at which RELION unpacks an 8-bit TIFF as IMOD 4-bit (``src/rwTIFF.h``).
IMOD_4BIT_SIZES_WH = frozenset(
    {(5760, 8184), (8184, 5760), (4092, 11520), (11520, 4092), (3710, 7676), (7676, 3710), (3838, 7420), (7420, 3838)}
)


def relion_reads_as_4bit_packed(shape_yx: tuple[int, int]) -> bool:
    """Whether RELION reads an 8-bit TIFF of frames ``shape_yx`` as IMOD 4-bit packed data
    (``src/rwTIFF.h``), each byte two pixels."""
    return (int(shape_yx[1]), int(shape_yx[0])) in IMOD_4BIT_SIZES_WH


def flip_rows(frame: np.ndarray) -> np.ndarray:
    """Return the frame in TIFF scanline order (row ``ny-1`` first): the convention of RELION, IMOD,
    MotionCor2 and SerialEM. The same function converts back."""
    return frame[::-1]


#: Largest ImageWidth or ImageLength accepted (as MRC's NX and NY); more is a damaged tag.
MAX_SIDE_PIXELS = 1 << 17
#: Largest frame accepted, in bytes (a 16K x 16K float32 frame is 1 GiB); more is a damaged tag.
MAX_FRAME_NBYTES = 1 << 32
#: At most how many bytes one byte of a page's stored data can decode to, per Compression tag,
#: with a margin of 2: PackBits 2 -> 128 bytes; LZW a 9-bit code -> a 4096-byte string;
#: Deflate 1032 (258 bytes from 2 bits); ZSTD 32768 (a 4-byte RLE block -> 128 KiB); LZMA about
#: 56000 (a long repeated match from a few well-predicted bits). A page that claims more pixels
#: than its data can hold has damaged size tags, and decoding it would allocate the claimed size.
MAX_EXPANSION = {1: 1, 32773: 128, 5: 8192, 8: 2064, 32946: 2064, 50000: 65536, 34925: 131072}
#: The compressions whose libtiff codecs apply a Predictor (``tif_predict.c`` users: LZW, Deflate,
#: LZMA, ZSTD); with any other, libtiff ignores the tag, while tifffile applies it.
PREDICTOR_COMPRESSIONS = frozenset({5, 8, 32946, 34925, 50000})
#: For the other compressions tifffile decodes.
DEFAULT_MAX_EXPANSION = 131072
#: Largest XResolution in pixels per centimetre a TIFF RATIONAL holds (2**32 - 1 over 1).
MAX_PIXELS_PER_CM = 2**32 - 1

_TAG_NAMES = {
    256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
    277: "SamplesPerPixel", 278: "RowsPerStrip", 317: "Predictor", 339: "SampleFormat",
}


def pixel_size_fits_tiff(pixel_size_angstrom: float) -> bool:
    """Whether ``1e8 / pixel size`` pixels per cm (how RELION writes the pixel size) can be
    written as a TIFF RATIONAL and read back: from about 0.0233 A (2**32 - 1 pixels per cm) up to
    1e11 A (1e-3 pixels per cm, still resolved by a 32-bit denominator)."""
    if not (math.isfinite(pixel_size_angstrom) and pixel_size_angstrom > 0):
        return False
    return 1e-3 <= 1e8 / pixel_size_angstrom <= MAX_PIXELS_PER_CM


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _single_integer(page, code: int, default: int | None, where: str) -> int:
    """The value of an integer tag that must hold one value (or several equal ones: BitsPerSample
    and SampleFormat hold one per sample)."""
    tag = page.tags.get(code)
    if tag is None:
        if default is None:
            raise TiffFormatError(f"{where} lacks the {_TAG_NAMES[code]} tag ({code})")
        return default
    value = tag.value
    values = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value,)
    what = f"{where}: the {_TAG_NAMES[code]} tag ({code})"
    if not all(_is_integer(v) for v in values):
        kind = TYPE_NAMES.get(int(tag.dtype), str(tag.dtype))
        raise TiffFormatError(f"{what} is of type {kind}, where a whole number is needed; the file is damaged")
    if not values:
        raise TiffFormatError(f"{what} holds no value; the file is damaged")
    if len({int(v) for v in values}) != 1:
        shown = f" {tuple(int(v) for v in values)}" if len(values) <= 8 else ""
        raise TiffFormatError(f"{what} holds {len(values)} different values{shown} where one is needed; "
                              "the file is damaged")
    return int(values[0])


@dataclass(frozen=True)
class _PageFacts:
    shape_yx: tuple[int, int]
    dtype: np.dtype
    compression: int


def _check_page(page, number: int, file_nbytes: int, path: Path) -> _PageFacts:
    """Check one page's tags against each other and against the file, without decoding it.

    ``number`` is 1-based. Raises TiffFormatError naming the page and the tag: a malformed size
    or sample tag, strips outside the file, empty or missing strips (tifffile would fill them
    with zeros), or more pixels than the page's data can hold.
    """
    where = f"{path}: page {number}"
    width = _single_integer(page, 256, None, where)
    length = _single_integer(page, 257, None, where)
    for name, side in (("ImageWidth", width), ("ImageLength", length)):
        if not 0 < side <= MAX_SIDE_PIXELS:
            raise TiffFormatError(
                f"{where}: {name} is {side}, which is not a plausible frame size (1 to "
                f"{MAX_SIDE_PIXELS}); the file is damaged"
            )
    samples = _single_integer(page, 277, 1, where)
    bits = _single_integer(page, 258, 1, where)
    _single_integer(page, 339, 1, where)
    compression = _single_integer(page, 259, 1, where)
    for code in (278, 317):
        if code in page.tags:
            _single_integer(page, code, None, where)
    predictor = _single_integer(page, 317, 1, where)
    if predictor != 1 and compression not in PREDICTOR_COMPRESSIONS:
        raise TiffFormatError(f"{where}: the Predictor tag (317) is {predictor}, but compression {compression} takes "
                              "none: libtiff-based readers (RELION, MotionCor) ignore it, tifffile would not; the "
                              "file is damaged")
    if samples != 1 or int(getattr(page, "imagedepth", 1)) != 1 or page.shape != (length, width):
        raise TiffFormatError(
            f"{where}: pages of shape {page.shape} ({samples} samples per pixel) are not "
            "single-sample 2D frames"
        )
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    # Packed samples (12 bits, say) are refused too: RELION's and MotionCor's readers take whole
    # bytes, and a damaged BitsPerSample would otherwise unpack a strip into other values.
    if dtype is None or dtype.type not in TIFF_SAMPLE_TYPES or bits != 8 * dtype.itemsize:
        shown = dtype if dtype is not None and bits == 8 * dtype.itemsize else f"of {bits} bits"
        raise TiffFormatError(f"{where}: sample type {shown} is not one that movie readers accept")
    frame_nbytes = length * width * dtype.itemsize
    if frame_nbytes > MAX_FRAME_NBYTES:
        raise TiffFormatError(
            f"{where}: {width} x {length} pixels of {dtype} ({frame_nbytes} bytes) is not a "
            "plausible frame; the file is damaged"
        )
    offsets, counts = tuple(page.dataoffsets), tuple(page.databytecounts)
    n_segments = int(np.prod(page.chunked)) if page.chunked else 0
    unit = "tile" if page.is_tiled else "strip"
    if len(offsets) != len(counts) or len(offsets) != n_segments:
        raise TiffFormatError(
            f"{where}: {len(offsets)} {unit} offsets and {len(counts)} byte counts, but its size "
            f"needs {n_segments} {unit}s; the file is damaged"
        )
    for index, (offset, count) in enumerate(zip(offsets, counts), start=1):
        if count <= 0:
            raise TiffFormatError(f"{where}: {unit} {index} is empty (byte count {count}); the file is damaged")
        if offset < 8 or offset + count > file_nbytes:
            raise TiffFormatError(
                f"{where}: {unit} {index} ({count} bytes at offset {offset}) lies outside the file "
                f"({file_nbytes} bytes); the file is truncated or damaged"
            )
    stored = sum(int(count) for count in counts)
    if compression == 1:
        needed = -(-width * bits // 8) * length
        if stored < needed:
            raise TiffFormatError(
                f"{where}: the page holds {stored} bytes, but {width} x {length} uncompressed pixels of "
                f"{bits} bits need {needed}; the file is truncated or damaged"
            )
    elif frame_nbytes > stored * MAX_EXPANSION.get(compression, DEFAULT_MAX_EXPANSION):
        raise TiffFormatError(
            f"{where}: {width} x {length} pixels ({frame_nbytes} bytes) cannot come from its "
            f"{stored} bytes of compressed data (compression {compression}); its size tags are damaged"
        )
    return _PageFacts((length, width), dtype, compression)


def _resolution_pixel_size(page, path: Path) -> tuple[float | None, str | None]:
    """``(pixel size in A, warning)`` from the XResolution and ResolutionUnit tags of a page.

    No XResolution, a zero one, or ResolutionUnit 1 (none) state no pixel size: ``(None, None)``.
    Malformed tags (not one RATIONAL, an unknown unit) give no pixel size and a warning: the
    pixels are still read.
    """
    tags = page.tags
    if "XResolution" not in tags:
        return None, None
    value = tags["XResolution"].value
    unit_tag = tags.get("ResolutionUnit")
    unit = unit_tag.value if unit_tag is not None else 2  # TIFF's default: inch
    malformed = f"{path}: the resolution tags are malformed"
    if not (isinstance(value, tuple) and len(value) == 2 and all(_is_integer(v) for v in value)):
        return None, f"{malformed} (XResolution {value!r}); its pixel size is not used"
    numerator, denominator = (int(v) for v in value)
    if numerator == 0 or denominator == 0:
        return None, None
    if not _is_integer(unit) or int(unit) not in (1, 2, 3):
        return None, f"{malformed} (ResolutionUnit {unit!r}); its pixel size is not used"
    pixels_per_unit = numerator / denominator
    if int(unit) == 3:  # centimetre: RELION writes 1e8 / pixel size (A)
        return 1e8 / pixels_per_unit, None
    if int(unit) == 2:  # inch, which RELION also reads back
        return 2.54e8 / pixels_per_unit, None
    return None, None


class TiffMovie(Movie):
    """A multi-page TIFF movie, one frame per page, read through tifffile.

    Frames are returned flipped back to raster order (see the module docstring). Every page's
    tags are checked when the movie is opened, before anything is decoded: its size, sample type
    and strips must agree with page 1 and with the file (:func:`_check_page`), so that memory
    stays a few frames deep whatever the tags claim, and pages larger than the memory left are
    refused before the first is decoded (:func:`cryotiff.io.memory.refuse_frames_beyond_memory`).
    Pages are decoded one at a time;
    ``read_frame`` is serialised by a lock because tifffile shares one file handle.
    ``info.warnings`` holds what was tolerated (malformed resolution tags).
    """

    def __init__(self, path: str | os.PathLike[str]):
        import tifffile

        self._path = Path(path)
        self._tif = None
        self._room_checked = False
        # Every page is read through this one file, opened so that a named pipe cannot block it.
        self._handle = open_regular_stream(self._path, "a TIFF movie")
        try:
            file_nbytes = os.fstat(self._handle.fileno()).st_size
        except OSError as exc:
            self.close()
            raise InputError(f"{self._path}: cannot be read ({exc.strerror or exc}).") from None
        if file_nbytes == 0:
            self.close()
            raise TiffFormatError(f"{self._path}: the file is empty")
        self._lock = threading.Lock()
        try:
            with capture_tifffile_log() as log:
                self._tif = tifffile.TiffFile(self._handle)
                pages = self._tif.pages
                n_pages = len(pages)  # reads every IFD
                if log.errors:  # a damaged IFD: tifffile reports fewer pages instead of raising
                    raise TiffFormatError(f"{self._path}: {tifffile_problem(log.errors[0])}")
                if n_pages == 0:
                    raise TiffFormatError(f"{self._path}: {why_no_page(self._path, file_nbytes, self._handle)}")
                first = pages.first
                facts = _check_page(first, 1, file_nbytes, self._path)
                for index in range(1, n_pages):
                    page_facts = _check_page(pages[index], index + 1, file_nbytes, self._path)
                    if (page_facts.shape_yx, page_facts.dtype) != (facts.shape_yx, facts.dtype):
                        raise TiffFormatError(
                            f"{self._path}: page {index + 1} is {page_facts.shape_yx} {page_facts.dtype}, "
                            f"page 1 is {facts.shape_yx} {facts.dtype}"
                        )
                if log.errors:
                    raise TiffFormatError(f"{self._path}: {tifffile_problem(log.errors[0])}")
                pixel_size, resolution_warning = _resolution_pixel_size(first, self._path)
        except TiffFormatError:
            self.close()
            raise
        except Exception as exc:  # tifffile raises many types on damaged files
            problem = problem_of_file(self._path, exc, self._handle)
            self.close()
            raise TiffFormatError(f"{self._path}: {problem}") from None
        self.info = MovieInfo(
            path=self._path,
            kind="tiff",
            n_frames=n_pages,
            shape_yx=facts.shape_yx,
            dtype=facts.dtype,
            pixel_size_angstrom=pixel_size,
            frame_nbytes=int(np.prod(facts.shape_yx)) * facts.dtype.itemsize,
            extra={"compression": facts.compression},
            warnings=(resolution_warning,) if resolution_warning else (),
        )

    def read_frame(self, index: int) -> np.ndarray:
        """Page ``index`` (0-based) in raster order.

        Raises:
            NotEnoughMemoryError: a page is larger than the memory this process can still get
                (checked before the first page is decoded).
            TiffFormatError, InputError: the page cannot be decoded or read.
        """
        if not 0 <= index < self.info.n_frames:
            raise IndexError(index)
        if not self._room_checked:
            self._room_checked = True
            refuse_frames_beyond_memory(self._path, self.info.shape_yx, str(self.info.dtype), self.info.frame_nbytes)
        try:
            with self._lock, capture_tifffile_log() as log:
                page = self._tif.pages[index]
                data = page.asarray()
        except MemoryError:
            raise  # out of memory, not a damaged page: jobs.run_job names the frame size
        except Exception as exc:
            raise self._page_error(index, exc, log.errors, "cannot be decoded") from None
        if log.errors:
            raise self._page_error(index, log.errors[0], log.errors, "is damaged")
        if data.shape != self.info.shape_yx or data.dtype != self.info.dtype:
            raise TiffFormatError(
                f"{self._path}: page {index + 1} is {data.shape} {data.dtype}, "
                f"page 1 is {self.info.shape_yx} {self.info.dtype}"
            )
        return np.ascontiguousarray(flip_rows(data))

    def _page_error(self, index: int, problem: BaseException | str, logged: Sequence[str], what: str) -> InputError:
        """The error for page ``index`` that tifffile could not read: ``problem`` (its exception or
        logged line) in plain words, or, when it or a ``logged`` line is the operating system
        failing to read (tifffile logs that as a damaged IFD), an :class:`InputError` saying so."""
        for candidate in (problem, *logged):
            failure = io_failure(candidate)
            if failure is not None:
                return InputError(f"{self._path}: page {index + 1}: {failure}")
        return TiffFormatError(f"{self._path}: page {index + 1} {what}: {tifffile_problem(problem)}")

    def fileno(self) -> int:
        """The descriptor the pages are read through."""
        return self._handle.fileno()

    def close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
            self._tif = None
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()  # tifffile does not close a file it was given
            self._handle = None


def open_tiff(path: str | os.PathLike[str]) -> TiffMovie:
    """Open a TIFF movie for reading (frames flipped back to raster order)."""
    return TiffMovie(path)


@dataclass(frozen=True)
class TiffLayout:
    """What a movie TIFF will look like.

    Attributes:
        n_pages: number of pages (IFDs), one per frame.
        shape_yx: ``(ny, nx)``: ImageLength and ImageWidth.
        dtype: sample type: BitsPerSample and SampleFormat (1 uint, 2 int, 3 IEEE float).
        compression_code: the Compression tag (1 none, 5 LZW, 8 Deflate, 50000 ZSTD, 34925 LZMA).
        rows_per_strip: RowsPerStrip (ny: one strip per frame; 1 with ``--line_by_line``).
        pixel_size_angstrom: written as XResolution = YResolution = 1e8 / pixel size, in pixels
            per centimetre (ResolutionUnit 3), as RELION does; None writes no resolution tags.
        software: the Software tag.
    """

    n_pages: int
    shape_yx: tuple[int, int]
    dtype: np.dtype
    compression_code: int
    rows_per_strip: int
    pixel_size_angstrom: float | None
    software: str

    @property
    def strips_per_page(self) -> int:
        return -(-self.shape_yx[0] // self.rows_per_strip)

    @property
    def uncompressed_nbytes(self) -> int:
        return self.n_pages * self.shape_yx[0] * self.shape_yx[1] * np.dtype(self.dtype).itemsize

    @property
    def bigtiff(self) -> bool:
        """BigTIFF only when the file could pass 4 GiB (judged from the uncompressed size, since a
        codec may expand incompressible data a little)."""
        return self.uncompressed_nbytes * 1.01 + 2**20 > BIGTIFF_THRESHOLD_BYTES


def write_movie(destination: Path, layout: TiffLayout, strips: Iterable[bytes], description: str | None = None,
                directory: CheckedDirectory | None = None, kept: list[WrittenFile] | None = None) -> None:
    """Write pre-encoded strips as a multi-page TIFF, atomically.

    The strips (``layout.strips_per_page`` per page, pages in order, rows already flipped) are
    written to a fresh temporary file beside ``destination`` (see :mod:`cryotiff.io.atomic`:
    ``X.tif.cryotiff-<pid>-<hex>.tmp``, created so that it never follows a link, locked while it
    is written); the file is then read back and its page count, shape and sample type checked,
    and only then renamed to ``X.tif``. On any error (including KeyboardInterrupt) the
    temporary file is removed and the error propagates; ``X.tif`` never exists incomplete.

    ``description``: page 1's ImageDescription (ASCII; cryotiff's record of what made the file,
    see :mod:`cryotiff.recorded_options`); None writes none. ``directory``: ``destination``'s
    directory as the run checked it, the one written into (:class:`cryotiff.io.atomic.AtomicFile`).
    ``kept``: given the :class:`cryotiff.io.atomic.WrittenFile` of the file written as soon as it
    has its name (for its manifest line, which must describe this file whatever takes its name
    later; :meth:`cryotiff.io.atomic.AtomicFile.commit`); the caller closes it.

    Raises:
        OutputError: the file cannot be written (permissions, disk full).
        VerificationError: the written file does not have the expected pages.
    """
    import tifffile

    resolution = None
    if layout.pixel_size_angstrom is not None and layout.pixel_size_angstrom > 0:
        pixels_per_cm = 1e8 / layout.pixel_size_angstrom
        resolution = (pixels_per_cm, pixels_per_cm)
    with AtomicFile(destination, directory) as target:
        try:
            with tifffile.TiffWriter(target.handle, bigtiff=layout.bigtiff, byteorder="<") as writer:
                writer.write(
                    iter(strips),
                    shape=(layout.n_pages, *layout.shape_yx),
                    dtype=layout.dtype,
                    compression=layout.compression_code,
                    rowsperstrip=layout.rows_per_strip,
                    photometric="minisblack",
                    software=layout.software,
                    resolution=resolution,
                    resolutionunit="CENTIMETER" if resolution else None,
                    description=description,
                    metadata=None,  # no tifffile "shaped" JSON: plain TIFF, as RELION writes it
                )
            if resolution is None:
                # tifffile always writes XResolution/YResolution (its placeholder 1/1, "no unit"):
                # a movie without a pixel size must state none.
                remove_ifd_entries(target.handle, RESOLUTION_TAG_CODES)
        except OSError as exc:
            raise OutputError(f"{destination}: cannot write ({exc.strerror or exc})") from None
        check_complete(target.handle, layout.n_pages, layout.shape_yx, layout.dtype, label=destination)
        # On the disk before it gets its name (and the name after): after a power cut a .tif is
        # whole or absent, never a complete-looking file whose blocks were lost; its manifest
        # line is added only after this.
        target.commit(fsync=True, kept=kept)


def remove_quietly(path: Path) -> None:
    """Remove a file if it exists; used for partial outputs."""
    try:
        path.unlink()
    except OSError:
        pass


def check_complete(
    source: Path | BinaryIO,
    n_pages: int,
    shape_yx: tuple[int, int],
    dtype: np.dtype,
    label: Path | None = None,
) -> None:
    """Read a written TIFF back (a path, or the open file it was written through) and check its
    page count, frame shape and sample type.

    Raises:
        VerificationError: naming ``label`` (default ``source``) and what is wrong.
    """
    import tifffile

    label = label or source
    try:
        if hasattr(source, "seek"):
            source.flush()
            source.seek(0)
        with tifffile.TiffFile(source) as tif:
            pages = tif.pages
            found = len(pages)
            first = pages.first
            found_shape, found_dtype = first.shape, np.dtype(first.dtype)
    except Exception as exc:
        raise VerificationError(f"{label}: the written file cannot be reopened ({tifffile_problem(exc)})") from None
    if found != n_pages:
        raise VerificationError(f"{label}: the written file has {found} pages, expected {n_pages}")
    if tuple(found_shape) != tuple(shape_yx) or found_dtype != np.dtype(dtype):
        raise VerificationError(
            f"{label}: the written file holds {found_shape} {found_dtype}, expected "
            f"{tuple(shape_yx)} {np.dtype(dtype)}"
        )


@dataclass(frozen=True)
class OutputCheck:
    """What :func:`check_output` found in an existing movie TIFF.

    Attributes:
        problem: why the file is not a complete movie of the expected pages, frame size and
            sample type (``incomplete (page 3 of 3 ends beyond the end of the file)``); None when
            it is one.
        description: page 1's ImageDescription ("" when it has none; None when unreadable).
        dtype: the sample type of its pages (None when unreadable).
        last_page: the last page as decoded, in raster order (the rows flipped back), when the
            file is complete; for comparing it with the movie's last page.
        first_page: the same of page 1 (the last page, for a file of one page).
        zero_blocks: ``(page index, byte offset)`` of the first stored 4 KiB of zero bytes
            (:data:`ZERO_BLOCK_BYTES`, aligned in the file) of each page whose stored bytes hold
            one, as blocks lost by a file server read back; such a page is to be decoded and
            compared with the movie's (a page can hold such zeros of its own: a blank frame
            stored uncompressed).
    """

    problem: str | None
    description: str | None = None
    dtype: np.dtype | None = None
    last_page: np.ndarray | None = None
    first_page: np.ndarray | None = None
    zero_blocks: tuple[tuple[int, int], ...] = ()


#: The blocks :func:`check_output` looks for: a file system's block (and the page cache's page),
#: the unit in which a file server that crashes loses written data, aligned in the file.
ZERO_BLOCK_BYTES = 4096


def zero_blocks_of_pages(path: Path | BinaryIO, page_spans: Sequence[tuple[int, int]],
                         chunk_bytes: int = 1 << 22) -> list[tuple[int, int]]:
    """``(page index, offset)`` of the first aligned :data:`ZERO_BLOCK_BYTES` block of zero
    bytes that overlaps each page's stored bytes (``page_spans``: ``(first byte, end)`` of each
    page's strips). The whole file is read once, ``chunk_bytes`` at a time (the cost of
    ``--only_do_unfinished``: about a read of the output, docs/user-guide.md).

    Raises:
        OSError: the file cannot be read.
    """
    spans = np.array(page_spans, np.int64).reshape(-1, 2)
    order = np.argsort(spans[:, 0], kind="stable")
    starts, ends = spans[order, 0], np.maximum.accumulate(spans[order, 1])  # ends made monotonic
    found: dict[int, int] = {}
    chunk = bytearray(chunk_bytes - chunk_bytes % ZERO_BLOCK_BYTES)
    position = 0
    if hasattr(path, "readinto"):  # the file opened already (read from its start; not closed here)
        path.seek(0)
        opened = contextlib.nullcontext(path)
    else:
        opened = open(path, "rb")  # noqa: SIM115
    with opened as handle:
        while True:
            n_read = handle.readinto(chunk)
            whole = n_read - n_read % ZERO_BLOCK_BYTES
            if whole:
                blocks = np.frombuffer(chunk, np.uint64, whole // 8).reshape(-1, ZERO_BLOCK_BYTES // 8)
                for block in position + np.flatnonzero(~blocks.any(axis=1)) * ZERO_BLOCK_BYTES:
                    first = np.searchsorted(ends, block, "right")  # the pages ending after the block begins
                    last = np.searchsorted(starts, block + ZERO_BLOCK_BYTES, "left")  # ... beginning before it ends
                    for index in order[first:last]:
                        found.setdefault(int(index), int(block))
            if n_read < len(chunk):
                break
            position += n_read
    return sorted(found.items())


def check_output(
    path: Path, n_pages: int, shape_yx: tuple[int, int], dtypes: Sequence[np.dtype]
) -> OutputCheck:
    """Is ``path`` a complete movie TIFF (the test of ``--only_do_unfinished``; RELION only tests
    that the file exists)? Complete means: a readable TIFF structure with ``n_pages`` pages,
    each of ``shape_yx`` and one sample type among ``dtypes``; every strip of every page inside
    the file and not empty; and the first and last pages decode. The writer writes pages in order, so a
    file cut anywhere (also inside the last strip) has a strip beyond its end or an IFD chain cut
    short; decoding the last page also catches a last strip damaged in place. The pages whose
    stored bytes hold an aligned 4 KiB of zeros, as blocks lost after the file was complete read
    back, are named (``zero_blocks``), for the caller to compare them with the movie. tifffile's
    own messages are captured, never printed.
    """
    import tifffile

    wanted = tuple(np.dtype(d) for d in dtypes)
    try:
        fd, status = open_to_read(path)  # a named pipe at the name cannot block the open
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            return OutputCheck(f"is {special_file_kind(status.st_mode)}, not a TIFF file")
        size = status.st_size
        with open(os.fspath(path), "rb", opener=lambda *_: fd) as handle, capture_tifffile_log() as log, \
                tifffile.TiffFile(handle) as tif:
            pages = tif.pages
            found = len(pages)
            if log.errors:
                return OutputCheck(f"incomplete (the TIFF structure is cut or damaged after page {found}: "
                                   f"{tifffile_problem(log.errors[0])})")
            if found == 0:
                return OutputCheck("incomplete (no page)")
            first = pages.first
            description = first.description or ""
            dtype = np.dtype(first.dtype)
            if found != n_pages:
                return OutputCheck(f"has {found} pages, {n_pages} expected", description, dtype)
            page_spans = []
            for number in range(1, found + 1):
                page = pages[number - 1]
                page_dtype = np.dtype(page.dtype)
                if tuple(page.shape) != tuple(shape_yx) or page_dtype not in wanted:
                    kinds = " or ".join(str(d) for d in wanted)
                    return OutputCheck(
                        f"page {number} holds {page.shape[-1]} x {page.shape[0]} {page_dtype}, "
                        f"{shape_yx[1]} x {shape_yx[0]} {kinds} expected", description, dtype)
                if page_dtype != dtype:
                    return OutputCheck(f"page {number} holds {page_dtype}, page 1 {dtype}", description, dtype)
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    if count == 0:
                        return OutputCheck(f"incomplete (page {number} of {found} has an empty strip)",
                                           description, dtype)
                    if offset + count > size:
                        return OutputCheck(f"incomplete (page {number} of {found} ends beyond the end of the file)",
                                           description, dtype)
                    if offset < 8:  # the strip offsets zeroed: a strip inside the header
                        return OutputCheck(f"damaged (a strip of page {number} of {found} begins inside the TIFF "
                                           "header)", description, dtype)
                page_spans.append((min(page.dataoffsets), max(offset + count for offset, count in
                                                              zip(page.dataoffsets, page.databytecounts))))
            decoded = {}
            for number in sorted({found, 1}, reverse=True):
                try:
                    decoded[number] = pages[number - 1].asarray()
                    problem = tifffile_problem(log.errors[0]) if log.errors else None
                except Exception as exc:  # the codecs raise their own types
                    problem = tifffile_problem(exc)
                if problem is not None:
                    what = "incomplete" if number == found else "damaged"
                    return OutputCheck(f"{what} (page {number} cannot be decoded: {problem})", description, dtype)
            zero_blocks = zero_blocks_of_pages(handle, page_spans)
    except FileNotFoundError:
        return OutputCheck("does not exist")
    except Exception as exc:  # tifffile raises many types on damaged files
        return OutputCheck(f"damaged ({tifffile_problem(exc)})")
    return OutputCheck(None, description, dtype, np.ascontiguousarray(flip_rows(decoded[found])),
                       np.ascontiguousarray(flip_rows(decoded[1])), tuple(zero_blocks))


def read_tiff_pages(path: Path) -> Iterator[np.ndarray]:
    """Yield the pages of a TIFF as stored (no flip); for tests and verification."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            yield page.asarray()
