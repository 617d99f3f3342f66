"""A synthetic detector with a known, asymmetric gain, and frames recorded through it: for the
tests of ``--check_gain`` and the pictures of docs/gain-orientation.md.

The sensitivity ``s`` (counts per electron, about 1) has smooth slopes, a bright column, a dim
row, a bright letter "F" (no two of the eight orientations of the rectangle look alike), a
pixel-to-pixel spread and a few dead pixels (0). The gain files made from it are ``s`` itself
(divisive, the EER convention) or :func:`multiplicative_gain` (the TIFF/MRC convention).
"""

from __future__ import annotations

import numpy as np

from .eer import EerFrameEvents


def asymmetric_sensitivity(
    shape_yx: tuple[int, int],
    *,
    pixel_spread: float = 0.05,
    n_dead_pixels: int = 20,
    bright_column_factor: float = 1.5,
    dim_row_factor: float = 0.6,
    glyph_factor: float = 1.3,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """float32 ``(ny, nx)`` sensitivity, 0 at ``n_dead_pixels`` random pixels.

    Features (fractions of the size, so any shape has them): slopes of +25 % along x and -15 %
    along y; a bright column at x = 0.2 nx; a dim row at y = 0.7 ny; a letter "F" in the first
    third of rows and columns (row 0 = the top as relion_display shows it); log-normal
    pixel-to-pixel spread ``pixel_spread``.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape_yx
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    s = 1.0 + 0.25 * (x / nx - 0.5) - 0.15 * (y / ny - 0.5)
    s[:, int(0.2 * nx)] *= bright_column_factor
    s[int(0.7 * ny), :] *= dim_row_factor
    s[_glyph_f(shape_yx)] *= glyph_factor
    if pixel_spread:
        s *= np.exp(pixel_spread * rng.standard_normal((ny, nx)))
    if n_dead_pixels:
        dead = rng.choice(ny * nx, size=n_dead_pixels, replace=False)
        s.ravel()[dead] = 0.0
    return s.astype(np.float32)


def _glyph_f(shape_yx: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a letter F: a stem and two bars, in the top-left third."""
    ny, nx = shape_yx
    mask = np.zeros((ny, nx), dtype=bool)
    stroke = max(1, min(ny, nx) // 40)
    top, left = ny // 10, int(0.35 * nx)
    height, width = ny // 4, nx // 6
    mask[top : top + height, left : left + stroke] = True  # stem
    mask[top : top + stroke, left : left + width] = True  # top bar
    middle = top + height // 2
    mask[middle : middle + stroke, left : left + (2 * width) // 3] = True  # middle bar
    return mask


def multiplicative_gain(sensitivity: np.ndarray) -> np.ndarray:
    """The multiplicative gain of a sensitivity as RELION makes it from an EER gain
    (``EERRenderer::loadEERGain``): ``mean(s) / s`` in float64 (the mean includes the zeros),
    0 where ``s`` is 0; float32."""
    s = np.asarray(sensitivity, dtype=np.float64)
    mean = s.sum() / s.size
    gain = np.zeros_like(s)
    np.divide(mean, s, out=gain, where=s != 0)
    return gain.astype(np.float32)


def specimen_dose(shape_yx: tuple[int, int], *, contrast: float = 0.3, seed: int | np.random.Generator = 1) -> np.ndarray:
    """A smooth specimen image (float64, mean about 1): a few broad blobs and a carbon edge,
    the low-frequency signal a real sum has."""
    rng = np.random.default_rng(seed)
    ny, nx = shape_yx
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    dose = np.ones((ny, nx))
    scale = 0.15 * min(ny, nx)
    for _ in range(6):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        dose += contrast * rng.uniform(-1, 1) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * scale**2))
    # A curved carbon edge: less dose on one side.
    edge = (x - 0.6 * nx) + 0.002 * (y - 0.5 * ny) ** 2 / max(ny, 1) * nx
    dose *= np.where(edge > 0, 1.0 - contrast, 1.0)
    return np.clip(dose, 0.05, None)


def counting_frames_with_gain(
    sensitivity: np.ndarray,
    n_frames: int,
    electrons_per_pixel: float,
    *,
    dose: np.ndarray | None = None,
    hot_pixels: int = 0,
    dtype: np.dtype | type = np.uint16,
    seed: int | np.random.Generator = 2,
) -> np.ndarray:
    """Counting frames ``(n_frames, ny, nx)`` recorded through ``sensitivity``: Poisson counts
    of ``electrons_per_pixel x dose x s``; ``hot_pixels`` random pixels count 50x more."""
    rng = np.random.default_rng(seed)
    rate = electrons_per_pixel * np.asarray(sensitivity, dtype=np.float64)
    if dose is not None:
        rate = rate * dose
    if hot_pixels:
        hot = rng.choice(rate.size, size=hot_pixels, replace=False)
        rate.ravel()[hot] = 50.0 * electrons_per_pixel
    counts = rng.poisson(rate, (n_frames, *rate.shape))
    return np.clip(counts, 0, np.iinfo(dtype).max).astype(dtype)


def eer_events_with_gain(
    sensitivity: np.ndarray,
    n_frames: int,
    electrons_per_pixel_per_frame: float,
    *,
    dose: np.ndarray | None = None,
    subpixel_bits: int = 2,
    seed: int | np.random.Generator = 3,
) -> list[EerFrameEvents]:
    """EER events on a square detector recorded through ``sensitivity`` (``(det, det)``): each
    physical pixel has an event with probability ``p x dose x s`` (at most 1) per raw frame,
    at a random sub-pixel position; write them with :func:`cryotiff.simulate.eer.write_eer`."""
    rng = np.random.default_rng(seed)
    probability = electrons_per_pixel_per_frame * np.asarray(sensitivity, dtype=np.float64)
    if dose is not None:
        probability = probability * dose
    probability = np.clip(probability, 0.0, 1.0).ravel()
    frames = []
    for _ in range(n_frames):
        positions = np.flatnonzero(rng.random(probability.size) < probability).astype(np.int64)
        sub_x = rng.integers(0, 1 << subpixel_bits, size=positions.size, dtype=np.uint8)
        sub_y = rng.integers(0, 1 << subpixel_bits, size=positions.size, dtype=np.uint8)
        frames.append(EerFrameEvents(positions, sub_x, sub_y))
    return frames
