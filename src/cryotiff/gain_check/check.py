"""``--check_gain``: sum frames of the movies, score the gain in its eight orientations and two
conventions (:mod:`.score`), and say which one the movies show.

Orientation. Movies and gain are compared as RELION holds them in memory (row 0 = MRC row 0 =
EER raster row 0; TIFF movies flipped back, see docs/conventions.md), the gain read with the
conventions cryotiff applies when converting (:func:`cryotiff.gain.files.read_gain_file`):

* ``.mrc`` / ``.mrcs``: as stored (first image);
* ``.tif`` / ``.tiff``: first page, rows flipped as RELION's TIFF reader flips them;
* ``.gain`` (TFS, a TIFF): first page, rows as stored (RELION ``EERRenderer::loadEERGain``
  undoes its reader's flip for ``.gain``);
* ``.dm3`` / ``.dm4``: refused, with RELION's remedy (convert with IMOD's ``dm2mrc``).

EER gains are resized to the ``--eer_upsampling`` grid as the conversion resizes them. The
answer is the orientation ``T`` (RELION's ``--gain_rot`` then ``--gain_flip``) and the
operation such that ``frame x T(gain)`` (multiply) or ``frame / T(gain)`` (divide) is flat.

How many frames. Frames are summed movie by movie, in the order given (all frames of a movie;
for EER, chunks of ``--eer_grouping`` raw frames, the last one possibly shorter, so no raw frame
is left out), and scored after 2, 4, 8, ... frames. The check stops as soon as the answer is
:data:`SURE_FACTOR` times past both thresholds, after :data:`MAX_FRAMES` frames, or when the
movies run out. Memory: the sum and the gain on the scoring grid (binned 2x2, 4x4, ... when it
is larger than :data:`SCORING_MAX_PIXELS`) and the gain at the movies' grid.

The library never prints: progress goes to an optional :class:`cryotiff.jobs.Reporter`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..convert import ConvertOptions, PageSource, WiderTypeNeeded, gain_size_hint, movie_kind, open_page_source
from ..eer_gain import invert_divisive_gain, read_resized_eer_gain
from ..errors import CryotiffError, GainError, InputError, OutputError
from ..io.atomic import CheckedDirectory
from ..gain.files import (
    GAIN_REFERENCE_NAME,
    file_extension,
    keep_or_write_gain_reference,
    read_gain_file,
    read_mrc_image,
)
from .orientation import Orientation, motioncor_orientation
from .score import DETECTION_STANDARD_ERRORS, MARGIN_STANDARD_ERRORS, Candidate, GainPattern, Scores

#: At most this many frames are summed (EER: chunks of --eer_grouping raw frames).
MAX_FRAMES = 400
#: Stop summing once detection and margin are this many times their thresholds.
SURE_FACTOR = 3.0
#: Larger grids are binned (2x2, 4x4, ...) for scoring: a 4K EER or a K3 counting frame is
#: scored at full resolution, 8K and 16K EER grids and K3 super-resolution are binned.
SCORING_MAX_PIXELS = 24_000_000
#: Below this mean (counts per movie pixel) an unclear answer is put down to too few counts.
FEW_COUNTS_PER_PIXEL = 100.0

DM_EXTENSIONS = ("dm3", "dm4")
GAIN_EXTENSIONS = ("mrc", "mrcs", "tif", "tiff", "gain")

#: How each gain file type is read, in words (for the terminal and the report).
READ_AS = {
    "mrc": "MRC, rows as stored (row 0 = the file's first row), as RELION reads it",
    "tif": "TIFF, first page, rows flipped on reading as RELION's TIFF reader flips them",
    "gain": "TFS .gain (TIFF), first page, rows as stored (RELION undoes its TIFF flip for .gain)",
}


def check_gain_file_type(path: Path) -> None:
    """Refuse, before any movie is read, a gain cryotiff cannot read (Digital Micrograph files
    with RELION's remedy; unknown types with the list of known ones).

    Raises:
        GainError: naming the file.
    """
    ext = file_extension(path)
    if ext.lower() in DM_EXTENSIONS:
        raise GainError(
            f"{path}: a gain reference in Digital Micrograph format (.{ext}) cannot be read (RELION cannot "
            "read it either). Convert it to MRC first, for example with IMOD's dm2mrc "
            f"(dm2mrc {path} {path.with_suffix('.mrc')}) or EMAN2's e2proc2d.py, and check the MRC file: "
            "the check also tells whether the conversion flipped it."
        )
    if ext not in GAIN_EXTENSIONS and ext.lower() not in GAIN_EXTENSIONS:
        raise GainError(
            f"{path}: unsupported gain file type {('.' + ext) if ext else '(no extension)'}; "
            "give an MRC (.mrc, .mrcs), TIFF (.tif, .tiff) or TFS .gain file."
        )


@dataclass
class CheckedGain:
    """The gain as the check uses it.

    Attributes:
        path: the ``--gain`` file.
        values: float32 ``(ny, nx)`` as read (memory order), on the movies' grid for EER
            (resized like the conversion resizes it); not turned, not inverted.
        file_shape_yx: the image's size in the file.
        read_as: how the file was read, in words.
        resampling: how an EER gain was resized (``copy``, ``nearest neighbour x2``, ...), else "".
        relion_operation: how RELION's motion correction applies this file to these movies:
            ``multiply`` (TIFF/MRC movies; EER with a ``.gain``) or ``divide`` (EER with any
            other file, which RELION inverts).
    """

    path: Path
    values: np.ndarray
    file_shape_yx: tuple[int, int]
    read_as: str
    resampling: str
    relion_operation: str


def read_gain(path: Path, kind: str, shape_yx: tuple[int, int], eer_detector_size: int | None,
              eer_upsampling: int) -> CheckedGain:
    """Read ``--gain`` for movies of ``kind`` whose frames are ``shape_yx``.

    Raises:
        GainError: unreadable, or a size that fits the movies in no orientation.
    """
    check_gain_file_type(path)
    ext = file_extension(path)
    read_as = READ_AS["gain" if ext == "gain" else "tif" if ext.lower() in ("tif", "tiff") else "mrc"]
    if kind == "eer":
        values, multiplicative, nx, ny, how = read_resized_eer_gain(path, eer_detector_size, eer_upsampling)
        return CheckedGain(path, values, (ny, nx), read_as, how, "multiply" if multiplicative else "divide")
    if ext.lower() in ("mrc", "mrcs"):
        values = read_mrc_image(path, "gain")  # cryotiff's lenient MRC reader; one image
    else:
        values, _ = read_gain_file(path)
    file_shape = (int(values.shape[0]), int(values.shape[1]))
    if file_shape != tuple(shape_yx) and file_shape[::-1] != tuple(shape_yx):
        raise GainError(
            f"{path}: the gain is {file_shape[1]} x {file_shape[0]} (nx x ny) and fits the movies' "
            f"{shape_yx[1]} x {shape_yx[0]} frames in no orientation{gain_size_hint(file_shape, shape_yx)}."
        )
    if not np.isfinite(values).all():
        raise GainError(f"{path}: the gain contains NaN or infinite values.")
    # RELION's motion correction multiplies TIFF and MRC movies by their gain, whatever the file.
    return CheckedGain(path, values, file_shape, read_as, "", "multiply")


# --------------------------------------------------------------------------- summing frames


def scoring_binning(shape_yx: tuple[int, int], max_pixels: int | None = None) -> int:
    """The smallest power-of-two bin (1, 2, 4, ...) that brings the grid under ``max_pixels``
    (default :data:`SCORING_MAX_PIXELS`) and divides both sides (binning commutes with every
    orientation only then)."""
    max_pixels = SCORING_MAX_PIXELS if max_pixels is None else max_pixels
    factor = 1
    ny, nx = shape_yx
    while ny * nx > max_pixels * factor * factor and ny % (2 * factor) == 0 and nx % (2 * factor) == 0:
        factor *= 2
    return factor


def bin_sum(image: np.ndarray, factor: int) -> np.ndarray:
    """Sum of ``factor x factor`` blocks (float64)."""
    if factor == 1:
        return np.asarray(image, dtype=np.float64)
    ny, nx = image.shape
    return image.reshape(ny // factor, factor, nx // factor, factor).sum(axis=(1, 3), dtype=np.float64)


def bin_gain(gain: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (float32); a block with a defect (``<= 0``) is a defect."""
    if factor == 1:
        return gain
    ny, nx = gain.shape
    blocks = gain.reshape(ny // factor, factor, nx // factor, factor)
    mean = blocks.mean(axis=(1, 3), dtype=np.float64)
    mean[(blocks <= 0).any(axis=(1, 3))] = 0.0
    return mean.astype(np.float32)


@dataclass
class FrameSum:
    """Frames summed so far.

    Attributes:
        total: float64 sum on the scoring grid (``shape_yx`` binned by ``binning``).
        shape_yx: the movies' frame size.
        kind: ``mrc``, ``tiff`` or ``eer`` (of the first movie; others must match).
        binning: bin factor of ``total``.
        n_frames: frames summed (EER: chunks of raw frames).
        n_raw_eer_frames: raw EER frames summed.
        movies: the movies that contributed, in order, with their frames summed.
    """

    total: np.ndarray
    shape_yx: tuple[int, int]
    kind: str
    binning: int
    n_frames: int = 0
    n_raw_eer_frames: int = 0
    movies: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def mean_per_pixel(self) -> float:
        """Mean value of the sum per pixel of the movies' grid (counts, for counting movies)."""
        return float(self.total.mean(dtype=np.float64)) / (self.binning * self.binning)

    def add(self, frame: np.ndarray) -> None:
        np.add(self.total, frame if self.binning == 1 else bin_sum(frame, self.binning), out=self.total)
        self.n_frames += 1


def _pages(source: PageSource, eer_chunk: int, warnings: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """``(frame, raw EER frames in it)`` for every frame of a movie, from its page source (EER:
    rendered in chunks of ``eer_chunk`` raw frames, damaged raw frames left out with RELION's
    warning)."""
    if source.is_eer:
        movie = source.movie
        n_raw = movie.info.n_frames
        for start in range(0, n_raw, eer_chunk):
            stop = min(start + eer_chunk, n_raw)
            rendered = movie.render(start, stop, source.upsampling)
            warnings.extend(rendered.corrupt_frame_warnings(str(source.path)))
            yield rendered.counts, stop - start - len(rendered.corrupt_frames)
        return
    for index in range(source.n_pages):
        while True:
            try:
                yield source.page(index), 0
                break
            except WiderTypeNeeded as wider:  # the check sums values; the type is irrelevant
                source.retype(wider.dtype)


# --------------------------------------------------------------------------- the result


@dataclass
class GainCheckResult:
    """What ``--check_gain`` found.

    Attributes:
        gain: the gain as read.
        frames: what was summed.
        scores: the scores of the last evaluation.
        decided: True when the movies tell the orientation and operation.
        reason: why not, in words ("" when decided).
        stopped_because: ``sure``, ``limit`` (:data:`MAX_FRAMES`) or ``all frames``.
        failed: ``(movie, message)`` for movies that could not be read.
        warnings: lines for the user (skipped movies, damaged EER frames).
        seconds: wall time.
    """

    gain: CheckedGain
    frames: FrameSum
    scores: Scores
    decided: bool
    reason: str
    stopped_because: str
    failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> Candidate | None:
        return self.scores.best if self.decided else None

    @property
    def orientation(self) -> Orientation | None:
        return self.best.orientation if self.best else None

    @property
    def operation(self) -> str | None:
        return self.best.operation if self.best else None

    @property
    def relion_flags_suffice(self) -> bool:
        """RELION applies the file the found way (then ``--gain_rot`` / ``--gain_flip`` are all
        it needs); otherwise only ``gain-reference.mrc`` is right."""
        return self.decided and self.operation == self.gain.relion_operation

    def motioncor_flags(self, candidate: Candidate) -> dict[str, int]:
        """MotionCor2/3 ``-RotGain``, ``-FlipGain``, ``-InvGain`` for ``candidate`` with the
        original gain file (``-InvGain 1`` = use ``1/gain``, 0 staying 0)."""
        turned = motioncor_orientation(candidate.orientation, self.gain.path)
        return {"RotGain": turned.gain_rot, "FlipGain": turned.gain_flip,
                "InvGain": int(candidate.operation == "divide")}

    def motioncor_flags_of(self, orientation: Orientation) -> str:
        """``-RotGain r -FlipGain f`` for ``orientation`` with the original gain file."""
        turned = motioncor_orientation(orientation, self.gain.path)
        return f"-RotGain {turned.gain_rot} -FlipGain {turned.gain_flip}"

    def gain_reference(self) -> np.ndarray:
        """The gain turned into the movies' orientation and made multiplicative (``divide``
        gains inverted as RELION inverts EER gains, ``mean / G``), on the movies' grid, float32,
        0 at defects: what ``<o>/gain-reference.mrc`` holds.

        Raises:
            GainError: nothing was decided, or the gain is zero everywhere.
        """
        if not self.decided:
            raise GainError(f"{self.gain.path}: the movies cannot tell the gain's orientation; no gain reference.")
        turned = self.orientation.apply(self.gain.values).astype(np.float32)
        if self.operation == "divide":
            invert_divisive_gain(turned, self.gain.path)
        return turned

    def report_section(self, gain_reference: Path | None = None) -> dict[str, Any]:
        """The ``check_gain`` object of ``--report`` (RELION's semantics for gain_rot and
        gain_flip: the rotation first, then the flip)."""
        scores = self.scores

        def entry(candidate: Candidate) -> dict[str, Any]:
            return {
                "gain_rot": candidate.orientation.gain_rot,
                "gain_flip": candidate.orientation.gain_flip,
                "operation": candidate.operation,
                "score": round(candidate.score, 6),
                "score_standard_errors": round(candidate.score / scores.standard_error, 3) if scores.standard_error else None,
                "relion_flags": [list(pair) for pair in candidate.orientation.equivalent_flags],
                "same_for_this_gain": [[o.gain_rot, o.gain_flip] for o in candidate.same_as],
                "motioncor": self.motioncor_flags(candidate),
                "description": candidate.orientation.description,
            }

        best = self.best
        return {
            "answer": "found" if self.decided else "cannot tell",
            "reason": self.reason or None,
            "gain_rot": best.orientation.gain_rot if best else None,
            "gain_flip": best.orientation.gain_flip if best else None,
            "operation": best.operation if best else None,
            "motioncor": self.motioncor_flags(best) if best else None,
            "relion_applies_the_file_as": self.gain.relion_operation,
            "relion_flags_suffice": self.relion_flags_suffice,
            "gain_reference": str(gain_reference) if gain_reference else None,
            "detection_standard_errors": round(scores.detection, 3),
            "margin_standard_errors": round(scores.margin, 3) if math.isfinite(scores.margin) else None,
            "standard_error": round(scores.standard_error, 6),
            "thresholds": {"detection_standard_errors": DETECTION_STANDARD_ERRORS,
                           "margin_standard_errors": MARGIN_STANDARD_ERRORS},
            "gain": {"path": str(self.gain.path), "file_shape_yx": list(self.gain.file_shape_yx),
                     "read_as": self.gain.read_as, "resampling": self.gain.resampling or None},
            "frames": {"movies": [{"movie": str(path), "frames": n} for path, n in self.frames.movies],
                       "frames_summed": self.frames.n_frames,
                       "raw_eer_frames_summed": self.frames.n_raw_eer_frames if self.frames.kind == "eer" else None,
                       "mean_per_pixel": round(self.frames.mean_per_pixel, 4),
                       "grid_yx": list(self.frames.shape_yx), "scoring_binning": self.frames.binning,
                       "stopped_because": self.stopped_because},
            "scores": [entry(candidate) for candidate in scores.candidates],
            "not_scored": [{"gain_rot": o.gain_rot, "gain_flip": o.gain_flip,
                            "reason": "the turned gain does not have the movies' shape"} for o in scores.not_fitting],
            "failed_movies": [{"movie": str(path), "message": message} for path, message in self.failed],
            "seconds": round(self.seconds, 3),
        }


def _verdict(scores: Scores, frames: FrameSum) -> tuple[bool, str]:
    """``(decided, reason)``."""
    if scores.gain_is_flat:
        return False, ("the gain is flat: apart from defects no pixel differs from its neighbours, so every "
                       "orientation corrects the movies alike")
    best, runner_up = scores.best, scores.runner_up
    if scores.detection < DETECTION_STANDARD_ERRORS:
        reason = (f"the movies do not show this gain's pattern clearly: the best score is {scores.detection:.1f} "
                  f"standard errors, {DETECTION_STANDARD_ERRORS:g} are needed")
        if frames.mean_per_pixel < FEW_COUNTS_PER_PIXEL:
            reason += (f"; only {frames.mean_per_pixel:.3g} counts per pixel were summed: too few counts, "
                       "give more movies")
        else:
            reason += ("; movies that are already gain-corrected (as Falcon MRC movies from EPU are), or a gain "
                       "of another detector or mode, look like this")
        return False, reason
    if scores.margin < MARGIN_STANDARD_ERRORS:
        return False, (f"{best.orientation.relion_flags} ({best.operation}) and {runner_up.orientation.relion_flags} "
                       f"({runner_up.operation}) score alike: a lead of {scores.margin:.1f} standard errors, "
                       f"{MARGIN_STANDARD_ERRORS:g} are needed. The gain looks nearly the same in both "
                       "orientations (a symmetric pattern?), or more counts are needed")
    return True, ""


def _sure(scores: Scores) -> bool:
    return (not scores.gain_is_flat and scores.detection >= SURE_FACTOR * DETECTION_STANDARD_ERRORS
            and scores.margin >= SURE_FACTOR * MARGIN_STANDARD_ERRORS)


def check_gain(
    inputs: Sequence[str],
    options: ConvertOptions,
    reporter: Any | None = None,
    max_frames: int = MAX_FRAMES,
) -> GainCheckResult:
    """Check ``options.gain`` against the movies named by ``inputs`` (as ``--i`` takes them).

    ``options`` gives ``gain``, ``eer_upsampling`` and ``eer_grouping`` (the EER chunk size);
    ``reporter`` (a :class:`cryotiff.jobs.Reporter`) gets progress lines.

    Raises:
        GainError: the gain cannot be read or fits the movies in no orientation.
        InputError: no movie could be read.
    """
    from ..inputs import expand_inputs

    started = time.perf_counter()
    if options.gain is None:
        raise GainError("--check_gain needs --gain: the gain reference to check")
    gain_path = Path(options.gain)
    check_gain_file_type(gain_path)
    movies = expand_inputs(inputs, options.output_dir)
    # The page sources are the conversion's own; a grouping of 1 lets any EER movie open (the
    # check renders its own chunks, so no raw frame is dropped).
    source_options = dataclasses.replace(options, eer_grouping=1, eer_dose_per_fraction=None)
    chunk = max(1, options.eer_grouping)
    failed: list[tuple[Path, str]] = []
    warnings: list[str] = []
    frames: FrameSum | None = None
    gain: CheckedGain | None = None
    pattern: GainPattern | None = None
    scores: Scores | None = None
    scored_at = -1
    stopped_because = "all frames"
    checkpoint = 2
    for movie in movies:
        try:
            source = open_page_source(movie, source_options)
        except CryotiffError as exc:
            failed.append((movie, str(exc)))
            continue
        n_before = frames.n_frames if frames is not None else 0
        try:
            kind = movie_kind(movie)
            if frames is None:
                detector = source.movie.info.shape_yx[0] if source.is_eer else None
                gain = read_gain(gain_path, kind, source.shape_yx, detector, options.eer_upsampling)
                binning = scoring_binning(source.shape_yx)
                frames = FrameSum(np.zeros((source.shape_yx[0] // binning, source.shape_yx[1] // binning)),
                                  tuple(source.shape_yx), kind, binning)
                pattern = GainPattern(bin_gain(gain.values, binning))
            elif tuple(source.shape_yx) != frames.shape_yx or source.is_eer != (frames.kind == "eer"):
                warnings.append(f"{movie}: skipped: its frames are {source.shape_yx[1]} x {source.shape_yx[0]} "
                                f"({kind}), those of the first movie {frames.shape_yx[1]} x {frames.shape_yx[0]} "
                                f"({frames.kind}); check movies of another size separately")
                continue
            if reporter is not None:
                reporter.message(f"Summing frames of {movie}")
            for frame, n_raw in _pages(source, chunk, warnings):
                frames.add(frame)
                frames.n_raw_eer_frames += n_raw
                if frames.n_frames >= checkpoint:
                    checkpoint *= 2
                    scores, scored_at = pattern.score(frames.total), frames.n_frames
                    if _sure(scores):
                        stopped_because = "sure"
                        break
                if frames.n_frames >= max_frames:
                    stopped_because = "limit"
                    break
            frames.movies.append((movie, frames.n_frames - n_before))
        except GainError:
            raise
        except CryotiffError as exc:
            failed.append((movie, str(exc)))
            if frames is not None and frames.n_frames > n_before:  # the frames read before the error count
                frames.movies.append((movie, frames.n_frames - n_before))
            continue
        finally:
            source.close()
        if stopped_because != "all frames":
            break
    if frames is None or frames.n_frames == 0:
        details = "; ".join(message for _, message in failed[:3])
        raise InputError("--check_gain: no frame could be read from the movies" + (f" ({details})" if details else ""))
    if scored_at != frames.n_frames:
        scores = pattern.score(frames.total)
    decided, reason = _verdict(scores, frames)
    return GainCheckResult(gain, frames, scores, decided, reason, stopped_because, failed, warnings,
                           time.perf_counter() - started)


# --------------------------------------------------------------------------- outputs


def checked_output_directory(output_dir: Path) -> CheckedDirectory | None:
    """``--o`` as the check finds it when it starts, if it exists (else None: it is made when the
    answer is written, and checked then), for :func:`write_gain_reference`: a directory that
    replaces it during the check (a symbolic link, say) then gets nothing. ``--o`` itself may
    be a symbolic link the user gave: what it leads to now is the directory checked.

    Raises:
        OutputError: it exists but cannot be looked at.
    """
    if not os.path.isdir(output_dir):
        return None
    return CheckedDirectory(output_dir, output_dir)


def write_gain_reference(result: GainCheckResult, output_dir: Path,
                         directory: CheckedDirectory | None = None) -> tuple[Path, bool]:
    """Write ``<output_dir>/gain-reference.mrc`` (float32 MRC, pixel size 1.0 A as RELION
    writes it) with :meth:`GainCheckResult.gain_reference`, atomically; ``(path, written)``.
    ``directory``: ``output_dir`` as the check found it when it started
    (:func:`checked_output_directory`); without it, ``output_dir`` is made if needed and checked
    now. What is at the name is read, and the file written, through one descriptor of it.

    An existing ``gain-reference.mrc`` that holds the same image already is kept (``written``
    False: a second check of the same session is harmless); one that differs is never replaced:
    it may be the gain that the TIFFs of a gain-normalised conversion need, or another session's
    answer (:func:`cryotiff.gain.keep_or_write_gain_reference`, the rule of the conversions too).

    Raises:
        GainError: nothing was decided.
        ExistingOutputError: the file exists and differs, or is the ``--gain`` file itself.
        OutputError: it cannot be written.
    """
    reference = result.gain_reference()
    path = Path(output_dir) / GAIN_REFERENCE_NAME
    if directory is None:
        try:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{output_dir}: cannot create the output directory ({exc.strerror or exc})") from None
        directory = CheckedDirectory(output_dir, output_dir)
    written = keep_or_write_gain_reference(path, reference, made_from=f"this check of --gain {result.gain.path}",
                                           gain_path=result.gain.path, directory=directory)
    return path, written
