"""Synthetic counting-detector frames: Falcon 3/4 (electron blobs) and K2/K3 (Poisson counts).

Both are vectorised and seedable, so tests and benchmarks can regenerate the same movie.
"""

from __future__ import annotations

import numpy as np

#: A Falcon renders each electron as a blob of about 3x3 pixels whose values sum to about 100
#: (RELION's movie-compression page, relion.readthedocs.io Reference/MovieCompression, section
#: "Falcon3 / Falcon4").
FALCON_COUNTS_PER_ELECTRON = 100

#: Blob width and the spread of each electron's total. Chosen so that the simulated movie
#: reproduces RELION's published sizes (its movie-compression page) for the EMPIAR-10309 Falcon 3
#: movie: zlib level 6 gives 53.3 % (published: RELION's deflate-6 53.2 %) and bzip2 -9 42.6 %
#: (published 42.4 %).
BLOB_SIGMA_PX = 0.5
ELECTRON_TOTAL_SPREAD = 0.1


def falcon_frames(
    n_frames: int,
    shape_yx: tuple[int, int] = (4096, 4096),
    mean_per_pixel: float = 36.6,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Return Falcon-like uint16 frames ``(n_frames, ny, nx)``.

    Electrons land at uniformly random positions (8 x 8 sub-pixel bins); each is spread over the
    3x3 pixels around it with a Gaussian weight (sigma :data:`BLOB_SIGMA_PX`) centred on its
    sub-pixel position, scaled to a total of about :data:`FALCON_COUNTS_PER_ELECTRON` (spread
    :data:`ELECTRON_TOTAL_SPREAD`) and rounded, as the detector software does.

    Args:
        n_frames: number of frames.
        shape_yx: ``(ny, nx)`` of a frame.
        mean_per_pixel: mean pixel value per frame (RELION's movie-compression page, EMPIAR-10309: 36.6,
            i.e. 0.366 electrons per pixel per frame).
        seed: seed or numpy Generator.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape_yx
    frames = np.empty((n_frames, ny, nx), dtype=np.uint16)
    electrons_per_frame = mean_per_pixel / FALCON_COUNTS_PER_ELECTRON * ny * nx
    kernels = _falcon_kernels()  # (bins, bins, 3, 3): blob shape for each sub-pixel position, sum 1
    bins = kernels.shape[0]
    padded_width = nx + 2
    for k in range(n_frames):
        n = rng.poisson(electrons_per_frame)
        # Pixel and sub-pixel bin of each electron, drawn as integers (no float rounding at edges).
        iy = rng.integers(0, ny, n)
        ix = rng.integers(0, nx, n)
        sub = rng.integers(0, bins * bins, n)
        # The energy each electron deposits varies a little around the nominal 100.
        total = FALCON_COUNTS_PER_ELECTRON * (1 + ELECTRON_TOTAL_SPREAD * rng.standard_normal(n))
        # Flat index of the top-left of the 3x3 neighbourhood in a frame padded by one pixel.
        corner = iy * padded_width + ix
        padded = np.zeros((ny + 2) * padded_width, dtype=np.float64)
        flat_kernels = kernels.reshape(bins * bins, 9)
        for j in range(9):
            offset = (j // 3) * padded_width + (j % 3)
            weights = np.rint(flat_kernels[sub, j] * total)
            padded += np.bincount(corner + offset, weights=weights, minlength=padded.size)
        frames[k] = padded.reshape(ny + 2, padded_width)[1:-1, 1:-1]
    return frames


def _falcon_kernels(bins: int = 8, sigma_px: float = BLOB_SIGMA_PX) -> np.ndarray:
    """3x3 blob weights for ``bins x bins`` sub-pixel positions, each summing to 1."""
    centres = (np.arange(bins) + 0.5) / bins - 0.5  # sub-pixel offsets from the pixel centre
    taps = np.array([-1.0, 0.0, 1.0])
    w1 = np.exp(-((taps[None, :] - centres[:, None]) ** 2) / (2 * sigma_px**2))  # (bins, 3)
    blobs = w1[:, None, :, None] * w1[None, :, None, :]  # (bins_y, bins_x, 3, 3)
    return blobs / blobs.sum(axis=(2, 3), keepdims=True)


def counting_frames(
    n_frames: int,
    shape_yx: tuple[int, int] = (3838, 3710),
    electrons_per_pixel: float = 0.96,
    dtype: np.dtype | type = np.uint8,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Return K2/K3 counting-mode frames: Poisson counts, ``(n_frames, ny, nx)``.

    Args:
        n_frames: number of frames.
        shape_yx: ``(ny, nx)``; K2 is 3838 x 3710, K3 4092 x 5760.
        electrons_per_pixel: mean count per pixel per frame (RELION's movie-compression page, EMPIAR-10340: 0.96).
        dtype: sample type (``np.int8`` for MRC mode 0 as RELION reads it, ``np.uint8`` otherwise).
        seed: seed or numpy Generator.
    """
    rng = np.random.default_rng(seed)
    counts = rng.poisson(electrons_per_pixel, (n_frames, *shape_yx))
    info = np.iinfo(dtype)
    return np.clip(counts, 0, info.max).astype(dtype)
