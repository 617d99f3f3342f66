"""Every compression decision in one place: codec names, TIFF codes, levels, the auto policy.

A :class:`StripCodec` turns the bytes of one TIFF strip into compressed bytes and back. All
encoders come from imagecodecs and release the GIL, so strips of different frames can be encoded
concurrently in threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import imagecodecs

from .errors import OptionError

#: TIFF Compression tag values.
COMPRESSION_NONE = 1
COMPRESSION_LZW = 5
#: Standard Deflate ("Adobe Deflate", code 8), which every reader accepts. RELION writes the
#: legacy code 32946, for which recent libtiff warns on every page.
COMPRESSION_DEFLATE = 8
COMPRESSION_LZMA = 34925
COMPRESSION_ZSTD = 50000

#: Names accepted by ``--compression``. ``zip`` is RELION's alias of ``deflate``.
COMPRESSION_CHOICES = ("auto", "none", "lzw", "deflate", "zip", "zstd", "lzma")

#: libdeflate's level range (zlib's is 1-9; 10-12 are libdeflate's slow, strongest levels).
DEFLATE_LEVELS = range(1, 13)
ZSTD_LEVELS = range(1, 23)
LZMA_LEVELS = range(0, 10)

#: Readers known not to decode the opt-in codecs (they need a libtiff built with them).
OPT_IN_CODEC_WARNING = (
    "{name} (TIFF Compression {code}) is not part of baseline TIFF: IMOD's bundled libtiff, "
    "older system libtiff builds (before 4.0.10 for zstd) and programs linked to them (some "
    "RELION, MotionCor2 and Warp installations) cannot read these files. Use lzw or deflate "
    "for files that every reader must open."
)


@dataclass(frozen=True)
class StripCodec:
    """One TIFF compression scheme with its parameters.

    Attributes:
        name: ``none``, ``lzw``, ``deflate``, ``zstd`` or ``lzma``.
        tiff_code: value of the TIFF Compression tag (259).
        level: compression level, or None where the scheme has none.
    """

    name: str
    tiff_code: int
    level: int | None
    _encode: Callable[[bytes], bytes]
    _decode: Callable[[bytes], bytes]

    def encode(self, data: bytes | memoryview) -> bytes:
        """Compress one strip."""
        return self._encode(data)

    def decode(self, data: bytes) -> bytes:
        """Decompress one strip."""
        return self._decode(data)

    @property
    def label(self) -> str:
        return self.name if self.level is None else f"{self.name}-{self.level}"

    @property
    def is_baseline(self) -> bool:
        """True for the schemes every movie reader decodes (none, LZW, Deflate)."""
        return self.tiff_code in (COMPRESSION_NONE, COMPRESSION_LZW, COMPRESSION_DEFLATE)


def _identity(data: bytes | memoryview) -> bytes:
    return bytes(data)


def make_codec(name: str, level: int | None = None) -> StripCodec:
    """Return the codec called ``name`` (``zip`` is an alias of ``deflate``) at ``level``.

    Raises:
        OptionError: unknown name or a level outside the codec's range.
    """
    if name == "zip":
        name = "deflate"
    if name == "none":
        return StripCodec("none", COMPRESSION_NONE, None, _identity, _identity)
    if name == "lzw":
        return StripCodec("lzw", COMPRESSION_LZW, None, imagecodecs.lzw_encode, imagecodecs.lzw_decode)
    if name == "deflate":
        level = 6 if level is None else level
        _check_level("deflate", level, DEFLATE_LEVELS)
        # libdeflate (imagecodecs.deflate_encode) writes zlib-wrapped streams like zlib does, at the
        # same ratio and several times the speed (docs/benchmarks.md).
        return StripCodec(
            "deflate",
            COMPRESSION_DEFLATE,
            level,
            lambda data: imagecodecs.deflate_encode(data, level=level),
            imagecodecs.deflate_decode,
        )
    if name == "zstd":
        level = 3 if level is None else level
        _check_level("zstd", level, ZSTD_LEVELS)
        return StripCodec(
            "zstd",
            COMPRESSION_ZSTD,
            level,
            lambda data: imagecodecs.zstd_encode(data, level=level),
            imagecodecs.zstd_decode,
        )
    if name == "lzma":
        level = 6 if level is None else level
        _check_level("lzma", level, LZMA_LEVELS)
        return StripCodec(
            "lzma",
            COMPRESSION_LZMA,
            level,
            lambda data: imagecodecs.lzma_encode(data, level=level),
            imagecodecs.lzma_decode,
        )
    raise OptionError(
        f"--compression must be one of {', '.join(COMPRESSION_CHOICES)}; got '{name}'"
    )


def _check_level(name: str, level: int, allowed: range) -> None:
    if level not in allowed:
        raise OptionError(
            f"{name} level must be {allowed.start}..{allowed.stop - 1}; got {level}"
        )


def relion_auto_codec(width: int, is_eer: bool, deflate_level: int = 6) -> StripCodec:
    """RELION's ``auto`` rule (``decide_filter``): deflate for 4096-wide non-EER movies ("likely
    Falcon"), LZW for everything else (K2, K3, EER output)."""
    if width == 4096 and not is_eer:
        return make_codec("deflate", deflate_level)
    return make_codec("lzw")


def resolve_codec(compression: str, deflate_level: int, width: int, is_eer: bool) -> StripCodec:
    """The codec for one movie from ``--compression`` and ``--deflate_level``.

    ``--deflate_level`` applies to deflate and is also taken as the level of zstd and lzma when
    given explicitly for them; ``auto`` follows :func:`relion_auto_codec`.
    """
    if compression == "auto":
        return relion_auto_codec(width, is_eer, deflate_level)
    if compression in ("deflate", "zip"):
        return make_codec("deflate", deflate_level)
    return make_codec(compression)


def validate_options(compression: str, deflate_level: int) -> None:
    """Check ``--compression`` and ``--deflate_level`` before any file is touched (RELION checks
    them when the first page is written, leaving a ``.tmp`` behind)."""
    if compression not in COMPRESSION_CHOICES:
        make_codec(compression)  # raises the OptionError with the list of choices
    _check_level("deflate", deflate_level, DEFLATE_LEVELS)
