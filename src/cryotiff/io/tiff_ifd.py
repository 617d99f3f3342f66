"""The IFDs of a TIFF file read and patched as raw bytes, beside tifffile: the writer removes
entries tifffile always writes (:func:`remove_ifd_entries`), and the reader names the tag whose
type does not fit it when tifffile stumbles over one (:func:`misfit_tag`).

An IFD is a count, that many entries of (tag code, TIFF type, value count, value or offset) and
the offset of the next IFD: 2 + 12 n + 4 bytes in classic TIFF, 8 + 20 n + 8 in BigTIFF.

This module imports nothing from the rest of cryotiff.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

#: XResolution, YResolution, ResolutionUnit: the tags that state a pixel size.
RESOLUTION_TAG_CODES = frozenset({282, 283, 296})

#: Tags whose values must be whole numbers: TIFF types BYTE, SHORT, LONG, LONG8 (and the signed
#: and IFD kinds some writers use).
_INTEGER_TAGS = {
    254: "NewSubfileType", 256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
    262: "PhotometricInterpretation", 273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip",
    279: "StripByteCounts", 284: "PlanarConfiguration", 296: "ResolutionUnit", 317: "Predictor", 322: "TileWidth",
    323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts", 338: "ExtraSamples", 339: "SampleFormat",
}
_INTEGER_TYPES = frozenset({1, 3, 4, 6, 8, 9, 13, 16, 17, 18})
#: Tags whose values must be RATIONALs.
_RATIONAL_TAGS = {282: "XResolution", 283: "YResolution"}
#: TIFF type numbers and their names (TIFF 6.0 and BigTIFF).
TYPE_NAMES = {1: "BYTE", 2: "ASCII", 3: "SHORT", 4: "LONG", 5: "RATIONAL", 6: "SBYTE", 7: "UNDEFINED", 8: "SSHORT",
              9: "SLONG", 10: "SRATIONAL", 11: "FLOAT", 12: "DOUBLE", 13: "IFD", 16: "LONG8", 17: "SLONG8",
              18: "IFD8"}


@dataclass(frozen=True)
class _Layout:
    byte_order: str
    count_format: str
    entry_nbytes: int
    offset_format: str

    @property
    def count_nbytes(self) -> int:
        return struct.calcsize(self.count_format)

    @property
    def offset_nbytes(self) -> int:
        return struct.calcsize(self.offset_format)


def _layout(header: bytes) -> _Layout | None:
    if len(header) < 8 or header[:2] not in (b"II", b"MM"):
        return None
    order = "<" if header[:2] == b"II" else ">"
    (version,) = struct.unpack_from(order + "H", header, 2)
    if version == 42:
        return _Layout(order, order + "H", 12, order + "I")
    if version == 43 and len(header) >= 16:
        return _Layout(order, order + "Q", 20, order + "Q")
    return None


def _ifds(handle: BinaryIO, max_ifds: int) -> Iterator[tuple[_Layout, int, list[bytes], bytes]]:
    """``(layout, IFD offset, raw entries, raw next-IFD offset)`` of every IFD that can be read
    whole, in chain order, each offset once, at most ``max_ifds``."""
    handle.seek(0)
    header = handle.read(16)
    layout = _layout(header)
    if layout is None:
        return
    (offset,) = struct.unpack_from(layout.offset_format, header, 8 if layout.entry_nbytes == 20 else 4)
    file_nbytes = handle.seek(0, 2)
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) < max_ifds:
        if offset >= file_nbytes:  # beyond the file (a BigTIFF offset may not even fit a seek)
            return
        seen.add(offset)
        handle.seek(offset)
        raw_count = handle.read(layout.count_nbytes)
        if len(raw_count) != layout.count_nbytes:
            return
        (n_entries,) = struct.unpack(layout.count_format, raw_count)
        if n_entries > 4096:  # no movie page has that many tags: a damaged count
            return
        entries = handle.read(n_entries * layout.entry_nbytes)
        next_offset = handle.read(layout.offset_nbytes)
        if len(entries) != n_entries * layout.entry_nbytes or len(next_offset) != layout.offset_nbytes:
            return
        yield layout, offset, [entries[i:i + layout.entry_nbytes] for i in range(0, len(entries), layout.entry_nbytes)], next_offset
        (offset,) = struct.unpack(layout.offset_format, next_offset)


def remove_ifd_entries(handle: BinaryIO, codes: frozenset[int]) -> int:
    """Remove the entries of the tags ``codes`` from every IFD of the TIFF open in ``handle``
    (read and write), in place; returns how many were removed.

    Each IFD keeps its place: its entry count goes down, the remaining entries (in their order,
    values inline or at their offsets untouched) move up, the offset of the next IFD follows
    them, and the bytes freed at its end are zeroed. Values stored outside the IFD (a
    RATIONAL's 8 bytes) stay where they are, unreferenced, as any TIFF may have.
    """
    handle.flush()
    removed = 0
    patches = []
    for layout, offset, entries, next_offset in _ifds(handle, max_ifds=1 << 31):
        kept = [entry for entry in entries if struct.unpack_from(layout.byte_order + "H", entry)[0] not in codes]
        dropped = len(entries) - len(kept)
        if dropped:
            patches.append((offset, struct.pack(layout.count_format, len(kept)) + b"".join(kept) + next_offset
                            + bytes(dropped * layout.entry_nbytes)))
            removed += dropped
    for offset, patch in patches:  # after the walk: a patched IFD is never read again
        handle.seek(offset)
        handle.write(patch)
    handle.flush()
    return removed


def misfit_tag(handle: BinaryIO, max_ifds: int = 100_000) -> str | None:
    """The first IFD entry whose TIFF type does not fit its tag (a size, offset or count tag
    that is not a whole number, a resolution that is not a RATIONAL), as ``page 2: the
    StripByteCounts tag (279) is of type ASCII, where whole numbers are needed``; None if
    there is none. Pages are counted from 1."""
    for number, (layout, _, entries, _) in enumerate(_ifds(handle, max_ifds), start=1):
        for entry in entries:
            code, kind = struct.unpack_from(layout.byte_order + "HH", entry)
            type_name = TYPE_NAMES.get(kind, f"{kind} (no TIFF type)")
            if code in _INTEGER_TAGS and kind not in _INTEGER_TYPES:
                return (f"page {number}: the {_INTEGER_TAGS[code]} tag ({code}) is of type {type_name}, where whole "
                        "numbers are needed")
            if code in _RATIONAL_TAGS and kind != 5:
                return f"page {number}: the {_RATIONAL_TAGS[code]} tag ({code}) is of type {type_name}, not RATIONAL"
    return None
