"""How well a gain reference, in each orientation and convention, explains the pixel-to-pixel
pattern of a sum of movie frames.

The statistic. A sum of ``N`` frames holds ``S(x) = dose(x) * s(x) + noise``, where ``s`` is
the pixel's sensitivity and ``dose`` the specimen's image, which varies slowly from pixel to
pixel once many frames of a moving specimen are summed. A gain file holds ``s`` (divisive,
the EER convention: ``corrected = S / G``) or ``1 / s`` (multiplicative, the TIFF/MRC
convention: ``corrected = S x G``). Both images are reduced to their **local contrast**,
``c = value / (mean of the valid pixels within RADIUS_PX) - 1``: the box mean removes the
specimen's low-frequency signal and the gain's smooth slopes, and what is left is the
detector's fine pattern (bright columns, dim rows, pixel-to-pixel sensitivity). The score of an
orientation ``T`` is the Pearson correlation ``r(T)`` of the sum's contrast with the contrast
of ``T(G)``; the divisive convention scores ``+r`` and the multiplicative one ``-r`` (to first
order ``contrast(1/s) = -contrast(s)``). Correlating the contrasts is the same as asking which
correction leaves the flattest image: the variance of ``contrast(S) +- contrast(G)`` differs
between candidates only by ``2 cov``.

Robustness:

* Defects: gain pixels ``<= 0`` (0 marks a defect) or not finite, and pixels whose value is
  more than 4x or less than 1/4 of their neighbourhood's, are left out, as are their effect on
  the neighbours' means.
* Hot and dead pixels of the sum are left out the same way when the difference is also far
  beyond counting noise (:data:`POISSON_SIGMAS` standard deviations of a Poisson count), so
  that zeros in a sum of few counts are never taken for dead pixels.
* The sum's contrast is clipped at 8 robust standard deviations (median absolute deviation).
* How large a score must be to mean anything is measured, not assumed: the best orientation's
  gain is also correlated with the sum after shifting it by large, irregular offsets, which
  destroys any true match but keeps the structure of both images (specimen, stripes, noise);
  the spread of those scores (at least ``1 / sqrt(pixels)``) is the **standard error** of a
  score. An answer needs a score of :data:`DETECTION_STANDARD_ERRORS` and a lead of
  :data:`MARGIN_STANDARD_ERRORS` over every other orientation and convention.

Memory: a few float32/float64 arrays of the scoring grid; callers bin larger images first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .orientation import ORIENTATIONS, Orientation

#: Half width of the box whose mean is the local background (a 9 x 9 box).
RADIUS_PX = 4
#: A pixel more than this many times brighter (or 1/this dimmer) than its neighbourhood is a
#: defect, not gain pattern (real gains vary by tens of percent).
OUTLIER_FACTOR = 4.0
#: Counting-noise margin for hot/dead pixels of the sum (standard deviations of a Poisson count).
POISSON_SIGMAS = 6.0
#: The sum's contrast is clipped at this many robust standard deviations.
CLIP_ROBUST_SIGMAS = 8.0
#: A gain whose contrast has a standard deviation below this is flat.
FLAT_GAIN_CONTRAST = 1e-6
#: The best score must reach this many standard errors for the movies to show the gain at all.
DETECTION_STANDARD_ERRORS = 10.0
#: ... and lead every other candidate by this many.
MARGIN_STANDARD_ERRORS = 6.0
#: Shifts (fractions of ny, nx) for the null scores: large, irregular and never a multiple of a
#: small period, and never zero on either axis (a column pattern shifted only in y would still
#: match itself).
NULL_SHIFTS = ((0.382, 0.618), (0.618, 0.236), (0.236, 0.854), (0.854, 0.382), (0.146, 0.472), (0.527, 0.091))
#: Pixels sampled for the median absolute deviation.
_MAD_SAMPLE = 1 << 20
#: Elements per block of the float32 dot products (accumulated in float64).
_DOT_BLOCK = 1 << 18

OPERATIONS = ("multiply", "divide")


def box_sum(image: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the ``(2 radius + 1)^2`` box around each pixel, cut at the edges (float32; the
    sums of at most 81 values need no more)."""
    out = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        out = _window_sum(out, radius, axis)
    return out


def _window_sum(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Sum of the ``2 radius + 1`` values centred on each one along ``axis`` (zeros beyond the
    edges), by doubling: windows of 1, 2, 4, ... values are each two shifted copies of the one
    before, and the window is the sum of those its width's binary digits name."""
    n = values.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    power = np.pad(values, pad)
    length = power.shape[axis]

    def cut(array: np.ndarray, start: int, stop: int) -> np.ndarray:
        return array[(slice(None),) * axis + (slice(start, stop),)]

    width, size, offset, result = 2 * radius + 1, 1, 0, None
    while width:
        if width & 1:
            piece = cut(power, offset, offset + n)
            result = piece.copy() if result is None else np.add(result, piece, out=result)
            offset += size
        width >>= 1
        if width:
            power = cut(power, 0, length - size) + cut(power, size, length)
            length -= size
            size *= 2
    return result


def _contrast(image: np.ndarray, valid: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(contrast, valid & has a background, background)``; contrast is 0 where not valid."""
    background = box_sum(np.where(valid, image, np.float32(0)), radius)
    if valid.all():  # the usual case for a sum: the box sizes, cut at the edges, are known
        rows = _window_sum(np.ones((valid.shape[0], 1), np.float32), radius, 0)
        columns = _window_sum(np.ones((1, valid.shape[1]), np.float32), radius, 1)
        count = rows * columns
    else:
        count = box_sum(valid, radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        background /= count
    ok = valid & (count > 0) & (background > 0)
    contrast = np.zeros(image.shape, dtype=np.float32)
    np.divide(image, background, out=contrast, where=ok)
    contrast -= 1.0
    contrast[~ok] = 0.0
    return contrast, ok, background


@dataclass
class Contrast:
    """Local contrast of an image (float32, 0 outside ``valid``) and where it is defined."""

    values: np.ndarray
    valid: np.ndarray
    n_left_out: int

    @property
    def spread(self) -> float:
        v = self.values[self.valid]
        return float(v.std(dtype=np.float64)) if v.size else 0.0


def gain_contrast(gain: np.ndarray, radius: int = RADIUS_PX) -> Contrast:
    """Contrast of a gain: defects (``<= 0``, not finite) and outliers (:data:`OUTLIER_FACTOR`)
    left out."""
    gain = np.asarray(gain, dtype=np.float32)
    valid = np.isfinite(gain) & (gain > 0)
    gain = np.where(valid, gain, np.float32(0))
    contrast, ok, _ = _contrast(gain, valid, radius)
    outliers = ok & ((contrast > OUTLIER_FACTOR - 1) | (contrast < 1 / OUTLIER_FACTOR - 1))
    if outliers.any():
        contrast, ok, _ = _contrast(gain, valid & ~outliers, radius)
    return Contrast(contrast, ok, int(ok.size - np.count_nonzero(ok)))


def sum_contrast(frame_sum: np.ndarray, radius: int = RADIUS_PX) -> Contrast:
    """Contrast of a sum of frames: hot and dead pixels left out (beyond :data:`OUTLIER_FACTOR`
    and :data:`POISSON_SIGMAS` of counting noise), the rest clipped at
    :data:`CLIP_ROBUST_SIGMAS`."""
    values = np.asarray(frame_sum, dtype=np.float32)
    valid = np.isfinite(values)
    values = np.where(valid, values, np.float32(0))
    contrast, ok, background = _contrast(values, valid, radius)
    with np.errstate(invalid="ignore"):
        noise = POISSON_SIGMAS * np.sqrt(np.maximum(background, np.float32(0)))
        # A hot pixel also needs a few counts more than the noise, so that a single count on a
        # nearly empty sum is not one.
        hot = ok & (contrast > OUTLIER_FACTOR - 1) & (values - background > noise + np.float32(POISSON_SIGMAS))
        dead = ok & (contrast < 1 / OUTLIER_FACTOR - 1) & (background - values > noise)
    if hot.any() or dead.any():
        contrast, ok, _ = _contrast(values, valid & ~hot & ~dead, radius)
    inside = contrast[ok][:: max(1, int(np.count_nonzero(ok)) // _MAD_SAMPLE)]  # a sample is enough
    if inside.size:
        median = float(np.median(inside))
        robust_sigma = 1.4826 * float(np.median(np.abs(inside - median)))
        if robust_sigma > 0:
            limit = CLIP_ROBUST_SIGMAS * robust_sigma
            np.clip(contrast, median - limit, median + limit, out=contrast)
            contrast[~ok] = 0.0
    return Contrast(contrast, ok, int(ok.size - np.count_nonzero(ok)))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two flat float32 arrays, accumulated in float64 over blocks."""
    total = 0.0
    for start in range(0, a.size, _DOT_BLOCK):
        total += float(np.dot(a[start : start + _DOT_BLOCK], b[start : start + _DOT_BLOCK]))
    return total


class _SumSide:
    """The sum's contrast with the sums needed for correlations over any sub-mask."""

    def __init__(self, contrast: Contrast):
        self.values = contrast.values.ravel()
        self.valid = contrast.valid.ravel()
        self.squares = self.values * self.values
        self.total = float(self.values.sum(dtype=np.float64))
        self.total_squares = float(self.squares.sum(dtype=np.float64))
        self.n_valid = int(np.count_nonzero(self.valid))
        self.invalid_index = np.flatnonzero(~self.valid)

    def correlation(self, gain_values: np.ndarray, gain_valid: np.ndarray) -> tuple[float, int]:
        """Pearson correlation over the pixels valid in both, and their number. ``gain_values``
        is 0 where ``gain_valid`` is False (as :class:`Contrast` makes it)."""
        b = gain_values.ravel()
        b_valid = gain_valid.ravel()
        gain_invalid = np.flatnonzero(~b_valid)
        # Sums over both masks: the sum side's values are 0 outside its mask, the gain's outside
        # its own, so only the pixels valid on one side and not the other are taken out.
        a_out = self.values[gain_invalid]
        n = self.n_valid - int(np.count_nonzero(self.valid[gain_invalid]))
        sum_a = self.total - float(a_out.sum(dtype=np.float64))
        sum_aa = self.total_squares - float(np.dot(a_out.astype(np.float64), a_out.astype(np.float64)))
        b_out = b[self.invalid_index].astype(np.float64)
        sum_b = float(b.sum(dtype=np.float64)) - float(b_out.sum())
        sum_bb = _dot(b, b) - float(np.dot(b_out, b_out))
        sum_ab = _dot(self.values, b)
        if n < 2:
            return 0.0, n
        var_a = sum_aa - sum_a * sum_a / n
        var_b = sum_bb - sum_b * sum_b / n
        if var_a <= 0 or var_b <= 0:
            return 0.0, n
        return (sum_ab - sum_a * sum_b / n) / math.sqrt(var_a * var_b), n


@dataclass(frozen=True)
class Candidate:
    """One orientation and convention and its score (higher is better).

    Attributes:
        orientation: the canonical RELION flags.
        operation: ``multiply`` (``corrected = frame x gain``) or ``divide``.
        score: the correlation described in the module docstring, -1..1.
        same_as: other orientations that turn this gain into exactly the same image (a gain
            symmetric under them); they are not scored separately.
    """

    orientation: Orientation
    operation: str
    score: float
    same_as: tuple[Orientation, ...] = ()


@dataclass
class Scores:
    """Every candidate's score and what they say.

    Attributes:
        candidates: sorted best first; only orientations whose shape fits the sum.
        not_fitting: orientations left out because the turned gain's shape is not the sum's.
        standard_error: the spread of a score without a true match (see the module docstring).
        n_pixels: pixels valid in the sum and the best orientation's gain.
        gain_is_flat: the gain has no pattern at all (after leaving out defects).
    """

    candidates: list[Candidate]
    not_fitting: list[Orientation]
    standard_error: float
    n_pixels: int
    gain_is_flat: bool
    null_scores: list[float] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def runner_up(self) -> Candidate | None:
        return self.candidates[1] if len(self.candidates) > 1 else None

    @property
    def detection(self) -> float:
        """The best score in standard errors."""
        if self.best is None or self.standard_error <= 0:
            return 0.0
        return self.best.score / self.standard_error

    @property
    def margin(self) -> float:
        """The best score's lead over the runner-up, in standard errors."""
        if self.best is None or self.runner_up is None or self.standard_error <= 0:
            return math.inf if self.best is not None else 0.0
        return (self.best.score - self.runner_up.score) / self.standard_error

    @property
    def decided(self) -> bool:
        return (not self.gain_is_flat and self.best is not None
                and self.detection >= DETECTION_STANDARD_ERRORS and self.margin >= MARGIN_STANDARD_ERRORS)


def _turn(orientation: Orientation, image: np.ndarray, transposed: Callable[[], np.ndarray]) -> np.ndarray:
    """``orientation.apply(image)``, made from the image or its (cached) transpose by flips."""
    transpose, flip_rows, flip_columns = orientation.as_transpose_and_flips
    turned = transposed() if transpose else image
    if flip_rows:
        turned = turned[::-1]
    if flip_columns:
        turned = turned[:, ::-1]
    return np.ascontiguousarray(turned)


def _cached(function: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    held: list[np.ndarray] = []

    def get() -> np.ndarray:
        if not held:
            held.append(function())
        return held[0]

    return get


class GainPattern:
    """A gain's contrast, prepared once and scored against sums of any number of frames.

    Attributes:
        gain: the gain as read (memory order), kept for :func:`_merge_exact_ties`.
        contrast: its :class:`Contrast`.
        is_flat: the gain has no pattern at all once defects are left out.
    """

    def __init__(self, gain: np.ndarray, radius: int = RADIUS_PX):
        self.gain = gain
        self.radius = radius
        self.contrast = gain_contrast(gain, radius)
        self.is_flat = self.contrast.spread < FLAT_GAIN_CONTRAST
        self._values_t = _cached(lambda: np.ascontiguousarray(self.contrast.values.T))
        self._valid_t = _cached(lambda: np.ascontiguousarray(self.contrast.valid.T))

    def fitting(self, shape_yx: tuple[int, int]) -> list[Orientation]:
        """The orientations that turn the gain into an image of ``shape_yx``."""
        return [o for o in ORIENTATIONS if o.shape_of(tuple(self.gain.shape)) == tuple(shape_yx)]

    def turned(self, orientation: Orientation) -> tuple[np.ndarray, np.ndarray]:
        """The contrast and its mask in ``orientation``."""
        return (_turn(orientation, self.contrast.values, self._values_t),
                _turn(orientation, self.contrast.valid, self._valid_t))

    def score(self, frame_sum: np.ndarray) -> Scores:
        """Score every fitting orientation in both conventions against ``frame_sum`` (the
        movies' grid). Orientations whose turned shape is not ``frame_sum.shape`` are listed in
        ``not_fitting``; if none fits, ``candidates`` is empty."""
        shape = tuple(frame_sum.shape)
        fitting = self.fitting(shape)
        not_fitting = [o for o in ORIENTATIONS if o not in fitting]
        if not fitting:
            return Scores([], not_fitting, 0.0, 0, self.is_flat)
        sum_side = _SumSide(sum_contrast(frame_sum, self.radius))
        correlations = {o: sum_side.correlation(*self.turned(o)) for o in fitting}
        candidates = [Candidate(o, "divide", r) for o, (r, _) in correlations.items()]
        candidates += [Candidate(o, "multiply", -r) for o, (r, _) in correlations.items()]
        candidates.sort(key=lambda c: c.score, reverse=True)
        best = candidates[0].orientation
        n_pixels = correlations[best][1]
        values, valid = self.turned(best)
        null_scores = []
        for fy, fx in NULL_SHIFTS:
            shift = (max(1, round(fy * shape[0])) % shape[0], max(1, round(fx * shape[1])) % shape[1])
            r, _ = sum_side.correlation(np.roll(values, shift, axis=(0, 1)), np.roll(valid, shift, axis=(0, 1)))
            null_scores.append(r)
        spread = math.sqrt(sum(r * r for r in null_scores) / len(null_scores))
        standard_error = max(spread, 1.0 / math.sqrt(max(n_pixels, 1)))
        scores = Scores(candidates, not_fitting, standard_error, n_pixels, self.is_flat, null_scores)
        if not self.is_flat:
            _merge_exact_ties(scores, self.gain)
        return scores


def score_orientations(frame_sum: np.ndarray, gain: np.ndarray, radius: int = RADIUS_PX) -> Scores:
    """``GainPattern(gain, radius).score(frame_sum)``: the eight orientations of ``gain``
    (memory order, as read) in both conventions against ``frame_sum``."""
    return GainPattern(gain, radius).score(frame_sum)


def _merge_exact_ties(scores: Scores, gain: np.ndarray) -> None:
    """A gain symmetric under some orientation looks the same in two of them, which then score
    alike. Where the runner-up turns the gain into exactly the best one's image, both are right:
    it is folded into the best candidate's ``same_as`` (checked only for close scores, so only
    then are two turned copies of the gain made)."""
    while scores.runner_up is not None and scores.margin < MARGIN_STANDARD_ERRORS:
        best, runner_up = scores.candidates[0], scores.candidates[1]
        if runner_up.operation != best.operation or not np.array_equal(
            best.orientation.apply(gain), runner_up.orientation.apply(gain)
        ):
            return
        scores.candidates[0] = Candidate(best.orientation, best.operation, best.score,
                                         best.same_as + (runner_up.orientation,))
        del scores.candidates[1]
        # The same orientation in the other convention scores -score; drop its twin too.
        twin = next((i for i, c in enumerate(scores.candidates) if c.orientation == runner_up.orientation), None)
        if twin is not None:
            del scores.candidates[twin]
