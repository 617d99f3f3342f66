"""Conversion of an EER gain reference into the multiplicative gain written as
``gain-reference.mrc`` (RELION ``EERRenderer::loadEERGain`` in ``src/renderEER.h``; docs/relion-behaviour.md,
"EER gain conversion"). Arrays in, arrays out: the gain file is read by
:func:`cryotiff.gain.files.read_gain_file` (with the orientation rules below); this module writes
nothing and prints nothing.

Rules (RELION 5.0.1 unless marked *beyond RELION*):

* A file whose extension is exactly ``gain`` (TFS ``.gain``, a TIFF) is **multiplicative**. Its
  first page is used in the file's own row order: RELION's TIFF reader flips rows and
  ``loadEERGain`` flips them back, so memory row 0 = TIFF file row 0 = EER raster row 0.
* Anything else is **divisive** (the EER convention: proportional to the pixel's sensitivity).
  MRC (``.mrc``/``.mrcs``, first image) is used as stored (row 0 = MRC row 0). Other TIFFs
  (``.tif``/``.tiff``, first page) keep RELION's reader flip: memory row 0 = the file's last row.
  After resizing, ``G = mean(G) / G`` where ``G != 0`` (the mean includes the zeros); zeros stay 0
  and mark defects.
* Resizing to the output grid (``det`` = detector size, output ``det``, ``2 det``, ``4 det`` or
  ``det/2`` for upsampling 1, 2, 3, -1): an input of ``det``, ``2 det`` or ``4 det`` pixels square
  is accepted. Up: nearest neighbour (``G[i][j] = g[i/f][j/f]``). Same size: copy.
  Down (block ``b x b``): *beyond RELION*, a block containing a zero becomes 0 (a defect stays a
  defect), otherwise the block **mean**. RELION accepts only 2det -> det and sums the block; for a
  divisive gain the sum and the mean give the same result after ``mean / G`` (the factor cancels),
  but for a multiplicative ``.gain`` the sum makes the gain 4x too large. RELION accepts no gain at
  upsampling 3 or -1 (*beyond RELION*: 4x4 / 2x2 nearest neighbour for 16K, block mean for 2K).

The output gain is float32, multiplicative (``corrected = counts x gain``), 0 = defect, in EER
raster orientation: the orientation RELION writes into ``gain-reference.mrc`` (MRC row 0 = EER
raster row 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from cryotiff.errors import GainError, OptionError
from cryotiff.gain.files import is_multiplicative_gain_path, read_gain_file
from cryotiff.io.eer import check_upsampling_value, output_size

__all__ = [
    "NO_GAIN_WARNING",
    "TAKING_INVERSE_MESSAGE",
    "EerGainConversion",
    "convert_eer_gain",
    "gain_read_message",
    "invert_divisive_gain",
    "is_multiplicative_gain_path",  # from cryotiff.gain.files, where every kind of gain file is read
    "read_gain_file",  # from cryotiff.gain.files
    "read_resized_eer_gain",
    "resize_gain",
]

#: RELION's second stdout line after converting an EER gain (printed only for divisive gains:
#: RELION also prints it for ``.gain`` files, which are not inverted).
TAKING_INVERSE_MESSAGE = "Taking inverse and re-scaling (when necessary)."

#: RELION's stderr warning when EER movies are converted without ``--gain``.
NO_GAIN_WARNING = (
    "WARNING: Note that an EER gain reference is the inverse of those expected for TIFF movies. "
    "You can convert your gain reference file with --gain option."
)


def gain_read_message(gain: str, nx: int, ny: int) -> str:
    """RELION's stdout line ``Read an EER gain file <g> NX = <nx> NY = <ny>``. RELION prints the
    size of the *converted* gain (the output grid), not of the file."""
    return f"Read an EER gain file {gain} NX = {nx} NY = {ny}"


@dataclass(frozen=True)
class EerGainConversion:
    """Result of :func:`convert_eer_gain`.

    Attributes:
        gain: float32 ``(out, out)`` multiplicative gain, EER raster orientation, 0 = defect
            (what RELION writes to ``gain-reference.mrc``).
        path: the gain file as given.
        input_nx, input_ny: size of the gain in the file.
        output_size: side of the output grid (= ``gain.shape``).
        multiplicative_input: True for a ``.gain`` file (not inverted).
        resampling: how the file was resized, e.g. ``"copy"``, ``"nearest neighbour x2"``,
            ``"2x2 block mean"``.
        n_defects: number of zero (defect) pixels in ``gain``.
    """

    gain: np.ndarray
    path: str
    input_nx: int
    input_ny: int
    output_size: int
    multiplicative_input: bool
    resampling: str
    n_defects: int

    def messages(self) -> list[str]:
        """The stdout lines RELION prints after conversion (the inverse line only when the gain
        was actually inverted)."""
        lines = [gain_read_message(self.path, self.output_size, self.output_size)]
        if not self.multiplicative_input:
            lines.append(TAKING_INVERSE_MESSAGE)
        return lines


def _size_hint(nx: int, ny: int, expected: int, detector_size: int) -> str:
    """Why a gain size is wrong, in words. Detectors are square, so a transposed gain would have
    the right size; a non-square gain is reported as such."""
    if nx != ny:
        if nx == expected or ny == expected:
            return " (not square: one side has the expected size)"
        return " (not square)"
    if nx == 2 * expected:
        return " (twice the expected size)"
    if 2 * nx == expected:
        return " (half the expected size)"
    if nx == 8 * detector_size:
        return " (8 times the detector size)"
    if 2 * nx == detector_size:
        return " (half the detector size)"
    return ""


def resize_gain(gain: np.ndarray, out: int) -> tuple[np.ndarray, str]:
    """Resize a square float32 gain to ``out x out`` by a power-of-two factor: nearest neighbour
    up, copy, or block mean down (computed in float64) with any zero in a block giving 0 (defects
    stay defects). Returns a new float32 array and a description. The caller checks the sizes."""
    n = gain.shape[0]
    if n == out:
        return gain.copy(), "copy"
    if out > n:
        f = out // n
        up = np.broadcast_to(gain[:, None, :, None], (n, f, n, f)).reshape(out, out)
        return np.ascontiguousarray(up), f"nearest neighbour x{f}"
    b = n // out
    blocks = gain.reshape(out, b, out, b)
    mean = blocks.mean(axis=(1, 3), dtype=np.float64)
    mean[(blocks == 0).any(axis=(1, 3))] = 0.0
    return mean.astype(np.float32), f"{b}x{b} block mean"


def read_resized_eer_gain(
    path: str | os.PathLike[str], detector_size: int, upsampling: int
) -> tuple[np.ndarray, bool, int, int, str]:
    """Read an EER gain file (:func:`read_gain_file`) and resize it to the output grid
    (:func:`resize_gain`), not yet inverted: ``(gain, multiplicative, input_nx, input_ny,
    resampling)``.

    Raises GainError (naming the file, the size found and the sizes accepted) when the size does
    not fit, OptionError for an invalid upsampling.
    """
    check_upsampling_value(upsampling)
    if detector_size < 2 or detector_size % 2:
        raise OptionError(f"invalid EER detector size {detector_size}.")
    out = output_size(detector_size, upsampling)
    gain, multiplicative = read_gain_file(path)
    ny, nx = gain.shape
    accepted = (detector_size, 2 * detector_size, 4 * detector_size)
    if nx != ny or nx not in accepted:
        sizes = ", ".join(f"{s} x {s}" for s in accepted)
        raise GainError(
            f"{path}: unsupported EER gain size X = {nx} Y = {ny}"
            f"{_size_hint(nx, ny, out, detector_size)}; "
            f"expected X = {out} Y = {out} (the output grid of a {detector_size} x "
            f"{detector_size} detector at --eer_upsampling {upsampling}), or one of {sizes}, "
            "which are resized."
        )
    result, how = resize_gain(gain, out)
    return result, multiplicative, nx, ny, how


def invert_divisive_gain(gain: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Turn a divisive (EER convention) float32 gain into a multiplicative one, in place, as
    RELION does: the mean in double over all pixels (zeros = defects included), then
    ``mean / G`` in double stored as float where ``G != 0``; zeros stay 0.

    Raises GainError (naming ``path``) for a gain that is zero everywhere.
    """
    mean = float(gain.sum(dtype=np.float64)) / gain.size
    if mean == 0.0 or not math.isfinite(mean):
        raise GainError(f"{path}: the gain is zero everywhere; it cannot be inverted.")
    for row in range(0, gain.shape[0], 1024):  # row blocks keep the float64 copy small (8K, 16K)
        block = gain[row : row + 1024]
        inverse = block.astype(np.float64)
        np.divide(mean, inverse, out=inverse, where=block != 0)
        block[...] = inverse


def convert_eer_gain(
    path: str | os.PathLike[str], detector_size: int, upsampling: int
) -> EerGainConversion:
    """Read an EER gain file and convert it to the multiplicative gain of the output grid.

    Args:
        path: the gain file (``--gain``).
        detector_size: side of the EER detector (4096 or 2048; TIFF tags 256/257 of the movie).
        upsampling: ``--eer_upsampling`` (-1, 1, 2 or 3).

    Raises GainError (naming the file, the size found and the sizes accepted) when the size does
    not fit, OptionError for an invalid upsampling.
    """
    result, multiplicative, nx, ny, how = read_resized_eer_gain(path, detector_size, upsampling)
    if not multiplicative:
        invert_divisive_gain(result, path)
    return EerGainConversion(
        gain=result,
        path=os.fspath(path),
        input_nx=nx,
        input_ny=ny,
        output_size=result.shape[0],
        multiplicative_input=multiplicative,
        resampling=how,
        n_defects=int(np.count_nonzero(result == 0)),
    )
