"""Tests for scripts/eer_trajectory_handler.py (RELION's EER trajectory handler, fixed).

The script is run as a subprocess (as users run it) on synthetic MotionCorr outputs written
here in the format of RELION's STAR writer; the results are read back with an independent
minimal STAR parser and compared value by value.
"""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "eer_trajectory_handler.py"

COEFFS = ["%.6f" % ((k - 17.5) * 0.0137 + 0.001 * (k % 5)) for k in range(36)]
SHIFTS10 = [("0.000000", "0.000000"), ("-1.100000", "0.400000"), ("-2.300000", "0.900000"),
            ("-3.050000", "1.250000"), ("-4.000000", "1.500000"), ("-4.400000", "1.900000"),
            ("-5.200000", "2.100000"), ("-5.900000", "2.450000"), ("-6.100000", "2.800000"),
            ("-6.750000", "3.000000")]


# ----------------------------------------------------------------------------------------
# Writing synthetic input in RELION's format
# ----------------------------------------------------------------------------------------

def relion_star(blocks):
    """blocks: list of (name, dict) or (name, (columns, rows)); RELION MetaDataTable style."""
    out = []
    for name, block in blocks:
        out.append("\n# version 50001\n\ndata_%s\n\n" % name)
        if isinstance(block, dict):
            for key, value in block.items():
                out.append("_%-40s %s\n" % (key, value))
        else:
            columns, rows = block
            out.append("loop_ \n")
            for k, col in enumerate(columns, 1):
                out.append("_%s #%d \n" % (col, k))
            for row in rows:
                out.append(" ".join("%12s" % v for v in row) + " \n")
        out.append(" \n")
    return "".join(out)


def make_traj(path, *, size=4096, size_y=None, nz=10, grouping="40", upsampling="1",
              dose="0.800000", pixel="0.725000", binning="1.000000", shifts=SHIFTS10,
              coeffs=COEFFS, hot=(("10.000000", "20.000000"), ("3.000000", "4000.000000")),
              local_shift=True):
    general = {
        "rlnImageSizeX": str(size),
        "rlnImageSizeY": str(size if size_y is None else size_y),
        "rlnImageSizeZ": str(nz),
        "rlnMicrographMovieName": "Movies/FoilHole_1#2_fractions.eer",
        "rlnMicrographGainName": "Movies/gain.gain",
        "rlnMicrographBinning": binning,
        "rlnMicrographOriginalPixelSize": pixel,
        "rlnMicrographDoseRate": dose,
        "rlnMicrographPreExposure": "0.000000",
        "rlnVoltage": "300.000000",
        "rlnMicrographStartFrame": "1",
    }
    if upsampling is not None:
        general["rlnEERUpsampling"] = upsampling
    if grouping is not None:
        general["rlnEERGrouping"] = grouping
    general["rlnMotionModelVersion"] = "1" if coeffs else "0"
    blocks = [("general", general),
              ("global_shift", (["rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY"],
                                [(str(i + 1), x, y) for i, (x, y) in enumerate(shifts)]))]
    if coeffs:
        blocks.append(("local_motion_model", (["rlnMotionModelCoeffsIdx", "rlnMotionModelCoeff"],
                                              [(str(k), c) for k, c in enumerate(coeffs)])))
    if hot:
        blocks.append(("hot_pixels", (["rlnCoordinateX", "rlnCoordinateY"], list(hot))))
    if local_shift:
        blocks.append(("local_shift", (["rlnMicrographFrameNumber", "rlnCoordinateX", "rlnCoordinateY",
                                        "rlnMicrographShiftX", "rlnMicrographShiftY"],
                                       [("1", "512.0", "512.0", "0.1", "0.2"),
                                        ("2", "512.0", "512.0", "0.3", "0.4")])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(relion_star(blocks))


def make_project(tmp, movies=(("Movies/m1.star", "1"),), optics=None, **traj_kwargs):
    """corrected_micrographs.star + one trajectory per movie; returns the STAR file name."""
    if optics is None:
        optics = [("opticsGroup1", "1", "0.725000", "0.725000")]
    optics_rows = [(name, grp, orig, "300.000000", "2.700000", "0.100000", mic)
                   for name, grp, orig, mic in optics]
    mic_rows = []
    for k, (traj, group) in enumerate(movies, 1):
        make_traj(tmp / traj, **traj_kwargs)
        mic_rows.append(("MotionCorr/job002/Movies/m%d_PS.mrc" % k, "MotionCorr/job002/Movies/m%d.mrc" % k,
                         traj, group, "16.123456", "2.500000", "13.623456"))
    text = relion_star([
        ("optics", (["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
                     "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographPixelSize"], optics_rows)),
        ("micrographs", (["rlnCtfPowerSpectrum", "rlnMicrographName", "rlnMicrographMetadata", "rlnOpticsGroup",
                          "rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate"], mic_rows)),
    ])
    (tmp / "corrected_micrographs.star").write_text(text)
    return "corrected_micrographs.star"


# ----------------------------------------------------------------------------------------
# Running and reading back
# ----------------------------------------------------------------------------------------

def run(tmp, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp, capture_output=True, text=True)


def run_ok(tmp, *args):
    proc = run(tmp, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc


def parse_star(path):
    """Independent minimal STAR parser: {block: dict (key/value) or {"cols": [...], "rows": [...]}}."""
    blocks, block, in_loop = {}, None, False
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            if in_loop == "rows" and not line:
                in_loop = False
            continue
        if line.startswith("data_"):
            block, in_loop = {}, False
            blocks[line[5:]] = block
        elif line.startswith("loop_"):
            block["cols"], block["rows"], in_loop = [], [], "cols"
        elif line.startswith("_") and in_loop != "rows":
            if in_loop == "cols":
                block["cols"].append(line.split()[0][1:])
            else:
                key, value = line.split(None, 1)
                block[key[1:]] = value.strip()
        else:
            in_loop = "rows"
            fields = line.split()
            assert len(fields) == len(block["cols"])
            block["rows"].append(fields)
    return blocks


def column(block, name):
    return [row[block["cols"].index(name)] for row in block["rows"]]


def fcolumn(block, name):
    return [float(v) for v in column(block, name)]


def expected_regrouped(values, scale, new_nz):
    """RELION's interpolation (start of range as observation point, last value repeated)."""
    values = [float(v) for v in values]
    nz, out = len(values), []
    for i in range(new_nz):
        src = i * scale
        s1 = int(math.floor(src))
        frac = src - s1
        if s1 + 1 >= nz:
            out.append(values[nz - 1])
        else:
            out.append(values[s1] * (1 - frac) + values[s1 + 1] * frac)
    return out


# ----------------------------------------------------------------------------------------
# RELION's script on its checked example (docs/relion-behaviour.md, "The EER trajectory script")
# ----------------------------------------------------------------------------------------

def test_checked_example_regroup_and_resample(tmp_path):
    star = make_project(tmp_path)
    proc = run_ok(tmp_path, "--i", star, "--o", "up2_gr20", "--regroup", "20", "--resample", "2")
    assert proc.stdout == ("Read corrected_micrographs.star\n"
                           "Found 1 movies\n"
                           "Processing Movies/m1.star => Movies/m1_up2_gr20.star\n"
                           "Written corrected_micrographs_up2_gr20.star\n")

    traj = parse_star(tmp_path / "Movies/m1_up2_gr20.star")
    g = traj["general"]
    assert g["rlnImageSizeZ"] == "20"
    assert float(g["rlnMicrographDoseRate"]) == 0.4
    assert g["rlnImageSizeX"] == g["rlnImageSizeY"] == "8192"
    assert float(g["rlnMicrographOriginalPixelSize"]) == 0.3625
    assert g["rlnEERGrouping"] == "20"
    assert g["rlnEERUpsampling"] == "2"
    assert g["rlnMicrographBinning"] == "2"
    # untouched values keep their text, including a '#' inside a value
    assert g["rlnMicrographMovieName"] == "Movies/FoilHole_1#2_fractions.eer"
    assert g["rlnMicrographPreExposure"] == "0.000000"
    assert g["rlnVoltage"] == "300.000000"
    assert g["rlnMotionModelVersion"] == "1"

    gs = traj["global_shift"]
    assert column(gs, "rlnMicrographFrameNumber") == [str(i) for i in range(1, 21)]
    xs, ys = fcolumn(gs, "rlnMicrographShiftX"), fcolumn(gs, "rlnMicrographShiftY")
    assert xs == [2 * v for v in expected_regrouped([x for x, _ in SHIFTS10], 0.5, 20)]
    assert ys == [2 * v for v in expected_regrouped([y for _, y in SHIFTS10], 0.5, 20)]
    # spelled out: frame 2 is halfway between old frames 1 and 2, times 2
    assert column(gs, "rlnMicrographShiftX")[:4] == ["0.0", "-1.1", "-2.2", "-3.4"]
    # the last frames repeat the last old shift (x2): no extrapolation
    assert xs[18] == xs[19] == -13.5 and ys[18] == ys[19] == 6.0

    assert "local_shift" not in traj

    mc = parse_star(tmp_path / "corrected_micrographs_up2_gr20.star")
    assert column(mc["micrographs"], "rlnMicrographMetadata") == ["Movies/m1_up2_gr20.star"]
    assert column(mc["micrographs"], "rlnAccumMotionTotal") == ["16.123456"]
    assert fcolumn(mc["optics"], "rlnMicrographOriginalPixelSize") == [0.3625]
    assert column(mc["optics"], "rlnMicrographPixelSize") == ["0.725000"]
    assert column(mc["optics"], "rlnVoltage") == ["300.000000"]
    assert column(mc["optics"], "rlnOpticsGroupName") == ["opticsGroup1"]


def test_version_lines_like_relion_writer(tmp_path):
    star = make_project(tmp_path)
    run_ok(tmp_path, "--i", star, "--o", "gr20", "--regroup", "20")
    text = (tmp_path / "Movies/m1_gr20.star").read_text()
    assert text.startswith("\n# version 50001\n\ndata_general\n\n")
    for name in ("global_shift", "local_motion_model", "hot_pixels"):
        assert "\n# version 50001\n\ndata_%s\n\n" % name in text
    assert text.count("# version 50001") == 4  # local_shift was deleted
    assert "starfile" not in text
    mc_text = (tmp_path / "corrected_micrographs_gr20.star").read_text()
    assert mc_text.startswith("\n# version 50001\n\ndata_optics\n\nloop_\n")
    assert mc_text.count("# version 50001") == 2


# ----------------------------------------------------------------------------------------
# Regroup
# ----------------------------------------------------------------------------------------

def test_regroup_only_non_integer_ratio(tmp_path):
    star = make_project(tmp_path)
    proc = run_ok(tmp_path, "--i", star, "--o", "gr30", "--regroup", "30")
    assert "Processing Movies/m1.star => Movies/m1_gr30.star\n" in proc.stdout
    traj = parse_star(tmp_path / "Movies/m1_gr30.star")
    g = traj["general"]
    scale = 30 / 40
    new_nz = math.floor(10 * 40 / 30)  # 13
    assert g["rlnImageSizeZ"] == str(new_nz) == "13"
    assert float(g["rlnMicrographDoseRate"]) == 0.8 * scale
    assert g["rlnEERGrouping"] == "30"
    # no resampling: size, pixel size, binning, upsampling, hot pixels keep their text
    assert g["rlnImageSizeX"] == "4096" and g["rlnMicrographOriginalPixelSize"] == "0.725000"
    assert g["rlnMicrographBinning"] == "1.000000" and g["rlnEERUpsampling"] == "1"
    assert column(traj["hot_pixels"], "rlnCoordinateX") == ["10.000000", "3.000000"]
    gs = traj["global_shift"]
    assert fcolumn(gs, "rlnMicrographShiftX") == expected_regrouped([x for x, _ in SHIFTS10], scale, new_nz)
    assert fcolumn(gs, "rlnMicrographShiftY") == expected_regrouped([y for _, y in SHIFTS10], scale, new_nz)
    # frame 5 (i = 4): src = 3.0 -> exactly old frame 4
    assert fcolumn(gs, "rlnMicrographShiftX")[4] == -3.05
    mc = parse_star(tmp_path / "corrected_micrographs_gr30.star")
    assert column(mc["optics"], "rlnMicrographOriginalPixelSize") == ["0.725000"]


def test_regroup_scales_z_terms_by_scale_powers(tmp_path):
    """z, z^2, z^3 coefficients get scale, scale^2 and scale^3 (RELION: z^3 only scale^2)."""
    star = make_project(tmp_path)
    run_ok(tmp_path, "--i", star, "--o", "gr20", "--regroup", "20")
    lm = parse_star(tmp_path / "Movies/m1_gr20.star")["local_motion_model"]
    assert column(lm, "rlnMotionModelCoeffsIdx") == [str(k) for k in range(36)]
    got = fcolumn(lm, "rlnMotionModelCoeff")
    for k, c in enumerate(COEFFS):
        assert got[k] == float(c) * 0.5 ** (k % 3 + 1)
    # explicitly the z^3 term of the constant X term: 1/8, not RELION's 1/4
    assert got[2] == float(COEFFS[2]) / 8 != float(COEFFS[2]) / 4
    assert got[35] == float(COEFFS[35]) / 8

    # the model evaluated at new frame z equals the old model at old frame z * scale
    def shift(coeffs, z, x, y):
        terms = [1, x, x * x, y, y * y, x * y]
        return sum((coeffs[3 * t] * z + coeffs[3 * t + 1] * z ** 2 + coeffs[3 * t + 2] * z ** 3) * terms[t]
                   for t in range(6))
    old = [float(c) for c in COEFFS]
    for z in (1, 3, 7):
        assert shift(got[:18], z, 0.2, -0.3) == pytest.approx(shift(old[:18], z * 0.5, 0.2, -0.3), rel=1e-12)
        assert shift(got[18:], z, -0.4, 0.1) == pytest.approx(shift(old[18:], z * 0.5, -0.4, 0.1), rel=1e-12)


def test_regroup_coarser_grouping(tmp_path):
    star = make_project(tmp_path)
    run_ok(tmp_path, "--i", star, "--o", "gr80", "--regroup", "80")
    traj = parse_star(tmp_path / "Movies/m1_gr80.star")
    assert traj["general"]["rlnImageSizeZ"] == "5"
    assert float(traj["general"]["rlnMicrographDoseRate"]) == 1.6
    assert fcolumn(traj["global_shift"], "rlnMicrographShiftX") == [0.0, -2.3, -4.0, -5.2, -6.1]
    got = fcolumn(traj["local_motion_model"], "rlnMotionModelCoeff")
    assert got == [float(c) * 2.0 ** (k % 3 + 1) for k, c in enumerate(COEFFS)]


def test_old_group_overrides_rlnEERGrouping(tmp_path):
    star = make_project(tmp_path)  # the trajectory says rlnEERGrouping 40
    run_ok(tmp_path, "--i", star, "--o", "a", "--regroup", "10")
    run_ok(tmp_path, "--i", star, "--o", "b", "--regroup", "10", "--old_group", "20")
    a = parse_star(tmp_path / "Movies/m1_a.star")["general"]
    b = parse_star(tmp_path / "Movies/m1_b.star")["general"]
    assert a["rlnImageSizeZ"] == "40" and float(a["rlnMicrographDoseRate"]) == 0.2   # 40 -> 10
    assert b["rlnImageSizeZ"] == "20" and float(b["rlnMicrographDoseRate"]) == 0.4   # 20 -> 10
    assert a["rlnEERGrouping"] == b["rlnEERGrouping"] == "10"
    xb = fcolumn(parse_star(tmp_path / "Movies/m1_b.star")["global_shift"], "rlnMicrographShiftX")
    assert xb == expected_regrouped([x for x, _ in SHIFTS10], 0.5, 20)


def test_old_group_when_rlnEERGrouping_missing(tmp_path):
    star = make_project(tmp_path, grouping=None)
    run_ok(tmp_path, "--i", star, "--o", "gr20", "--regroup", "20", "--old_group", "40")
    g = parse_star(tmp_path / "Movies/m1_gr20.star")["general"]
    assert g["rlnImageSizeZ"] == "20"
    assert g["rlnEERGrouping"] == "20"  # appended
    assert list(g)[-1] == "rlnEERGrouping"


def test_missing_grouping_error(tmp_path):
    star = make_project(tmp_path, grouping=None)
    proc = run(tmp_path, "--i", star, "--o", "gr20", "--regroup", "20")
    assert proc.returncode == 255
    assert proc.stderr == ("ERROR: The trajectory STAR file does not contain rlnEERGrouping. "
                           "You have to specify the old grouping as --old_group.\n")
    assert not (tmp_path / "Movies/m1_gr20.star").exists()
    assert not (tmp_path / "corrected_micrographs_gr20.star").exists()


def test_unobserved_shifts_are_not_blended(tmp_path):
    shifts = [("-9999.000000", "-9999.000000")] + SHIFTS10[1:]
    star = make_project(tmp_path, shifts=shifts)
    run_ok(tmp_path, "--i", star, "--o", "x", "--regroup", "20", "--resample", "2")
    gs = parse_star(tmp_path / "Movies/m1_x.star")["global_shift"]
    xs = fcolumn(gs, "rlnMicrographShiftX")
    assert xs[0] == xs[1] == -9999.0          # the marker, neither scaled nor interpolated
    assert xs[2] == -2.2                      # old frame 2, x2


# ----------------------------------------------------------------------------------------
# Resample
# ----------------------------------------------------------------------------------------

def test_resample_4k_to_8k(tmp_path):
    hot = (("10.000000", "20.000000"), ("3.000000", "4000.000000"))
    star = make_project(tmp_path, hot=hot)
    proc = run_ok(tmp_path, "--i", star, "--o", "up2", "--resample", "2")
    assert proc.stdout.endswith("Written corrected_micrographs_up2.star\n")
    traj = parse_star(tmp_path / "Movies/m1_up2.star")
    g = traj["general"]
    assert (g["rlnImageSizeX"], g["rlnImageSizeY"], g["rlnImageSizeZ"]) == ("8192", "8192", "10")
    assert g["rlnMicrographDoseRate"] == "0.800000" and g["rlnEERGrouping"] == "40"
    assert float(g["rlnMicrographOriginalPixelSize"]) == 0.3625
    assert g["rlnEERUpsampling"] == "2" and g["rlnMicrographBinning"] == "2"
    gs = traj["global_shift"]
    assert fcolumn(gs, "rlnMicrographShiftX") == [2 * float(x) for x, _ in SHIFTS10]
    assert fcolumn(gs, "rlnMicrographShiftY") == [2 * float(y) for _, y in SHIFTS10]
    # local model: every coefficient x2 (shift in rendered pixels at normalised position)
    assert fcolumn(traj["local_motion_model"], "rlnMotionModelCoeff") == [2 * float(c) for c in COEFFS]
    # hot pixels: 2x2 blocks, ordered in blocks as RELION's script, written as integers
    hp = traj["hot_pixels"]
    assert column(hp, "rlnCoordinateX") == ["20", "6", "20", "6", "21", "7", "21", "7"]
    assert column(hp, "rlnCoordinateY") == ["40", "8000", "41", "8001", "40", "8000", "41", "8001"]
    assert "local_shift" not in traj
    mc = parse_star(tmp_path / "corrected_micrographs_up2.star")
    assert fcolumn(mc["optics"], "rlnMicrographOriginalPixelSize") == [0.3625]
    assert column(mc["optics"], "rlnMicrographPixelSize") == ["0.725000"]


def test_resample_8k_to_4k(tmp_path):
    hot = (("21.000000", "41.000000"), ("20.000000", "40.000000"), ("7.000000", "9.000000"),
           ("6.000000", "9.000000"), ("20.000000", "43.000000"))
    star = make_project(tmp_path, size=8192, upsampling="2", binning="2.000000", pixel="0.362500",
                        hot=hot, optics=[("opticsGroup1", "1", "0.362500", "0.725000")])
    run_ok(tmp_path, "--i", star, "--o", "up1", "--resample", "1")
    traj = parse_star(tmp_path / "Movies/m1_up1.star")
    g = traj["general"]
    assert g["rlnImageSizeX"] == g["rlnImageSizeY"] == "4096"
    assert float(g["rlnMicrographOriginalPixelSize"]) == 0.725
    assert g["rlnEERUpsampling"] == "1" and g["rlnMicrographBinning"] == "1"
    assert fcolumn(traj["global_shift"], "rlnMicrographShiftX") == [0.5 * float(x) for x, _ in SHIFTS10]
    assert fcolumn(traj["local_motion_model"], "rlnMotionModelCoeff") == [0.5 * float(c) for c in COEFFS]
    hp = traj["hot_pixels"]  # floor(x/2), floor(y/2), unique, sorted by x then y
    assert column(hp, "rlnCoordinateX") == ["3", "10", "10"]
    assert column(hp, "rlnCoordinateY") == ["4", "20", "21"]
    mc = parse_star(tmp_path / "corrected_micrographs_up1.star")
    assert fcolumn(mc["optics"], "rlnMicrographOriginalPixelSize") == [0.725]


def test_resample_without_rlnEERUpsampling_uses_size(tmp_path):
    star = make_project(tmp_path, size=8192, upsampling=None, binning="2.000000", pixel="0.362500")
    run_ok(tmp_path, "--i", star, "--o", "up1", "--resample", "1")
    g = parse_star(tmp_path / "Movies/m1_up1.star")["general"]
    assert g["rlnImageSizeX"] == "4096" and g["rlnEERUpsampling"] == "1"


def test_regroup_and_resample_local_model(tmp_path):
    star = make_project(tmp_path)
    run_ok(tmp_path, "--i", star, "--o", "both", "--regroup", "80", "--resample", "2")
    got = fcolumn(parse_star(tmp_path / "Movies/m1_both.star")["local_motion_model"], "rlnMotionModelCoeff")
    assert got == [float(c) * 2.0 ** (k % 3 + 1) * 2 for k, c in enumerate(COEFFS)]


def test_precision_is_kept(tmp_path):
    shifts = [("0.123456789012345", "-7.654321098765432"), ("1.000000000000001", "2.5e-07")]
    star = make_project(tmp_path, nz=2, shifts=shifts, pixel="0.7251234567891", coeffs=None, hot=())
    run_ok(tmp_path, "--i", star, "--o", "up2", "--resample", "2")
    traj = parse_star(tmp_path / "Movies/m1_up2.star")
    assert fcolumn(traj["global_shift"], "rlnMicrographShiftX") == [2 * 0.123456789012345, 2 * 1.000000000000001]
    assert fcolumn(traj["global_shift"], "rlnMicrographShiftY") == [2 * -7.654321098765432, 2 * 2.5e-07]
    assert float(traj["general"]["rlnMicrographOriginalPixelSize"]) == 0.7251234567891 / 2
    assert "local_motion_model" not in traj and "hot_pixels" not in traj


def test_optics_groups_and_several_movies(tmp_path):
    star = make_project(tmp_path, movies=(("Movies/a.star", "1"), ("Movies/sub/b.star", "2")),
                        optics=[("og1", "1", "0.725000", "0.725000"), ("og2", "2", "0.830000", "0.830000"),
                                ("unused", "3", "1.000000", "1.000000")])
    proc = run_ok(tmp_path, "--i", star, "--o", "up2", "--resample", "2")
    assert proc.stdout == ("Read corrected_micrographs.star\nFound 2 movies\n"
                           "Processing Movies/a.star => Movies/a_up2.star\n"
                           "Processing Movies/sub/b.star => Movies/sub/b_up2.star\n"
                           "Written corrected_micrographs_up2.star\n")
    mc = parse_star(tmp_path / "corrected_micrographs_up2.star")
    assert column(mc["optics"], "rlnMicrographOriginalPixelSize") == ["0.3625", "0.415", "1.000000"]
    assert column(mc["optics"], "rlnMicrographPixelSize") == ["0.725000", "0.830000", "1.000000"]
    assert column(mc["micrographs"], "rlnMicrographMetadata") == ["Movies/a_up2.star", "Movies/sub/b_up2.star"]
    assert column(mc["micrographs"], "rlnOpticsGroup") == ["1", "2"]
    assert (tmp_path / "Movies/sub/b_up2.star").exists()


def test_hash_inside_loop_values_is_kept(tmp_path):
    """RELION reads '#' in a loop row as data; RELION's script cut it off as a comment."""
    star = make_project(tmp_path, movies=(("Movies/m#1.star", "1"),))
    path = tmp_path / star
    path.write_text(path.read_text().replace("Movies/m1.mrc", "Movies/m1#x.mrc"))
    proc = run_ok(tmp_path, "--i", star, "--o", "gr20", "--regroup", "20")
    assert "Processing Movies/m#1.star => Movies/m#1_gr20.star\n" in proc.stdout
    mc = parse_star(tmp_path / "corrected_micrographs_gr20.star")
    assert column(mc["micrographs"], "rlnMicrographName") == ["MotionCorr/job002/Movies/m1#x.mrc"]
    assert column(mc["micrographs"], "rlnMicrographMetadata") == ["Movies/m#1_gr20.star"]
    assert parse_star(tmp_path / "Movies/m#1_gr20.star")["general"]["rlnImageSizeZ"] == "20"


# ----------------------------------------------------------------------------------------
# 2K EER
# ----------------------------------------------------------------------------------------

def test_2k_detector_at_1x_to_2x(tmp_path):
    star = make_project(tmp_path, size=2048, hot=(("5.000000", "6.000000"),))
    run_ok(tmp_path, "--i", star, "--o", "up2", "--resample", "2")
    traj = parse_star(tmp_path / "Movies/m1_up2.star")
    assert traj["general"]["rlnImageSizeX"] == "4096" and traj["general"]["rlnEERUpsampling"] == "2"
    assert column(traj["hot_pixels"], "rlnCoordinateX") == ["10", "10", "11", "11"]


def test_2k_detector_at_2x_to_1x(tmp_path):
    star = make_project(tmp_path, size=4096, upsampling="2", binning="2.000000", pixel="0.500000")
    run_ok(tmp_path, "--i", star, "--o", "up1", "--resample", "1")
    g = parse_star(tmp_path / "Movies/m1_up1.star")["general"]
    assert g["rlnImageSizeX"] == "2048" and g["rlnEERUpsampling"] == "1"
    assert float(g["rlnMicrographOriginalPixelSize"]) == 1.0 and g["rlnMicrographBinning"] == "1"


def test_2k_detector_at_2x_is_not_upsampled_again(tmp_path):
    # RELION's script would take this 4096 movie for 4K at 1x and make it 8192.
    star = make_project(tmp_path, size=4096, upsampling="2")
    proc = run(tmp_path, "--i", star, "--o", "up2", "--resample", "2")
    assert proc.returncode == 255
    assert "Illegal eer_upsampling" in proc.stderr and "already rendered" in proc.stderr
    assert not (tmp_path / "Movies/m1_up2.star").exists()


def test_2048_without_rlnEERUpsampling_is_ambiguous(tmp_path):
    star = make_project(tmp_path, size=2048, upsampling=None)
    proc = run(tmp_path, "--i", star, "--o", "up2", "--resample", "2")
    assert proc.returncode == 255
    assert "Illegal eer_upsampling" in proc.stderr and "rlnEERUpsampling" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------

def test_nothing_to_do(tmp_path):
    star = make_project(tmp_path)
    proc = run(tmp_path, "--i", star, "--o", "x")
    assert proc.returncode == 255
    assert proc.stderr == "Error: Nothing to do. Please specify --resample and/or --regroup.\n"
    assert proc.stdout == ""


@pytest.mark.parametrize("kwargs, resample", [
    ({"size": 4096}, "1"),                       # already 4K at 1x (RELION: raise "string")
    ({"size": 8192, "upsampling": "2"}, "2"),    # already 8K
    ({"size": 4096}, "3"),                       # 16K is not offered
    ({"size": 4096, "size_y": 4000}, "2"),       # not square (RELION: assert)
    ({"size": 6000, "upsampling": "1"}, "2"),    # not an EER detector size
    ({"size": 2048, "upsampling": "-1"}, "1"),   # hidden upsampling -1 cannot be resampled
])
def test_illegal_resampling(tmp_path, kwargs, resample):
    star = make_project(tmp_path, **kwargs)
    proc = run(tmp_path, "--i", star, "--o", "bad", "--resample", resample)
    assert proc.returncode == 255
    assert proc.stderr.startswith("ERROR: Illegal eer_upsampling")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "corrected_micrographs_bad.star").exists()


def test_missing_trajectory_file(tmp_path):
    star = make_project(tmp_path)
    (tmp_path / "Movies/m1.star").unlink()
    proc = run(tmp_path, "--i", star, "--o", "gr20", "--regroup", "20")
    assert proc.returncode == 255
    assert "Movies/m1.star" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# Standalone script, importable
# ----------------------------------------------------------------------------------------

def load_module():
    spec = importlib.util.spec_from_file_location("eer_trajectory_handler", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_does_not_import_cryotiff():
    import ast
    tree = ast.parse(SCRIPT.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    assert "cryotiff" not in names
    assert names <= {"argparse", "math", "os", "sys", "tempfile", "numpy", "pandas", "starfile"}


def test_import_and_call_functions(tmp_path):
    mod = load_module()
    path = tmp_path / "t.star"
    make_traj(path, nz=4, shifts=SHIFTS10[:4], coeffs=None, hot=(), local_shift=False)
    traj = mod.read_star(str(path))
    mod.regroup_trajectory(traj, 20, 0, "t.star")
    assert traj["general"]["rlnImageSizeZ"] == "8"
    scale = mod.resample_trajectory(traj, 2, "t.star")
    assert scale == 2.0
    text = mod.star_to_string(traj)
    assert text.count("# version 50001") == 2
    assert mod.add_suffix("Movies/m1.star", "up2_gr20") == "Movies/m1_up2_gr20.star"
    with pytest.raises(mod.HandlerError, match="Illegal eer_upsampling"):
        mod.resample_trajectory(traj, 2, "t.star")
