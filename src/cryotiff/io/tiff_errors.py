"""tifffile's complaints about a damaged TIFF (or EER) file, in plain words.

tifffile reports a damaged file by raising whatever the damaged bytes provoke (a ``TypeError``
comparing a tuple with an int when a size tag holds two values, a ``struct.error`` where the file
ends inside an IFD, ``ZeroDivisionError`` ...) or by logging a line that starts with its own
object (``<tifffile.TiffPages @8> invalid page offset 1048576``). :func:`tifffile_problem`
turns either into a phrase a user can act on (``an IFD offset (1048576) lies outside the
file``); the readers put the file name and what they were doing before it. tifffile's text is
kept only where nothing more telling can be said.

This module imports nothing from the rest of cryotiff but :mod:`cryotiff.errors`,
:mod:`cryotiff.io.tiff_ifd` and (to open a file it is not given) :mod:`cryotiff.io`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import BinaryIO

from ..errors import CryotiffError
from .tiff_ifd import misfit_tag

#: Names of the tags that tifffile's messages name by number.
_TAG_NAMES = {
    254: "NewSubfileType", 256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
    262: "PhotometricInterpretation", 270: "ImageDescription", 273: "StripOffsets", 277: "SamplesPerPixel",
    278: "RowsPerStrip", 279: "StripByteCounts", 282: "XResolution", 283: "YResolution", 284: "PlanarConfiguration",
    296: "ResolutionUnit", 305: "Software", 306: "DateTime", 317: "Predictor", 322: "TileWidth", 323: "TileLength",
    324: "TileOffsets", 325: "TileByteCounts", 339: "SampleFormat", 65001: "EER metadata", 65002: "EER metadata",
}

#: The decoders tifffile's codecs name in their errors, as a reader knows the compression.
_CODECS = (("deflate", "deflate"), ("zlib", "deflate"), ("zstd", "ZSTD"), ("lzw", "LZW"), ("lzma", "LZMA"),
           ("packbits", "PackBits"), ("jpeg", "JPEG"), ("webp", "WebP"), ("lerc", "LERC"))

#: What Python raises when a tag holds a value of another type or count than the reader needs
#: (``'<' not supported between instances of 'tuple' and 'int'`` ...).
_WRONG_VALUE_PATTERNS = (
    "not supported between instances of", "int() argument must be", "unsupported operand type",
    "invalid literal for int()", "division by zero", "object is not subscriptable", "object is not iterable",
    "cannot convert", "could not convert", "has no len()", "object cannot be interpreted as an integer",
    "must be real number", "out of range", "negative dimensions", "overflow",
)


#: errno values that say the disk, the network file system or the permissions failed, not the
#: file's bytes (a negative seek, EINVAL, can come from a damaged offset and is not among them).
_IO_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EIO", "EACCES", "EPERM", "ESTALE", "ETIMEDOUT", "ENXIO", "ENODEV",
                                      "EREMOTEIO", "ENOLINK", "ECOMM", "EHOSTDOWN", "EHOSTUNREACH", "ECONNRESET")
    if hasattr(errno, name)
)


def io_failure(error: BaseException | str) -> str | None:
    """``reading the file failed (Input/output error)`` when ``error`` (an exception, or a line
    tifffile logged: ``... corrupted tag list of page 1 @8 raised OSError(5, 'Input/output
    error')``; an exception raised from such an OSError, as tifffile's ``corrupted tag list``)
    is the operating system failing to read, which says nothing about the file's bytes; None for
    anything else."""
    seen = 0
    while isinstance(error, BaseException) and not isinstance(error, OSError) and seen < 8:
        cause = error.__cause__ or error.__context__
        if cause is None:
            break
        error, seen = cause, seen + 1
    if isinstance(error, OSError):
        number, words = error.errno, error.strerror
    else:
        found = re.search(r"raised \w*Error\((\d+), '([^']*)'\)", str(error))
        if found is None:
            return None
        number, words = int(found.group(1)), found.group(2)
    if number not in _IO_ERRNOS:
        return None
    return f"reading the file failed ({words or os.strerror(number)})"


def _tag(text: str) -> str:
    match = re.search(r"TiffTag (\d+)", text)
    if match is None:
        return "a tag"
    code = int(match.group(1))
    name = _TAG_NAMES.get(code)
    return f"tag {code} ({name})" if name else f"tag {code}"


def tifffile_problem(error: BaseException | str) -> str:
    """What is wrong with a TIFF file, from an exception tifffile (or a codec) raised on it or a
    line it logged: a phrase to put after the file name, without tifffile's object names
    (``not a readable TIFF file (<tifffile's words>)`` where nothing better can be said)."""
    failure = io_failure(error)
    if failure is not None:
        return failure
    text = str(error).strip()
    lowered = text.lower()
    if "invalid value offset" in text:
        return f"the value of {_tag(text)} lies outside the file; the file is truncated or damaged"
    if "invalid data type" in text:
        found = re.search(r"invalid data type (\d+)", text)
        kind = f" ({found.group(1)})" if found else ""
        return f"{_tag(text)} has an invalid data type{kind}; the file is damaged"
    found = re.search(r"invalid page offset (-?\d+)", text)
    if found or "invalid offset to page" in text:
        where = f" ({found.group(1)})" if found else ""
        return f"the IFD offset of a page{where} points outside the file; the file is truncated or damaged"
    found = re.search(r"suspicious number of tags (\d+)", text)
    if found:
        return f"an IFD claims {found.group(1)} tags, more than any page has; the file is damaged"
    if "corrupted tag list" in text or "corrupted IFD" in text:
        return "a page's list of tags (IFD) is damaged"
    found = re.search(r"incorrect (\w+) count \((\d+) != (\d+)\)", text)
    if found:
        held = f"{found.group(2)} value{'s' * (found.group(2) != '1')}"
        return f"the {found.group(1)} tag holds {held} where the page's size needs {found.group(3)}; the file is damaged"
    if "missing data offset" in text:
        return "a page has no StripOffsets or TileOffsets tag: where its data are is not said"
    if "missing" in text and "bytecounts" in lowered:
        return "a page has no StripByteCounts or TileByteCounts tag: how long its data are is not said"
    if text.startswith("not a TIFF file") or "invalid TIFF version" in text:
        return "its first bytes are no TIFF header (not a TIFF file, or its start is damaged)"
    if "BigTIFF" in text:
        return "its BigTIFF header is damaged"
    if "unpack requires a buffer" in text or "read past end" in lowered or isinstance(error, EOFError):
        return "the file ends inside its TIFF structure; it is truncated or damaged"
    found = re.search(r"(-?\d+) is not a known COMPRESSION", text)
    if found:
        return f"compression {found.group(1)} is not a TIFF compression that can be decoded"
    if "decode" in lowered or "decompress" in lowered or "corrupt" in lowered:
        codec = next((name for key, name in _CODECS if key in lowered), "")
        return f"its {codec + ' ' if codec else ''}compressed data are damaged"
    if any(pattern in text for pattern in _WRONG_VALUE_PATTERNS) or isinstance(
        error, (TypeError, ZeroDivisionError, OverflowError)
    ):
        return "a tag holds a value of the wrong kind or number; the file is damaged"
    cleaned = re.sub(r"<(?:tifffile\.)?Tiff\w+(?:\.\w+)?[^>]*>\s*(?:raised\s*)?", "", text).strip()
    return f"not a readable TIFF file ({cleaned or type(error).__name__})"


def _reopened(path: str | os.PathLike[str], handle: BinaryIO | None) -> contextlib.AbstractContextManager:
    """``handle`` as it is (the file already opened, not closed here), else ``path`` opened as
    :func:`cryotiff.io.open_regular_stream` opens inputs (a named pipe there never blocks)."""
    if handle is not None:
        return contextlib.nullcontext(handle)
    from . import open_regular_stream

    return open_regular_stream(path)


def problem_of_file(path: str | os.PathLike[str], error: BaseException, handle: BinaryIO | None = None) -> str:
    """What is wrong with the TIFF (or EER) file ``path`` that tifffile could not read: the tag
    whose type does not fit it where there is one (tifffile then fails comparing, say, text with
    a number, which names no tag), else :func:`tifffile_problem`. ``handle``: the file as the
    reader opened it (read again from its start), else ``path`` is opened."""
    if not isinstance(error, (OSError, MemoryError)):
        try:
            with _reopened(path, handle) as opened:
                misfit = misfit_tag(opened)
        except (OSError, CryotiffError):
            misfit = None
        if misfit is not None:
            return f"{misfit}; the file is damaged"
    return tifffile_problem(error)


def why_no_page(path: str | os.PathLike[str], file_nbytes: int, handle: BinaryIO | None = None) -> str:
    """Why tifffile found no page in ``path``: the header's first IFD offset, told plainly.
    ``handle``: the file as the reader opened it, else ``path`` is opened."""
    import struct

    try:
        with _reopened(path, handle) as opened:
            opened.seek(0)
            header = opened.read(16)
        big = header[2:4] in (b"\x2b\x00", b"\x00\x2b")
        order = "<" if header[:2] == b"II" else ">"
        first = struct.unpack_from(order + ("Q" if big else "I"), header, 8 if big else 4)[0]
    except (OSError, struct.error, CryotiffError):
        return "the TIFF file has no image"
    if first == 0:
        return "the TIFF file has no image (its header names no page)"
    if first >= file_nbytes:
        return (f"the TIFF file has no readable image: its header puts the first page (IFD) at byte {first}, "
                f"beyond the end of the file ({file_nbytes} bytes); the file is truncated or damaged")
    return "the TIFF file has no readable image: its first page (IFD) is damaged"
