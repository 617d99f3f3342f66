"""Conversion of an EER gain reference into the multiplicative gain written as
``gain-reference.mrc`` (RELION ``EERRenderer::loadEERGain`` in ``src/renderEER.h``; docs/relion-behaviour.md,
"EER gain conversion"). Arrays in, arrays out:
this module reads the gain file but writes nothing and prints nothing.

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
import warnings
from dataclasses import dataclass

import mrcfile
import numpy as np
import tifffile

from cryotiff.errors import CryotiffError, GainError, OptionError
from cryotiff.io import check_regular_file
from cryotiff.io.eer import check_upsampling_value, output_size

#: RELION's second stdout line after converting an EER gain (printed only for divisive gains:
#: RELION also prints it for ``.gain`` files, which are not inverted).
TAKING_INVERSE_MESSAGE = "Taking inverse and re-scaling (when necessary)."

#: RELION's stderr warning when EER movies are converted without ``--gain``.
NO_GAIN_WARNING = (
    "WARNING: Note that an EER gain reference is the inverse of those expected for TIFF movies. "
    "You can convert your gain reference file with --gain option."
)

MRC_EXTENSIONS = ("mrc", "mrcs")
TIFF_EXTENSIONS = ("tif", "tiff")


def gain_read_message(gain: str, nx: int, ny: int) -> str:
    """RELION's stdout line ``Read an EER gain file <g> NX = <nx> NY = <ny>``. RELION prints the
    size of the *converted* gain (the output grid), not of the file."""
    return f"Read an EER gain file {gain} NX = {nx} NY = {ny}"


def gain_written_message(gain_reference: str) -> str:
    """RELION's stdout text after writing ``gain-reference.mrc`` (RELION ends it with a newline
    and then ``endl``, i.e. a blank line follows)."""
    return (
        f"Written {gain_reference}. Please use this file as a gain reference when processing the "
        "converted movies.\n"
    )


def _extension(path: str | os.PathLike[str]) -> str:
    name = os.path.basename(os.fspath(path))
    return name.rsplit(".", 1)[1] if "." in name else ""


def is_multiplicative_gain_path(path: str | os.PathLike[str]) -> bool:
    """True for an extension of exactly ``gain`` (RELION's test; case-sensitive)."""
    return _extension(path) == "gain"


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


def read_gain_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, bool]:
    """``(gain as float32 (ny, nx), multiplicative)`` of a gain file, oriented as RELION has it in
    memory (see the module docstring; RELION reads gains as float too). Unreadable files raise
    GainError naming the file."""
    ext = _extension(path)
    multiplicative = ext == "gain"
    check_regular_file(path, "a gain file", GainError)  # before opening: a named pipe would block
    if multiplicative or ext in TIFF_EXTENSIONS:
        data = _read_tiff_first_page(path)
        if not multiplicative:
            data = data[::-1]  # RELION's TIFF reader flips rows; only .gain is flipped back
    elif ext in MRC_EXTENSIONS:
        data = _read_mrc_first_image(path)
    else:
        raise GainError(
            f"{path}: unsupported EER gain file type {('.' + ext) if ext else '(no extension)'}; "
            "use a .gain file (multiplicative TIFF), an MRC file or a TIFF file."
        )
    if data.ndim != 2 or data.size == 0:
        raise GainError(f"{path}: the gain is not a single 2D image (shape {data.shape}).")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise GainError(f"{path}: unsupported sample type {data.dtype} for a gain.")
    gain = np.ascontiguousarray(data, dtype=np.float32)
    check_gain_values(gain, path)
    return gain, multiplicative


def check_gain_values(gain: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Refuse an EER gain that holds NaN, infinite or negative values, or only zeros, naming how
    many pixels are bad. 0 is a defect (kept as 0, as RELION does); the other values have no
    meaning as a sensitivity or a gain, and RELION would turn them into NaN or negative gains in
    ``gain-reference.mrc``."""
    with np.errstate(invalid="ignore"):
        n_nan = int(np.count_nonzero(np.isnan(gain)))
        n_inf = int(np.count_nonzero(np.isinf(gain)))
        n_negative = int(np.count_nonzero(gain < 0))
    bad = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "infinite"), (n_negative, "negative")) if n]
    if bad:
        raise GainError(
            f"{path}: {n_nan + n_inf + n_negative} of the {gain.size} pixels of the gain are not usable "
            f"values ({', '.join(bad)}); only positive values and 0 (a defect) are. The gain file is damaged."
        )
    if not gain.any():
        raise GainError(f"{path}: the gain is zero everywhere (every pixel a defect); it is not a gain reference.")


def _read_tiff_first_page(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise GainError(f"{path}: the TIFF file has no image.")
            return np.asarray(tif.pages[0].asarray())
    except CryotiffError:
        raise
    except FileNotFoundError:
        raise GainError(f"{path}: gain file not found.") from None
    except Exception as exc:  # tifffile / imagecodecs / OS errors: a damaged or foreign file
        raise GainError(
            f"{path}: cannot read the gain as TIFF ({type(exc).__name__}: {exc})."
        ) from None


def _read_mrc_first_image(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # mrcfile warns about odd but readable headers; the data is what matters here.
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                data = np.asarray(mrc.data)
    except FileNotFoundError:
        raise GainError(f"{path}: gain file not found.") from None
    except Exception as exc:  # mrcfile raises ValueError for bad headers, OSError etc.
        raise GainError(
            f"{path}: cannot read the gain as MRC ({type(exc).__name__}: {exc})."
        ) from None
    if data.ndim == 3:
        data = data[0]  # RELION reads the first image
    return data


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
