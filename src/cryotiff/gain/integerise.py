"""Using a gain: RELION's integerisation of gain-normalised float frames (``--gain``), the
lossy integerisation of the whole frame (``--lossy``), and the integer-valued float frames that
need no gain (stored in the smallest integer type RELION reads).

``--gain`` divides every reliable pixel (reliability >= ``--thresh``) by its gain, giving small
integers that compress well, and copies unreliable pixels (Digital Micrograph's
defect-corrected pixels, cold pixels) unchanged with a gain of 1.0 in ``gain-reference.mrc``:
RELION's ``unnormalise`` in ``src/tiff_converter.cpp`` (docs/relion-behaviour.md), exactly,
pixel by pixel in compiled loops without the GIL (:func:`cryotiff.kernels.gain_integerise`,
:func:`cryotiff.kernels.gain_lossy_counts`; numba is imported by the calls that need it). The
message texts RELION prints are returned by the ``format_*`` functions for the caller to print.

Deliberate difference from RELION 5.0.1: with ``ignore_error``, a non-finite value at a reliable
pixel is copied unchanged, and a finite one whose quotient does not fit an int is rounded without
the int cast (RELION writes -2147483648 in both cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cryotiff.errors import GainError, UnexpectedPixelValueError
from cryotiff.io.tiff import IMOD_4BIT_SIZES_WH
from cryotiff.gain.estimate import DEFAULT_THRESH, RELION_TOLERANCE_ABS, GainEstimate, _float32_tolerance

#: RELION's error text for a reliable pixel that is not a multiple of its gain (``src/tiff_converter.cpp``).
UNEXPECTED_PIXEL_VALUE = "Unexpected pixel value in a pixel that was considered reliable"

# RELION's snprintf buffer for the mismatch line holds 256 bytes including the NUL.
_MISMATCH_BUFFER_CHARS = 255


def gain_reference(
    estimate: GainEstimate, thresh: int = DEFAULT_THRESH, reliable_mask: np.ndarray | None = None
) -> np.ndarray:
    """The multiplicative gain reference for the converted movies (RELION's ``gain-reference.mrc``,
    written in ``TIFFConverter::initialise``): the estimated gain, 1.0 where
    ``reliability < thresh``. float32; write it with
    :func:`~cryotiff.gain.files.keep_or_write_gain_reference`.
    ``reliable_mask``: ``estimate.reliable_mask(thresh)``, when the caller has it already."""
    mask = estimate.reliable_mask(thresh) if reliable_mask is None else reliable_mask
    return np.where(mask, estimate.gain, np.float32(1.0)).astype(np.float32, copy=False)


def reconstruct(values: np.ndarray, gain_ref: np.ndarray) -> np.ndarray:
    """``values x gain_ref`` in float32: what a reader of the converted movie gets back."""
    return np.multiply(np.asarray(values, dtype=np.float32), gain_ref, dtype=np.float32)


def format_mismatch_line(
    movie: str, frame_index_0based: int, row: int, column: int, observed: float, status: int, expected: float, gain: float
) -> str:
    """RELION's stderr line for a reliable pixel that is not a multiple of its gain (no newline;
    print it followed by an empty line). Positions are 0-based (row, column) in memory order,
    before the TIFF flip. Lines that fill RELION's 256-byte buffer are cut as RELION cuts them
    (and RELION then prints no empty line)."""
    text = " mismatch: %s frame %2d pos %4ld %4ld obs % 8.4f status %d expected % 8.4f gain %.4f\n" % (
        movie,
        frame_index_0based + 1,
        row,
        column,
        float(observed),
        int(status),
        float(expected),
        float(gain),
    )
    return text[:_MISMATCH_BUFFER_CHARS].rstrip("\n")


def format_unnormalise_line(movie: str, frame_index_0based: int, n_frames: int, n_errors: int) -> str:
    """RELION's stdout line after each frame compressed with a gain (no newline)."""
    return " %s Frame %3d / %3d #Error %10d" % (movie, frame_index_0based + 1, n_frames, n_errors)


@dataclass
class IntegeriseResult:
    """Result of :func:`integerise` for one frame.

    Attributes:
        values: float32 frame to write (counts at reliable pixels, raw values elsewhere).
        n_errors: reliable pixels that were not multiples of their gain (rounded anyway).
        n_inexact: reliable pixels accepted within the tolerance whose ``values x gain`` is not
            bit-identical to the input (0 for data made as float32(count x gain)).
        error_rows, error_columns: positions of the errors (0-based, memory order).
        observed, expected, gain, status: per error, for the mismatch lines.
    """

    values: np.ndarray
    n_errors: int
    n_inexact: int
    error_rows: np.ndarray
    error_columns: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    gain: np.ndarray
    status: np.ndarray
    movie: str = ""
    frame_index_0based: int = 0

    def mismatch_lines(self, limit: int | None = None) -> Iterator[str]:
        """RELION's mismatch lines, one per error (at most ``limit``)."""
        count = self.n_errors if limit is None else min(limit, self.n_errors)
        for i in range(count):
            yield format_mismatch_line(
                self.movie,
                self.frame_index_0based,
                int(self.error_rows[i]),
                int(self.error_columns[i]),
                float(self.observed[i]),
                int(self.status[i]),
                float(self.expected[i]),
                float(self.gain[i]),
            )


def _check_frame_and_gain(frame: np.ndarray, gain: np.ndarray, reliable_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.asarray(frame, dtype=np.float32)
    g = np.asarray(gain, dtype=np.float32)
    mask = np.asarray(reliable_mask, dtype=bool)
    if not (v.shape == g.shape == mask.shape) or v.ndim != 2:
        raise GainError(
            f"A frame of shape {v.shape} does not match the gain {g.shape} and reliability mask {mask.shape}."
        )
    return v, g, mask


#: Errors whose positions :func:`integerise` records on a first pass; more take a second pass.
_ERRORS_FIRST_PASS = 1024


def integerise(
    frame: np.ndarray,
    gain: np.ndarray,
    reliable_mask: np.ndarray,
    ignore_error: bool = False,
    *,
    movie: str = "",
    frame_index_0based: int = 0,
    reliability: np.ndarray | None = None,
    tolerance_abs: float = RELION_TOLERANCE_ABS,
    out: np.ndarray | None = None,
) -> IntegeriseResult:
    """RELION's ``unnormalise`` of one frame (``src/tiff_converter.cpp``; docs/relion-behaviour.md).

    Reliable pixels become ``(int)round(v / g)`` (float32 arithmetic), provided ``|g x iv - v|``
    is within ``tolerance_abs`` (RELION: 1e-4; 0 demands bit-exact reconstruction). Other
    pixels are copied unchanged (their gain reference value is 1.0). Output is float32, as
    RELION writes.

    Args:
        frame, gain: float32 ``(ny, nx)``; ``gain`` at unreliable pixels is not used.
        reliable_mask: ``reliability >= thresh``.
        ignore_error: round non-conforming reliable pixels instead of raising.
        movie, frame_index_0based: for the mismatch lines and the error.
        reliability: the counters, printed as ``status`` in mismatch lines (default: 1 where
            reliable).
        out: the array the values are written to (every pixel; it becomes ``values``, the
            float32 TIFF page), instead of a new one; not the frame's memory.

    Raises:
        UnexpectedPixelValueError: without ``ignore_error``, at the first non-conforming pixel
            (row-major order). Its ``mismatch_line`` attribute holds RELION's stderr line.
    """
    from cryotiff import kernels  # numba: imported by the runs that need it

    v, g, mask = _check_frame_and_gain(frame, gain, reliable_mask)
    if out is None:
        values = np.empty_like(v)
    elif out.shape == v.shape and out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable \
            and not np.shares_memory(out, v):
        values = out  # every pixel is written: no need for a clean array
    else:  # the kernel writes without bounds checks
        raise ValueError(f"integerise: out must be a writeable C-contiguous float32 {v.shape} array apart from the frame")
    tolerance = _float32_tolerance(tolerance_abs)
    room = _ERRORS_FIRST_PASS
    while True:
        errors, expected = np.empty(room, np.int64), np.empty(room, np.float32)
        n_errors, n_inexact = kernels.gain_integerise(
            v.reshape(-1), g.reshape(-1), mask.reshape(-1), tolerance, values.reshape(-1), expected, errors
        )
        if n_errors <= room:
            break
        room = n_errors  # with --ignore_error: a second pass records them all
    errors, expected = errors[:n_errors], expected[:n_errors]
    rows, cols = np.divmod(errors, v.shape[1])
    # Only the errors' counters are looked up (a conversion of the whole map would cost a pass).
    status_map = mask if reliability is None else np.asarray(reliability)
    status = status_map.reshape(-1)[errors].astype(np.int16)
    result = IntegeriseResult(
        values=values,
        n_errors=int(n_errors),
        n_inexact=int(n_inexact),
        error_rows=rows,
        error_columns=cols,
        observed=v.reshape(-1)[errors],
        expected=expected,
        gain=g.reshape(-1)[errors],
        status=status,
        movie=movie,
        frame_index_0based=frame_index_0based,
    )
    if result.n_errors and not ignore_error:
        raise _unexpected_pixel_error(result)
    return result


def _unexpected_pixel_error(result: IntegeriseResult) -> UnexpectedPixelValueError:
    line = next(result.mismatch_lines(limit=1))
    row, col = int(result.error_rows[0]), int(result.error_columns[0])
    error = UnexpectedPixelValueError(
        f"{UNEXPECTED_PIXEL_VALUE}: movie {result.movie} frame {result.frame_index_0based + 1} "
        f"pixel (row {row}, column {col}) has {float(result.observed[0])!r}, not an integer multiple of its "
        f"gain {float(result.gain[0])!r}. Re-estimate the gain from more frames, or use --ignore_error to round."
    )
    error.mismatch_line = line  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True)
class LossyStats:
    """What ``--lossy`` changed in one frame (unreliable pixels only).

    Attributes:
        n_pixels: unreliable pixels in the frame.
        n_changed: of them, pixels whose value changed when rounded.
        max_abs_change, sum_abs_change: of ``|rounded - raw|`` over finite values (float64);
            mean = sum / n_pixels.
        n_nonfinite: NaN or infinite unreliable values, written as 0 (not in the sums).
        n_clipped: values outside the int32 range, saturated (included in the sums).
    """

    n_pixels: int
    n_changed: int
    max_abs_change: float
    sum_abs_change: float
    n_nonfinite: int
    n_clipped: int


@dataclass
class LossyResult:
    """Result of :func:`lossy_integerise`: int32 ``counts``, the lossy ``stats``, the
    reliable-pixel check (``integer`` holds the :class:`IntegeriseResult` of reliable pixels),
    and the smallest and largest count (to choose or check the sample type)."""

    counts: np.ndarray
    stats: LossyStats
    integer: IntegeriseResult
    minimum: int = 0
    maximum: int = 0


def lossy_integerise(
    frame: np.ndarray,
    gain: np.ndarray,
    reliable_mask: np.ndarray,
    ignore_error: bool = False,
    *,
    movie: str = "",
    frame_index_0based: int = 0,
    reliability: np.ndarray | None = None,
    tolerance_abs: float = RELION_TOLERANCE_ABS,
) -> LossyResult:
    """``--lossy`` (RELION's never-shipped idea): the whole frame as integer counts.

    Reliable pixels are integerised exactly as :func:`integerise` (same checks, same errors),
    so ``counts x gain_reference`` gives them back unchanged. Unreliable pixels (gain 1.0)
    become their raw value rounded half away from zero. Negative values keep their sign (no
    clipping at 0: the smallest change; the caller then needs a signed type). Non-finite
    values become 0, values beyond int32 saturate; both are counted.
    """
    v, g, mask = _check_frame_and_gain(frame, gain, reliable_mask)
    exact = integerise(
        v, g, mask, ignore_error, movie=movie, frame_index_0based=frame_index_0based,
        reliability=reliability, tolerance_abs=tolerance_abs,
    )
    from cryotiff import kernels

    counts = np.empty(v.shape, np.int32)
    n_pixels, n_changed, max_change, sum_change, n_nonfinite, n_clipped, minimum, maximum = kernels.gain_lossy_counts(
        exact.values.reshape(-1), v.reshape(-1), mask.reshape(-1), counts.reshape(-1)
    )
    stats = LossyStats(
        n_pixels=int(n_pixels),
        n_changed=int(n_changed),
        max_abs_change=float(max_change),
        sum_abs_change=float(sum_change),
        n_nonfinite=int(n_nonfinite),
        n_clipped=int(n_clipped),
    )
    return LossyResult(counts=counts, stats=stats, integer=exact, minimum=int(minimum), maximum=int(maximum))


# ---------------------------------------------------------------------------------------------
# Integer-valued float frames
# ---------------------------------------------------------------------------------------------


def integer_range(frame: np.ndarray, *, keep_negative_zero: bool = True) -> tuple[bool, float, float]:
    """``(is_integer, min, max)`` of a frame.

    ``is_integer`` is True when every value is a finite whole number, so the frame can be stored
    in an integer type without loss. With ``keep_negative_zero``, a -0.0 makes it False (an
    integer type would give back +0.0, a different bit pattern). min/max are None for an empty
    frame and may be NaN when the frame holds NaN.
    """
    a = np.asarray(frame)
    if a.size == 0:
        return True, 0, 0
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        return True, int(a.min()), int(a.max())
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return False, float(lo), float(hi)
    whole = bool(np.array_equal(np.trunc(a), a))
    if whole and keep_negative_zero and lo <= 0 <= hi:
        whole = not bool(np.any(np.signbit(a) & (a == 0)))
    if whole:
        return True, int(lo), int(hi)
    return False, float(lo), float(hi)


#: Integer TIFF sample types RELION reads back (``src/rwTIFF.h``), smallest first.
_INTEGER_TYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16))


def smallest_integer_dtype(
    minimum: float, maximum: float, shape_yx: tuple[int, int] | None = None
) -> np.dtype | None:
    """Smallest integer TIFF type RELION can read that holds ``minimum..maximum``
    (uint8, int8, uint16, int16), or None when none does (keep float32).

    With ``shape_yx``, 8-bit types are skipped for the frame sizes that RELION would read as
    IMOD 4-bit packed data.
    """
    avoid_8bit = shape_yx is not None and (int(shape_yx[1]), int(shape_yx[0])) in IMOD_4BIT_SIZES_WH
    for dtype in _INTEGER_TYPES:
        if avoid_8bit and dtype.itemsize == 1:
            continue
        info = np.iinfo(dtype)
        if info.min <= minimum and maximum <= info.max:
            return dtype
    return None
