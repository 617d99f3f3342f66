#!/usr/bin/env python3
"""Tweak motion trajectory STAR files for EER movies.

A standalone re-implementation of RELION 5.0.1's ``scripts/eer_trajectory_handler.py``.
It changes the Polish input (the trajectory STAR files written by a MotionCorr job) to a
different EER fractionation (``--regroup``) and/or rendering grid (``--resample``)
without re-running motion correction.  Movies are never read.

Usage (same options, messages, output names and exit status as RELION's script)::

    python eer_trajectory_handler.py --i MotionCorr/job002/corrected_micrographs.star \\
        --o up2_gr8 --resample 2 --regroup 8

writes ``Movies/<movie>_up2_gr8.star`` next to every trajectory and
``MotionCorr/job002/corrected_micrographs_up2_gr8.star``.

Deliberate differences from RELION's script (bug fixes; see the comments at each place):

* works with NumPy 2 (RELION's script uses ``np.str0``, removed in NumPy 2.0);
* regroup scales the z^3 coefficient of the local motion model by scale^3 (RELION: scale^2);
* resample scales the local motion model (RELION leaves it unscaled);
* resample updates ``rlnMicrographOriginalPixelSize`` in the optics table of the output
  micrographs STAR file (RELION leaves the old movie pixel size there);
* ``rlnMicrographBinning`` becomes old binning x scale (RELION: the new upsampling; the two
  agree whenever the binning equalled the upsampling, which is the documented recipe);
* illegal resampling is a clear error with exit status 255 (RELION: ``raise "string"``,
  a TypeError traceback);
* 2K EER is supported when the trajectory records ``rlnEERUpsampling`` (see
  ``resample_trajectory``);
* STAR files are read and written with the ``starfile`` package; every value that is not
  changed keeps its original text, ``#`` inside a value is no longer cut off, and
  every block is preceded by ``# version 50001`` as RELION's own STAR writer does;
  empty tables are not written (also as RELION's writer does);
* unobserved global shifts (-9999) stay -9999 instead of being interpolated or scaled;
* hot-pixel coordinates are always written as integers (RELION writes ``20.0`` after x2);
* global-shift rows are sorted by frame and local-model terms found by
  rlnMotionModelCoeffsIdx (RELION assumes the file order);
* missing files, blocks or columns and a regroup that leaves no fraction give an
  ``ERROR: ...`` message and exit status 255 instead of a traceback.
"""

import argparse
import math
import os
import sys
import tempfile

import numpy as np
import pandas as pd
import starfile

STAR_VERSION = 50001
NOT_OBSERVED = -9999.0
EXIT_ERROR = 255  # RELION's script calls sys.exit(-1), which the shell sees as 255


class HandlerError(Exception):
    """A documented error: printed to stderr, exit status 255."""


def fail(message):
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.exit(EXIT_ERROR)


# ---------------------------------------------------------------------------------------
# STAR I/O
# ---------------------------------------------------------------------------------------

_HASH = "\ue023"  # private-use character standing in for '#' in loop rows while parsing


def read_star(filename):
    """Read all blocks of a STAR file, keeping every value as its original string.

    Key/value blocks become dicts, loops become DataFrames of str (starfile's
    ``parse_as_string`` with every label of the file), so unchanged values are written
    back exactly as they were read.
    """
    if not os.path.isfile(filename):
        raise HandlerError("ERROR: Cannot read STAR file %s: no such file." % filename)
    with open(filename, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    # RELION reads '#' inside a loop row as data (file names may contain it), but starfile
    # parses loop rows with pandas' comment='#'.  Such '#' are masked for the parse and
    # restored afterwards; comment lines and "_label #k" headers are left alone.
    masked = False
    for k, line in enumerate(lines):
        stripped = line.strip()
        if "#" in stripped and not stripped.startswith(("#", "_")):
            lines[k] = line.replace("#", _HASH)
            masked = True
    labels = [line.split()[0][1:] for line in lines if line.strip().startswith("_")]
    source = filename
    if masked:
        fd, source = tempfile.mkstemp(suffix=".star")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
    try:
        blocks = starfile.read(source, always_dict=True, parse_as_string=labels)
    except Exception as exc:  # malformed input
        raise HandlerError("ERROR: Cannot parse STAR file %s: %s" % (filename, exc))
    finally:
        if masked:
            os.unlink(source)
    if not isinstance(blocks, dict):
        blocks = {"": blocks}
    if masked:
        def unmask(value):
            return value.replace(_HASH, "#") if isinstance(value, str) else value
        for name, block in blocks.items():
            if isinstance(block, pd.DataFrame):
                blocks[name] = block.map(unmask)
    return blocks


def _is_empty(block):
    if isinstance(block, pd.DataFrame):
        return len(block.columns) == 0 or len(block) == 0
    return len(block) == 0


def star_to_string(blocks):
    """Format blocks like RELION's MetaDataTable::write: ``\\n# version 50001\\n\\ndata_X``."""
    out = []
    for name, block in blocks.items():
        if _is_empty(block):  # RELION never writes empty tables
            continue
        text = starfile.to_string({name: block})
        # drop starfile's "# Created by the starfile Python package ..." line
        body = text.split("\n", 1)[1].lstrip("\n").rstrip("\n")
        out.append("\n# version %d\n\n%s\n\n" % (STAR_VERSION, body))
    return "".join(out)


def write_star(filename, blocks):
    with open(filename, "w", encoding="utf-8") as f:
        f.write(star_to_string(blocks))


def fmt_float(value):
    """Shortest text that round-trips exactly (same text as RELION's NumPy str: 0.3625, -18.0)."""
    return repr(float(value))


def fmt_number(value):
    """Integral values without a decimal point, others as fmt_float."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return fmt_float(value)


def to_int(text, what):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise HandlerError("ERROR: %s is not a number: %r" % (what, text))
    if not value.is_integer():
        raise HandlerError("ERROR: %s is not an integer: %r" % (what, text))
    return int(value)


def _general(traj, fn):
    general = traj.get("general")
    if not isinstance(general, dict):
        raise HandlerError("ERROR: %s has no data_general block." % fn)
    return general


def _require(general, key, fn):
    if key not in general:
        raise HandlerError("ERROR: %s does not contain %s in data_general." % (fn, key))
    return general[key]


def _global_shift_arrays(traj, fn):
    gs = traj.get("global_shift")
    if not isinstance(gs, pd.DataFrame):
        raise HandlerError("ERROR: %s has no data_global_shift table." % fn)
    for col in ("rlnMicrographShiftX", "rlnMicrographShiftY"):
        if col not in gs.columns:
            raise HandlerError("ERROR: %s: data_global_shift has no %s." % (fn, col))
    if "rlnMicrographFrameNumber" in gs.columns:
        # RELION's script assumes the rows are ordered by frame; make sure they are.
        frames = gs["rlnMicrographFrameNumber"].astype(np.float64).to_numpy()
        gs = gs.iloc[np.argsort(frames, kind="stable")]
    xs = gs["rlnMicrographShiftX"].astype(np.float64).to_numpy()
    ys = gs["rlnMicrographShiftY"].astype(np.float64).to_numpy()
    return gs, xs, ys


def _set_global_shifts(traj, gs, xs, ys):
    columns = [c for c in gs.columns
               if c in ("rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY")]
    if "rlnMicrographFrameNumber" not in columns:
        columns.insert(0, "rlnMicrographFrameNumber")
    data = {
        "rlnMicrographFrameNumber": [str(i) for i in range(1, len(xs) + 1)],
        "rlnMicrographShiftX": [fmt_float(v) for v in xs],
        "rlnMicrographShiftY": [fmt_float(v) for v in ys],
    }
    traj["global_shift"] = pd.DataFrame({c: data[c] for c in columns}, dtype=object)


def _local_model_terms(lm, fn):
    """Coefficients and their temporal order (1, 2, 3) of the local motion model."""
    if "rlnMotionModelCoeff" not in lm.columns:
        raise HandlerError("ERROR: %s: data_local_motion_model has no rlnMotionModelCoeff." % fn)
    coeffs = lm["rlnMotionModelCoeff"].astype(np.float64).to_numpy()
    if "rlnMotionModelCoeffsIdx" in lm.columns:
        idx = lm["rlnMotionModelCoeffsIdx"].astype(np.float64).astype(np.int64).to_numpy()
    else:
        idx = np.arange(len(coeffs))  # RELION's script matches by position
    # ThirdOrderPolynomialModel: coefficient k multiplies z^(k % 3 + 1) (x 1, x, x^2, y, y^2, xy)
    return coeffs, idx % 3 + 1


# ---------------------------------------------------------------------------------------
# Regroup
# ---------------------------------------------------------------------------------------

def regroup_trajectory(traj, eer_grouping, old_grouping, fn="trajectory"):
    """Change the fractionation from old_grouping to eer_grouping raw frames per fraction.

    Mirrors RELION's interpolate_trajectory(): new frame i (0-based) sits at old frame
    i * scale (the start of the range, as RELION does), linearly interpolated, the last old
    shift repeated past the end.
    """
    general = _general(traj, fn)
    nz = to_int(_require(general, "rlnImageSizeZ", fn), "rlnImageSizeZ")
    if old_grouping <= 0:
        if "rlnEERGrouping" not in general:
            raise HandlerError(
                "ERROR: The trajectory STAR file does not contain rlnEERGrouping. "
                "You have to specify the old grouping as --old_group.")
        old_grouping = float(general["rlnEERGrouping"])
        if old_grouping <= 0:
            raise HandlerError("ERROR: %s: rlnEERGrouping must be positive (%s)."
                               % (fn, general["rlnEERGrouping"]))
    new_nz = int(math.floor(nz * old_grouping / eer_grouping))
    scale = eer_grouping / old_grouping
    if new_nz < 1:
        raise HandlerError("ERROR: %s: regrouping %d fractions of %g frames into groups of %d "
                           "leaves no fraction." % (fn, nz, old_grouping, eer_grouping))

    gs, xs, ys = _global_shift_arrays(traj, fn)
    if len(xs) != nz:
        raise HandlerError("ERROR: %s: data_global_shift has %d rows but rlnImageSizeZ is %d."
                           % (fn, len(xs), nz))

    general["rlnImageSizeZ"] = str(new_nz)
    if "rlnMicrographDoseRate" in general:  # dose per fraction
        general["rlnMicrographDoseRate"] = fmt_float(float(general["rlnMicrographDoseRate"]) * scale)
    general["rlnEERGrouping"] = str(eer_grouping)

    new_xs = np.zeros(new_nz)
    new_ys = np.zeros(new_nz)
    for i in range(new_nz):
        src = i * scale
        src1 = int(math.floor(src))
        src2 = src1 + 1
        frac = src - src1
        if src2 >= nz:  # no extrapolation: repeat the last old shift
            new_xs[i], new_ys[i] = xs[nz - 1], ys[nz - 1]
        elif frac == 0.0:
            new_xs[i], new_ys[i] = xs[src1], ys[src1]
        elif NOT_OBSERVED in (xs[src1], xs[src2]) or NOT_OBSERVED in (ys[src1], ys[src2]):
            new_xs[i] = new_ys[i] = NOT_OBSERVED  # never blend the "not observed" marker
        else:
            new_xs[i] = xs[src1] * (1 - frac) + xs[src2] * frac
            new_ys[i] = ys[src1] * (1 - frac) + ys[src2] * frac
    _set_global_shifts(traj, gs, new_xs, new_ys)

    # z (frame index from the start frame) is not normalised.  Old z = new z * scale, so
    # c1*z_old + c2*z_old^2 + c3*z_old^3 = (c1*s)*z + (c2*s^2)*z^2 + (c3*s^3)*z^3.
    # RELION's script multiplies the z^3 term by s^2 only (bug); here it gets s^3.
    lm = traj.get("local_motion_model")
    if isinstance(lm, pd.DataFrame) and len(lm) > 0:
        coeffs, order = _local_model_terms(lm, fn)
        lm = lm.copy()
        lm["rlnMotionModelCoeff"] = [fmt_float(c) for c in coeffs * scale ** order]
        traj["local_motion_model"] = lm
    return traj


# ---------------------------------------------------------------------------------------
# Resample
# ---------------------------------------------------------------------------------------

UPSAMPLING_FACTOR = {1: 1, 2: 2}  # --eer_upsampling value -> rendered size / detector size
DETECTOR_SIZES = (4096, 2048)


def resample_trajectory(traj, eer_upsampling, fn="trajectory"):
    """Change the rendering grid to eer_upsampling (1 = physical grid, 2 = 2x super-resolution).

    Returns the scale factor (2.0 or 0.5).

    The current upsampling is taken from rlnEERUpsampling in data_general (written by
    RELION's motion correction for EER movies).  Only with it can a 2K detector rendered at
    2x (4096) be told from a 4K detector at 1x (4096), so 2K EER (2048 <-> 4096) is
    supported only when it is recorded.  Without it the size decides as in RELION's
    script: 4096 = 4K at 1x, 8192 = 4K at 2x; any other size is an error.
    """
    general = _general(traj, fn)
    size_x = to_int(_require(general, "rlnImageSizeX", fn), "rlnImageSizeX")
    size_y = to_int(_require(general, "rlnImageSizeY", fn), "rlnImageSizeY")
    illegal = "ERROR: Illegal eer_upsampling: cannot resample %s (rlnImageSizeX = %d%s) to --resample %d. "
    if size_x != size_y:
        raise HandlerError("ERROR: Illegal eer_upsampling: %s is not square (%d x %d)."
                           % (fn, size_x, size_y))
    if eer_upsampling not in UPSAMPLING_FACTOR:
        raise HandlerError((illegal + "--resample must be 1 (4K) or 2 (8K).")
                           % (fn, size_x, "", eer_upsampling))

    if "rlnEERUpsampling" in general:
        current = to_int(general["rlnEERUpsampling"], "rlnEERUpsampling")
        recorded = ", rlnEERUpsampling = %d" % current
        if current not in UPSAMPLING_FACTOR:
            raise HandlerError((illegal + "Only movies rendered with upsampling 1 or 2 can be resampled.")
                               % (fn, size_x, recorded, eer_upsampling))
        detector = size_x / UPSAMPLING_FACTOR[current]
        if detector not in DETECTOR_SIZES:
            raise HandlerError((illegal + "The size does not match a 4K or 2K EER detector.")
                               % (fn, size_x, recorded, eer_upsampling))
    else:
        recorded = ""
        if size_x == 4096:
            current = 1
        elif size_x == 8192:
            current = 2
        else:
            raise HandlerError((illegal + "Without rlnEERUpsampling only 4096 (4K at 1x) and "
                                "8192 (4K at 2x) movies can be resampled.")
                               % (fn, size_x, recorded, eer_upsampling))
    if current == eer_upsampling:
        raise HandlerError((illegal + "The movie is already rendered at this upsampling.")
                           % (fn, size_x, recorded, eer_upsampling))
    scale = UPSAMPLING_FACTOR[eer_upsampling] / UPSAMPLING_FACTOR[current]  # 2.0 or 0.5

    gs, xs, ys = _global_shift_arrays(traj, fn)

    general["rlnImageSizeX"] = str(int(size_x * scale))
    general["rlnImageSizeY"] = str(int(size_y * scale))
    # The micrographs already written are not changed, and micrograph pixel = movie pixel x
    # binning, so the binning scales with the movie grid.  RELION's script writes the new
    # upsampling instead; both agree when the binning equalled the old upsampling (the
    # documented recipe: bin 2 for 8K, 1 for 4K).
    if "rlnMicrographBinning" in general:
        general["rlnMicrographBinning"] = fmt_number(float(general["rlnMicrographBinning"]) * scale)
    else:
        general["rlnMicrographBinning"] = str(eer_upsampling)
    general["rlnEERUpsampling"] = str(eer_upsampling)
    if "rlnMicrographOriginalPixelSize" in general:
        general["rlnMicrographOriginalPixelSize"] = fmt_float(
            float(general["rlnMicrographOriginalPixelSize"]) / scale)

    # Shifts are in pixels of the rendered movie.
    observed_x = xs != NOT_OBSERVED
    observed_y = ys != NOT_OBSERVED
    xs = np.where(observed_x, xs * scale, xs)
    ys = np.where(observed_y, ys * scale, ys)
    _set_global_shifts(traj, gs, xs, ys)

    # Local motion model: shift(x, y, z) = sum over {1, x, x^2, y, y^2, xy} of
    # (c1 z + c2 z^2 + c3 z^3), with x, y the NORMALISED position (x/W - 0.5, y/H - 0.5)
    # and z the frame.  Resampling changes neither the normalised position nor the frame,
    # but the same physical displacement measures s times as many pixels of the rendered
    # movie.  The shift is linear in the coefficients, so every coefficient (all 36, of
    # every spatial and temporal order) is multiplied by s.  RELION's script does not scale
    # them, leaving the local shifts off by the factor s.
    lm = traj.get("local_motion_model")
    if isinstance(lm, pd.DataFrame) and len(lm) > 0:
        coeffs, _ = _local_model_terms(lm, fn)
        lm = lm.copy()
        lm["rlnMotionModelCoeff"] = [fmt_float(c) for c in coeffs * scale]
        traj["local_motion_model"] = lm

    hp = traj.get("hot_pixels")
    if isinstance(hp, pd.DataFrame) and len(hp) > 0:
        hx = np.array([to_int(v, "rlnCoordinateX") for v in hp["rlnCoordinateX"]], dtype=np.int64)
        hy = np.array([to_int(v, "rlnCoordinateY") for v in hp["rlnCoordinateY"]], dtype=np.int64)
        if scale == 2:
            # every pixel becomes its 2x2 block, ordered in blocks as RELION's script does
            hx, hy = (np.hstack([2 * hx, 2 * hx, 2 * hx + 1, 2 * hx + 1]),
                      np.hstack([2 * hy, 2 * hy + 1, 2 * hy, 2 * hy + 1]))
        else:
            # floor(x/2), floor(y/2), unique (sorted by x, then y) as RELION's script does
            tmp = np.unique(np.vstack([hx // 2, hy // 2]), axis=1)
            hx, hy = tmp[0, :], tmp[1, :]
        traj["hot_pixels"] = pd.DataFrame({"rlnCoordinateX": [str(int(v)) for v in hx],
                                           "rlnCoordinateY": [str(int(v)) for v in hy]},
                                          dtype=object)
    return scale


# ---------------------------------------------------------------------------------------
# Optics table
# ---------------------------------------------------------------------------------------

def update_optics(mc_star, group_scales):
    """Divide rlnMicrographOriginalPixelSize of each resampled optics group by its scale.

    rlnMicrographPixelSize describes the micrographs, which are not changed, so it stays.
    group_scales maps an optics group number (str) or None (= every group) to the scale.
    """
    optics = mc_star.get("optics")
    if not isinstance(optics, pd.DataFrame) or not group_scales:
        return
    if "rlnMicrographOriginalPixelSize" not in optics.columns:
        return
    optics = optics.copy()
    groups = (optics["rlnOpticsGroup"].map(lambda g: str(to_int(g, "rlnOpticsGroup")))
              if "rlnOpticsGroup" in optics.columns else pd.Series(["1"] * len(optics)))
    values = list(optics["rlnMicrographOriginalPixelSize"])
    for row, group in enumerate(groups):
        scale = group_scales.get(group, group_scales.get(None))
        if scale is not None:
            values[row] = fmt_float(float(values[row]) / scale)
    optics["rlnMicrographOriginalPixelSize"] = values
    mc_star["optics"] = optics


def add_suffix(filename, suffix):
    tmp = os.path.splitext(filename)
    return "%s_%s%s" % (tmp[0], suffix, tmp[1])


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(description='Tweak motion trajectory STAR files for EER movies')
    parser.add_argument('--i', type=str, nargs='?', metavar='corrected_micrographs.star', required=True,
                        help='Motion correction STAR file')
    parser.add_argument('--o', type=str, nargs='?', metavar='suffix', required=True,
                        help='Suffix for output files')
    parser.add_argument('--old_group', type=int, nargs='?', metavar='group', default=0,
                        help='Old EER grouping (must be specified when not recorded in the STAR file)')
    parser.add_argument('--regroup', type=int, nargs='?', metavar='group', default=0,
                        help='Regroup to this number of physical frames / fraction')
    parser.add_argument('--resample', type=int, nargs='?', metavar='sampling', default=0,
                        help='Resample to this level. 1=4K, 2=8K (super-res)')
    return parser


def run(args):
    # nargs='?' (as in RELION's script) gives None for an option without a value
    if not args.i or not args.o:
        raise HandlerError("ERROR: --i and --o need a value.")
    args.old_group, args.regroup, args.resample = (v or 0 for v in (args.old_group, args.regroup, args.resample))
    fn_motioncorr_star = args.i
    suffix = args.o

    if args.resample == 0 and args.regroup == 0:
        raise HandlerError("Error: Nothing to do. Please specify --resample and/or --regroup.")
    if args.regroup < 0:
        raise HandlerError("ERROR: --regroup must be positive.")
    if args.resample not in (0, 1, 2):
        raise HandlerError("ERROR: Illegal eer_upsampling: --resample must be 1 (4K) or 2 (8K).")

    motioncorr_star = read_star(fn_motioncorr_star)
    print("Read %s" % fn_motioncorr_star)
    mics = motioncorr_star.get("micrographs")
    if not isinstance(mics, pd.DataFrame) or "rlnMicrographMetadata" not in mics.columns:
        raise HandlerError("ERROR: %s has no data_micrographs table with rlnMicrographMetadata."
                           % fn_motioncorr_star)
    print("Found %d movies" % len(mics))

    groups = (list(mics["rlnOpticsGroup"].map(lambda g: str(to_int(g, "rlnOpticsGroup"))))
              if "rlnOpticsGroup" in mics.columns else [None] * len(mics))
    group_scales = {}
    new_names = []
    for fn_traj, group in zip(mics["rlnMicrographMetadata"], groups):
        fn_out = add_suffix(fn_traj, suffix)
        print("Processing %s => %s" % (fn_traj, fn_out), flush=True)

        traj_star = read_star(fn_traj)
        if args.regroup > 0:
            regroup_trajectory(traj_star, args.regroup, args.old_group, fn_traj)
        if args.resample > 0:
            # The scale depends only on --resample (2 for 1 -> 2, 0.5 for 2 -> 1; anything
            # else is an error), so all movies of an optics group share it.
            group_scales[group] = resample_trajectory(traj_star, args.resample, fn_traj)

        # local_shift table is not updated, because it is not used by Polish.
        # To avoid confusion, delete it.
        traj_star.pop("local_shift", None)

        write_star(fn_out, traj_star)
        new_names.append(fn_out)

    mics = mics.copy()
    mics["rlnMicrographMetadata"] = new_names
    motioncorr_star["micrographs"] = mics
    update_optics(motioncorr_star, group_scales)

    fn_out = add_suffix(fn_motioncorr_star, suffix)
    write_star(fn_out, motioncorr_star)
    print("Written %s" % fn_out)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except HandlerError as exc:
        sys.stdout.flush()
        fail(str(exc))
    return 0


if __name__ == "__main__":
    main()
