"""The terminal text of a ``--check_gain`` result: the score table and the answer, as lines
(cli.py prints them; the library never prints)."""

from __future__ import annotations

from pathlib import Path

from .check import GainCheckResult
from .orientation import ORIENTATIONS
from .score import DETECTION_STANDARD_ERRORS, MARGIN_STANDARD_ERRORS

STOPPED = {
    "sure": "stopped early: the answer was clear",
    "limit": "stopped at the frame limit",
    "all frames": "every frame of the movies",
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("s" if n != 1 else "")


def format_result(result: GainCheckResult, gain_reference: Path | None = None, written: bool = True) -> list[str]:
    """The lines ``convert-to-tiff --check_gain`` prints after checking (``written``: the
    gain reference was written now, not found identical from an earlier check)."""
    gain, frames, scores = result.gain, result.frames, result.scores
    ny, nx = gain.file_shape_yx
    lines = [f"Gain {gain.path}: {nx} x {ny} (nx x ny), read as {gain.read_as}"
             + (f"; resized to the movies' grid ({gain.resampling})" if gain.resampling not in ("", "copy") else "")]
    grid = f"{frames.shape_yx[1]} x {frames.shape_yx[0]}"
    if frames.binning > 1:
        grid += f", scored binned {frames.binning}x{frames.binning}"
    raw = f" ({frames.n_raw_eer_frames} raw EER frames)" if frames.kind == "eer" else ""
    lines.append(f"Summed {_plural(frames.n_frames, 'frame')}{raw} of {_plural(len(frames.movies), 'movie')}: "
                 f"mean {frames.mean_per_pixel:.4g} per pixel on the {grid} grid ({STOPPED[result.stopped_because]})")
    lines.append("")
    by_key = {(c.orientation, c.operation): c for c in scores.candidates}
    header = f"{'orientation (relion_display)':<38}  {'RELION':<26}  {'MotionCor2/3':<22}  {'multiply':>8}  {'divide':>8}"
    lines += [header, "-" * len(header)]
    for orientation in ORIENTATIONS:
        motioncor = result.motioncor_flags_of(orientation)
        cells = []
        for operation in ("multiply", "divide"):
            candidate = by_key.get((orientation, operation))
            if candidate is not None:
                cells.append(f"{candidate.score:8.3f}".replace("-0.000", " 0.000"))
            elif orientation in scores.not_fitting:
                cells.append(f"{'(shape)':>8}")
            else:
                cells.append(f"{'(same)':>8}")
        mark = "  <-" if result.decided and orientation == result.orientation else ""
        lines.append(f"{orientation.description:<38}  {orientation.relion_flags:<26}  {motioncor:<22}  "
                     f"{cells[0]}  {cells[1]}{mark}")
    lines.append(f"Score: correlation of the frames' fine pattern with the gain's (standard error "
                 f"{scores.standard_error:.3g}).")
    if scores.not_fitting:
        lines.append("(shape): the turned gain does not have the movies' shape.")
    if any(c.same_as for c in scores.candidates):
        lines.append("(same): the gain is the same image as in the orientation marked.")
    lines.append("")
    if not result.decided:
        lines.append(f"Answer: cannot tell. {result.reason[0].upper()}{result.reason[1:]}.")
        lines.append("No gain-reference.mrc written.")
        return lines
    best = result.best
    verb = "multiply the frames by" if best.operation == "multiply" else "divide the frames by"
    lines.append(f"Answer: {verb} the gain {best.orientation.description}"
                 + (" (as relion_display shows it; row 0 at the top)" if best.orientation.gain_rot % 2 else "") + ".")
    if best.same_as:
        lines.append("  This gain looks exactly the same " + " and ".join(o.description for o in best.same_as)
                     + ": either is right.")
    lines.append(f"  RELION motion correction:  {best.orientation.relion_flags}"
                 + ("" if result.relion_flags_suffice else "   (not enough: see below)"))
    flags = result.motioncor_flags(best)
    lines.append(f"  MotionCor2/3 (-Gain {gain.path.name}):  -RotGain {flags['RotGain']} -FlipGain {flags['FlipGain']}"
                 + (" -InvGain 1" if flags["InvGain"] else ""))
    runner_up = scores.runner_up
    lines.append(f"  How sure: score {scores.detection:.1f} standard errors ({DETECTION_STANDARD_ERRORS:g} needed)"
                 + (f"; lead over the runner-up ({runner_up.orientation.relion_flags}, {runner_up.operation}): "
                    f"{scores.margin:.1f} standard errors ({MARGIN_STANDARD_ERRORS:g} needed)" if runner_up else ""))
    if best.orientation.gain_rot == 0 and best.orientation.gain_flip == 0 and result.relion_flags_suffice:
        lines.append("  The gain file is right for these movies as it is: no flags needed.")
    if not result.relion_flags_suffice:
        how = "divides" if gain.relion_operation == "divide" else "multiplies"
        lines.append(f"  RELION {how} these movies by this file, which is the wrong way round: no flag fixes that; "
                     "use gain-reference.mrc.")
    if gain_reference is not None:
        lines.append(f"{'Written' if written else 'Kept (identical)'} {gain_reference}: the gain in the movies' "
                     "orientation, multiplicative, 0 at defects.")
        lines.append("  Use it with no --gain_rot/--gain_flip (MotionCor2/3: no -RotGain/-FlipGain/-InvGain) for "
                     + ("the TIFFs cryotiff converts from these EER movies."
                        if frames.kind == "eer" else "these movies and for the TIFFs cryotiff converts from them."))
        if frames.kind == "eer":
            lines.append("  Convert the EER movies into this --o without --gain: the EER conversion with --gain "
                         "writes its own gain-reference.mrc, in the file's orientation.")
    return lines
