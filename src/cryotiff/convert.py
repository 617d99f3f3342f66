"""The per-movie pipeline: read frames, transform them, encode strips concurrently, verify every
strip, write one TIFF atomically.

A movie becomes a :class:`PageSource`: something that can produce output page ``k`` (raster
order, output sample type) from any thread. The encoder turns pages into TIFF strips in a bounded
window of concurrent tasks and hands them to the writer in page order, so memory stays a few
pages per thread whatever the movie length.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import __version__
from .codecs import StripCodec, resolve_codec
from .errors import CryotiffError, InputError, VerificationError
from .io import Movie
from .io.tiff import TiffLayout, flip_rows, write_movie

#: MRC inputs without a pixel size get 1.0 A in the TIFF resolution tags, as in RELION
#: (``samplingRateX`` default).
RELION_DEFAULT_PIXEL_SIZE_ANGSTROM = 1.0

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
        warnings: messages for the user (printed by the CLI).
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
    """

    path: Path
    n_pages: int
    shape_yx: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float | None
    is_eer: bool = False
    input_bytes: int = 0

    def page(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def finish(self, result: MovieResult) -> None:
        """Add path-specific figures and warnings to the movie's result (called after writing)."""

    def close(self) -> None:
        pass


class PlainPages(PageSource):
    """Frames copied unchanged (MRC modes 0, 1, 6, 101; TIFF input; mode 2 without a gain).

    Mode 12 (float16) is widened to float32, which every TIFF reader of movies accepts.
    """

    def __init__(self, movie: Movie, default_pixel_size_angstrom: float | None):
        info = movie.info
        self.movie = movie
        self.path = info.path
        self.n_pages = info.n_frames
        self.shape_yx = info.shape_yx
        self.dtype = np.dtype(np.float32) if info.dtype == np.float16 else np.dtype(info.dtype)
        pixel_size = info.pixel_size_angstrom
        self.pixel_size_angstrom = pixel_size if pixel_size else default_pixel_size_angstrom
        self.input_bytes = info.frame_nbytes * info.n_frames

    def page(self, index: int) -> np.ndarray:
        frame = self.movie.read_frame(index)
        if frame.dtype != self.dtype:
            frame = frame.astype(self.dtype)
        return frame

    def close(self) -> None:
        self.movie.close()


class WiderTypeNeeded(Exception):
    """Internal signal: a page does not fit the sample type chosen for the movie; the movie is
    written again as ``dtype`` (never surfaces to the user as an error)."""

    def __init__(self, dtype: np.dtype, reason: str):
        super().__init__(reason)
        self.dtype = np.dtype(dtype)
        self.reason = reason


#: Integer TIFF sample types every movie reader accepts, smallest first.
INTEGER_TIFF_TYPES = (np.uint8, np.int8, np.uint16, np.int16)

#: RELION's warning for mode-2 movies converted without a gain.
MODE2_WITHOUT_GAIN_WARNING = (
    "WARNING: To effectively compress mode 2 MRC files, you should first estimate the gain with --estimate_gain."
)


def smallest_integer_type(minimum: float, maximum: float) -> np.dtype | None:
    """The smallest TIFF integer sample type holding ``minimum..maximum``, or None."""
    for candidate in INTEGER_TIFF_TYPES:
        info = np.iinfo(candidate)
        if info.min <= minimum and maximum <= info.max:
            return np.dtype(candidate)
    return None


def integer_valued_range(frame: np.ndarray) -> tuple[float, float] | None:
    """``(min, max)`` if every value of a float frame is a finite integer that an integer type
    stores bit-exactly (so not -0.0, whose sign an integer would lose), else None."""
    if not np.all(np.isfinite(frame)) or not np.array_equal(np.trunc(frame), frame):
        return None
    if np.any(np.signbit(frame) & (frame == 0)):
        return None
    return float(frame.min()), float(frame.max())


class FloatPages(PlainPages):
    """Float movies (MRC mode 2 or 12, float TIFF) without a gain.

    RELION writes them as float32. Beyond RELION: a movie whose values are all integers (some
    archives hold such files) is written as the smallest integer type that holds it. The type is
    guessed from the first frame; a later frame that does not fit raises :class:`WiderTypeNeeded`
    and the movie is written again with a wider type (or float32).
    """

    def __init__(self, movie: Movie, default_pixel_size_angstrom: float | None):
        super().__init__(movie, default_pixel_size_angstrom)
        self.dtype = np.dtype(np.float32)
        value_range = integer_valued_range(self.movie.read_frame(0)) if self.n_pages else None
        integer_type = smallest_integer_type(*value_range) if value_range else None
        self.dtype = integer_type or np.dtype(np.float32)
        self.warning = None if integer_type else MODE2_WITHOUT_GAIN_WARNING

    def page(self, index: int) -> np.ndarray:
        frame = self.movie.read_frame(index)
        if self.dtype.kind == "f":
            return frame.astype(np.float32, copy=False)
        value_range = integer_valued_range(frame)
        if value_range is None:
            raise WiderTypeNeeded(np.float32, f"frame {index + 1} holds non-integer values")
        wider = smallest_integer_type(min(value_range[0], np.iinfo(self.dtype).min),
                                      max(value_range[1], np.iinfo(self.dtype).max))
        if wider != self.dtype:
            raise WiderTypeNeeded(wider or np.float32, f"frame {index + 1} holds values {value_range[0]:g}..{value_range[1]:g}")
        return frame.astype(self.dtype)

    def retype(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.kind == "f":
            self.warning = MODE2_WITHOUT_GAIN_WARNING

    def finish(self, result: MovieResult) -> None:
        if self.warning:
            result.warnings.append(self.warning)
        elif self.dtype.kind != "f":
            result.details["float_input_stored_as"] = str(self.dtype)


def movie_kind(path: Path) -> str:
    """``mrc``, ``tiff`` or ``eer`` from the file name, else from the first bytes of the file.

    Raises:
        InputError: the file is missing or is none of these.
    """
    kind = MOVIE_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as handle:
            head = handle.read(212)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a movie") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
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


def open_page_source(path: Path, options: ConvertOptions) -> PageSource:
    """Choose how the pages of one movie are made, from its own format and mode (unlike RELION,
    which uses the first movie's mode for all)."""
    kind = movie_kind(path)
    if kind == "eer":
        from .errors import NotYetSupportedError

        raise NotYetSupportedError(f"{path}: EER input is not yet supported")
    movie = open_movie(path)
    default_pixel_size = RELION_DEFAULT_PIXEL_SIZE_ANGSTROM if kind == "mrc" else None
    try:
        if movie.info.dtype.kind == "f":
            return FloatPages(movie, default_pixel_size)
        return PlainPages(movie, default_pixel_size)
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


def _encode_page(source: PageSource, codec: StripCodec, rows_per_strip: int, verify: bool, index: int) -> list[bytes]:
    """Make page ``index``, flip it to TIFF scanline order, encode its strips and (``verify``)
    decode each strip again and compare it byte for byte with the rows it was made from."""
    page = source.page(index)
    if page.shape != source.shape_yx or page.dtype != source.dtype:
        raise VerificationError(
            f"{source.path}: page {index + 1} is {page.shape} {page.dtype}, "
            f"expected {source.shape_yx} {source.dtype}"
        )
    rows = np.ascontiguousarray(flip_rows(page))
    row_bytes = rows.view(np.uint8).reshape(rows.shape[0], -1)
    strips = []
    for first_row in range(0, rows.shape[0], rows_per_strip):
        raw = row_bytes[first_row : first_row + rows_per_strip]
        encoded = codec.encode(raw)
        if verify:
            decoded = np.frombuffer(codec.decode(encoded), dtype=np.uint8)
            if decoded.size != raw.size or not np.array_equal(decoded, raw.ravel()):
                raise VerificationError(
                    f"{source.path}: frame {index + 1}, rows {first_row}..: the {codec.label} "
                    "strip does not decode to the frame it was made from"
                )
        strips.append(encoded)
    return strips


def ordered_map(
    function: Callable[[int], object], count: int, executor: Executor | None, window: int
) -> Iterator[object]:
    """Yield ``function(0) .. function(count-1)`` in order, running at most ``window`` of them
    ahead on ``executor`` (inline when None). Pending tasks are cancelled if the consumer stops."""
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
            yield pending.popleft().result()
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
) -> MovieResult:
    """Convert one movie to ``destination`` (written as ``destination.tmp`` then renamed).

    Args:
        source_path: the input movie.
        destination: the ``.tif`` to write; its directory must exist.
        options: the run's options.
        executor: threads for reading, transforming and encoding pages (``--j``); None = inline.
        on_page: called in the caller's thread as ``on_page(pages_done, n_pages)``.
        source: an already opened page source (otherwise opened here).

    Returns:
        The movie's result with status ``converted``.

    Raises:
        CryotiffError: on any problem; no ``.tif`` or ``.tif.tmp`` is left behind.
    """
    started = time.perf_counter()
    source = source or open_page_source(source_path, options)
    retype_warnings: list[str] = []
    try:
        while True:
            try:
                result = _write_pages(source, source_path, destination, options, executor, on_page)
                break
            except WiderTypeNeeded as retry:
                # Only a page source that can change its type raises this; redo the whole movie.
                retype_warnings.append(
                    f"{source_path}: {retry.reason}; written again as {retry.dtype} instead of {source.dtype}"
                )
                source.retype(retry.dtype)  # type: ignore[attr-defined]
        result.warnings.extend(retype_warnings)
        source.finish(result)
        result.seconds = time.perf_counter() - started
        return result
    finally:
        source.close()


def _write_pages(
    source: PageSource,
    source_path: Path,
    destination: Path,
    options: ConvertOptions,
    executor: Executor | None,
    on_page: Callable[[int, int], None] | None,
) -> MovieResult:
    """Encode and write all pages of ``source`` once, with its current sample type."""
    codec = resolve_codec(options.compression, options.deflate_level, source.shape_yx[1], source.is_eer)
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
    window = 2 * max(1, options.threads)

    def strips() -> Iterator[bytes]:
        pages = ordered_map(
            lambda k: _encode_page(source, codec, rows_per_strip, options.verify, k),
            source.n_pages,
            executor,
            window,
        )
        for done, page_strips in enumerate(pages, start=1):
            yield from page_strips
            if on_page is not None:
                on_page(done, source.n_pages)

    write_movie(destination, layout, strips())
    return MovieResult(
        source=source_path,
        destination=destination,
        status="converted",
        n_pages=source.n_pages,
        frames_verified=source.n_pages if options.verify else 0,
        input_bytes=source.input_bytes,
        output_bytes=destination.stat().st_size,
        codec=codec.label,
        dtype=str(source.dtype),
    )


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
