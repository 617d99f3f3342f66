"""Gain of gain-normalised float movies (K2/K3 from Digital Micrograph): estimation and use.

A gain-normalised frame holds ``count x gain`` per pixel in float32. RELION 5.0.1's
``relion_convert_to_tiff --estimate_gain`` takes the smallest positive value seen at a pixel as
its gain and counts how many later non-zero values are integer multiples of it (the reliability
counter). ``--gain`` then divides every reliable pixel by its gain, giving small integers that
compress well, and copies unreliable pixels (Digital Micrograph's defect-corrected pixels,
cold pixels) unchanged with a gain of 1.0.

This module reproduces that arithmetic exactly (float32 division, C ``round`` = half away from
zero, float32 multiply and subtraction, absolute tolerance 1e-4, the rule order of RELION's
``TIFFConverter::estimate`` in ``src/tiff_converter.cpp``, written out in docs/relion-behaviour.md,
"Gain estimation of float movies"), pixel by pixel in compiled loops without the GIL
(:mod:`cryotiff.kernels`: the estimation update, integerisation, ``--lossy`` rounding); the merge
of estimates made in parallel, and its tracking, stay vectorised numpy. It never prints: the
message texts RELION prints are returned by the ``*_message`` / ``format_*`` functions for the
caller to print.

Deliberate differences from RELION 5.0.1 (each is marked ``DIFFERENCE`` where it is made):

* the int16 reliability counter saturates at 32767 instead of wrapping to -32768;
* a NaN pixel value is a mismatch (RELION counts it as consistent, and ``--gain`` then writes
  -2147483648 for it);
* gain files are written atomically (temporary file + ``os.replace``, with the permissions
  ``open()`` gives under the umask), in an order that never leaves a pixel reliable on evidence
  that does not exist; a save that fails (full disk, read-only directory) leaves the previous
  pair as it was (see :meth:`GainEstimate.save`);
* the reliability map is also found under the documented spelling ``_reliability``;
* the reliability map name is derived from the file name only (a dot in a directory name does
  not count as the extension);
* with ``ignore_error``, a non-finite value at a reliable pixel is copied unchanged, and a finite
  one whose quotient does not fit an int is rounded without the int cast (RELION writes
  -2147483648 in both cases);
* a pixel marked reliable whose gain is NaN, infinite, zero or negative (a damaged or hand-made
  gain file; estimation never makes one) is treated as unreliable, with a warning
  (:meth:`GainEstimate.unusable_gain_warning`); a file in which no reliable pixel has a usable
  gain is refused.

Estimates made in separate processes over disjoint movie sets can be combined with
:func:`merge` (RELION refuses ``--estimate_gain`` under MPI).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import mrcfile
import numpy as np

from cryotiff.errors import CryotiffError, ExistingOutputError, GainError, OutputError, UnexpectedPixelValueError
from cryotiff.io import check_regular_file
from cryotiff.io.atomic import AtomicFile
from cryotiff.io.mrc import open_mrc

# ---------------------------------------------------------------------------------------------
# Constants and message texts
# ---------------------------------------------------------------------------------------------

#: RELION's absolute tolerance for "value is an integer multiple of the gain".
RELION_TOLERANCE_ABS = 1e-4
#: Starting gain of every pixel (RELION: any first positive value below it becomes the gain).
INITIAL_GAIN = np.float32(999.9)
#: Reliability counter of a pixel that is not (or no longer) consistent.
INCONSISTENT = -1
#: Largest reliability counter; cryotiff saturates there (RELION's int16 wraps).
RELIABILITY_MAX = 32767
#: Default ``--thresh``.
DEFAULT_THRESH = 50

#: Files written by ``--estimate_gain`` (RELION's names, including its misspelling, so that
#: RELION and cryotiff can read each other's files).
GAIN_ESTIMATE_NAME = "gain_estimate.bin"
RELIABILITY_ESTIMATE_NAME = "gain_estimate_reliablity.bin"
#: Gain reference written next to the converted movies.
GAIN_REFERENCE_NAME = "gain-reference.mrc"
#: RELION's spelling of the reliability suffix, and the documented one (also accepted).
RELIABILITY_SUFFIX_RELION = "_reliablity"
RELIABILITY_SUFFIX_DOCUMENTED = "_reliability"

#: RELION's message texts (``src/tiff_converter.cpp``; docs/relion-behaviour.md). Errors carry them
#: as the first sentence.
GAIN_WRONG_SIZE = "The input gain has a wrong size."
RELIABILITY_WRONG_SIZE = "The input reliability map has a wrong size."
ESTIMATE_NEEDS_MODE2 = "The input movie is not in mode 2 MRC(S) file. Gain estimation does not make sense."
GAIN_IRRELEVANT_WARNING = "The input movie is not in mode 2. A gain reference is irrelavant."  # sic
ESTIMATE_FIRST_WARNING = (
    "WARNING: To effectively compress mode 2 MRC files, you should first estimate the gain with --estimate_gain."
)
UNEXPECTED_PIXEL_VALUE = "Unexpected pixel value in a pixel that was considered reliable"

# RELION's snprintf buffer for the mismatch line holds 256 bytes including the NUL.
_MISMATCH_BUFFER_CHARS = 255
_TWO_POW_31_F32 = np.float32(2.0**31)
_INT_MIN_F32 = np.float32(-(2.0**31))
_DEFAULT_BLOCK_ROWS = 256
# Euclid on float values: a few steps suffice for real multiples of one gain (small counts);
# values that need more steps, or end far below the values themselves, are defect values and
# get no common divisor.
_GCD_MAX_STEPS = 48
_GCD_MIN_RATIO = 2.0**-10


def read_message(path: str | os.PathLike[str]) -> str:
    """``Read <file>``: printed (stdout, rank 0) after reading the gain and after the
    reliability map; RELION prints an empty line after the second one."""
    return f"Read {os.fspath(path)}"


def _out_prefix(out_dir: str | os.PathLike[str]) -> str:
    # RELION's <out> is --o with a trailing slash appended when missing.
    prefix = os.fspath(out_dir)
    return prefix if prefix.endswith("/") else prefix + "/"


def updated_message(out_dir: str | os.PathLike[str]) -> str:
    """RELION's stdout text after every estimated movie, starting with a newline:
    ``"\\nUpdated <out>gain_estimate.bin and <out>gain_estimate_reliablity.bin"``.
    Print it, then an empty line (``print(msg); print()``)."""
    out = _out_prefix(out_dir)
    return f"\nUpdated {out}{GAIN_ESTIMATE_NAME} and {out}{RELIABILITY_ESTIMATE_NAME}"


def resume_warning(gain_path: str | os.PathLike[str]) -> str:
    """The warning of ``--estimate_gain --gain X`` (DIFFERENCE: RELION says nothing). A saved
    estimate does not record which movies went into it, so each movie given is added again; a
    movie counted twice makes its pixels reach ``--thresh`` on repeated evidence."""
    return (
        f"WARNING: --estimate_gain resumes from {os.fspath(gain_path)}: every movie given is added to that "
        "estimate, and one that is already in it is counted twice (its pixels then become reliable on "
        "repeated evidence). Give only movies that are not in it yet; the --report of the earlier run "
        "lists those that are."
    )


def replaced_estimate_warning(out_dir: str | os.PathLike[str], gain_path: str | os.PathLike[str] | None) -> str | None:
    """The warning of an ``--estimate_gain`` run whose ``<o>/gain_estimate.bin`` exists and is not
    the ``--gain`` it resumes from (DIFFERENCE: RELION replaces it silently): the saved estimate,
    perhaps of many movies, is replaced after the first movie by one without them. None when
    there is none, or it is resumed."""
    existing = Path(out_dir) / GAIN_ESTIMATE_NAME
    if not existing.exists():
        return None
    if gain_path is not None and os.path.exists(gain_path) and os.path.samefile(existing, gain_path):
        return None
    start = f"the estimate of {os.fspath(gain_path)}" if gain_path is not None else "a new estimate"
    return (f"WARNING: {existing} exists; after the first movie it is replaced by {start} with the movies given, "
            f"without the movies in it now. To add the movies to it instead, give --gain {existing}.")


def written_gain_reference_message(out_dir: str | os.PathLike[str]) -> str:
    """RELION's stdout line after writing ``<out>gain-reference.mrc``; print it, then an empty line."""
    return (
        f"Written {_out_prefix(out_dir)}{GAIN_REFERENCE_NAME}. "
        "Please use this file as a gain reference when processing the converted movies."
    )


def different_size_message(movie: str) -> str:
    """RELION's error text for a movie whose frame size differs from the gain's."""
    return f"The movie {movie} has a different size from others."


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


def _row_blocks(n_rows: int, block_rows: int) -> list[slice]:
    block_rows = max(1, int(block_rows))
    return [slice(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


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
    ) -> "GainEstimate":
        """Read a gain (as MRC whatever its extension, converted to float32) and its reliability
        map (:func:`find_reliability_path`, converted to int16), as RELION's ``--gain`` does.

        Raises:
            GainError: a file is missing, unreadable, not a single image, of a size other than
                ``shape_yx`` (when given) or the two differ in size. The message names the file.
        """
        gain_path = Path(gain_path)
        gain = read_mrc_image(gain_path, "gain")
        if shape_yx is not None and gain.shape != tuple(shape_yx):
            raise GainError(
                f"{GAIN_WRONG_SIZE} {gain_path} is {gain.shape[1]} x {gain.shape[0]} pixels, "
                f"the movies are {shape_yx[1]} x {shape_yx[0]}."
            )
        rel_path = find_reliability_path(gain_path)
        raw = read_mrc_image(rel_path, "reliability map", as_float=False)
        if raw.shape != gain.shape:
            raise GainError(
                f"{RELIABILITY_WRONG_SIZE} {rel_path} is {raw.shape[1]} x {raw.shape[0]} pixels, "
                f"the gain {gain_path} is {gain.shape[1]} x {gain.shape[0]}."
            )
        estimate = cls(gain, _to_int16_counter(raw, rel_path))
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
        ``<out_dir>/gain_estimate_reliablity.bin`` (MRC mode 1, nz = 1); cella = (nx, ny, 1)
        as RELION writes for an unknown pixel size. Returns ``(gain_path, reliability_path)``.

        Each file is written to a temporary file in ``out_dir`` and moved over the old one with
        ``os.replace``. Two files cannot be replaced together, so when the previous pair is
        readable and some gains changed, three replacements are made: (1) the reliability map
        with the new counters, but with ``min(counter, 0)`` where the gain changed; (2) the new
        gain; (3) the final reliability map. Interrupted at any moment, the pair on disk is the
        previous pair, the new pair, or a pair in which every pixel whose gain changed has a
        counter of 0 or -1, which is a state RELION itself passes through (the gain was just set).
        No pixel is then reliable on evidence it does not have, and a resumed estimation goes on
        normally.

        Every temporary file is written (and ``fsync``-ed) before the first replacement, so a
        save that cannot be written (full disk, quota, read-only directory) changes nothing: the
        previous pair stays as it was, the temporary files are removed, and the error says so.
        Temporary files are also removed on KeyboardInterrupt.

        Raises:
            OutputError: a file cannot be written or renamed.
        """
        out = Path(out_dir)
        gain_path = out / GAIN_ESTIMATE_NAME
        rel_path = out / RELIABILITY_ESTIMATE_NAME
        old_gain = _read_gain_if_same_shape(gain_path, self.gain.shape)
        if old_gain is None:
            # No readable previous gain: a pair with it cannot be loaded anyway, so write the
            # reliability map first and the gain last.
            replacements = [(rel_path, self.reliability), (gain_path, self.gain)]
        else:
            changed = _changed_gains(old_gain, self.gain)
            del old_gain  # before the interim map: the save holds one extra map at a time
            replacements = [(gain_path, self.gain), (rel_path, self.reliability)]
            if changed.any():
                interim = self.reliability.copy()
                np.minimum(interim, 0, out=interim, where=changed)
                replacements.insert(0, (rel_path, interim))
            del changed
        written: list[AtomicFile] = []
        try:
            try:
                for path, data in replacements:
                    written.append(_write_mrc_temporary(path, data, voxel_size_angstrom=1.0, fsync=fsync))
            except OutputError as exc:
                raise OutputError(f"{exc}; the saved {gain_path} and {rel_path.name} are unchanged") from None
            for target in written:
                target.commit()
        finally:
            for target in written:
                target.discard()  # those not renamed (after an error)
        return gain_path, rel_path


def _changed_gains(old_gain: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Where ``gain`` differs from ``old_gain`` (NaN equals NaN), a row block at a time (no
    full-size temporaries besides the result)."""
    changed = np.empty(gain.shape, bool)
    for rows in _row_blocks(gain.shape[0], _DEFAULT_BLOCK_ROWS):
        old, new = old_gain[rows], gain[rows]
        changed[rows] = ~((old == new) | (np.isnan(old) & np.isnan(new)))
    return changed


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


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def reliability_path_candidates(gain_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<gain without last extension>_reliablity.<ext>, ..._reliability.<ext>)``.

    RELION's spelling first. DIFFERENCE: the extension is taken from the file name only; a name
    without a dot gets the suffix appended (RELION would find a dot in a directory name).
    """
    path = Path(gain_path)
    name = path.name
    if "." in name:
        stem, ext = name.rsplit(".", 1)
        names = (f"{stem}{RELIABILITY_SUFFIX_RELION}.{ext}", f"{stem}{RELIABILITY_SUFFIX_DOCUMENTED}.{ext}")
    else:
        names = (name + RELIABILITY_SUFFIX_RELION, name + RELIABILITY_SUFFIX_DOCUMENTED)
    return path.with_name(names[0]), path.with_name(names[1])


def find_reliability_path(gain_path: str | os.PathLike[str]) -> Path:
    """The reliability map belonging to ``gain_path`` (RELION's spelling preferred).

    Raises:
        GainError: neither spelling exists.
    """
    relion_name, documented_name = reliability_path_candidates(gain_path)
    for candidate in (relion_name, documented_name):
        if candidate.is_file():
            return candidate
    raise GainError(
        f"The reliability map of the gain {os.fspath(gain_path)} is missing: expected {relion_name} "
        f"(or {documented_name.name}). It is written next to {GAIN_ESTIMATE_NAME} by --estimate_gain."
    )


def read_mrc_image(path: str | os.PathLike[str], what: str = "gain", *, as_float: bool = True) -> np.ndarray:
    """Read a single-image MRC file whatever its extension (RELION reads ``<file>:mrc``), with
    cryotiff's MRC reader (lenient like RELION's: any map ID or machine stamp, byte order by
    plausibility).

    Returns float32 (``as_float``) or the mode's own dtype (int16 for mode 1, ...).

    Raises:
        GainError: missing, unreadable, or more than one section; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise GainError(f"The {what} file {path} does not exist.")
    check_regular_file(path, f"a {what} file", GainError)  # a directory, a named pipe
    try:
        with open_mrc(path) as mrc:
            n_sections = mrc.info.n_frames
            data = mrc.read_frame(0) if n_sections == 1 else None
    except CryotiffError as exc:
        raise GainError(f"Cannot read the {what} file {path} as MRC: {exc}") from exc
    if data is None:
        raise GainError(f"The {what} file {path} must hold one 2-D image; it has {n_sections} sections.")
    data = np.asarray(data, dtype=np.float32) if as_float else np.asarray(data)
    # read_frame gives a fresh array: copy only to make it native-endian and C-ordered
    return np.asarray(data, dtype=data.dtype.newbyteorder("="), order="C")


def _to_int16_counter(raw: np.ndarray, path: Path) -> np.ndarray:
    """Reliability values as int16. Integer data is saturated to the int16 range; float data
    must be whole numbers (RELION casts whatever it finds). Converted a row block at a time, so
    that no wider copy of the whole map is made (an int64 one would be 8 bytes a pixel)."""
    if raw.dtype == np.int16:
        return raw  # already the counters' type and range (RELIABILITY_MAX is int16's maximum)
    counters = np.empty(raw.shape, np.int16)
    for rows in _row_blocks(raw.shape[0], _DEFAULT_BLOCK_ROWS):
        if np.issubdtype(raw.dtype, np.integer):
            counters[rows] = np.clip(raw[rows].astype(np.int64), -32768, RELIABILITY_MAX)
            continue
        values = raw[rows].astype(np.float64)
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.trunc(values)):
            raise GainError(f"The reliability map {path} holds values that are not whole numbers.")
        counters[rows] = np.clip(values, -32768, RELIABILITY_MAX)
    return counters


def _read_gain_if_same_shape(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        gain = read_mrc_image(path, "gain")
    except GainError:
        return None
    return gain if gain.shape == shape else None


def _write_mrc_temporary(path: Path, data: np.ndarray, *, voxel_size_angstrom: float, fsync: bool) -> AtomicFile:
    """Write ``data`` as an MRC file into a fresh temporary file beside ``path``
    (:class:`cryotiff.io.atomic.AtomicFile`); the caller renames it with ``commit()``.

    Raises:
        OutputError: the file cannot be created or written (its temporary file is removed).
    """
    from mrcfile.mrcinterpreter import MrcInterpreter

    target = AtomicFile(path)
    try:
        with warnings.catch_warnings():
            # mrcfile warns when the data hold NaN (the header statistics become NaN); the
            # library never prints.
            warnings.simplefilter("ignore", RuntimeWarning)
            # mrcfile's documented way to write a stream it did not open
            mrc = MrcInterpreter()
            mrc._iostream = target.handle
            mrc._create_default_attributes()
            mrc.set_data(data)  # mode from dtype; nx, ny; nz = 1; amin/amax/amean/rms
            mrc.voxel_size = voxel_size_angstrom  # cella = n * pixel size
            mrc.close()  # writes it all; also keeps its __del__ from writing it again
        target.handle.flush()
        if fsync:
            os.fsync(target.handle.fileno())
    except OSError as exc:
        target.discard()
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        target.discard()
        raise
    return target


def _atomic_write_mrc(path: Path, data: np.ndarray, *, voxel_size_angstrom: float, fsync: bool) -> None:
    """Write ``data`` as the MRC file ``path``, atomically (a temporary file, then a rename).

    Raises:
        OutputError: the file cannot be written or renamed.
    """
    target = _write_mrc_temporary(Path(path), data, voxel_size_angstrom=voxel_size_angstrom, fsync=fsync)
    try:
        target.commit()
    finally:
        target.discard()


def kept_gain_reference_message(path: str | os.PathLike[str]) -> str:
    """The line for a ``gain-reference.mrc`` that already held the gain reference of this run
    (kept, not written again); print it, then an empty line."""
    return (f"Kept (identical) {os.fspath(path)}. Please use this file as a gain reference when processing the "
            "converted movies.")


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaN and -0.0 included)."""
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def keep_or_write_gain_reference(
    path: str | os.PathLike[str],
    reference: np.ndarray,
    *,
    made_from: str,
    gain_path: str | os.PathLike[str] | None = None,
    dependents: Callable[[], str] | None = None,
) -> bool:
    """Write ``reference`` as ``path`` (``<o>/gain-reference.mrc``, float32 MRC, pixel size 1.0 A
    as RELION writes it), unless it is there already; True if written.

    A ``gain-reference.mrc`` that exists is never replaced: TIFFs of gain-normalised movies are
    only right together with it (TIFF x gain reference = the movie), and the TIFFs converted
    into the same ``--o`` by an earlier run may be those. One that holds this very image (bit for
    bit) is kept, not rewritten (False); any other (another gain, another ``--thresh``, a file
    that cannot be read) is an :class:`~cryotiff.errors.ExistingOutputError`, before anything
    is converted. The file appears complete or not at all, and never replaces one that another
    run wrote meanwhile (it is linked into place, which fails where a file exists).

    Args:
        made_from: what ``reference`` comes from, for the message (``--gain g.bin`` ...).
        gain_path: the gain file given (``--gain``): refused if it is ``path`` itself.
        dependents: called only for the refusal: a sentence naming outputs that need the
            existing file ("" if none is known).

    Raises:
        ExistingOutputError: ``path`` holds something else, or is the ``--gain`` file.
        OutputError: it cannot be written.
    """
    path = Path(path)
    if gain_path is not None and os.path.exists(gain_path) and path.exists() and os.path.samefile(path, gain_path):
        raise ExistingOutputError(f"{path}: is the --gain file itself, which this run would write over; give "
                                  "another --o (or rename the gain file)")
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    if os.path.lexists(path):
        refuse_another_gain_reference(path, reference, made_from=made_from, dependents=dependents)
        return False
    target = _write_mrc_temporary(path, reference, voxel_size_angstrom=1.0, fsync=True)
    try:
        if target.commit_unless_exists():
            return True
    finally:
        target.discard()
    # another run wrote one meanwhile
    refuse_another_gain_reference(path, reference, made_from=made_from, dependents=dependents)
    return False


def refuse_another_gain_reference(path: str | os.PathLike[str], reference: np.ndarray, *, made_from: str,
                                  dependents: Callable[[], str] | None = None) -> None:
    """Nothing if ``path`` does not exist or holds ``reference`` bit for bit; otherwise the
    refusal of :func:`keep_or_write_gain_reference` (``--dry_run`` asks this without writing).

    Raises:
        ExistingOutputError: ``path`` holds another image, or cannot be read.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    try:
        existing = read_mrc_image(path, "gain reference")
        problem = f"holds another gain reference than the one {made_from} gives"
    except GainError as exc:
        existing = None
        problem = f"cannot be compared with the gain reference {made_from} gives ({exc})"
    if existing is not None and _same_image(existing, reference):
        return
    needed_by = dependents() if dependents is not None else ""
    raise ExistingOutputError(
        f"{path} exists and {problem}. It is not replaced: it may be the gain reference of TIFFs converted into "
        f"{path.parent} earlier, which are right only with the gain reference they were made with{needed_by}. "
        f"Give another --o, or remove {path} yourself once nothing needs it, and run again."
    )


def write_float_mrc(
    path: str | os.PathLike[str],
    array: np.ndarray,
    pixel_size_angstrom: float | None = None,
    *,
    fsync: bool = True,
) -> Path:
    """Atomically write a 2-D float32 MRC (mode 2, nz = 1), e.g. ``<o>/gain-reference.mrc``.

    cella = (nx, ny, 1) x pixel size (1.0 A when None, as RELION); amin/amax/amean/rms are
    computed from the data (RELION copies stale ones; this file's are correct).
    """
    data = np.asarray(array, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"write_float_mrc() needs a 2-D array, not shape {data.shape}")
    path = Path(path)
    _atomic_write_mrc(path, data, voxel_size_angstrom=1.0 if pixel_size_angstrom is None else float(pixel_size_angstrom), fsync=fsync)
    return path


# ---------------------------------------------------------------------------------------------
# Using a gain: integerisation (--gain), lossy integerisation (--lossy)
# ---------------------------------------------------------------------------------------------


def usable_gain(gain: np.ndarray) -> np.ndarray:
    """Where a gain can divide a value and give it back by multiplication: a positive finite
    number (not NaN, infinite, zero or negative)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(gain) & (gain > 0)


def gain_reference(
    estimate: GainEstimate, thresh: int = DEFAULT_THRESH, reliable_mask: np.ndarray | None = None
) -> np.ndarray:
    """The multiplicative gain reference for the converted movies (RELION's ``gain-reference.mrc``,
    written in ``TIFFConverter::initialise``): the estimated
    gain, 1.0 where ``reliability < thresh``. float32; write it with :func:`write_float_mrc`.
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

    Raises:
        UnexpectedPixelValueError: without ``ignore_error``, at the first non-conforming pixel
            (row-major order). Its ``mismatch_line`` attribute holds RELION's stderr line.
    """
    from cryotiff import kernels  # numba: imported by the runs that need it

    v, g, mask = _check_frame_and_gain(frame, gain, reliable_mask)
    values = np.empty_like(v)
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
    status_map = mask.astype(np.int16) if reliability is None else np.asarray(reliability)
    result = IntegeriseResult(
        values=values,
        n_errors=int(n_errors),
        n_inexact=int(n_inexact),
        error_rows=rows,
        error_columns=cols,
        observed=v.reshape(-1)[errors],
        expected=expected,
        gain=g.reshape(-1)[errors],
        status=status_map.reshape(-1)[errors],
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
#: Frame sizes (w x h) at which RELION unpacks an 8-bit TIFF as IMOD 4-bit (``src/rwTIFF.h``).
IMOD_4BIT_SIZES_WH = frozenset(
    {(5760, 8184), (8184, 5760), (4092, 11520), (11520, 4092), (3710, 7676), (7676, 3710), (3838, 7420), (7420, 3838)}
)


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


__all__ = [
    "DEFAULT_THRESH",
    "ESTIMATE_FIRST_WARNING",
    "ESTIMATE_NEEDS_MODE2",
    "GAIN_ESTIMATE_NAME",
    "GAIN_IRRELEVANT_WARNING",
    "GAIN_REFERENCE_NAME",
    "GAIN_WRONG_SIZE",
    "INCONSISTENT",
    "INITIAL_GAIN",
    "IMOD_4BIT_SIZES_WH",
    "RELIABILITY_ESTIMATE_NAME",
    "RELIABILITY_MAX",
    "RELIABILITY_WRONG_SIZE",
    "RELION_TOLERANCE_ABS",
    "UNEXPECTED_PIXEL_VALUE",
    "FrameStats",
    "GainEstimate",
    "IntegeriseResult",
    "LossyResult",
    "LossyStats",
    "different_size_message",
    "expected_value",
    "find_reliability_path",
    "format_estimate_line",
    "format_mismatch_line",
    "format_unnormalise_line",
    "gain_reference",
    "integer_range",
    "integerise",
    "keep_or_write_gain_reference",
    "refuse_another_gain_reference",
    "kept_gain_reference_message",
    "lossy_integerise",
    "merge",
    "merge_all",
    "read_message",
    "read_mrc_image",
    "reconstruct",
    "relion_int_round",
    "replaced_estimate_warning",
    "reliability_path_candidates",
    "resume_warning",
    "round_half_away_from_zero",
    "smallest_integer_dtype",
    "updated_message",
    "usable_gain",
    "write_float_mrc",
    "written_gain_reference_message",
]
