"""The vectorised numpy implementation of RELION's gain arithmetic that cryotiff used before the
compiled kernels (cryotiff.kernels), kept as the oracle the kernels are tested against. Whole
frames in a few numpy passes; The scalar helpers (rounding, the tolerance) are cryotiff.gain's."""

from __future__ import annotations

import numpy as np

from cryotiff.gain import INCONSISTENT, RELIABILITY_MAX, RELION_TOLERANCE_ABS, _float32_tolerance, expected_value, round_half_away_from_zero

_INT_MIN = -(2**31)
_TWO_POW_31_F32 = np.float32(2.0**31)
_INT_MIN_F32 = np.float32(_INT_MIN)


def _update_block(
    gain: np.ndarray,
    rel: np.ndarray,
    v: np.ndarray,
    thresh: int,
    n_obs: np.ndarray | None,
    divisor: np.ndarray | None,
) -> tuple[int, int, int, int]:
    """RELION's per-pixel estimation rule on one row block, in place (docs/relion-behaviour.md,
    "Gain estimation of float movies"). Returns (changed, mismatch, negative, stable)."""
    with np.errstate(all="ignore"):
        negative = v < 0
        # Rule order: zero -> nothing; negative; smaller positive value -> new gain; otherwise
        # the multiple test. "v > 0" excludes zeros and negatives (and NaN) from "smaller".
        smaller = (v > 0) & (gain > v)
        rest = (v != 0) & ~negative & ~smaller  # includes NaN values
        _, _, diff = expected_value(v, gain)
        matches = diff <= np.float32(_float32_tolerance(RELION_TOLERANCE_ABS))
        # DIFFERENCE: a NaN difference (NaN value or gain) is a mismatch; RELION's "> 1e-4" is
        # false for NaN, so it counts NaN as consistent.
        mismatch = rest & ~matches
        match = rest & matches

        counts = (int(np.count_nonzero(smaller)), int(np.count_nonzero(mismatch)), int(np.count_nonzero(negative)))
        # DIFFERENCE: the counter saturates at 32767; RELION's int16 wraps to -32768 and the
        # pixel becomes unreliable for good after 32767 consistent frames.
        grow = match & (rel >= 0) & (rel < RELIABILITY_MAX)
        np.copyto(gain, v, where=smaller)
        np.copyto(rel, np.int16(0), where=smaller)
        np.copyto(rel, np.int16(INCONSISTENT), where=negative | mismatch)
        np.add(rel, np.int16(1), out=rel, where=grow)

    return counts + (int(np.count_nonzero(rel >= thresh)),)



def update(gain: np.ndarray, rel: np.ndarray, v: np.ndarray, thresh: int) -> tuple[int, int, int, int]:
    """``_update_block`` over a whole frame, in place."""
    return _update_block(gain, rel, v, thresh, None, None)


def _integerise_core(
    v: np.ndarray,
    g: np.ndarray,
    mask: np.ndarray,
    tolerance_abs: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(values, expected, error mask, inexact mask) over the frame, in row blocks."""
    values = np.empty_like(v)
    expected = np.empty_like(v)
    errors = np.empty(v.shape, bool)
    inexact = np.empty(v.shape, bool)
    tol = _float32_tolerance(tolerance_abs)

    def work(rows: slice) -> tuple[int, ...]:
        vb, gb, mb = v[rows], g[rows], mask[rows]
        iv, e, diff = expected_value(vb, gb)
        ok = diff <= tol
        accepted = mb & ok
        err = mb & ~ok
        out = np.where(accepted, iv, vb)
        bad = np.flatnonzero(err)
        if bad.size:
            # With ignore_error a finite error is rounded without the int cast (RELION writes
            # -2147483648 when the quotient overflows); a non-finite value is copied (DIFFERENCE).
            vf, gf = vb.reshape(-1)[bad], gb.reshape(-1)[bad]
            with np.errstate(all="ignore"):
                rounded = round_half_away_from_zero(np.divide(vf, gf, dtype=np.float32)) + np.float32(0.0)
            out.reshape(-1)[bad] = np.where(np.isfinite(vf), rounded, vf)
        values[rows] = out
        expected[rows] = e
        errors[rows] = err
        inexact[rows] = accepted & (e != vb)
        return (0,)

    work(slice(0, v.shape[0]))
    return values, expected, errors, inexact



def integerise(v, g, mask, tolerance_abs=RELION_TOLERANCE_ABS):
    """(values, expected, error mask, inexact mask) of a whole frame."""
    return _integerise_core(v, g, mask, tolerance_abs)


def lossy_counts(v: np.ndarray, mask: np.ndarray, values: np.ndarray):
    """The numpy ``--lossy`` step after integerisation: (int32 counts, n_pixels, n_changed,
    max_abs_change, sum_abs_change, n_nonfinite, n_clipped)."""
    unreliable = ~mask
    raw = v[unreliable].astype(np.float64)
    finite = np.isfinite(raw)
    rounded = np.copysign(np.floor(np.abs(raw) + 0.5), raw)  # exact for float32 inputs
    rounded[~finite] = 0.0
    clipped = np.clip(rounded, _INT_MIN, 2**31 - 1)
    change = np.abs(clipped[finite] - raw[finite])
    outside = ~(np.abs(values) < _TWO_POW_31_F32) & mask
    if outside.any():
        values = values.copy()
        values[outside & ~np.isfinite(values)] = 0
        np.clip(values, _INT_MIN_F32, np.float32(2**31 - 128), out=values, where=outside)
    counts = np.zeros(v.shape, np.int32)
    np.copyto(counts, values, casting="unsafe", where=mask)
    counts[unreliable] = clipped.astype(np.int32)
    change_sum = float(change.sum())
    return (counts, int(raw.size), int(np.count_nonzero(change > 0) + np.count_nonzero(~finite)),
            float(change.max()) if change.size else 0.0, change_sum, int(np.count_nonzero(~finite)),
            int(np.count_nonzero(clipped != rounded)))
