"""Writing MRC movie files in every mode cryotiff reads, for tests, the demo and benchmarks.

One code path writes every file: an MRC2014 header built with mrcfile's own header dtype
(``mrcfile.dtypes.HEADER_DTYPE``) and machine stamp, an optional extended header, then the
frames. This covers what ``mrcfile.new`` cannot write: mode 101 (packed 4-bit) and big-endian
files. The little-endian files it writes pass ``mrcfile.validate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

__all__ = ["MODE_FILE_DTYPES", "pack_mode101", "write_mrc_movie"]

PathLike = Union[str, "os.PathLike[str]"]

#: MRC ``MODE`` -> dtype of one stored sample (mode 101 is packed separately, two per byte).
MODE_FILE_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
    101: np.dtype(np.uint8),
}

_EXTENDED_HEADER_FILL_BYTE = 0xA5  # not zero, so that a reader that fails to skip it shows it


def pack_mode101(frames: np.ndarray) -> np.ndarray:
    """Pack 4-bit values (0..15) two per byte, low nibble first, rows padded to whole bytes (IMOD).

    Args:
        frames: integer array of shape ``(..., ny, nx)`` with values 0..15.

    Returns:
        ``uint8`` array of shape ``(..., ny, (nx + 1) // 2)``.
    """
    values = np.asarray(frames)
    nx = values.shape[-1]
    row_nbytes = (nx + 1) // 2
    padded = np.zeros(values.shape[:-1] + (2 * row_nbytes,), dtype=np.uint8)
    padded[..., :nx] = values
    return padded[..., 0::2] | (padded[..., 1::2] << 4)


def _as_mode_samples(values: np.ndarray, mode: int) -> np.ndarray:
    """Convert ``values`` to the sample type of ``mode``; integer modes must hold them exactly."""
    if mode not in MODE_FILE_DTYPES:
        raise ValueError(f"MRC mode {mode} cannot be written (use 0, 1, 2, 6, 12 or 101).")
    dtype = MODE_FILE_DTYPES[mode]
    if dtype.kind == "f":
        return values.astype(dtype)
    low, high = (0, 15) if mode == 101 else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    integral = values.dtype.kind in "biu" or bool(np.all(values == np.round(values)))
    if not integral or values.min() < low or values.max() > high:
        raise ValueError(f"MRC mode {mode} holds integers {low}..{high}; the values do not fit.")
    return values.astype(dtype)


def write_mrc_movie(
    path: PathLike,
    frames: np.ndarray,
    mode: int,
    *,
    pixel_size_angstrom: float | None = None,
    big_endian: bool = False,
    extended_header_bytes: int = 0,
    exttyp: bytes = b"FEI1",
) -> Path:
    """Write ``frames`` as an MRC2014 image stack and return its path.

    Args:
        path: file to write (overwritten).
        frames: array of shape ``(nz, ny, nx)``, or ``(ny, nx)`` for a single frame. Values are
            converted to the mode's sample type; for the integer modes they must fit exactly
            (``ValueError`` otherwise), for mode 101 they must be integers 0..15.
        mode: MRC mode (header field ``MODE``): 0 (int8), 1 (int16), 2 (float32), 6 (uint16),
            12 (float16) or 101 (4-bit packed, low nibble first, rows of odd ``nx`` padded to
            ``(nx + 1) // 2`` bytes as IMOD writes them).
        pixel_size_angstrom: stored as header field ``CELLA = pixel size * (MX, MY, MZ)``;
            None leaves ``CELLA`` zero (no pixel size).
        big_endian: write header and data big-endian (machine stamp ``0x11 0x11``).
        extended_header_bytes: size of the extended header (header field ``NSYMBT``); it is
            filled with the byte 0xA5.
        exttyp: header field ``EXTTYP`` (used only when ``extended_header_bytes`` > 0).

    Header layout: ``NX, NY, NZ`` = frame shape and count; ``MX = NX, MY = NY``; ``MZ = 1`` and
    ``ISPG = 0`` (image stack, as mrcfile writes stacks); ``DMIN/DMAX/DMEAN/RMS`` from the data
    (for mode 101 from the 4-bit values); ``NVERSION = 20141``; ``MAP = "MAP "``.
    """
    values = np.asarray(frames)
    if values.ndim == 2:
        values = values[np.newaxis]
    if values.ndim != 3 or 0 in values.shape:
        raise ValueError(f"frames must have shape (nz, ny, nx) or (ny, nx) and no empty axis, not {values.shape}.")
    if extended_header_bytes < 0:
        raise ValueError("extended_header_bytes must not be negative.")
    samples = _as_mode_samples(values, mode)
    nz, ny, nx = samples.shape
    byte_order = ">" if big_endian else "<"

    header = np.zeros((), dtype=HEADER_DTYPE.newbyteorder(byte_order))
    header["nx"], header["ny"], header["nz"] = nx, ny, nz
    header["mode"] = mode
    header["mx"], header["my"], header["mz"] = nx, ny, 1
    if pixel_size_angstrom is not None:
        header["cella"] = (pixel_size_angstrom * nx, pixel_size_angstrom * ny, pixel_size_angstrom * 1)
    header["cellb"] = (90.0, 90.0, 90.0)
    header["mapc"], header["mapr"], header["maps"] = 1, 2, 3
    with np.errstate(all="ignore"):  # infinities or NaN in float data make the statistics NaN
        header["dmin"] = samples.min()
        header["dmax"] = samples.max()
        header["dmean"] = samples.mean(dtype=np.float64)
        header["rms"] = samples.std(dtype=np.float64)
    header["ispg"] = 0
    header["nsymbt"] = extended_header_bytes
    if extended_header_bytes:
        header["exttyp"] = exttyp
    header["nversion"] = 20141
    header["map"] = b"MAP "
    header["machst"] = np.frombuffer(
        bytes(mrcfile.utils.machine_stamp_from_byte_order(byte_order)), dtype=np.uint8
    )
    header["nlabl"] = 1
    header["label"][0] = b"cryotiff.simulate.write_mrc_movie"

    if mode == 101:
        data = pack_mode101(samples)
    else:
        data = samples.astype(samples.dtype.newbyteorder(byte_order))

    path = Path(path)
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(bytes([_EXTENDED_HEADER_FILL_BYTE]) * extended_header_bytes)
        handle.write(np.ascontiguousarray(data).tobytes())
    return path
