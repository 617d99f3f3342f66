"""Gain estimation of gain-normalised float movies (K2/K3 from Digital Micrograph): the
per-pixel estimate, its per-frame update and the merge of estimates made in parallel.

A gain-normalised frame holds ``count x gain`` per pixel in float32. RELION 5.0.1's
``relion_convert_to_tiff --estimate_gain`` takes the smallest positive value seen at a pixel as
its gain and counts how many later non-zero values are integer multiples of it (the reliability
counter); ``--gain`` then uses the pixels whose counter reaches ``--thresh``
(:mod:`cryotiff.gain.integerise`).

This module reproduces that arithmetic exactly (float32 division, C ``round`` = half away from
zero, float32 multiply and subtraction, absolute tolerance 1e-4, the rule order of RELION's
``TIFFConverter::estimate`` in ``src/tiff_converter.cpp``, written out in docs/relion-behaviour.md,
"Gain estimation of float movies"); the update runs pixel by pixel in a compiled loop without
the GIL (:func:`cryotiff.kernels.gain_update`); the merge, and its tracking, stay vectorised
numpy. The estimate's files are read and written by :mod:`cryotiff.gain.files`.

Deliberate differences from RELION 5.0.1 (each is marked ``DIFFERENCE`` where it is made):

* the int16 reliability counter saturates at 32767 instead of wrapping to -32768;
* a NaN pixel value is a mismatch (RELION counts it as consistent, and ``--gain`` then writes
  -2147483648 for it);
* a pixel marked reliable whose gain is NaN, infinite, zero or negative (a damaged or hand-made
  gain file; estimation never makes one) is treated as unreliable, with a warning
  (:meth:`GainEstimate.unusable_gain_warning`); a file in which no reliable pixel has a usable
  gain is refused.

Estimates made in separate processes over disjoint movie sets can be combined with
:func:`merge` (RELION refuses ``--estimate_gain`` under MPI).
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cryotiff.errors import GainError
from cryotiff.gain.files import (
    _DEFAULT_BLOCK_ROWS,
    RELIABILITY_MAX,
    _row_blocks,
    read_estimate_pair,
    save_estimate_pair,
)

#: RELION's absolute tolerance for "value is an integer multiple of the gain".
RELION_TOLERANCE_ABS = 1e-4
#: Starting gain of every pixel (RELION: any first positive value below it becomes the gain).
INITIAL_GAIN = np.float32(999.9)
#: Reliability counter of a pixel that is not (or no longer) consistent.
INCONSISTENT = -1
#: Default ``--thresh``.
DEFAULT_THRESH = 50

_TWO_POW_31_F32 = np.float32(2.0**31)
_INT_MIN_F32 = np.float32(-(2.0**31))
# Euclid on float values: a few steps suffice for real multiples of one gain (small counts);
# values that need more steps, or end far below the values themselves, are defect values and
# get no common divisor.
_GCD_MAX_STEPS = 48
_GCD_MIN_RATIO = 2.0**-10


# ---------------------------------------------------------------------------------------------
# RELION's per-pixel arithmetic, vectorised
# ---------------------------------------------------------------------------------------------


def round_half_away_from_zero(q: np.ndarray) -> np.ndarray:
    """C ``round`` on float32 values, exactly, in float32 (numpy's ``round`` is half-to-even).

    ``q - trunc(q)`` is exact in floating point, so comparing it with 0.5 decides the rounding
    without the double rounding of ``floor(q + 0.5)``.
    """
    q = np.asarray(q, dtype=np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf for infinite q; the result stays inf
        whole = np.trunc(q)
        bump = (np.abs(q - whole) >= np.float32(0.5)).astype(np.float32)
        return whole + np.copysign(bump, q)


def relion_int_round(q: np.ndarray) -> np.ndarray:
    """``(int)round(q)`` as RELION computes it on x86-64, returned as float32 (the value the int
    becomes when it is multiplied by a float).

    Quotients whose rounded value does not fit an int (and NaN, infinities) give C's "integer
    indefinite" -2147483648, as ``cvttsd2si`` does. A rounded -0 becomes +0 (an int has no sign
    of zero).
    """
    rounded = round_half_away_from_zero(q)
    with np.errstate(invalid="ignore"):
        rounded = np.where(np.abs(rounded) < _TWO_POW_31_F32, rounded, _INT_MIN_F32)
    return rounded + np.float32(0.0)


def _float32_tolerance(tolerance_abs: float) -> np.float32:
    """Largest float32 <= ``tolerance_abs``: for a float32 ``d``, ``d <= result`` is then the same
    as RELION's comparison of the float difference with the double constant."""
    tol = np.float32(tolerance_abs)
    if float(tol) > tolerance_abs:
        tol = np.nextafter(tol, np.float32(-np.inf))
    return tol


def expected_value(frame: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION's multiple-of-gain test for every pixel: ``(iv, e, |e - v|)``, all float32.

    ``q = v / g`` (float32 division), ``iv = (int)round(q)``, ``e = g * iv`` (float32 multiply),
    ``|e - v|`` (float32 subtraction). The value matches when the difference is <= 1e-4; a NaN
    difference is a mismatch here (``~(diff <= tol)``).
    """
    with np.errstate(all="ignore"):
        iv = relion_int_round(np.divide(frame, gain, dtype=np.float32))
        e = np.multiply(gain, iv, dtype=np.float32)
        diff = np.abs(np.subtract(e, frame, dtype=np.float32))
    return iv, e, diff


def usable_gain(gain: np.ndarray) -> np.ndarray:
    """Where a gain can divide a value and give it back by multiplication: a positive finite
    number (not NaN, infinite, zero or negative)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(gain) & (gain > 0)


# ---------------------------------------------------------------------------------------------
# Estimation state
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameStats:
    """RELION's per-frame estimation figures.

    ``changed``, ``mismatch`` and ``negative`` count events in this frame; ``unreliable`` is
    ``total - count(reliability >= thresh)`` over the whole state after the frame.
    """

    changed: int
    mismatch: int
    negative: int
    unreliable: int
    total: int


def format_estimate_line(movie: str, frame_index_0based: int, stats: FrameStats) -> str:
    """RELION's stdout line after each estimated frame (1-based frame number, no newline)."""
    return " %s Frame %03d #Changed %10d #Mismatch %10d, #Negative %10d, #Unreliable %10ld / %10ld" % (
        movie,
        frame_index_0based + 1,
        stats.changed,
        stats.mismatch,
        stats.negative,
        stats.unreliable,
        stats.total,
    )


def _run_blocks(
    work: Callable[[slice], tuple[int, ...]],
    n_rows: int,
    executor: Executor | None,
    block_rows: int,
) -> list[tuple[int, ...]]:
    # Row blocks keep temporaries small; numpy releases the GIL, so threads run them in parallel.
    blocks = _row_blocks(n_rows, block_rows)
    if executor is None or len(blocks) == 1:
        return [work(block) for block in blocks]
    return list(executor.map(work, blocks))


class GainEstimate:
    """Per-pixel gain estimate and reliability counter (RELION's ``gain`` and ``defects`` arrays in
    ``src/tiff_converter.cpp``; docs/relion-behaviour.md), plus optional merge tracking.

    Attributes:
        gain: float32 ``(ny, nx)``; written to MRC mode 2 (``gain_estimate.bin``).
        reliability: int16 ``(ny, nx)``; -1 = inconsistent, otherwise the number of consistent
            non-zero observations since the gain last changed; written to MRC mode 1
            (``gain_estimate_reliablity.bin``).
        n_observations: int32 ``(ny, nx)`` or None. With merge tracking: the number of non-zero
            values this estimate has seen itself (not counting a loaded history), or -1 once a
            negative or non-finite value was seen.
        common_divisor: float32 ``(ny, nx)`` or None. With merge tracking: a common divisor
            (within RELION's tolerance) of the positive values this estimate has seen; 0 = none
            seen yet, NaN = they have no common divisor.
    """

    def __init__(
        self,
        gain: np.ndarray,
        reliability: np.ndarray,
        *,
        n_observations: np.ndarray | None = None,
        common_divisor: np.ndarray | None = None,
    ) -> None:
        self.gain = np.ascontiguousarray(gain, dtype=np.float32)
        self.reliability = np.ascontiguousarray(reliability, dtype=np.int16)
        if self.gain.ndim != 2 or self.gain.shape != self.reliability.shape:
            raise ValueError(f"gain {self.gain.shape} and reliability {self.reliability.shape} must be equal 2-D shapes")
        if (n_observations is None) != (common_divisor is None):
            raise ValueError("n_observations and common_divisor go together")
        self.n_observations = None if n_observations is None else np.ascontiguousarray(n_observations, dtype=np.int32)
        self.common_divisor = None if common_divisor is None else np.ascontiguousarray(common_divisor, dtype=np.float32)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def new(cls, shape_yx: tuple[int, int], *, track_merge: bool = False) -> "GainEstimate":
        """RELION's initial state: gain 999.9, reliability -1 everywhere.

        ``track_merge=True`` also keeps what :func:`merge` needs (8 more bytes per pixel, and
        about twice the time per frame); use it only for estimates made by parallel workers.
        """
        ny, nx = (int(shape_yx[0]), int(shape_yx[1]))
        estimate = cls(np.full((ny, nx), INITIAL_GAIN, np.float32), np.full((ny, nx), INCONSISTENT, np.int16))
        if track_merge:
            estimate.start_merge_tracking()
        return estimate

    @classmethod
    def load(
        cls,
        gain_path: str | os.PathLike[str],
        *,
        shape_yx: tuple[int, int] | None = None,
        track_merge: bool = False,
        hashed: dict[str, str] | None = None,
    ) -> "GainEstimate":
        """Read a gain (as MRC whatever its extension, converted to float32) and its reliability
        map (:func:`~cryotiff.gain.files.find_reliability_path`, converted to int16), as RELION's
        ``--gain`` does (:func:`~cryotiff.gain.files.read_estimate_pair`; ``hashed``: given the
        SHA-256 of each file as read).

        Raises:
            GainError: a file is missing, unreadable, not a single image, of a size other than
                ``shape_yx`` (when given) or the two differ in size. The message names the file.
        """
        estimate = cls(*read_estimate_pair(gain_path, shape_yx, hashed))
        if track_merge:
            estimate.start_merge_tracking()
        return estimate

    def start_merge_tracking(self) -> None:
        """Start merge tracking from "no observations yet" (the loaded or current state is the
        common starting point that every worker shares)."""
        self.n_observations = np.zeros(self.gain.shape, np.int32)
        self.common_divisor = np.zeros(self.gain.shape, np.float32)

    def copy(self) -> "GainEstimate":
        return GainEstimate(
            self.gain.copy(),
            self.reliability.copy(),
            n_observations=None if self.n_observations is None else self.n_observations.copy(),
            common_divisor=None if self.common_divisor is None else self.common_divisor.copy(),
        )

    # -- queries --------------------------------------------------------------------------------

    @property
    def shape_yx(self) -> tuple[int, int]:
        return (int(self.gain.shape[0]), int(self.gain.shape[1]))

    @property
    def tracks_merge(self) -> bool:
        return self.n_observations is not None

    def reliable_mask(self, thresh: int) -> np.ndarray:
        """Pixels used as reliable: ``reliability >= thresh`` (RELION's rule) and, DIFFERENCE, a
        gain that is a positive finite number (:func:`usable_gain`). An estimate never makes
        another gain, but a damaged or hand-made file can hold one; RELION would divide by it
        and write NaN, infinite, -2147483648 or negative counts."""
        return (self.reliability >= thresh) & usable_gain(self.gain)

    def unusable_gain_warning(self, thresh: int, gain_path: str | os.PathLike[str]) -> str | None:
        """The warning for pixels marked reliable whose gain is NaN, infinite, zero or negative
        (treated as unreliable by :meth:`reliable_mask`), or None when there are none.

        Raises:
            GainError: every pixel marked reliable has such a gain: the file is no gain estimate.
        """
        marked = self.reliability >= thresh
        bad = marked & ~usable_gain(self.gain)
        n_bad = int(np.count_nonzero(bad))
        if n_bad == 0:
            return None
        values = self.gain[bad]
        with np.errstate(invalid="ignore"):
            kinds = (
                ("NaN", int(np.count_nonzero(np.isnan(values)))),
                ("infinite", int(np.count_nonzero(np.isinf(values)))),
                ("zero", int(np.count_nonzero(values == 0))),
                ("negative", int(np.count_nonzero(np.isfinite(values) & (values < 0)))),
            )
        counted = ", ".join(f"{count} {kind}" for kind, count in kinds if count)
        if n_bad == int(np.count_nonzero(marked)):
            raise GainError(
                f"The gain {os.fspath(gain_path)} holds no usable value: all {n_bad} pixels its reliability map "
                f"marks reliable (reliability >= --thresh {thresh}) have a gain that is not a positive number "
                f"({counted}). It is not a gain estimate; estimate the gain again with --estimate_gain."
            )
        return (
            f"WARNING: {n_bad} of the {int(np.count_nonzero(marked))} pixels that the reliability map of "
            f"{os.fspath(gain_path)} marks reliable have a gain that is not a positive number ({counted}); "
            "they are treated as unreliable: written unchanged, with gain 1.0 in gain-reference.mrc."
        )

    def n_unreliable(self, thresh: int) -> int:
        return int(self.gain.size - np.count_nonzero(self.reliable_mask(thresh)))

    # -- estimation -----------------------------------------------------------------------------

    def update(
        self,
        frame: np.ndarray,
        thresh: int = DEFAULT_THRESH,
        *,
        executor: Executor | None = None,
        block_rows: int = _DEFAULT_BLOCK_ROWS,
    ) -> FrameStats:
        """Feed one frame (one frame of RELION's ``TIFFConverter::estimate``) and return RELION's
        figures for it.

        Args:
            frame: ``(ny, nx)`` frame; converted to float32 as RELION reads it.
            thresh: ``--thresh``; only used for the ``unreliable`` figure.
            executor: optional executor (e.g. a ThreadPoolExecutor for ``--j``) that runs row
                blocks concurrently. The result does not depend on it.
            block_rows: rows per block.

        Raises:
            GainError: the frame size differs from the estimate's.
        """
        v_all = np.asarray(frame, dtype=np.float32)
        if v_all.shape != self.gain.shape:
            raise GainError(
                f"A frame of {v_all.shape[1]} x {v_all.shape[0]} pixels does not match the gain estimate of "
                f"{self.gain.shape[1]} x {self.gain.shape[0]} pixels."
            )

        from cryotiff import kernels  # numba: imported by the runs that need it

        v_all = np.ascontiguousarray(v_all)
        tolerance = _float32_tolerance(RELION_TOLERANCE_ABS)

        def work(rows: slice) -> tuple[int, ...]:
            counts = kernels.gain_update(
                self.gain[rows].reshape(-1), self.reliability[rows].reshape(-1), v_all[rows].reshape(-1), thresh, tolerance
            )
            if self.n_observations is not None and self.common_divisor is not None:
                _track_block(v_all[rows], self.n_observations[rows], self.common_divisor[rows])
            return counts

        sums = np.sum(np.array(_run_blocks(work, v_all.shape[0], executor, block_rows), dtype=np.int64), axis=0)
        changed, mismatch, negative, stable = (int(x) for x in sums)
        total = int(self.gain.size)
        return FrameStats(changed, mismatch, negative, total - stable, total)

    # -- files ----------------------------------------------------------------------------------

    def save(self, out_dir: str | os.PathLike[str], *, fsync: bool = True) -> tuple[Path, Path]:
        """Atomically rewrite ``<out_dir>/gain_estimate.bin`` (MRC mode 2, nz = 1) and
        ``<out_dir>/gain_estimate_reliablity.bin`` (MRC mode 1, nz = 1), in an order that never
        leaves a pixel reliable on evidence it does not have, and that leaves the previous pair
        as it was when the save cannot be written (:func:`~cryotiff.gain.files.save_estimate_pair`).
        Returns ``(gain_path, reliability_path)``.

        Raises:
            OutputError: a file cannot be written or renamed.
        """
        return save_estimate_pair(out_dir, self.gain, self.reliability, fsync=fsync)


def _track_block(v: np.ndarray, n_obs: np.ndarray, divisor: np.ndarray) -> None:
    """Merge tracking for one row block: count non-zero values, keep their common divisor."""
    nonzero = v != 0
    usable = (v > 0) & (v < np.float32(np.inf))
    bad = nonzero & ~usable  # negative, NaN or infinite: consistent with no gain
    np.add(n_obs, 1, out=n_obs, where=usable & (n_obs >= 0))
    np.copyto(n_obs, -1, where=bad)
    np.copyto(divisor, np.float32(np.nan), where=bad)
    first = usable & (divisor == 0)
    np.copyto(divisor, v, where=first)
    later = usable & (divisor > 0) & ~first
    _, _, diff = expected_value(v, divisor)
    need = np.flatnonzero(later & ~(diff <= _float32_tolerance(RELION_TOLERANCE_ABS)))
    if need.size:
        flat = divisor.reshape(-1) if divisor.flags.c_contiguous else None
        if flat is None:  # a row block of a C-contiguous array is C-contiguous; stay safe anyway
            rows, cols = np.unravel_index(need, divisor.shape)
            divisor[rows, cols] = _float_gcd(divisor[rows, cols], v[rows, cols])
        else:
            flat[need] = _float_gcd(flat[need], v.reshape(-1)[need])


def _float_gcd(a: np.ndarray, b: np.ndarray, tolerance_abs: float = RELION_TOLERANCE_ABS) -> np.ndarray:
    """Common divisor of float values within ``tolerance_abs`` (Euclid in float64), float32.

    0 means "no value" (the other is returned). NaN in, or no divisor that is at least 1/1024
    of the smaller value and found within a few steps (defect values), gives NaN.
    """
    shape = np.shape(a)
    a64 = np.asarray(a, dtype=np.float64).reshape(-1)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1)
    hi = np.maximum(a64, b64)
    lo = np.minimum(a64, b64)
    result = np.full(hi.shape, np.nan)
    trivial = lo == 0
    result[trivial] = hi[trivial]
    active = np.flatnonzero((lo > tolerance_abs) & np.isfinite(hi) & np.isfinite(lo))
    hi, lo = hi[active], lo[active]
    smallest = np.maximum(lo * _GCD_MIN_RATIO, tolerance_abs)
    for _ in range(_GCD_MAX_STEPS):
        if active.size == 0:
            break
        remainder = np.fmod(hi, lo)
        # a is a multiple of b when the remainder is near 0 or near b.
        done = (remainder <= tolerance_abs) | (lo - remainder <= tolerance_abs)
        result[active[done]] = lo[done]
        keep = ~done & (remainder > smallest)
        active, hi, lo, smallest = active[keep], lo[keep], remainder[keep], smallest[keep]
    return result.astype(np.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Merging estimates of disjoint movie sets
# ---------------------------------------------------------------------------------------------


def _consistent_with(n_obs: np.ndarray, divisor: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Whether every non-zero value behind (n_obs, divisor) is a multiple of ``gain``."""
    _, _, diff = expected_value(divisor, gain)
    multiple = diff <= _float32_tolerance(RELION_TOLERANCE_ABS)
    return (n_obs >= 0) & ((divisor == 0) | multiple)


def merge(a: GainEstimate, b: GainEstimate) -> GainEstimate:
    """Combine two estimates that started from the same state (fresh, or the same loaded
    files) and saw disjoint movies, e.g. two MPI ranks. Both need merge tracking.

    Per pixel:

    * gain = the smaller of the two gains (exactly what a serial run over both gives: the gain
      is the running minimum of positive values; there is no tolerance in RELION's "g > v").
    * reliability = what a serial run gives when the estimate with the smaller gain goes first:
      its counter plus the other's non-zero values if they are all multiples of the winning gain
      (the serial run would test each of them against it), otherwise -1 (a serial run would
      have marked a mismatch). With equal gains, both orders are evaluated and the smaller
      counter is kept (the conservative choice where the serial result depends on the order).

    So the merged counter always equals a serial result for one of the two orders, and equals
    both when they agree (up to RELION's tolerance when values are multiples of multiples).
    The -1 state, the 999.9 start and values >= 999.9 need no special case: they follow from
    the same rules. The merged estimate keeps merge tracking, so merges can be chained.

    Raises:
        GainError: the estimates have different sizes.
        ValueError: an estimate lacks merge tracking.
    """
    if a.gain.shape != b.gain.shape:
        raise GainError(
            f"Cannot merge gain estimates of {a.gain.shape[1]} x {a.gain.shape[0]} and "
            f"{b.gain.shape[1]} x {b.gain.shape[0]} pixels."
        )
    if not (a.tracks_merge and b.tracks_merge):
        raise ValueError("merge() needs estimates created with track_merge=True")
    assert a.n_observations is not None and a.common_divisor is not None
    assert b.n_observations is not None and b.common_divisor is not None
    ga, gb = a.gain, b.gain
    nan_a, nan_b = np.isnan(ga), np.isnan(gb)
    a_wins = (ga < gb) | (nan_b & ~nan_a)
    b_wins = (gb < ga) | (nan_a & ~nan_b)
    ra = a.reliability.astype(np.int32)
    rb = b.reliability.astype(np.int32)
    na, nb = a.n_observations, b.n_observations
    # Serial A then B, with A's gain (B's values are all >= gb >= ga, so none changes the gain).
    a_first = np.where((ra >= 0) & _consistent_with(nb, b.common_divisor, ga), np.minimum(ra + nb, RELIABILITY_MAX), -1)
    b_first = np.where((rb >= 0) & _consistent_with(na, a.common_divisor, gb), np.minimum(rb + na, RELIABILITY_MAX), -1)
    rel = np.where(a_wins, a_first, np.where(b_wins, b_first, np.minimum(a_first, b_first)))
    n_obs = np.where((na < 0) | (nb < 0), -1, na + nb).astype(np.int32)
    divisor = _float_gcd(a.common_divisor, b.common_divisor)
    return GainEstimate(np.where(b_wins, gb, ga), rel.astype(np.int16), n_observations=n_obs, common_divisor=divisor)


def merge_all(estimates: Sequence[GainEstimate]) -> GainEstimate:
    """:func:`merge` of several estimates, left to right."""
    if not estimates:
        raise ValueError("merge_all() needs at least one estimate")
    result = estimates[0]
    for other in estimates[1:]:
        result = merge(result, other)
    return result
