"""The per-movie pipeline: read frames, transform them, encode strips concurrently, verify every
strip, write one TIFF atomically.

A movie becomes a :class:`PageSource`: something that can produce output page ``k`` (raster
order, output sample type) from any thread. The encoder turns pages into TIFF strips in a bounded
window of concurrent tasks and hands them to the writer in page order, so memory stays a few
pages per thread whatever the movie length.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import __version__
from .codecs import StripCodec, huffman_encoder_for, lzw_encoder_for, resolve_codec
from .errors import CryotiffError, InputError, OutputError, VerificationError
from .io import FrameRecycler, HeldFile, Movie, MovieInfo, open_regular_file, pread_exactly
from .io.atomic import CheckedDirectory
from .io.tiff import TiffLayout, flip_rows, pixel_size_fits_tiff, relion_reads_as_4bit_packed, write_movie
from .recorded_options import OutputRecord
from .waking import result_of  # the main thread's waits for page tasks: a page task may hang on a stalled input

def tiff_pixel_size(info: MovieInfo) -> tuple[float | None, str | None]:
    """``(pixel size for the TIFF resolution tags, warning)`` of an MRC or TIFF movie.

    MRC: ``CELLA.X / MX``, as RELION computes it (``src/tiff_converter.cpp``); the tags are
    written only for a positive value, so a negative pixel size (Direct Electron writes -10 A)
    gives no tags, as in RELION. Beyond RELION, a header without a pixel size (CELLA.X or MX is
    0) gives no tags either, where RELION writes its default of 1.0 A, and so does a pixel size
    that a TIFF RATIONAL cannot hold (below about 0.023 A: CELLA in metres; or not a number),
    where RELION would write a meaningless value. TIFF inputs keep the pixel size of their
    resolution tags. Never is a value written that the input did not state; every pixel size
    left out comes with a warning naming the value (an MRC header without one included).
    """
    if info.kind == "mrc":
        mx, cella_x = info.extra.get("mx", 0), info.extra.get("cella_x_angstrom", 0.0)
        if not mx or not cella_x:
            return None, (f"{info.path}: the header states no pixel size (CELLA.X = {cella_x:g}, MX = {mx}); the "
                          "TIFF gets no resolution tags (RELION writes 1.0 A there); give the pixel size to "
                          "motion correction")
        stated = cella_x / mx
        source = f"the header's pixel size (CELLA.X / MX = {cella_x:g} / {mx})"
    else:
        stated = info.pixel_size_angstrom
        if stated is None:
            return None, None
        source = "the pixel size of its resolution tags"
    if stated > 0 and pixel_size_fits_tiff(stated):
        return stated, None
    if stated < 0:
        reason = "is negative; as RELION does, the TIFF gets no resolution tags"
    elif not math.isfinite(stated):
        reason = "is not a number; the TIFF gets no resolution tags"
    elif stated > 1:
        reason = "is too large to be written as TIFF resolution; the TIFF gets no resolution tags"
    else:
        reason = ("is too small to be written as TIFF resolution (more than 2**32 - 1 pixels per "
                  "centimetre; was CELLA written in metres?); the TIFF gets no resolution tags")
    return None, f"{info.path}: {source} is {stated:g} A, which {reason}"

MOVIE_SUFFIXES = {".mrc": "mrc", ".mrcs": "mrc", ".eer": "eer", ".ecc": "eer", ".tif": "tiff", ".tiff": "tiff"}


@dataclass
class ConvertOptions:
    """Options of one conversion run; the names are RELION's command-line options.

    Attributes:
        output_dir: ``--o``.
        only_do_unfinished: ``--only_do_unfinished``.
        threads: ``--j``: threads working on one movie.
        gain: ``--gain``.
        thresh: ``--thresh``.
        estimate_gain: ``--estimate_gain``.
        eer_grouping: ``--eer_grouping``.
        eer_upsampling: ``--eer_upsampling``.
        eer_dose_per_fraction: ``--eer_dose_per_fraction`` (e/A^2 per output page).
        short: ``--short``.
        compression: ``--compression``.
        deflate_level: ``--deflate_level``.
        ignore_error: ``--ignore_error``.
        line_by_line: ``--line_by_line``.
        lossy: ``--lossy``.
        verify: decode every strip and compare it with its frame (``--no_verify`` turns it off).
    """

    output_dir: Path = Path(".")
    only_do_unfinished: bool = False
    threads: int = 1
    gain: Path | None = None
    thresh: int = 50
    estimate_gain: bool = False
    eer_grouping: int = 40
    eer_upsampling: int = 1
    eer_dose_per_fraction: float | None = None
    short: bool = False
    compression: str = "auto"
    deflate_level: int = 6
    ignore_error: bool = False
    line_by_line: bool = False
    lossy: bool = False
    verify: bool = True


@dataclass
class MovieResult:
    """What happened to one movie.

    Attributes:
        source: the input movie, as named in the input list.
        destination: the output TIFF (None if none was planned).
        status: ``converted``, ``skipped`` or ``failed``.
        message: the error message when failed, the reason when skipped.
        n_pages: pages written.
        frames_verified: pages whose every strip was decoded and compared with its frame.
        input_bytes: bytes of frame data read from the input.
        output_bytes: size of the written TIFF.
        seconds: wall time spent on the movie.
        codec: the compression used, e.g. ``deflate-6``.
        dtype: the TIFF sample type written.
        warnings: messages for the user (printed by the CLI on stderr).
        notes: informational lines about the movie (printed on stdout).
        details: path-specific figures (gain errors, lossy changes, EER corrupt or dropped frames).
    """

    source: Path
    destination: Path | None
    status: str
    message: str = ""
    n_pages: int = 0
    frames_verified: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    codec: str = ""
    dtype: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)


class PageSource:
    """Produces the output pages of one movie; ``page`` must be thread-safe.

    Attributes:
        path: the input movie.
        n_pages: pages to write.
        shape_yx: ``(ny, nx)`` of a page.
        dtype: sample type of the pages (the TIFF's BitsPerSample/SampleFormat).
        pixel_size_angstrom: goes to the TIFF resolution tags (None: no tags).
        is_eer: the pages are rendered EER (matters for RELION's auto compression rule).
        input_bytes: bytes of the input read to make all pages.
        input_warnings: what the reader tolerated and the user should know (a pixel size left
            out, data after the last frame); :meth:`finish` adds them to the result.
        loads_kernels: making the pages runs numba-compiled kernels (:mod:`cryotiff.kernels`),
            so the compiled Huffman-only and LZW encoders cost nothing more to load
            (:func:`cryotiff.codecs.compiled_encoders_pay`).
    """

    path: Path
    n_pages: int
    shape_yx: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float | None
    is_eer: bool = False
    input_bytes: int = 0
    input_warnings: tuple[str, ...] = ()
    loads_kernels: bool = False

    def page(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def recycle(self, page: np.ndarray) -> None:
        """Take back a page from :meth:`page` that nothing uses any more (neither it nor a view
        of it), so that a later page may be made in its memory; by default it is let go."""

    @property
    def huffman_encoder(self) -> str:
        """What encodes this movie's Huffman-only Deflate (:func:`cryotiff.codecs.huffman_encoder_for`)."""
        return huffman_encoder_for(self.input_bytes, self.loads_kernels)

    @property
    def lzw_encoder(self) -> str:
        """What encodes this movie's LZW (:func:`cryotiff.codecs.lzw_encoder_for`)."""
        return lzw_encoder_for(self.input_bytes, self.loads_kernels)

    def possible_dtypes(self) -> tuple[np.dtype, ...]:
        """The sample types a complete TIFF of this movie can have with these options (more than
        one where a movie is written again wider when a page does not fit)."""
        return (np.dtype(self.dtype),)

    def input_descriptor(self) -> int | None:
        """The descriptor the movie's reader reads the pages through (its own: not to be
        closed), or None where it has none."""
        fileno = getattr(getattr(self, "movie", None), "fileno", None)
        try:
            return fileno() if fileno is not None else None
        except (OSError, ValueError):
            return None

    def input_file_bytes(self) -> int:
        """The size of the file the pages are read from (by its descriptor: the name may lead
        to another file by now); 0 if it cannot be told."""
        descriptor = self.input_descriptor()
        try:
            return os.fstat(descriptor).st_size if descriptor is not None else self.path.stat().st_size
        except OSError:
            return 0

    def pixel_options(self) -> dict[str, object]:
        """The options that change this movie's pixels, as recorded in its TIFF
        (:mod:`cryotiff.recorded_options`); ``{}`` when none does."""
        return {}

    def finish(self, result: MovieResult) -> None:
        """Add path-specific figures and warnings to the movie's result (called after writing);
        subclasses call this one too."""
        result.warnings.extend(self.input_warnings)

    def close(self) -> None:
        pass


class PlainPages(PageSource):
    """Frames copied unchanged (MRC modes 0, 1, 6, 101; TIFF input; mode 2 without a gain).

    Mode 12 (float16) is widened to float32, which every TIFF reader of movies accepts.
    """

    def __init__(self, movie: Movie):
        info = movie.info
        self.movie = movie
        self.path = info.path
        self.n_pages = info.n_frames
        self.shape_yx = info.shape_yx
        self.dtype = np.dtype(np.float32) if info.dtype == np.float16 else np.dtype(info.dtype)
        self.pixel_size_angstrom, pixel_size_warning = tiff_pixel_size(info)
        self.input_warnings = tuple(info.warnings) + ((pixel_size_warning,) if pixel_size_warning else ())
        if self.dtype.itemsize == 1 and info.kind != "tiff" and relion_reads_as_4bit_packed(self.shape_yx):
            # RELION reads 8-bit TIFFs of these sizes as IMOD 4-bit packed (src/rwTIFF.h): the same values, 16 bits
            # wide. An 8-bit TIFF input of such a size is copied as it is: RELION reads both alike.
            wide = np.dtype(np.uint16 if self.dtype == np.uint8 else np.int16)
            self.input_warnings += (f"{info.path}: written as {wide}, not {self.dtype}: RELION reads 8-bit TIFFs of "
                                    f"{self.shape_yx[1]} x {self.shape_yx[0]} pixels as IMOD 4-bit packed data",)
            self.dtype = wide
        self.input_bytes = info.frame_nbytes * info.n_frames
        # Pages handed back by the encoder are read into again: one per thread is alive at a
        # time (page_window bounds them), so a handful is enough.
        self._frames = FrameRecycler(movie, capacity=4)

    def page(self, index: int) -> np.ndarray:
        frame = self._frames.read(index)
        if frame.dtype != self.dtype:
            converted = frame.astype(self.dtype)
            self._frames.give_back(frame)
            return converted
        return frame

    def recycle(self, page: np.ndarray) -> None:
        self._frames.give_back(page)

    def close(self) -> None:
        self.movie.close()
        self._frames.let_go()  # a finished movie's spare frames must not stay beside the next movie's


class WiderTypeNeeded(Exception):
    """Internal signal: a page does not fit the sample type chosen for the movie; the movie is
    written again as ``dtype`` (never surfaces to the user as an error)."""

    def __init__(self, dtype: np.dtype, reason: str):
        super().__init__(reason)
        self.dtype = np.dtype(dtype)
        self.reason = reason


#: RELION's warning for mode-2 movies converted without a gain.
MODE2_WITHOUT_GAIN_WARNING = (
    "WARNING: To effectively compress mode 2 MRC files, you should first estimate the gain with --estimate_gain."
)


def smallest_integer_type(minimum: float, maximum: float, shape_yx: tuple[int, int]) -> np.dtype | None:
    """The smallest integer TIFF type (uint8, int8, uint16, int16) holding ``minimum..maximum``,
    or None; 8-bit types are avoided at the frame sizes RELION reads as IMOD 4-bit packed TIFF."""
    from .gain import smallest_integer_dtype

    return smallest_integer_dtype(minimum, maximum, shape_yx)


def integer_valued_range(frame: np.ndarray) -> tuple[float, float] | None:
    """``(min, max)`` if every value of a float frame is a finite integer that an integer type
    stores bit-exactly (so not -0.0, whose sign an integer would lose), else None."""
    from .gain import integer_range

    is_integer, minimum, maximum = integer_range(frame, keep_negative_zero=True)
    return (minimum, maximum) if is_integer else None


class IntegerWidening:
    """Mixin for page sources that guess an integer type from the first frame and widen it when a
    later frame needs more (raising :class:`WiderTypeNeeded`, which rewrites the movie)."""

    shape_yx: tuple[int, int]
    dtype: np.dtype

    def possible_dtypes(self) -> tuple[np.dtype, ...]:
        """The type chosen now, any integer type holding its range, and float32."""
        if self.dtype.kind == "f":
            return (np.dtype(np.float32),)
        chosen = np.iinfo(self.dtype)
        wider = [np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16)
                 if np.iinfo(t).min <= chosen.min and chosen.max <= np.iinfo(t).max]
        return (*wider, np.dtype(np.float32))

    def _fit(self, index: int, minimum: float, maximum: float) -> None:
        info = np.iinfo(self.dtype)
        if info.min <= minimum and maximum <= info.max:
            return
        wider = smallest_integer_type(min(minimum, info.min), max(maximum, info.max), self.shape_yx)
        raise WiderTypeNeeded(
            wider if wider is not None else np.float32,
            f"frame {index + 1} holds values {minimum:g}..{maximum:g}",
        )


class FloatPages(IntegerWidening, PlainPages):
    """Float movies (MRC mode 2 or 12, float TIFF) without a gain.

    RELION writes them as float32. Beyond RELION: a movie whose values are all integers (some
    archives hold such files) is written as the smallest integer type that holds it. The type is
    guessed from the first frame; a later frame that does not fit raises :class:`WiderTypeNeeded`
    and the movie is written again with a wider type (or float32).
    """

    def __init__(self, movie: Movie):
        super().__init__(movie)
        self.dtype = np.dtype(np.float32)
        value_range = integer_valued_range(self.movie.read_frame(0)) if self.n_pages else None
        integer_type = smallest_integer_type(*value_range, self.shape_yx) if value_range else None
        self.dtype = integer_type or np.dtype(np.float32)
        self.warning = None if integer_type else MODE2_WITHOUT_GAIN_WARNING

    def page(self, index: int) -> np.ndarray:
        frame = self._frames.read(index)
        if self.dtype.kind == "f":
            return frame.astype(np.float32, copy=False)
        value_range = integer_valued_range(frame)
        if value_range is None:
            raise WiderTypeNeeded(np.float32, f"frame {index + 1} holds non-integer values")
        self._fit(index, *value_range)
        page = frame.astype(self.dtype)
        self._frames.give_back(frame)
        return page

    def retype(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.kind == "f":
            self.warning = MODE2_WITHOUT_GAIN_WARNING

    def pixel_options(self) -> dict[str, object]:
        return {"gain": None}  # a --gain would have divided them

    def finish(self, result: MovieResult) -> None:
        super().finish(result)
        if self.warning:
            result.warnings.append(self.warning)
        elif self.dtype.kind != "f":
            result.details["float_input_stored_as"] = str(self.dtype)


@dataclass
class RunContext:
    """State shared by every movie of a run, prepared once (see :func:`cryotiff.jobs.prepare`).

    Attributes:
        gain_reference: float32 ``(ny, nx)``: the ``--gain`` estimate's gain at reliable pixels,
            1.0 elsewhere, for float movies; what ``<o>/gain-reference.mrc`` holds.
        reliable_mask: ``reliability >= --thresh`` (and a usable gain).
        reliability: int16 ``(ny, nx)``: the estimate's reliability counters (shown in the
            mismatch lines of ``--ignore_error``).
        eer_gain_reference: the converted EER gain (multiplicative, EER raster orientation).
        gain_identity: the ``--gain`` file of float movies and the checksums of it and its
            reliability map (:func:`cryotiff.recorded_options.gain_identity`), as recorded in
            their TIFFs.
        manifest: the :class:`cryotiff.manifest.Manifest` of ``--o`` that every TIFF written is
            added to (None: none is kept, as for a library caller).
        output_dir_identity: ``(st_dev, st_ino)`` of the directory ``--o`` led to when the run
            wrote its first movie (:func:`cryotiff.jobs.run_job`): every later movie must go
            there too, also where ``--o`` is a symbolic link changed during the run.
    """

    gain_reference: np.ndarray | None = None
    reliable_mask: np.ndarray | None = None
    reliability: np.ndarray | None = None
    eer_gain_reference: np.ndarray | None = None
    gain_identity: dict[str, str] | None = None
    manifest: object | None = None
    output_dir_identity: tuple[int, int] | None = None


#: How many of RELION's mismatch lines are kept per movie with --ignore_error (RELION prints all).
MAX_MISMATCH_LINES = 10


def gain_size_hint(gain_shape_yx: tuple[int, ...], movie_shape_yx: tuple[int, ...]) -> str:
    """Why a gain does not fit the movies, when the reason is a common one (relion#1089): a
    transposed gain, or a super-resolution gain for counting movies and the other way round."""
    gain_yx, movie_yx = tuple(int(n) for n in gain_shape_yx), tuple(int(n) for n in movie_shape_yx)
    transposed = gain_yx[::-1]
    for shape, what in ((gain_yx, ""), (transposed, " and transposed")):
        if shape == movie_yx and what:
            return " (the gain is transposed: its width is the height of the movies)"
        if shape == (2 * movie_yx[0], 2 * movie_yx[1]):
            return f" (the gain is twice the movie size{what}: a super-resolution gain for counting-mode movies?)"
        if (2 * shape[0], 2 * shape[1]) == movie_yx:
            return f" (the gain is half the movie size{what}: a counting-mode gain for super-resolution movies?)"
    return ""


class SparePages:
    """Pages handed back by the encoder (:meth:`PageSource.recycle`), kept to be made again in
    their memory: a fresh 57-67 MB page costs its page faults (20-27 ms), clearing or
    overwriting one much less. As :class:`cryotiff.io.FrameRecycler` does for frames, only what
    is handed back is reused, at most one per page in flight, and only pages of the shape and
    type asked for. Thread-safe (list.append and pop are atomic)."""

    capacity = 4

    def __init__(self, shape_yx: tuple[int, ...]):
        self.shape_yx = tuple(shape_yx)
        self._free: list[np.ndarray] = []

    def take(self, dtype: np.dtype) -> np.ndarray | None:
        """A kept page of ``dtype`` (its content is left over: every pixel must be written), or None."""
        try:
            page = self._free.pop()
        except IndexError:
            return None
        return page if page.dtype == dtype else None  # one kept before a retype is let go

    def keep(self, page: np.ndarray) -> None:
        if (len(self._free) < self.capacity and page.base is None and page.shape == self.shape_yx
                and page.flags.c_contiguous and page.flags.writeable):
            self._free.append(page)

    def let_go(self) -> None:
        """Keep no page any more: a finished movie's pages must not stay beside the next movie's."""
        self._free = []

    def __len__(self) -> int:
        return len(self._free)


class GainPages(IntegerWidening, PlainPages):
    """Float movies with ``--gain``: reliable pixels divided by their gain (RELION's
    ``unnormalise``), written as float32 as RELION does; with ``--lossy`` also the unreliable
    pixels rounded, so the whole movie is stored as integers (uint8 unless a value needs more).
    """

    loads_kernels = True  # the gain arithmetic (cryotiff.kernels)

    def __init__(self, movie: Movie, context: RunContext, options: ConvertOptions):
        from .errors import GainError
        from .gain import different_size_message

        super().__init__(movie)
        # Only built when the run has a gain (open_page_source checks context.gain_reference).
        if context.gain_reference.shape != self.shape_yx:
            raise GainError(f"{self.path}: {different_size_message(str(self.path))} Frames are "
                            f"{self.shape_yx[1]} x {self.shape_yx[0]}, the gain is "
                            f"{context.gain_reference.shape[1]} x {context.gain_reference.shape[0]} (nx x ny)"
                            f"{gain_size_hint(context.gain_reference.shape, self.shape_yx)}.")
        self.gain_reference = context.gain_reference
        self.reliable_mask = context.reliable_mask
        self.reliability = context.reliability
        self.gain_identity = context.gain_identity
        self.thresh = options.thresh
        self.ignore_error = options.ignore_error
        self.lossy = options.lossy
        self.dtype = np.dtype(np.uint8 if self.lossy else np.float32)
        if self.lossy and smallest_integer_type(0, 255, self.shape_yx) != np.uint8:
            self.dtype = np.dtype(np.uint16)  # RELION would read 8-bit TIFFs of this size as 4-bit
        self._lock = threading.Lock()
        self._spare_pages = SparePages(self.shape_yx)  # float32 pages integerised into again
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.n_errors = 0
        self.mismatch_lines: list[str] = []
        self.n_changed = 0
        self.max_abs_change = 0.0
        self.sum_abs_change = 0.0
        self.n_unreliable_values = 0

    def retype(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._reset_counts()

    def close(self) -> None:
        super().close()
        self._spare_pages.let_go()

    def recycle(self, page: np.ndarray) -> None:
        """A float32 page is integerised into again (:class:`SparePages`; a fresh 57 MB page's
        faults are about a twentieth of the frame's time). One 40-frame movie: CPU 25.7 -> 24.0 s
        and peak RSS 482 -> 472 MB at --j 2."""
        if not self.lossy and page.dtype == np.float32:
            self._spare_pages.keep(page)

    def pixel_options(self) -> dict[str, object]:
        return {"gain": self.gain_identity, "thresh": self.thresh, "lossy": self.lossy,
                "ignore_error": self.ignore_error}

    def page(self, index: int) -> np.ndarray:
        from .gain import integerise, lossy_integerise

        # A fresh frame each time: frames read into again as well kept one more frame resident
        # per thread (peak RSS at --j 2 482 -> 517 MB for one movie) for little time.
        frame = self.movie.read_frame(index).astype(np.float32, copy=False)
        common = dict(movie=str(self.path), frame_index_0based=index, reliability=self.reliability)
        if not self.lossy:
            spare = self._spare_pages.take(np.dtype(np.float32))
            result = integerise(frame, self.gain_reference, self.reliable_mask, self.ignore_error, out=spare, **common)
            self._count_errors(result)
            return result.values
        lossy = lossy_integerise(frame, self.gain_reference, self.reliable_mask, self.ignore_error, **common)
        self._count_errors(lossy.integer)
        counts = lossy.counts
        self._fit(index, float(lossy.minimum), float(lossy.maximum))
        with self._lock:
            self.n_changed += lossy.stats.n_changed
            self.max_abs_change = max(self.max_abs_change, lossy.stats.max_abs_change)
            self.sum_abs_change += lossy.stats.sum_abs_change
            self.n_unreliable_values += lossy.stats.n_pixels
        return counts.astype(self.dtype)

    def _count_errors(self, result) -> None:
        if not result.n_errors:
            return
        with self._lock:
            self.n_errors += result.n_errors
            room = MAX_MISMATCH_LINES - len(self.mismatch_lines)
            if room > 0:
                self.mismatch_lines.extend(result.mismatch_lines(room))

    def finish(self, result: MovieResult) -> None:
        super().finish(result)
        if self.n_errors:
            result.warnings.extend(self.mismatch_lines)
            result.warnings.append(
                f"{self.path}: {self.n_errors} values of reliable pixels were not integer multiples of their "
                "gain and were rounded (--ignore_error)"
                + (f"; the first {len(self.mismatch_lines)} are listed above" if self.n_errors > len(self.mismatch_lines) else "")
            )
        result.details["gain_errors_rounded"] = self.n_errors
        if self.lossy:
            mean = self.sum_abs_change / self.n_unreliable_values if self.n_unreliable_values else 0.0
            result.details.update(
                lossy_values_changed=self.n_changed,
                lossy_max_abs_change=self.max_abs_change,
                lossy_mean_abs_change=mean,
            )
            result.notes.append(
                f"{self.path}: --lossy changed {self.n_changed} values of unreliable pixels "
                f"(largest change {self.max_abs_change:.4g}, mean {mean:.4g} over {self.n_unreliable_values} "
                "unreliable pixel values); reliable pixels are exact"
            )


class EerPages(PageSource):
    """EER movies rendered like RELION: each page is the sum of ``--eer_grouping`` raw frames on
    the ``--eer_upsampling`` grid, in EER raster orientation (the TIFF writer flips it), uint8
    (uint16 with ``--short``). RELION's sums wrap silently in uint8; here a page that does not
    fit makes the whole movie be written again as uint16, with a warning. No resolution tags are
    written (RELION writes none for EER: the rendered pixel size depends on the upsampling).
    """

    is_eer = True
    loads_kernels = True  # EER decoding (cryotiff.kernels)

    def __init__(self, movie, options: ConvertOptions):
        from .io.eer import grouping_for_dose, plan_groups

        self.movie = movie
        self.path = movie.info.path
        self.upsampling = options.eer_upsampling
        movie.check_upsampling(self.upsampling)
        n_raw = movie.info.n_frames
        self.notes = [f"{self.path}: found {n_raw} raw frames"]
        grouping = options.eer_grouping
        if options.eer_dose_per_fraction is not None:
            grouping, dose_per_raw_frame = grouping_for_dose(
                movie.metadata, options.eer_dose_per_fraction, movie=str(self.path)
            )
            self.notes.append(
                f"{self.path}: {dose_per_raw_frame:.4g} e/A^2 per raw frame; grouping {grouping} raw frames "
                f"gives {grouping * dose_per_raw_frame:.4g} e/A^2 per page"
            )
        self.grouping = grouping
        self.pages, self.n_dropped = plan_groups(n_raw, grouping, movie=str(self.path))
        if self.n_dropped:
            self.notes.append(
                f"{self.path}: the last {self.n_dropped} raw frames do not fill a group of {grouping} and are left out"
            )
        self.n_pages = len(self.pages)
        size = movie.output_size(self.upsampling)
        self.shape_yx = (size, size)
        self.dtype = np.dtype(np.uint16 if options.short else np.uint8)
        self.short = options.short
        self.pixel_size_angstrom = None
        self.input_bytes = self.input_file_bytes()
        self._lock = threading.Lock()
        self.corrupt_warnings: list[str] = []
        self.corrupt_frames: set[int] = set()  # 0-based raw frames left out of the pages made so far
        self._spare_pages = SparePages(self.shape_yx)  # pages cleared and rendered into again

    def retype(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.corrupt_warnings = []
        self.corrupt_frames = set()
        self._spare_pages.let_go()

    def recycle(self, page: np.ndarray) -> None:
        """A page is cleared and rendered into again (:class:`SparePages`)."""
        self._spare_pages.keep(page)

    def possible_dtypes(self) -> tuple[np.dtype, ...]:
        if self.short:
            return (np.dtype(np.uint16),)
        return (np.dtype(np.uint8), np.dtype(np.uint16))  # uint8, or written again as uint16

    def pixel_options(self) -> dict[str, object]:
        return {"eer_grouping": self.grouping, "eer_upsampling": self.upsampling, "short": self.short}

    def page(self, index: int) -> np.ndarray:
        from .errors import RenderOverflowError
        from .io.eer import max_count

        start, stop = self.pages[index]
        if max_count(stop - start, self.upsampling) <= np.iinfo(self.dtype).max:
            # The sums cannot overflow the page's type: render straight into it (no copy, no max).
            spare = self._spare_pages.take(self.dtype)
            rendered = self.movie.render(start, stop, self.upsampling, dtype=self.dtype, out=spare)
            self._note_corrupt(rendered)
            return rendered.counts
        rendered = self.movie.render(start, stop, self.upsampling)
        self._note_corrupt(rendered)
        if rendered.max_count > np.iinfo(self.dtype).max:
            if self.dtype == np.uint8:
                raise WiderTypeNeeded(
                    np.uint16,
                    f"page {index + 1} has counts up to {rendered.max_count}, more than uint8 holds "
                    "(RELION would wrap them modulo 256; use --short to render uint16 directly)",
                )
            raise RenderOverflowError(
                f"{self.path}: page {index + 1} has counts up to {rendered.max_count}, more than uint16 holds; "
                "use a smaller --eer_grouping"
            )
        return rendered.counts.astype(self.dtype)

    def _note_corrupt(self, rendered) -> None:
        # A damaged raw frame is left out with RELION's warning, as RELION does; unlike RELION
        # the run's summary counts such frames and, without --ignore_error, the exit status is 1
        # (cli.finish_run), so a TIFF never lacks electrons unnoticed.
        if rendered.corrupt_frames:
            with self._lock:
                self.corrupt_warnings.extend(rendered.corrupt_frame_warnings(str(self.path)))
                self.corrupt_frames.update(rendered.corrupt_frames)

    def finish(self, result: MovieResult) -> None:
        super().finish(result)
        result.notes.extend(self.notes)
        result.warnings.extend(sorted(set(self.corrupt_warnings), key=self.corrupt_warnings.index))
        result.details.update(
            eer_raw_frames=self.movie.info.n_frames,
            eer_grouping=self.grouping,
            eer_dropped_frames=self.n_dropped,
            eer_corrupt_frames=len(set(self.corrupt_warnings)),
        )

    def close(self) -> None:
        self.movie.close()
        self._spare_pages.let_go()


def movie_kind(path: Path) -> str:
    """``mrc``, ``tiff`` or ``eer`` from the file name, else from the first bytes of the file.

    Raises:
        InputError: the file is missing or is none of these.
    """
    kind = MOVIE_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return kind
    descriptor = open_regular_file(path)  # a named pipe at the name cannot block the open
    try:
        head = pread_exactly(descriptor, 212, 0)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    finally:
        os.close(descriptor)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[208:212] == b"MAP ":
        return "mrc"
    raise InputError(f"{path}: not an MRC, TIFF or EER movie (judged by its name and first bytes)")


def open_movie(path: Path) -> Movie:
    """Open an MRC or TIFF movie for reading, chosen by :func:`movie_kind`."""
    kind = movie_kind(path)
    if kind == "mrc":
        from .io.mrc import open_mrc

        return open_mrc(path)
    if kind == "tiff":
        from .io.tiff import open_tiff

        return open_tiff(path)
    from .io.eer import EerMovie

    return EerMovie(path)


def open_page_source(path: Path, options: ConvertOptions, context: RunContext | None = None) -> PageSource:
    """Choose how the pages of one movie are made, from its own format and mode (unlike RELION,
    which uses the first movie's mode for all).

    ``context`` carries the run's gains (:func:`cryotiff.jobs.prepare`); without it a float movie
    is converted as if no ``--gain`` had been given.
    """
    kind = movie_kind(path)
    movie = open_movie(path)
    if kind == "eer":
        try:
            return EerPages(movie, options)
        except BaseException:
            movie.close()
            raise
    try:
        if movie.info.dtype.kind == "f":
            if context is not None and context.gain_reference is not None:
                return GainPages(movie, context, options)
            return FloatPages(movie)
        return PlainPages(movie)
    except BaseException:
        movie.close()
        raise


def page_count(path: Path, options: ConvertOptions) -> int:
    """How many pages the TIFF of ``path`` will have (for ``--only_do_unfinished``)."""
    source = open_page_source(path, options)
    try:
        return source.n_pages
    finally:
        source.close()


def output_record(source: PageSource, codec: str = "", verified: bool = True) -> OutputRecord:
    """What a TIFF of ``source`` written now records (its page 1 ImageDescription): the options
    that change its pixels, the input's name and size (0 if it cannot be read: such a record
    matches no later run), the sample type and page count."""
    input_bytes = source.input_file_bytes()  # of the file converted, not of what its name leads to now
    return OutputRecord(
        made_with=source.pixel_options(),
        input_name=source.path.name,
        input_bytes=input_bytes,
        sample_type=str(np.dtype(source.dtype)),
        n_pages=source.n_pages,
        codec=codec,
        verified=verified,
        software=f"cryotiff {__version__}",
    )


@dataclass
class EncodedPage:
    """One page's strips, made by :func:`_encode_page`, and what may still run beside them on
    the side thread of ``--j 1`` (the strips' checks, the page's digest). :meth:`finish` waits
    for those, raises what a check found and gives the page back to its source."""

    strips: list[bytes]
    source: "PageSource"
    page: np.ndarray
    checks: list[Future] = field(default_factory=list)
    digest: bytes | Future | None = None
    finished: bool = False

    def finish(self) -> bytes | None:
        """Wait for the page's checks (a failed one raises its VerificationError here) and
        digest; return the digest (:func:`cryotiff.manifest.page_digest`), or None."""
        if not self.finished:
            self.finished = True
            try:
                for check in self.checks:
                    result_of(check)
                if isinstance(self.digest, Future):
                    self.digest = result_of(self.digest)
            finally:
                self._let_go()
        return self.digest

    def abandon(self) -> None:
        """The movie stopped: drop what has not started, wait for what has (it reads the page)."""
        if not self.finished:
            self.finished = True
            self._let_go()

    def _let_go(self) -> None:
        for task in (*self.checks, self.digest):
            # A task cancelled here never runs. One that runs (or ran) reads the page: wait for
            # it. (Not concurrent.futures.wait: it waits for ever on a task cancelled after
            # its executor was shut down.)
            if isinstance(task, Future) and not task.cancel():
                task.exception()
        self.source.recycle(self.page)  # nothing reads the page any more


def _check_strips(path: Path, codec: StripCodec, index: int,
                  strips: list[tuple[int, bytes, np.ndarray]]) -> None:
    """Decode each strip ``(first_row, encoded, rows)`` of page ``index`` again and compare it
    byte for byte with the rows it was made from."""
    for first_row, encoded, raw in strips:
        try:
            same = codec.decodes_to(encoded, raw)
        except MemoryError:
            raise  # out of memory, not a failed check: jobs.run_job names the frame size
        except Exception as exc:  # a strip that cannot be decoded is a failed check, not a crash
            raise VerificationError(
                f"{path}: frame {index + 1}, rows {first_row}..: the {codec.label} strip "
                f"cannot be decoded again ({exc})"
            ) from None
        if not same:
            raise VerificationError(
                f"{path}: frame {index + 1}, rows {first_row}..: the {codec.label} "
                "strip does not decode to the frame it was made from"
            )


class PageAhead:
    """Page 1 of a movie, made on the pool while the calling thread makes page 0 and decides the
    movie's codec on it (``auto`` compresses page 0 with each candidate), so that with
    ``--j 2`` or more the second core renders or reads from the start instead of waiting for that
    decision; the page task of page 1 then takes it (:meth:`take`)."""

    INDEX = 1

    def __init__(self, source: PageSource, executor: Executor):
        self.source = source
        self.dtype = source.dtype
        self._made: Future | None = executor.submit(source.page, self.INDEX)

    def take(self, index: int) -> np.ndarray | None:
        """The page made ahead, once, if ``index`` is its index; None otherwise (or if the movie's
        sample type changed since: that page is let go). What making it raised is raised here."""
        if index != self.INDEX or self._made is None:
            return None
        made, self._made = self._made, None
        page = result_of(made)
        if self.source.dtype != self.dtype:
            self.source.recycle(page)
            return None
        return page

    def drop(self) -> None:
        """The movie stopped or starts again: a page not taken yet is not made, or is waited for
        (it reads the source, which is closed or retyped next) and let go."""
        made, self._made = self._made, None
        if made is None or made.cancel():
            return
        if made.exception() is None:
            self.source.recycle(made.result())


def _encode_page(source: PageSource, codec: StripCodec, rows_per_strip: int, verify: bool, index: int,
                 digest: bool = False, beside: Executor | None = None,
                 ahead: PageAhead | None = None) -> EncodedPage:
    """Make page ``index``, flip it to TIFF scanline order, encode its strips and (``verify``)
    decode each strip again and compare it byte for byte with the rows it was made from; with
    ``digest``, make the page's digest for the manifest (:func:`cryotiff.manifest.page_digest`).

    ``beside``: the side thread of ``--j 1``. The digest and the checks are then made there,
    while this thread encodes the page's strips and then writes them and makes the next page;
    :meth:`EncodedPage.finish` waits for them. Without it they are made here, in turn.
    ``ahead``: page 1 made ahead (:class:`PageAhead`), taken instead of making it again."""
    from .manifest import page_digest

    page = ahead.take(index) if ahead is not None else None
    if page is None:
        page = source.page(index)
    if page.shape != source.shape_yx or page.dtype != source.dtype:
        raise VerificationError(
            f"{source.path}: page {index + 1} is {page.shape} {page.dtype}, "
            f"expected {source.shape_yx} {source.dtype}"
        )
    encoded_page = EncodedPage([], source, page)
    if digest and beside is not None:
        encoded_page.digest = beside.submit(page_digest, page)
    try:
        # TIFF scanline order as a view: the streaming encoders read it a few rows at a time, the
        # others copy each strip (codecs.StripCodec.encode_rows).
        rows = flip_rows(page if page.flags.c_contiguous else np.ascontiguousarray(page))
        row_bytes = rows.view(np.uint8)
        to_check = []
        for first_row in range(0, rows.shape[0], rows_per_strip):
            raw = row_bytes[first_row : first_row + rows_per_strip]
            try:
                encoded = codec.encode_rows(raw)
            except MemoryError:
                raise  # out of memory, not a failed encoder: jobs.run_job names the frame size
            except Exception as exc:  # imagecodecs raises its own RuntimeError subclasses
                raise OutputError(
                    f"{source.path}: frame {index + 1}: the {codec.label} encoder failed ({exc})"
                ) from None
            if verify:
                to_check.append((first_row, encoded, raw))
            encoded_page.strips.append(encoded)
        if to_check and beside is not None:  # one task per page: --line_by_line makes thousands of strips
            encoded_page.checks.append(beside.submit(_check_strips, source.path, codec, index, to_check))
        elif to_check:
            _check_strips(source.path, codec, index, to_check)
        if digest and beside is None:
            encoded_page.digest = page_digest(page)
    except BaseException:
        encoded_page.abandon()
        raise
    if beside is None:
        encoded_page.finish()  # nothing runs beside: the page goes back to its source now
    return encoded_page


def page_window(threads: int) -> int:
    """Pages of one movie in memory at a time with ``--j threads``: one being made on each
    thread and the one being written (the writer's thread takes the next page as soon as it
    has written one; docs/benchmarks/parallel.md)."""
    return max(1, threads) + 1


def ordered_map(
    function: Callable[[int], object], count: int, executor: Executor | None, window: int
) -> Iterator[object]:
    """Yield ``function(0) .. function(count-1)`` in order, running at most ``window`` of them
    ahead on ``executor`` (inline when None). Pending tasks are cancelled if the consumer stops;
    when it stops early (closes the iterator), the tasks already running are waited for, so that
    none uses what the consumer closes next (a reader). After an error or Ctrl-C they are not
    waited for: the temporary file must go at once."""
    if executor is None:
        for index in range(count):
            yield function(index)
        return
    pending: deque = deque()
    next_index = 0
    try:
        while pending or next_index < count:
            while next_index < count and len(pending) < window:
                pending.append(executor.submit(function, next_index))
                next_index += 1
            yield result_of(pending.popleft())
    except GeneratorExit:
        for future in pending:
            future.cancel()
        futures_wait(pending)
        raise
    finally:
        for future in pending:
            future.cancel()


def convert_movie(
    source_path: Path,
    destination: Path,
    options: ConvertOptions,
    executor: Executor | None = None,
    on_page: Callable[[int, int], None] | None = None,
    source: PageSource | None = None,
    context: RunContext | None = None,
    output_directory: CheckedDirectory | None = None,
) -> MovieResult:
    """Convert one movie to ``destination`` (written as a temporary file beside it, then renamed).

    Args:
        source_path: the input movie.
        destination: the ``.tif`` to write; its directory must exist.
        options: the run's options.
        executor: threads for reading, transforming and encoding pages (``--j``); None = inline.
        on_page: called in the caller's thread as ``on_page(pages_done, n_pages)``.
        source: an already opened page source (otherwise opened here).
        context: the run's gains (see :func:`open_page_source`).
        output_directory: ``destination``'s directory as the run checked it, which the file must
            be written into (:class:`cryotiff.io.atomic.CheckedDirectory`); None: the directory
            ``destination``'s path leads to when the writing begins.

    Returns:
        The movie's result with status ``converted``.

    Raises:
        CryotiffError: on any problem; neither the ``.tif`` nor its temporary file is left behind.
    """
    started = time.perf_counter()
    source = source or open_page_source(source_path, options, context)
    # The held file, the file hashed for the manifest and the file the pages are read from are
    # one: the held file duplicates the reader's descriptor, and the hash reads the held file.
    descriptor = source.input_descriptor()
    try:
        held = HeldFile(source_path, descriptor)
    except BaseException:
        source.close()
        raise
    retype_warnings: list[str] = []

    def check_unchanged() -> None:
        """Before the last page is written: pages read from a file whose content changed during
        the conversion (a movie still being written, say) may mix two states of it; nothing is
        kept."""
        change = held.content_change()
        if change is not None:
            raise InputError(f"{source_path}: the file changed while it was being converted ({change}); nothing was "
                             "written. Convert it again once it is complete.")

    manifest = getattr(context, "manifest", None)
    page_digests: list[bytes] | None = None
    source_hash = None
    written: list = []  # the WrittenFile of the TIFF, for its manifest line (hashed through it)
    try:
        if _identity(descriptor) not in (None, held.identity):
            raise InputError(f"{source_path}: another file took its name while it was being opened; nothing was "
                             "written. Convert it again.")
        # The original is hashed for the manifest while its pages are made, not after.
        source_hash = manifest.hash_source_later(source_path, held) if manifest is not None else None
        while True:
            try:
                page_digests = [] if manifest is not None else None
                result = _write_pages(source, source_path, destination, options, executor, on_page, page_digests,
                                      check_unchanged, output_directory, written if manifest is not None else None)
                break
            except WiderTypeNeeded as retry:
                # Only a page source that can change its type raises this; redo the whole movie.
                retype_warnings.append(
                    f"{source_path}: {retry.reason}; written again as {retry.dtype} instead of {source.dtype}"
                )
                source.retype(retry.dtype)  # type: ignore[attr-defined]
        result.warnings.extend(retype_warnings)
        moved = held.name_change()
        if moved is not None:  # the pages are those of the file opened, complete and unchanged: keep them
            result.warnings.append(f"{source_path}: {moved} while it was being converted; {destination} holds the "
                                   "movie that was there when its conversion began.")
        source.finish(result)
        if manifest is not None:
            _add_to_manifest(manifest, source, source_path, destination, page_digests, result, source_hash,
                             context.eer_gain_reference if isinstance(source, EerPages) else None, written.pop())
            source_hash = None
        result.seconds = time.perf_counter() - started
        return result
    except KeyboardInterrupt:
        if written and manifest is not None and page_digests is not None:
            # Interrupted once the TIFF had its name: it is complete and stays, so its line still comes.
            _add_to_manifest(manifest, source, source_path, destination, page_digests,
                             MovieResult(source_path, destination, "converted"), source_hash,
                             context.eer_gain_reference if isinstance(source, EerPages) else None, written.pop())
            source_hash = None
        raise
    finally:
        if source_hash is not None:
            source_hash.cancel()  # the movie failed: no entry (a hash already begun runs out)
        for kept in written:  # not handed to the manifest
            kept.close()
        held.close()
        source.close()


def _identity(descriptor: int | None) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file open on ``descriptor`` (None: none, or unknown)."""
    if descriptor is None:
        return None
    try:
        status = os.fstat(descriptor)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _add_to_manifest(manifest, source: PageSource, source_path: Path, destination: Path,
                     page_digests: list[bytes], result: MovieResult, source_hash=None,
                     eer_gain_reference: np.ndarray | None = None, written=None) -> None:
    """Describe the written TIFF in ``<o>``'s manifest (:mod:`cryotiff.manifest`), hashing the
    files in the background; the TIFF is complete and checked already, so a manifest that cannot
    be written is a warning (:meth:`cryotiff.manifest.Manifest.wait`). ``eer_gain_reference``:
    the run's converted EER gain (``<o>/gain-reference.mrc``), for an EER movie. ``written``: the
    :class:`cryotiff.io.atomic.WrittenFile` of the TIFF, which the manifest hashes and closes."""
    from .manifest import pixels_digest

    # The integer pages of a gain-normalised movie need <o>/gain-reference.mrc, and an EER movie's
    # counts need the EER gain written there: its digest goes in too.
    gain_reference = source.gain_reference if isinstance(source, GainPages) else eer_gain_reference
    # An EER movie's damaged raw frames left out: a rerun (--only_do_unfinished) must say so again.
    left_out = sorted(index + 1 for index in source.corrupt_frames) if isinstance(source, EerPages) else None
    manifest.add_later(source_path, destination, page_digests, source.shape_yx, str(source.dtype), source_hash,
                       gain_reference, left_out, written)
    result.details["pixels_sha256"] = pixels_digest(page_digests)


def _write_pages(
    source: PageSource,
    source_path: Path,
    destination: Path,
    options: ConvertOptions,
    executor: Executor | None,
    on_page: Callable[[int, int], None] | None,
    page_digests: list[bytes] | None = None,
    before_last_page: Callable[[], None] | None = None,
    output_directory: CheckedDirectory | None = None,
    written: list | None = None,
) -> MovieResult:
    """Encode and write all pages of ``source`` once, with its current sample type; with
    ``page_digests``, append each page's digest to it, in page order. ``before_last_page`` is
    called once every page has been read and made, before the last one is written; what it
    raises leaves no file behind. ``output_directory``: as :func:`convert_movie` takes it.
    ``written``: the :class:`cryotiff.io.atomic.WrittenFile` of the TIFF is appended to it once
    the TIFF has its name."""
    # With a pool, page 1 is made while this thread makes page 0 and decides the codec on it.
    ahead = PageAhead(source, executor) if executor is not None and source.n_pages > 1 else None
    try:
        codec = resolve_codec(  # auto measures candidates on page 0, made once (handed on to the encoder)
            options.compression, options.deflate_level, source.shape_yx[1], source.is_eer,
            sample=source, rows_per_strip=1 if options.line_by_line else None, huffman_encoder=source.huffman_encoder,
            lzw_encoder=source.lzw_encoder,
        )
        rows_per_strip = 1 if options.line_by_line else source.shape_yx[0]
        layout = TiffLayout(
            n_pages=source.n_pages,
            shape_yx=source.shape_yx,
            dtype=source.dtype,
            compression_code=codec.tiff_code,
            rows_per_strip=rows_per_strip,
            pixel_size_angstrom=source.pixel_size_angstrom,
            software=f"cryotiff {__version__}",
        )
        window = page_window(options.threads)
        record = output_record(source, codec=codec.label, verified=options.verify)
        # With --j 1 the strips' checks and the pages' digests for the manifest run on a thread of
        # their own (ISA-L, the LZW decoder and SHA-256 release the GIL): page k is checked while
        # its strips are written and page k + 1 is made, as the source's digest is made beside the
        # conversion (Manifest.hash_source_later). With more threads the page tasks make them.
        checks_beside = options.verify or page_digests is not None
        beside = ThreadPoolExecutor(1, "cryotiff-check") if executor is None and checks_beside else None

        def finished(page: EncodedPage) -> None:
            digest = page.finish()
            if page_digests is not None:
                page_digests.append(digest)

        def strips() -> Iterator[bytes]:
            pages = ordered_map(
                lambda k: _encode_page(source, codec, rows_per_strip, options.verify, k, page_digests is not None,
                                       beside, ahead),
                source.n_pages,
                executor,
                window,
            )
            previous: EncodedPage | None = None
            page: EncodedPage | None = None
            try:
                for done in range(1, source.n_pages + 1):
                    page = next(pages)
                    if previous is not None:  # checked while this page was made; a failed check stops here
                        finished(previous)
                    previous = page
                    if done == source.n_pages:
                        # Every check before the last strips: the writer stops asking after them.
                        previous = None
                        finished(page)
                        if before_last_page is not None:
                            before_last_page()
                    while page.strips:  # each strip is let go once written, before the next page is asked for
                        yield page.strips.pop(0)
                    if on_page is not None:
                        on_page(done, source.n_pages)
            finally:  # a failed check or writer: the pages still held let go (a finished one is untouched)
                for held in (previous, page):
                    if held is not None:
                        held.abandon()

        pages_strips = strips()
        try:
            write_movie(destination, layout, pages_strips, description=record.to_description(),
                        directory=output_directory, kept=written)
        finally:
            pages_strips.close()  # a writer that failed: the pages it did not take let go first
            if beside is not None:
                beside.shutdown(wait=True, cancel_futures=True)
        return MovieResult(
            source=source_path,
            destination=destination,
            status="converted",
            n_pages=source.n_pages,
            frames_verified=source.n_pages if options.verify else 0,
            input_bytes=source.input_bytes,
            output_bytes=written[-1].status.st_size if written else destination.stat().st_size,
            codec=codec.label,
            dtype=str(source.dtype),
        )
    finally:
        if ahead is not None:
            ahead.drop()  # not taken: the movie stopped before page 1's task took it


__all__ = [
    "ConvertOptions",
    "MovieResult",
    "PageSource",
    "PlainPages",
    "convert_movie",
    "movie_kind",
    "open_movie",
    "open_page_source",
    "CryotiffError",
]
