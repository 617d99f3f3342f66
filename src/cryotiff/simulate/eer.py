"""Synthetic EER (Electron Event Representation) movies.

Three pieces, all vectorised (the only Python loops are over frames):

* :func:`random_events` draws electron events: positions on the physical grid (a Bernoulli
  process, at most one event per physical pixel and frame, as in a real EER frame) and a random
  sub-pixel position for each.
* :func:`encode_frame` turns the events of one frame into an EER bitstream for compression
  65000 (8-bit runs, 4-bit symbols, a 255 run followed by 4 wasted bits), 65001 (7-bit runs,
  4-bit symbols) or 65002 (variable: 7/1/1 or 7/2/2 bits as written in tags 65007-65009).
* :func:`write_eer` writes a BigTIFF ``.eer`` file: one IFD per frame (tag 259 = the compression
  code, one or several strips), the private tags 65007/65008/65009 for 65002, optionally a leading
  "final image" IFD with compression 1 (as TIA may write) and optionally the acquisition metadata
  XML in tag 65001 of the first IFD (``totalDose``, ``numberOfFrames``, ``sensorPixelSize``...),
  which tifffile exposes as ``TiffFile.eer_metadata``.

Sub-pixel convention (RELION ``renderEER.cpp``; imagecodecs ``eer_decode``): the stored symbol
field is ``s``; for 2-bit axes ``s' = s XOR 0b1010`` and ``x_sub = s' & 3``,
``y_sub = (s' >> 2) & 3`` (the horizontal field comes first in the stream); for 1-bit axes ``s' = s XOR 0b11``,
``x_sub = s' & 1``, ``y_sub = s' >> 1``. Here events carry ``x_sub``/``y_sub`` (0 .. 2**bits - 1,
the position inside the physical pixel) and the encoder applies the XOR.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Sequence
from xml.sax.saxutils import escape

import numpy as np

#: Realistic event density: electrons per physical pixel per raw frame (Falcon 4 at ~5 e/px/s
#: and 250 raw frames per second is 0.02; 0.025 is the default of the simulator).
DEFAULT_ELECTRONS_PER_PIXEL_PER_FRAME = 0.025

COMPRESSION_EER_8BIT = 65000
COMPRESSION_EER_7BIT = 65001
COMPRESSION_EER_VARIABLE = 65002


@dataclass(frozen=True)
class EerFrameEvents:
    """Events of one raw frame.

    Attributes:
        positions: int64 raster indices ``y0 * W + x0`` on the physical grid, strictly increasing.
        sub_x: uint8 horizontal sub-pixel position of each event (0 .. 2**horizontal_bits - 1).
        sub_y: uint8 vertical sub-pixel position of each event.
    """

    positions: np.ndarray
    sub_x: np.ndarray
    sub_y: np.ndarray


def random_events(
    rng: np.random.Generator,
    detector_size: int,
    n_frames: int,
    electrons_per_pixel_per_frame: float = DEFAULT_ELECTRONS_PER_PIXEL_PER_FRAME,
    subpixel_bits: int = 2,
) -> list[EerFrameEvents]:
    """Random events for ``n_frames`` frames of a square ``detector_size`` detector.

    Each physical pixel receives an event with probability ``electrons_per_pixel_per_frame``
    (independently), so positions are drawn as geometric gaps (no loop over pixels or events).
    """
    if not 0.0 <= electrons_per_pixel_per_frame < 1.0:
        raise ValueError("electrons_per_pixel_per_frame must be in [0, 1)")
    total = detector_size * detector_size
    p = electrons_per_pixel_per_frame
    frames = []
    for _ in range(n_frames):
        if p == 0.0:
            positions = np.zeros(0, dtype=np.int64)
        else:
            # Draw enough gaps to cover the frame with overwhelming probability, then cut.
            expected = total * p
            n_draw = int(expected + 10.0 * np.sqrt(expected) + 100)
            while True:
                positions = np.cumsum(rng.geometric(p, size=n_draw).astype(np.int64)) - 1
                if positions[-1] >= total:
                    break
                n_draw *= 2
            positions = positions[positions < total]
        n = positions.size
        sub_x = rng.integers(0, 1 << subpixel_bits, size=n, dtype=np.uint8)
        sub_y = rng.integers(0, 1 << subpixel_bits, size=n, dtype=np.uint8)
        frames.append(EerFrameEvents(positions, sub_x, sub_y))
    return frames


def events_from_positions(
    positions: Sequence[int] | np.ndarray,
    sub_x: Sequence[int] | np.ndarray | None = None,
    sub_y: Sequence[int] | np.ndarray | None = None,
) -> EerFrameEvents:
    """Events from explicit positions (sorted and checked for duplicates); sub-pixels default 0."""
    pos = np.asarray(positions, dtype=np.int64)
    n = pos.size
    sx = np.zeros(n, np.uint8) if sub_x is None else np.asarray(sub_x, dtype=np.uint8)
    sy = np.zeros(n, np.uint8) if sub_y is None else np.asarray(sub_y, dtype=np.uint8)
    order = np.argsort(pos, kind="stable")
    pos, sx, sy = pos[order], sx[order], sy[order]
    if n > 1 and np.any(np.diff(pos) <= 0):
        raise ValueError("at most one event per physical pixel and frame")
    return EerFrameEvents(pos, sx, sy)


def scheme_bits(
    compression: int, rle_bits: int | None = None, subpixel_bits: int | None = None
) -> tuple[int, int, int]:
    """``(rle_bits, horizontal_bits, vertical_bits)`` of a compression code.

    65000 and 65001 are fixed (8/2/2 and 7/2/2); 65002 takes ``rle_bits`` (default 7) and
    ``subpixel_bits`` per axis (default 1, the 2K Falcon C scheme 7/1/1).
    """
    if compression == COMPRESSION_EER_8BIT:
        return 8, 2, 2
    if compression == COMPRESSION_EER_7BIT:
        return 7, 2, 2
    if compression == COMPRESSION_EER_VARIABLE:
        r = 7 if rle_bits is None else rle_bits
        s = 1 if subpixel_bits is None else subpixel_bits
        return r, s, s
    raise ValueError(f"not an EER compression code: {compression}")


def encode_frame(
    events: EerFrameEvents,
    detector_size: int,
    compression: int = COMPRESSION_EER_7BIT,
    rle_bits: int | None = None,
    subpixel_bits: int | None = None,
    align: int = 8,
    close_after_last_pixel: bool = True,
) -> bytes:
    """EER bitstream (LSB-first) of one frame.

    Every event is preceded by ``gap // maxrun`` overflow codes (``maxrun = 2**rle_bits - 1``) and
    a code with the remaining run plus the symbol. After the last event, runs up to exactly
    ``W*H`` pixels end the frame. For 65000 every code is 12 bits (an overflow code 255 is followed
    by 4 wasted bits, as RELION reads it). The stream is zero-padded to ``align`` bytes.

    When the last event is on the detector's last pixel, the events already cover the frame:
    ``close_after_last_pixel=False`` then leaves out the closing run code of 0 (Thermo Fisher's
    writer does), so the stream ends with that event's code.
    """
    rle, hbits, vbits = scheme_bits(compression, rle_bits, subpixel_bits)
    maxrun = (1 << rle) - 1
    sym_bits = hbits + vbits
    wasted = sym_bits if compression == COMPRESSION_EER_8BIT else 0
    total = detector_size * detector_size
    pos = np.asarray(events.positions, dtype=np.int64)
    if pos.size and (pos[0] < 0 or pos[-1] >= total):
        raise ValueError("event position outside the detector")
    gaps = np.diff(np.concatenate(([-1], pos))) - 1
    n_over = gaps // maxrun
    tail = total - 1 - int(pos[-1]) if pos.size else total
    # Codes after the last event: overflow codes while they do not reach the end, then the rest
    # (a run of 0 .. maxrun-1 or, when the rest is exactly maxrun, one more overflow code).
    n_tail_over, tail_rest = divmod(tail, maxrun)
    if tail_rest == 0 and n_tail_over > 0:
        n_tail_over -= 1
        tail_rest = maxrun

    # Flip the MSB of each sub-pixel field (RELION: XOR 0x0A for 2+2 bits, XOR 3 for 1+1).
    sx = events.sub_x.astype(np.uint32) ^ (1 << (hbits - 1))
    sy = events.sub_y.astype(np.uint32) ^ (1 << (vbits - 1))
    symbols = sx | (sy << hbits)

    n_events = pos.size
    closing = 0 if (tail == 0 and n_events and not close_after_last_pixel) else 1
    n_items = int(n_over.sum()) + n_events + n_tail_over + closing
    values = np.full(n_items, maxrun, dtype=np.uint32)
    widths = np.full(n_items, rle + wasted, dtype=np.int64)
    event_items = np.cumsum(n_over + 1) - 1
    values[event_items] = (gaps % maxrun).astype(np.uint32) | (symbols << rle)
    widths[event_items] = rle + sym_bits
    if closing:
        values[-1] = tail_rest
        widths[-1] = rle + wasted  # for 65000 the final code carries an (unused) symbol field

    ends = np.cumsum(widths)
    starts = ends - widths
    n_bytes = int(ends[-1] + 7) // 8 if n_items else 0
    n_bytes += (-n_bytes) % align
    # Bit fields are disjoint, so OR == sum: accumulate each field's (up to 3) bytes with bincount.
    byte_index = starts >> 3
    shifted = values.astype(np.uint64) << (starts & 7).astype(np.uint64)
    buf = np.zeros(n_bytes + 4, dtype=np.float64)
    for k in range(3):
        part = ((shifted >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.float64)
        buf += np.bincount(byte_index + k, weights=part, minlength=buf.size)[: buf.size]
    return buf[:n_bytes].astype(np.uint8).tobytes()


def acquisition_metadata(
    n_frames: int,
    detector_size: int,
    electrons_per_pixel_per_frame: float = DEFAULT_ELECTRONS_PER_PIXEL_PER_FRAME,
    pixel_size_angstrom: float = 0.8,
    frame_time_s: float = 0.004,
) -> dict[str, tuple[Any, str | None]]:
    """Acquisition metadata as a Falcon 4i writes it into tag 65001: ``{name: (value, unit)}``.

    ``totalDose`` is in electrons per physical pixel, ``sensorPixelSize.*`` in metres (the pixel
    size at the specimen), ``exposureTime`` in seconds.
    """
    total_dose = electrons_per_pixel_per_frame * n_frames
    exposure = frame_time_s * n_frames
    return {
        "acquisitionID": ("cryotiff-simulated", None),
        "cameraName": ("BM-Falcon", None),
        "commercialName": ("Falcon 4i", None),
        "eerVersion": ("1.0", None),
        "exposureTime": (exposure, "s"),
        "meanDoseRate": (total_dose / exposure if exposure else 0.0, "e/pixel/s"),
        "numberOfFrames": (n_frames, None),
        "sensorImageHeight": (detector_size, "pixels"),
        "sensorImageWidth": (detector_size, "pixels"),
        "sensorPixelSize.height": (pixel_size_angstrom * 1e-10, "m"),
        "sensorPixelSize.width": (pixel_size_angstrom * 1e-10, "m"),
        "serialNumber": ("0000", None),
        "totalDose": (total_dose, "e/pixel"),
    }


def metadata_xml(items: dict[str, tuple[Any, str | None]]) -> bytes:
    """The ``<metadata><item name=.. unit=..>value</item>...</metadata>`` XML of tag 65001."""
    lines = ["<metadata>"]
    for name, (value, unit) in items.items():
        unit_attr = f' unit="{escape(unit)}"' if unit else ""
        lines.append(f'<item name="{escape(name)}"{unit_attr}>{escape(str(value))}</item>')
    lines.append("</metadata>")
    return "\n".join(lines).encode("ascii")


# TIFF field types
_SHORT, _LONG, _UNDEFINED, _LONG8 = 3, 4, 7, 16
_TYPE_FORMAT = {_SHORT: "H", _LONG: "I", _UNDEFINED: "B", _LONG8: "Q"}


def _ifd_bytes(
    tags: list[tuple[int, int, Any]], ifd_offset: int, next_offset: int
) -> tuple[bytes, bytes]:
    """(IFD bytes, out-of-line value bytes placed right after the IFD) of a little-endian BigTIFF
    IFD. ``tags``: (code, type, value) with value an int, a list of ints, or bytes (UNDEFINED)."""
    tags = sorted(tags, key=lambda t: t[0])
    ifd_size = 8 + 20 * len(tags) + 8
    extra = bytearray()
    entries = bytearray(struct.pack("<Q", len(tags)))
    for code, typ, value in tags:
        if isinstance(value, (bytes, bytearray)):
            payload, count = bytes(value), len(value)
        else:
            vals = [value] if isinstance(value, int) else list(value)
            payload = struct.pack(f"<{len(vals)}{_TYPE_FORMAT[typ]}", *vals)
            count = len(vals)
        if len(payload) <= 8:
            field = payload.ljust(8, b"\0")
        else:
            field = struct.pack("<Q", ifd_offset + ifd_size + len(extra))
            extra += payload
            extra += b"\0" * (len(extra) % 2)
        entries += struct.pack("<HHQ", code, typ, count) + field
    entries += struct.pack("<Q", next_offset)
    return bytes(entries), bytes(extra)


def write_eer(
    path: str | PathLike[str],
    frames: Sequence[EerFrameEvents] | Sequence[bytes],
    detector_size: int,
    compression: int = COMPRESSION_EER_7BIT,
    *,
    rle_bits: int | None = None,
    subpixel_bits: int | None = None,
    strips_per_frame: int = 1,
    final_image: bool = False,
    metadata: dict[str, tuple[Any, str | None]] | None = None,
    write_tag_65009: bool = True,
    tag_compression: int | None = None,
) -> Path:
    """Write an EER file (little-endian BigTIFF) and return its path.

    Args:
        frames: events per frame (encoded here) or ready-made bitstreams (bytes; to inject
            corrupt frames).
        compression: value of tag 259 in every frame IFD.
        rle_bits, subpixel_bits: for 65002, written to tags 65007, 65008 and 65009.
        strips_per_frame: split each bitstream into this many strips (RELION concatenates them).
        final_image: write a leading IFD with compression 1 holding the uint16 sum of all frames
            (physical grid), as TIA can write.
        metadata: acquisition metadata for tag 65001 of the first IFD (see
            :func:`acquisition_metadata`), or None for none.
        write_tag_65009: for 65002, False leaves out tag 65009 (RELION then uses 65008).
        tag_compression: value written to tag 259 instead of ``compression`` (damaged files).
    """
    path = Path(path)
    rle, hbits, _ = scheme_bits(compression, rle_bits, subpixel_bits)
    streams: list[bytes] = []
    total_counts = np.zeros(detector_size * detector_size, np.uint16) if final_image else None
    for frame in frames:
        if isinstance(frame, (bytes, bytearray)):
            streams.append(bytes(frame))
        else:
            streams.append(encode_frame(frame, detector_size, compression, rle_bits, subpixel_bits))
            if total_counts is not None:
                total_counts[frame.positions] += 1

    blobs: list[tuple[list[int], list[int], list[tuple[int, int, Any]]]] = []
    out = bytearray(struct.pack("<2sHHHQ", b"II", 43, 8, 0, 0))  # first IFD offset patched later

    def add_data(chunks: list[bytes]) -> tuple[list[int], list[int]]:
        offsets, counts = [], []
        for chunk in chunks:
            out.extend(b"\0" * (len(out) % 2))
            offsets.append(len(out))
            counts.append(len(chunk))
            out.extend(chunk)
        return offsets, counts

    def base_tags(bits: int, comp: int, rows_per_strip: int) -> list[tuple[int, int, Any]]:
        return [
            (256, _LONG, detector_size),
            (257, _LONG, detector_size),
            (258, _SHORT, bits),
            (259, _SHORT, comp),
            (262, _SHORT, 1),
            (277, _SHORT, 1),
            (278, _LONG, rows_per_strip),
        ]

    if total_counts is not None:
        offsets, counts = add_data([total_counts.tobytes()])
        blobs.append((offsets, counts, base_tags(16, 1, detector_size)))
    rows = -(-detector_size // strips_per_frame)
    for stream in streams:
        # Split the bitstream at byte boundaries into strips_per_frame pieces.
        cuts = np.linspace(0, len(stream), strips_per_frame + 1).astype(int)
        chunks = [stream[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        offsets, counts = add_data(chunks)
        tags = base_tags(1, compression if tag_compression is None else tag_compression, rows)
        if compression == COMPRESSION_EER_VARIABLE:
            tags += [(65007, _SHORT, rle), (65008, _SHORT, hbits)]
            if write_tag_65009:
                tags.append((65009, _SHORT, hbits))
        blobs.append((offsets, counts, tags))
    if metadata is not None and blobs:
        blobs[0][2].append((65001, _UNDEFINED, metadata_xml(metadata)))

    # IFDs after all data, chained in order.
    out.extend(b"\0" * (-len(out) % 8))
    struct.pack_into("<Q", out, 8, len(out) if blobs else 0)
    for k, (offsets, counts, tags) in enumerate(blobs):
        ifd_offset = len(out)
        tags = tags + [(273, _LONG8, offsets), (279, _LONG8, counts)]
        # Size first with a dummy next offset, then write with the real one.
        ifd, extra = _ifd_bytes(tags, ifd_offset, 0)
        next_offset = 0
        if k + 1 < len(blobs):
            next_offset = ifd_offset + len(ifd) + len(extra)
            next_offset += -next_offset % 8
        ifd, extra = _ifd_bytes(tags, ifd_offset, next_offset)
        out.extend(ifd)
        out.extend(extra)
        out.extend(b"\0" * (-len(out) % 8))
    path.write_bytes(bytes(out))
    return path


def expected_render_sparse(
    frames: Sequence[EerFrameEvents],
    detector_size: int,
    upsampling: int,
    subpixel_bits: int = 2,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sum of the events of ``frames`` rendered as RELION's ``EERRenderer::render*`` functions do
    (``src/renderEER.cpp``; the table in docs/relion-behaviour.md, "EER rendering"), computed
    directly from the event coordinates: ``(flat output indices, counts, output size)`` of the
    non-zero output pixels (sorted), EER raster orientation. Sparse, so that 16K stays small.

    ``subpixel_bits`` is the number of sub-pixel bits per axis stored in the file: with 2 bits,
    upsampling 2 keeps the top bit (``x_sub >> 1``) and 3 keeps both; with 1 bit, upsampling 2
    keeps it.
    """
    w = detector_size
    factors = {1: 1, 2: 2, 3: 4, -1: 0}
    if upsampling not in factors:
        raise ValueError("upsampling must be -1, 1, 2 or 3")
    f = factors[upsampling]
    size = w // 2 if f == 0 else f * w
    indices = []
    for fr in frames:
        y0, x0 = np.divmod(fr.positions, w)
        sx = fr.sub_x.astype(np.int64)
        sy = fr.sub_y.astype(np.int64)
        if f == 0:
            y, x = y0 >> 1, x0 >> 1
        elif f == 1:
            y, x = y0, x0
        else:
            drop = subpixel_bits - (f.bit_length() - 1)  # sub-pixel bits not used
            if drop < 0:
                raise ValueError("not enough sub-pixel bits for this upsampling")
            y, x = f * y0 + (sy >> drop), f * x0 + (sx >> drop)
        indices.append(y * size + x)
    flat = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    unique, counts = np.unique(flat, return_counts=True)
    return unique, counts, size


def expected_render(
    frames: Sequence[EerFrameEvents],
    detector_size: int,
    upsampling: int,
    subpixel_bits: int = 2,
) -> np.ndarray:
    """Dense int64 version of :func:`expected_render_sparse` (for small outputs)."""
    unique, counts, size = expected_render_sparse(frames, detector_size, upsampling, subpixel_bits)
    out = np.zeros(size * size, dtype=np.int64)
    out[unique] = counts
    return out.reshape(size, size)
