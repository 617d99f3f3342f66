"""``convert-to-tiff --benchmark``: every codec on the first frames of some movies.

For each movie the first :data:`BENCHMARK_FRAMES` pages (as the conversion would make them, so
EER rendering and gain correction are included in what is compressed, not in the timing) are
encoded with each codec of :data:`BENCHMARK_CODECS` in one thread, decoded again and compared.
The rows say the size in % of the uncompressed pages, encode and decode MB/s of uncompressed
data, the TIFF Compression tag each codec writes, which readers decode it, which codec RELION
would have used and which one ``--compression auto`` picks. Nothing is written.

The library only computes; :func:`format_benchmark_table` returns the text the CLI prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codecs import (
    MOVIE_READERS,
    StripCodec,
    choose_auto_codec,
    make_codec,
    make_codec_from_label,
    relion_codec_kind,
    split_compression,
)
from .errors import CryotiffError, VerificationError

#: Pages of each movie that are compressed.
BENCHMARK_FRAMES = 2
#: ...but no more than this much frame data (at least one page), to keep slow codecs bearable.
BENCHMARK_MAX_BYTES = 40_000_000

#: The codecs tried, fastest first. ``zlib-6`` is RELION's deflate encoder (the same stream
#: format as libdeflate's ``deflate-6``); ``deflate-12`` is libdeflate's strongest level.
BENCHMARK_CODECS = (
    "lzw",
    "deflate-1",
    "deflate-huffman",
    "deflate-rle",
    "deflate-6",
    "zlib-6",
    "deflate-12",
    "zstd-3",
    "lzma-1",
)


@dataclass
class BenchmarkRow:
    """One codec on the first pages of one movie (or, with ``error``, a movie that failed).

    Attributes:
        movie: the input movie.
        codec: the codec's label (``deflate-huffman``, ``zlib-6``...).
        tiff_code: the TIFF Compression tag (259) it writes.
        n_pages: pages compressed.
        shape_yx: page shape.
        dtype: page sample type.
        raw_bytes: uncompressed bytes of those pages.
        compressed_bytes: their compressed strips.
        encode_seconds: single-thread encode time.
        decode_seconds: single-thread decode time.
        readers: which programs decode the result.
        encoder: the library that encoded (see :attr:`cryotiff.codecs.StripCodec.encoder`).
        is_relion: RELION's ``auto`` would have used this codec (zlib at ``--deflate_level`` or LZW).
        is_auto: cryotiff's ``auto`` picks this codec for the movie.
        error: why the movie could not be benchmarked (then the other fields are empty).
    """

    movie: Path
    codec: str = ""
    tiff_code: int = 0
    n_pages: int = 0
    shape_yx: tuple[int, int] = (0, 0)
    dtype: str = ""
    raw_bytes: int = 0
    compressed_bytes: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    readers: str = ""
    encoder: str = ""
    is_relion: bool = False
    is_auto: bool = False
    error: str = ""

    @property
    def size_percent(self) -> float:
        return 100.0 * self.compressed_bytes / self.raw_bytes if self.raw_bytes else 0.0

    @property
    def encode_mb_per_s(self) -> float:
        return self.raw_bytes / 1e6 / self.encode_seconds if self.encode_seconds > 0 else float("inf")

    @property
    def decode_mb_per_s(self) -> float:
        return self.raw_bytes / 1e6 / self.decode_seconds if self.decode_seconds > 0 else float("inf")


def codecs_for(options) -> list[str]:
    """The codec labels to try: :data:`BENCHMARK_CODECS`, plus the one ``--compression`` names
    explicitly (deflate at ``--deflate_level``, ``zstd:19``...)."""
    labels = list(BENCHMARK_CODECS)
    name, level = split_compression(options.compression)
    if name in ("deflate", "zip"):
        chosen = make_codec("deflate", options.deflate_level).label
    elif name in ("zstd", "lzma", "lzw", "none"):
        chosen = make_codec(name, level).label
    else:
        chosen = None
    if chosen is not None and chosen not in labels:
        labels.append(chosen)
    return labels


def _strips(page: np.ndarray, rows_per_strip: int) -> list[np.ndarray]:
    """A page's strips as the conversion makes them: TIFF scanline order (rows flipped)."""
    rows = np.ascontiguousarray(page[::-1])
    return [rows[first : first + rows_per_strip] for first in range(0, rows.shape[0], rows_per_strip)]


def _measure(codec: StripCodec, pages: list[list[np.ndarray]]) -> tuple[int, float, float]:
    """Compressed bytes, encode seconds and decode seconds of ``pages`` (lists of strips); every
    strip is compared with its decoded bytes."""
    compressed, encode_seconds, decode_seconds = 0, 0.0, 0.0
    for strips in pages:
        for strip in strips:
            started = time.perf_counter()
            encoded = codec.encode(strip)
            encode_seconds += time.perf_counter() - started
            started = time.perf_counter()
            decoded = codec.decode(encoded, strip.nbytes)
            decode_seconds += time.perf_counter() - started
            compressed += len(encoded)
            if decoded != strip.tobytes():
                raise VerificationError(f"{codec.label}: a strip does not decode to its data")
    return compressed, encode_seconds, decode_seconds


def benchmark_movie(path: Path, options, labels: list[str] | None = None) -> list[BenchmarkRow]:
    """The rows of one movie (see :class:`BenchmarkRow`).

    Raises:
        CryotiffError: the movie cannot be opened or its pages made.
    """
    from .convert import open_page_source

    source = open_page_source(path, options)
    try:
        n_pages = 0
        pages: list[np.ndarray] = []
        while n_pages < min(BENCHMARK_FRAMES, source.n_pages):
            if pages and sum(p.nbytes for p in pages) + pages[0].nbytes > BENCHMARK_MAX_BYTES:
                break
            pages.append(source.page(n_pages))
            n_pages += 1
        shape_yx, dtype, is_eer = tuple(source.shape_yx), np.dtype(source.dtype), source.is_eer
    finally:
        source.close()
    if not pages:
        raise CryotiffError(f"{path}: the movie has no frames")
    rows_per_strip = 1 if options.line_by_line else shape_yx[0]
    width = shape_yx[1]
    auto_label = choose_auto_codec(pages[0], width, is_eer, 1 if options.line_by_line else None).codec.label
    relion_label = relion_codec_kind(width, is_eer)
    if relion_label.startswith("zlib") and options.deflate_level <= 9:
        relion_label = f"zlib-{options.deflate_level}"
    labels = list(labels or codecs_for(options))
    for extra in (auto_label, relion_label):
        if extra not in labels:
            labels.append(extra)
    page_strips = [_strips(page, rows_per_strip) for page in pages]
    raw_bytes = sum(page.nbytes for page in pages)
    rows = []
    for label in labels:
        codec = make_codec_from_label(label)
        compressed, encode_seconds, decode_seconds = _measure(codec, page_strips)
        rows.append(
            BenchmarkRow(
                movie=path,
                codec=label,
                tiff_code=codec.tiff_code,
                n_pages=len(pages),
                shape_yx=shape_yx,
                dtype=str(dtype),
                raw_bytes=raw_bytes,
                compressed_bytes=compressed,
                encode_seconds=encode_seconds,
                decode_seconds=decode_seconds,
                readers=codec.readers,
                encoder=codec.encoder,
                is_relion=label == relion_label,
                is_auto=label == auto_label,
            )
        )
    return rows


def benchmark_codecs(movies: list[Path], options) -> list[BenchmarkRow]:
    """Benchmark every codec on the first pages of each movie; a movie that cannot be read gives
    one row with its error instead of stopping the others."""
    rows: list[BenchmarkRow] = []
    for path in movies:
        try:
            rows.extend(benchmark_movie(Path(path), options))
        except CryotiffError as exc:
            rows.append(BenchmarkRow(movie=Path(path), error=str(exc)))
    return rows


def format_benchmark_table(rows: list[BenchmarkRow]) -> str:
    """One table per movie: codec, TIFF Compression tag, size %, encode and decode MB/s (one
    thread), readers, and which codec RELION and ``auto`` use."""
    lines: list[str] = []
    movies: dict[Path, list[BenchmarkRow]] = {}
    for row in rows:
        movies.setdefault(row.movie, []).append(row)
    for movie, movie_rows in movies.items():
        if lines:
            lines.append("")
        failed = [row for row in movie_rows if row.error]
        if failed:
            lines.append(f"{movie}: {failed[0].error}")
            continue
        first = movie_rows[0]
        ny, nx = first.shape_yx
        pages = "page" if first.n_pages == 1 else "pages"
        lines.append(
            f"{movie}: first {first.n_pages} {pages} of {nx} x {ny} {first.dtype} "
            f"({first.raw_bytes / 1e6:.1f} MB), one thread"
        )
        name_width = max(len("codec"), *(len(row.codec) for row in movie_rows))
        lines.append(
            f"  {'codec':<{name_width}}  {'encoder':<11}  {'TIFF':>5}  {'size %':>6}  {'enc MB/s':>8}  "
            f"{'dec MB/s':>8}  {'used by':<12}  readers"
        )
        for row in movie_rows:
            used_by = ", ".join(name for name, flag in (("RELION", row.is_relion), ("auto", row.is_auto)) if flag)
            lines.append(
                f"  {row.codec:<{name_width}}  {row.encoder:<11}  {row.tiff_code:>5}  {row.size_percent:>6.2f}  "
                f"{_speed(row.encode_mb_per_s):>8}  {_speed(row.decode_mb_per_s):>8}  {used_by:<12}  {row.readers}"
            )
    lines.append("")
    lines.append(f"all movie readers: {MOVIE_READERS}. TIFF 8 = Deflate (RELION writes the same stream as 32946),")
    lines.append("5 = LZW, 50000 = ZSTD, 34925 = LZMA. zlib-6 is RELION's encoder; deflate-N is libdeflate;")
    lines.append("deflate-huffman is cryotiff's compiled Huffman-only encoder (one optimal code per strip);")
    lines.append("deflate-rle is zlib-ng's Z_RLE strategy. MB/s are of uncompressed data.")
    return "\n".join(lines)


def _speed(mb_per_s: float) -> str:
    return ">9999" if mb_per_s > 9999 else f"{mb_per_s:.0f}" if mb_per_s >= 100 else f"{mb_per_s:.1f}"
