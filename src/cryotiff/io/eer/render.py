"""Rendering EER movies as RELION 5.0.1 does: raw frames summed into pages on the upsampled grid.

RELION's table (``src/renderEER.cpp``): upsampling 1 = physical grid, 2 = 2x (the top sub-pixel
bit of each axis), 3 = 4x (16K, both bits), -1 = 2x2 binned. Each event adds 1 to its output
pixel; corrupt raw frames are left out and listed. Counts are in EER raster orientation (row 0 =
raster row 0); the TIFF writer flips. ``--eer_grouping`` makes ``floor(N / g)`` pages of ``g`` raw
frames (:func:`plan_groups`), or a grouping from a dose per page (:func:`grouping_for_dose`).

The frames of a page are decoded and added straight into the page by one compiled call without
the GIL (:func:`cryotiff.kernels.eer_add_frames`), band by band of a few rows so that the band
stays in the CPU cache while every frame adds to it; page tasks on several threads (``--j``)
therefore render in parallel. The library never prints: messages are returned as strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import numpy as np

from cryotiff import kernels
from cryotiff.errors import OptionError
from cryotiff.io.eer.container import EerContainer, EerEncoding, _metadata_number, sensor_pixel_size_angstrom
from cryotiff.io.eer.decode import CorruptEerFrameError, decode_eer_frame, subpixels
from cryotiff.io.memory import refuse_frames_beyond_memory

UPSAMPLING_VALUES = (-1, 1, 2, 3)

#: Output bytes per band: a few rows whose counts stay in one core's L2 cache while every frame of
#: a call adds to them (measured on the development machine, 2 MiB L2: 256 KiB bands render 4K
#: frames at upsampling 2 about 4x as fast as no bands, upsampling 1 about 1.5x).
_BAND_BYTES = 1 << 18
#: Raw frames added by one compiled call, and at most this many bytes of their data (memory:
#: one such buffer per thread; a group of 40 Falcon 4 frames is about 24 MB).
_FRAMES_PER_CALL = 64
_DATA_BYTES_PER_CALL = 64 << 20


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


# --------------------------------------------------------------------------------------------
# The output grid


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


def max_count(n_raw_frames: int, upsampling: int) -> int:
    """The largest sum ``n_raw_frames`` can give at one output pixel: 1 per frame, 4 when binned
    (a physical pixel has at most one event per frame)."""
    return n_raw_frames * (4 if upsampling == -1 else 1)


def counts_dtype(n_raw_frames: int, upsampling: int) -> np.dtype:
    """uint16, or uint32 when a sum of ``n_raw_frames`` could exceed 65535 (:func:`max_count`)."""
    return np.dtype(np.uint16 if max_count(n_raw_frames, upsampling) <= 0xFFFF else np.uint32)


def _placement(upsampling: int) -> int:
    if upsampling == 1:
        return kernels.EER_ADD_PHYSICAL
    if upsampling == -1:
        return kernels.EER_ADD_BINNED
    return kernels.EER_ADD_UPSAMPLED


def symbol_offsets(encoding: EerEncoding, upsampling: int, out_width: int) -> np.ndarray:
    """Per stored symbol, the offset of its event inside the ``f x f`` output block of its
    physical pixel at upsampling 2 (f = 2) and 3 (f = 4): ``sub_y * out_width + sub_x``, keeping
    the top ``upsampling - 1`` sub-pixel bits of each axis. int64; unused (0) at 1 and -1."""
    if upsampling not in (2, 3):
        return np.zeros(1 << encoding.symbol_bits, np.int64)
    drop = encoding.horizontal_bits - (upsampling - 1)  # sub-pixel bits not used
    xs, ys = subpixels(np.arange(1 << encoding.symbol_bits), encoding.horizontal_bits, encoding.vertical_bits)
    return (ys >> drop) * out_width + (xs >> drop)


@dataclass
class RenderResult:
    """Counts of raw frames ``start .. stop-1`` summed on the output grid.

    Attributes:
        counts: the page, EER raster orientation: uint16 (uint32 when uint16 could wrap), or the
            type asked for.
        corrupt_frames: 0-based indices of frames left out because their runs did not add up.
        start, stop: the raw frame range (0-based, half-open).
        upsampling: the ``--eer_upsampling`` value used.
    """

    counts: np.ndarray
    corrupt_frames: list[int]
    start: int
    stop: int
    upsampling: int

    @cached_property
    def max_count(self) -> int:
        """The largest count (to choose or check the output sample type; computed when asked)."""
        return int(self.counts.max()) if self.counts.size else 0

    def corrupt_frame_warnings(self, movie: str) -> list[str]:
        """RELION's warning line for each skipped frame (1-based frame numbers)."""
        return [corrupt_frame_warning(movie, i + 1) for i in self.corrupt_frames]


# --------------------------------------------------------------------------------------------
# The reader


class EerMovie(EerContainer):
    """An EER movie opened for reading (context manager): the container
    (:class:`cryotiff.io.eer.container.EerContainer`: ``info``, ``metadata``, ``encoding``,
    ``detector_size``) plus decoding and rendering of its raw frames.

    ``render``, ``read_frame`` and ``corrupt_frames`` are thread-safe; each call works in the
    calling thread (page tasks of ``--j`` threads render their pages at the same time).
    """

    _room_checked = False  # whether render has checked that a page fits in memory

    def read_frame(self, index: int) -> np.ndarray:
        """Raw frame ``index`` (0-based) on the physical grid: uint8 0/1, EER raster order.

        Raises CorruptEerFrameError when the frame's runs do not add up to ``W*H`` pixels.
        """
        self._check_index(index)
        size = self.detector_size
        counts = np.zeros((size, size), np.uint8)
        if self._add_frames(index, index + 1, 1, counts):
            raise CorruptEerFrameError(
                f"{self.path}: raw frame {index + 1} is corrupt (its runs do not add up to "
                f"{size}x{size} pixels)."
            )
        return counts

    def events(self, index: int, need_symbols: bool = False) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The events of raw frame ``index`` (0-based): ``(positions, symbols)`` as
        :func:`cryotiff.io.eer.decode.decode_eer_frame` gives them, or None when corrupt."""
        self._check_index(index)
        stream, _, _ = self.frame_data(index, index + 1)
        size = self.detector_size
        return decode_eer_frame(stream, (size, size), self.encoding, need_symbols=need_symbols)

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
        dtype: np.dtype | type | None = None,
        out: np.ndarray | None = None,
    ) -> RenderResult:
        """Sum raw frames ``start .. stop-1`` (0-based, half-open) on the output grid.

        Corrupt frames are left out and listed in the result. The sums are ``dtype``, which must
        hold :func:`max_count` (uint8 for groups of up to 255 raw frames, 63 binned); by default
        uint16, or uint32 when a sum could exceed 65535. ``out``: an array of that shape and type
        to clear and sum into instead of a new one (clearing a page is cheaper than a new page's
        faults: 5 against 20 ms for the 67 MB of upsampling 2).

        Memory besides the counts: the data of at most 64 raw frames (64 MB), in a buffer of the
        calling thread. Before the first page, pages larger than the memory left are refused
        (:func:`cryotiff.io.memory.refuse_frames_beyond_memory`: NotEnoughMemoryError).
        """
        self.check_upsampling(upsampling)
        n = self.info.n_frames
        if not (0 <= start < stop <= n):
            raise OptionError(
                f"{self.path}: invalid raw frame range {start + 1} to {stop} requested; the movie "
                f"has {n} raw frames. Invalid frame range was requested."
            )
        if dtype is None:
            dtype = counts_dtype(stop - start, upsampling)
        dtype = np.dtype(dtype)
        if dtype.kind != "u" or max_count(stop - start, upsampling) > np.iinfo(dtype).max:
            raise OptionError(f"{self.path}: {stop - start} raw frames cannot be summed in {dtype}.")
        size = output_size(self.detector_size, upsampling)
        if not self._room_checked:
            self._room_checked = True
            refuse_frames_beyond_memory(self.path, (size, size), f"--eer_upsampling {upsampling}, {dtype}",
                                        size * size * dtype.itemsize, unit="pages")
        if out is None:
            counts = np.zeros((size, size), dtype=dtype)
        elif out.shape == (size, size) and out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable:
            counts = out  # the kernels add into it without bounds checks: only this shape and type
            counts.fill(0)
        else:
            raise ValueError(f"{self.path}: render: out must be a writeable C-contiguous {dtype} {size}x{size} array")
        corrupt = self._add_frames(start, stop, upsampling, counts)
        return RenderResult(counts=counts, corrupt_frames=corrupt, start=start, stop=stop, upsampling=upsampling)

    def corrupt_frames(self, start: int = 0, stop: int | None = None) -> list[int]:
        """0-based indices of corrupt raw frames in ``start .. stop-1`` (decodes the frames)."""
        stop = self.info.n_frames if stop is None else stop
        return [index for index in range(start, stop) if self.events(index) is None]

    def _add_frames(self, start: int, stop: int, upsampling: int, counts: np.ndarray) -> list[int]:
        """Add the events of raw frames ``start .. stop-1`` into ``counts`` (the output grid of
        ``upsampling``); return the corrupt ones (0-based), whose events are not in ``counts``."""
        encoding = self.encoding
        det = self.detector_size
        out_width = counts.shape[1]
        placement = _placement(upsampling)
        offsets = symbol_offsets(encoding, upsampling, out_width)
        factor = out_width // det if upsampling in (2, 3) else 1
        # Bands of whole physical rows (pairs when binned), about _BAND_BYTES of counts each.
        bytes_per_row = counts.nbytes // det
        band_rows = max(2, _BAND_BYTES // max(bytes_per_row, 1)) // 2 * 2
        corrupt: list[int] = []
        first = start
        while first < stop:
            last = first + 1
            data_bytes = self.frame_nbytes(first)
            while last < stop and last - first < _FRAMES_PER_CALL:
                data_bytes += self.frame_nbytes(last)
                if data_bytes > _DATA_BYTES_PER_CALL:
                    break
                last += 1
            stream, starts, n_bytes = self.frame_data(first, last)
            complete = np.zeros(last - first, np.bool_)
            kernels.eer_add_frames(
                stream, starts, n_bytes, det * det, encoding.rle_bits, encoding.symbol_bits,
                encoding.overflow_skip_bits, placement, det.bit_length() - 1, factor, offsets,
                counts.reshape(-1), band_rows * det, complete,
            )
            corrupt.extend(first + int(k) for k in np.flatnonzero(~complete))
            first = last
        return corrupt


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

