"""Simulated gain-normalised K2 movies (Digital Micrograph's "gain normalised" float32 output).

A detector has a fixed per-pixel gain (float32, around 1.0), a few defect pixels, which Digital
Micrograph replaces in every frame by the mean of their 8 neighbours, and a few cold pixels
that almost never count. A frame is ``float32(count) * gain`` in float32, with Poisson counts
(default 1.45 electrons per pixel per frame, the EMPIAR-10317 example of RELION's
movie-compression page, relion.readthedocs.io Reference/MovieCompression).

Everything is vectorised and driven by a numpy Generator, so tests and benchmarks can regenerate
the same detector and movies. Tests use small shapes; the benchmark uses 3838 x 3710 (K2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: K2 counting-mode frame (ny, nx).
K2_SHAPE_YX = (3710, 3838)
#: RELION's movie-compression page, EMPIAR-10317: about 1.45 electrons per pixel per frame.
DEFAULT_MEAN_COUNTS_PER_PIXEL = 1.45


@dataclass(frozen=True)
class GainNormalisedDetector:
    """Ground truth of a simulated detector.

    Attributes:
        gain: float32 ``(ny, nx)``, the multiplicative gain (raw value = count x gain).
        defect_mask: bool, pixels replaced by the mean of their neighbours in every frame.
        cold_mask: bool, pixels whose count rate is ``cold_rate_factor`` times the normal one.
        cold_rate_factor: see ``cold_mask``.
    """

    gain: np.ndarray
    defect_mask: np.ndarray
    cold_mask: np.ndarray
    cold_rate_factor: float = 0.005

    @property
    def shape_yx(self) -> tuple[int, int]:
        return (int(self.gain.shape[0]), int(self.gain.shape[1]))

    def frame(
        self, rng: np.random.Generator, mean_counts_per_pixel: float = DEFAULT_MEAN_COUNTS_PER_PIXEL
    ) -> tuple[np.ndarray, np.ndarray]:
        """One frame: ``(values float32 (ny, nx), counts uint16 (ny, nx))``.

        ``counts`` are the true electron counts (also at defect pixels, whose values do not
        show them).
        """
        rate = np.where(self.cold_mask, mean_counts_per_pixel * self.cold_rate_factor, mean_counts_per_pixel)
        counts = rng.poisson(rate).astype(np.uint16)
        values = np.multiply(counts.astype(np.float32), self.gain, dtype=np.float32)
        _correct_defects(values, self.defect_mask)
        return values, counts

    def iter_frames(
        self,
        n_frames: int,
        rng: np.random.Generator,
        mean_counts_per_pixel: float = DEFAULT_MEAN_COUNTS_PER_PIXEL,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``n_frames`` frames one at a time (memory stays one frame deep)."""
        for _ in range(n_frames):
            yield self.frame(rng, mean_counts_per_pixel)

    def movie(
        self,
        n_frames: int,
        rng: np.random.Generator,
        mean_counts_per_pixel: float = DEFAULT_MEAN_COUNTS_PER_PIXEL,
    ) -> "SimulatedMovie":
        """``n_frames`` frames stacked: values float32 and counts uint16, ``(n, ny, nx)``."""
        ny, nx = self.shape_yx
        values = np.empty((n_frames, ny, nx), np.float32)
        counts = np.empty((n_frames, ny, nx), np.uint16)
        for k, (frame_values, frame_counts) in enumerate(self.iter_frames(n_frames, rng, mean_counts_per_pixel)):
            values[k] = frame_values
            counts[k] = frame_counts
        return SimulatedMovie(values, counts, self)


@dataclass(frozen=True)
class SimulatedMovie:
    """A simulated movie and its truth: ``frames`` float32 and ``counts`` uint16 ``(n, ny, nx)``."""

    frames: np.ndarray
    counts: np.ndarray
    detector: GainNormalisedDetector


def make_detector(
    shape_yx: tuple[int, int],
    rng: np.random.Generator,
    *,
    gain_mean: float = 1.0,
    gain_spread: float = 0.1,
    defect_fraction: float = 0.001,
    min_defects: int = 1,
    cold_fraction: float = 0.0005,
    min_cold: int = 1,
    cold_rate_factor: float = 0.005,
) -> GainNormalisedDetector:
    """A random detector: normal gains (mean ``gain_mean``, standard deviation ``gain_spread``,
    kept within 0.5..1.5 of the mean), about ``defect_fraction`` defect pixels and
    ``cold_fraction`` cold pixels (at least ``min_defects`` / ``min_cold`` of each, disjoint)."""
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    n = ny * nx
    gain = rng.normal(gain_mean, gain_spread, (ny, nx))
    gain = np.clip(gain, 0.5 * gain_mean, 1.5 * gain_mean).astype(np.float32)
    n_defects = min(n, max(min_defects, int(round(defect_fraction * n))))
    n_cold = min(n - n_defects, max(min_cold, int(round(cold_fraction * n))))
    chosen = rng.choice(n, size=n_defects + n_cold, replace=False)
    defect_mask = np.zeros(n, bool)
    defect_mask[chosen[:n_defects]] = True
    cold_mask = np.zeros(n, bool)
    cold_mask[chosen[n_defects:]] = True
    return GainNormalisedDetector(gain, defect_mask.reshape(ny, nx), cold_mask.reshape(ny, nx), cold_rate_factor)


def simulate_gain_normalised(
    shape_yx: tuple[int, int],
    n_frames: int,
    seed: int | np.random.Generator = 0,
    *,
    mean_counts_per_pixel: float = DEFAULT_MEAN_COUNTS_PER_PIXEL,
    **detector_options: float,
) -> SimulatedMovie:
    """A new detector and one movie from it (see :func:`make_detector` for the options)."""
    rng = np.random.default_rng(seed)
    detector = make_detector(shape_yx, rng, **detector_options)  # type: ignore[arg-type]
    return detector.movie(n_frames, rng, mean_counts_per_pixel)


def _correct_defects(values: np.ndarray, defect_mask: np.ndarray) -> None:
    """Replace defect pixels by the float32 mean of their in-frame 8 neighbours (in place), from
    the values before correction, as Digital Micrograph's defect correction does."""
    rows, cols = np.nonzero(defect_mask)
    if rows.size == 0:
        return
    ny, nx = values.shape
    total = np.zeros(rows.size, np.float32)
    n_neighbours = np.zeros(rows.size, np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            r, c = rows + dy, cols + dx
            inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
            total += np.where(inside, values[np.clip(r, 0, ny - 1), np.clip(c, 0, nx - 1)], np.float32(0))
            n_neighbours += inside
    values[rows, cols] = total / n_neighbours
