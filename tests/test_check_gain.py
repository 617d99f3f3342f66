"""``--check_gain``: the gain's orientation and convention, found from synthetic movies recorded
through a known, asymmetric gain (cryotiff.simulate.gain_reference) and given turned into each
of the eight orientations, in either convention, as MRC, TIFF or TFS .gain files.

"Right" always means: applying the reported RELION flags to the gain file, with
:func:`cryotiff.gain_check.apply_relion_flags` (RELION's rotation then flip), gives the true
gain bit for bit; the operation is the one the file was made for; ``gain-reference.mrc`` is the
true multiplicative gain in the movies' orientation.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import imagecodecs
import mrcfile
import numpy as np
import pytest
import tifffile

from cryotiff import cli
from cryotiff.convert import ConvertOptions
from cryotiff.eer_gain import read_gain_file
from cryotiff.gain_check import ORIENTATIONS, apply_relion_flags, check_gain, orientation_of
from cryotiff.gain_check.orientation import IDENTITY, Orientation, motioncor_orientation
from cryotiff.gain_check.score import (
    MARGIN_STANDARD_ERRORS,
    box_sum,
    gain_contrast,
    sum_contrast,
)
from cryotiff.simulate.detectors import falcon_frames
from cryotiff.simulate.eer import write_eer
from cryotiff.simulate.gain_reference import (
    asymmetric_sensitivity,
    counting_frames_with_gain,
    eer_events_with_gain,
    multiplicative_gain,
    specimen_dose,
)
from cryotiff.simulate.write import write_mrc_movie

from .helpers import real_data

REPOSITORY = Path(__file__).resolve().parents[1]
SHAPE = (192, 256)  # ny, nx: a non-square detector, so odd rotations transpose the gain
EER_DETECTOR = 2048


def write_mrc_gain(path: Path, gain: np.ndarray) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(gain, dtype=np.float32))
    return path


def file_gain(truth: np.ndarray, orientation: Orientation) -> np.ndarray:
    """The gain as a file holds it when ``orientation`` turns it into ``truth``."""
    return orientation.inverse().apply(truth)


def reported_flags(result) -> tuple[int, int]:
    section = result.report_section()
    return section["gain_rot"], section["gain_flip"]


# --------------------------------------------------------------------------- orientation semantics


def relion_rotate90(src: np.ndarray) -> np.ndarray:
    """RELION's ``ImageOp::rotate90`` written out as its loop: ``dest[x][ny-1-y] = src[y][x]``."""
    ny, nx = src.shape
    dest = np.empty((nx, ny), src.dtype)
    for y in range(ny):
        for x in range(nx):
            dest[x, ny - 1 - y] = src[y, x]
    return dest


def relion_flags_by_loops(src: np.ndarray, rot: int, flip: int) -> np.ndarray:
    """RELION's ``prepareGainReference``: rotate (rotate90 / 180 / 270), then flip Y or X."""
    out = src
    for _ in range(rot):  # rotate180 and rotate270 are rotate90 applied twice and three times
        out = relion_rotate90(out)
    if flip == 1:  # ImageOp::flipY: dest[y][x] = src[ydim - 1 - y][x]
        out = np.array([out[out.shape[0] - 1 - y] for y in range(out.shape[0])])
    elif flip == 2:  # ImageOp::flipX
        out = np.array([[row[len(row) - 1 - x] for x in range(len(row))] for row in out])
    return out


@pytest.mark.parametrize("rot", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [0, 1, 2])
def test_relion_flags_are_relion_operations(rot: int, flip: int) -> None:
    image = np.arange(12).reshape(3, 4)
    assert np.array_equal(apply_relion_flags(image, rot, flip), relion_flags_by_loops(image, rot, flip))
    canonical = orientation_of(rot, flip)
    assert (rot, flip) in canonical.equivalent_flags
    assert np.array_equal(canonical.apply(image), apply_relion_flags(image, rot, flip))


def test_eight_orientations_with_canonical_flags() -> None:
    image = np.arange(12).reshape(3, 4)
    images = {o: o.apply(image).tobytes() + bytes(o.apply(image).shape) for o in ORIENTATIONS}
    assert len(set(images.values())) == 8
    assert sum(len(o.equivalent_flags) for o in ORIENTATIONS) == 12
    assert orientation_of(2, 1) == Orientation(0, 2)  # a half turn and a flip of Y is a flip of X
    assert orientation_of(1, 2) == Orientation(3, 1)
    assert np.array_equal(Orientation(3, 1).apply(image), image.T)
    for o in ORIENTATIONS:
        assert np.array_equal(o.inverse().apply(o.apply(image)), image)
        transpose, flip_rows, flip_columns = o.as_transpose_and_flips
        turned = image.T if transpose else image
        turned = turned[::-1] if flip_rows else turned
        turned = turned[:, ::-1] if flip_columns else turned
        assert np.array_equal(turned, o.apply(image))


def test_motioncor_flags_for_gain_files_include_the_tiff_flip() -> None:
    """MotionCor2/3 read every TIFF with the Y flip, also a TFS .gain, which RELION and
    cryotiff read unflipped: MotionCor's flags then undo that flip first."""
    image = np.arange(12).reshape(3, 4)
    for o in ORIENTATIONS:
        assert motioncor_orientation(o, "a.mrc") == o
        assert motioncor_orientation(o, "a.tif") == o
        turned = motioncor_orientation(o, "a.gain")
        assert np.array_equal(turned.apply(image[::-1]), o.apply(image))


def test_box_sum_is_a_box_sum() -> None:
    values = np.random.default_rng(0).random((13, 9))
    expected = np.array([[values[max(0, i - 3): i + 4, max(0, j - 3): j + 4].sum() for j in range(9)] for i in range(13)])
    np.testing.assert_allclose(box_sum(values, 3), expected, rtol=1e-5)


# --------------------------------------------------------------------------- counting movies


@pytest.fixture(scope="module")
def detector() -> dict[str, np.ndarray]:
    sensitivity = asymmetric_sensitivity(SHAPE, seed=0)
    return {"divide": sensitivity, "multiply": multiplicative_gain(sensitivity)}


@pytest.fixture(scope="module")
def counting_movie(tmp_path_factory: pytest.TempPathFactory, detector) -> Path:
    """8 frames, 1.5 e/px each, a specimen with broad blobs and a carbon edge, 5 hot pixels."""
    frames = counting_frames_with_gain(detector["divide"], 8, 1.5, dose=specimen_dose(SHAPE), hot_pixels=5)
    return write_mrc_movie(tmp_path_factory.mktemp("counting") / "movie.mrc", frames, 6)


@pytest.mark.parametrize("operation", ["multiply", "divide"])
@pytest.mark.parametrize("truth", ORIENTATIONS, ids=lambda o: f"rot{o.gain_rot}flip{o.gain_flip}")
def test_counting_movie_every_orientation_and_convention(
    tmp_path: Path, counting_movie: Path, detector, truth: Orientation, operation: str
) -> None:
    given = file_gain(detector[operation], truth)  # 256 x 192 for odd rotations: transposed
    gain_path = write_mrc_gain(tmp_path / "gain.mrc", given)
    result = check_gain([str(counting_movie)], ConvertOptions(gain=gain_path, output_dir=tmp_path))
    assert result.decided, result.reason
    rot, flip = reported_flags(result)
    assert np.array_equal(apply_relion_flags(given, rot, flip), detector[operation])
    assert result.operation == operation
    if truth.swaps_axes:
        assert len(result.scores.not_fitting) == 4 and truth not in result.scores.not_fitting
    reference = result.gain_reference()
    if operation == "multiply":
        assert np.array_equal(reference, detector["multiply"])
    else:  # inverted as RELION inverts EER gains: mean / G, 0 kept
        np.testing.assert_allclose(reference, detector["multiply"], rtol=1e-6)
        assert np.array_equal(reference == 0, detector["divide"] == 0)


def test_cli_writes_table_answer_reference_and_report(tmp_path: Path, counting_movie: Path, detector,
                                                       capsys: pytest.CaptureFixture) -> None:
    truth = Orientation(1, 1)
    gain_path = write_mrc_gain(tmp_path / "gain.mrc", file_gain(detector["multiply"], truth))
    out, report = tmp_path / "out", tmp_path / "report.json"
    status = cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain_path), "--o", str(out),
                       "--report", str(report), "--compression", "lzw"])  # writing options are ignored
    printed = capsys.readouterr().out
    assert status == 0
    assert "--gain_rot 1 --gain_flip 1" in printed and "-RotGain 1 -FlipGain 1" in printed
    assert "Answer: multiply the frames by the gain transposed about the other diagonal" in printed
    assert "How sure: score" in printed and "standard errors" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("as is", "rotated", "flipped", "transposed"))]
    assert len(rows) == 8 and sum(row.count("(shape)") for row in rows) == 8  # 4 x 2 do not fit 256 x 192
    with mrcfile.open(out / "gain-reference.mrc") as mrc:
        assert np.array_equal(mrc.data, detector["multiply"])
    section = json.loads(report.read_text())["check_gain"]
    assert (section["gain_rot"], section["gain_flip"], section["operation"]) == (1, 1, "multiply")
    assert section["answer"] == "found" and section["motioncor"] == {"RotGain": 1, "FlipGain": 1, "InvGain": 0}
    assert section["scores"][0]["gain_rot"] == 1 and section["scores"][0]["score"] > section["scores"][1]["score"]
    assert len(section["scores"]) == 8 and len(section["not_scored"]) == 4
    assert section["gain_reference"] == str(out / "gain-reference.mrc")
    assert not list(out.glob("*.tif"))  # converts nothing
    # A second check of the same session gives the same file: accepted.
    capsys.readouterr()
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain_path), "--o", str(out)]) == 0
    assert f"Kept (identical) {out / 'gain-reference.mrc'}" in capsys.readouterr().out


def test_divisive_gain_for_tiff_movies_needs_the_reference(tmp_path: Path, counting_movie: Path, detector,
                                                            capsys: pytest.CaptureFixture) -> None:
    gain_path = write_mrc_gain(tmp_path / "gain.mrc", detector["divide"])
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain_path), "--o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Answer: divide the frames by the gain as is." in printed
    assert "-RotGain 0 -FlipGain 0 -InvGain 1" in printed
    assert "RELION multiplies these movies by this file, which is the wrong way round" in printed


def test_tiff_movie_and_tiff_gain_are_read_with_the_y_flip(tmp_path: Path, detector) -> None:
    """A TIFF movie stores rows bottom-up (cryotiff's readers flip them back); a .tif gain is
    flipped on reading as RELION's reader flips it: the flags refer to the gain as read."""
    frames = counting_frames_with_gain(detector["divide"], 6, 2.0, seed=5)
    tifffile.imwrite(tmp_path / "movie.tif", frames[:, ::-1])
    truth = Orientation(0, 1)
    as_read = file_gain(detector["multiply"], truth)
    tifffile.imwrite(tmp_path / "gain.tif", as_read[::-1])
    assert np.array_equal(read_gain_file(tmp_path / "gain.tif")[0], as_read)
    result = check_gain([str(tmp_path / "movie.tif")], ConvertOptions(gain=tmp_path / "gain.tif"))
    assert result.decided and result.operation == "multiply"
    assert np.array_equal(apply_relion_flags(as_read, *reported_flags(result)), detector["multiply"])


def test_flat_gain_cannot_tell(tmp_path: Path, counting_movie: Path, capsys: pytest.CaptureFixture) -> None:
    flat = np.ones(SHAPE, np.float32)
    flat[5, 7] = flat[100, 3] = 0.0  # defects do not make a pattern
    gain_path = write_mrc_gain(tmp_path / "flat.mrc", flat)
    out = tmp_path / "out"
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain_path), "--o", str(out),
                     "--report", str(tmp_path / "r.json")]) == 1
    printed = capsys.readouterr().out
    assert "Answer: cannot tell. The gain is flat" in printed
    assert not (out / "gain-reference.mrc").exists()
    section = json.loads((tmp_path / "r.json").read_text())["check_gain"]
    assert section["answer"] == "cannot tell" and section["gain_rot"] is None and section["operation"] is None


def test_too_few_counts_cannot_tell(tmp_path: Path, detector, capsys: pytest.CaptureFixture) -> None:
    frames = counting_frames_with_gain(detector["divide"], 4, 0.002, seed=7)
    movie = write_mrc_movie(tmp_path / "dark.mrc", frames, 0)
    gain_path = write_mrc_gain(tmp_path / "gain.mrc", detector["multiply"])
    assert cli.main(["--check_gain", "--i", str(movie), "--gain", str(gain_path), "--o", str(tmp_path / "o")]) == 1
    printed = capsys.readouterr().out
    assert "Answer: cannot tell" in printed and "too few counts" in printed
    assert not (tmp_path / "o" / "gain-reference.mrc").exists()


def test_gain_corrected_movies_cannot_tell(tmp_path: Path, detector) -> None:
    """Movies already corrected for the gain (Falcon MRC from EPU) show no pattern at all."""
    frames = counting_frames_with_gain(np.ones(SHAPE, np.float32), 8, 20.0, dose=specimen_dose(SHAPE), seed=8)
    movie = write_mrc_movie(tmp_path / "corrected.mrc", frames, 6)
    result = check_gain([str(movie)], ConvertOptions(gain=write_mrc_gain(tmp_path / "g.mrc", detector["multiply"])))
    assert not result.decided and "already gain-corrected" in result.reason


def test_falcon_mrc_movies(tmp_path: Path, detector) -> None:
    """Falcon MRC: electrons as blobs of about 100 counts. EPU's movies are gain-corrected (no
    pattern: cannot tell); raw ones recorded through the gain are answered."""
    blobs = falcon_frames(6, SHAPE, mean_per_pixel=200.0, seed=13)
    corrected = write_mrc_movie(tmp_path / "epu.mrc", blobs, 6)
    truth = Orientation(3, 0)
    given = file_gain(detector["multiply"], truth)
    gain = write_mrc_gain(tmp_path / "g.mrc", given)
    result = check_gain([str(corrected)], ConvertOptions(gain=gain))
    assert not result.decided and "already gain-corrected" in result.reason
    raw = write_mrc_movie(tmp_path / "raw.mrc", np.rint(blobs * detector["divide"]).astype(np.uint16), 6)
    result = check_gain([str(raw)], ConvertOptions(gain=gain))
    assert result.decided and result.operation == "multiply"
    assert np.array_equal(apply_relion_flags(given, *reported_flags(result)), detector["multiply"])


def test_nearly_symmetric_gain_cannot_tell(tmp_path: Path) -> None:
    """A gain that looks almost the same flipped left to right: the movies cannot tell."""
    base = asymmetric_sensitivity(SHAPE, pixel_spread=0.0, n_dead_pixels=0)
    symmetric = np.sqrt(base * base[:, ::-1])
    sensitivity = symmetric * np.exp(0.003 * np.random.default_rng(9).standard_normal(SHAPE))
    frames = counting_frames_with_gain(sensitivity, 4, 3.0, seed=9)
    movie = write_mrc_movie(tmp_path / "m.mrc", frames, 6)
    result = check_gain([str(movie)], ConvertOptions(gain=write_mrc_gain(tmp_path / "g.mrc", sensitivity)))
    assert not result.decided
    assert "score alike" in result.reason and result.scores.margin < MARGIN_STANDARD_ERRORS


def test_exactly_symmetric_gain_is_answered_with_both(tmp_path: Path) -> None:
    """A gain identical to its mirror image: both orientations correct the movies alike, so the
    answer names both."""
    base = asymmetric_sensitivity(SHAPE, seed=10)
    symmetric = np.ascontiguousarray(np.concatenate([base[:, :128], base[:, :128][:, ::-1]], axis=1))
    frames = counting_frames_with_gain(symmetric, 6, 3.0, seed=10)
    movie = write_mrc_movie(tmp_path / "m.mrc", frames, 6)
    result = check_gain([str(movie)], ConvertOptions(gain=write_mrc_gain(tmp_path / "g.mrc", symmetric)))
    assert result.decided and result.operation == "divide"
    assert {result.orientation, *result.best.same_as} == {IDENTITY, Orientation(0, 2)}


def test_hot_pixels_and_gain_outliers_do_not_count() -> None:
    sensitivity = asymmetric_sensitivity(SHAPE, seed=11)
    counts = counting_frames_with_gain(sensitivity, 1, 50.0, seed=11)[0].astype(np.float64)
    counts[10, 10] = 1e6  # hot
    counts[20, 20] = 0  # dead at 50 counts
    contrast = sum_contrast(counts)
    assert not contrast.valid[10, 10] and not contrast.valid[20, 20]
    assert contrast.valid[30, 30] and abs(contrast.values[11, 11]) < 1  # the neighbours are fine
    gain = multiplicative_gain(sensitivity)
    gain[40, 40] = 1e4
    g = gain_contrast(gain)
    assert not g.valid[40, 40] and not g.valid[gain == 0].any()


def test_specimen_from_a_real_image_does_not_fool_it(tmp_path: Path) -> None:
    """A real K2 image (EPU) as the specimen's dose: its structure is the specimen's, not the
    synthetic gain's, and must not change the answer."""
    real = real_data("k2_epu1.2_single_frame.mrc")
    with mrcfile.open(real, permissive=True) as mrc:
        image = np.asarray(mrc.data[1000:1000 + SHAPE[0], 1000:1000 + SHAPE[1]], dtype=np.float64)
    dose = image / image.mean()
    sensitivity = asymmetric_sensitivity(SHAPE, seed=12)
    frames = counting_frames_with_gain(sensitivity, 6, 3.0, dose=dose, seed=12)
    movie = write_mrc_movie(tmp_path / "m.mrc", frames, 6)
    truth = Orientation(2, 0)
    given = file_gain(multiplicative_gain(sensitivity), truth)
    result = check_gain([str(movie)], ConvertOptions(gain=write_mrc_gain(tmp_path / "g.mrc", given)))
    assert result.decided and result.operation == "multiply"
    assert np.array_equal(apply_relion_flags(given, *reported_flags(result)), multiplicative_gain(sensitivity))


def test_frames_are_summed_over_movies_until_sure(tmp_path: Path, detector) -> None:
    movies = []
    for k in range(3):
        frames = counting_frames_with_gain(detector["divide"], 8, 20.0, seed=20 + k)
        movies.append(str(write_mrc_movie(tmp_path / f"m{k}.mrc", frames, 6)))
    gain = write_mrc_gain(tmp_path / "g.mrc", detector["multiply"])
    result = check_gain(movies, ConvertOptions(gain=gain))
    assert result.decided and result.stopped_because == "sure"
    assert result.frames.n_frames < 24 and len(result.frames.movies) == 1
    limited = check_gain(movies, ConvertOptions(gain=gain), max_frames=1)
    assert limited.stopped_because == "limit" and limited.frames.n_frames == 1


def test_unreadable_and_different_movies_are_reported(tmp_path: Path, detector,
                                                      capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.mrc"
    broken.write_bytes(b"\0" * 100)
    weak = [write_mrc_movie(tmp_path / f"weak{k}.mrc", counting_frames_with_gain(detector["divide"], 2, 0.5, seed=40 + k), 6)
            for k in range(2)]
    small = write_mrc_movie(tmp_path / "small.mrc", np.zeros((2, 64, 64), np.uint16), 6)
    gain = write_mrc_gain(tmp_path / "g.mrc", detector["multiply"])
    status = cli.main(["--check_gain", "--i", str(broken), str(weak[0]), str(small), str(weak[1]),
                       "--gain", str(gain), "--o", str(tmp_path / "o"), "--report", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert status == 1  # an answer, but a movie could not be read
    assert "Answer: multiply the frames by the gain as is." in captured.out
    assert "Summed 4 frames of 2 movies" in captured.out
    assert "broken.mrc" in captured.err and "small.mrc: skipped" in captured.err
    assert (tmp_path / "o" / "gain-reference.mrc").exists()
    section = json.loads((tmp_path / "r.json").read_text())["check_gain"]
    assert [entry["movie"] for entry in section["failed_movies"]] == [str(broken)]


def test_gain_of_no_fitting_size_is_refused(tmp_path: Path, counting_movie: Path, capsys) -> None:
    gain = write_mrc_gain(tmp_path / "g.mrc", np.ones((2 * SHAPE[0], 2 * SHAPE[1]), np.float32))
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain)]) == 1
    err = capsys.readouterr().err
    assert "fits the movies' 256 x 192 frames in no orientation" in err and "super-resolution" in err


def test_existing_different_gain_reference_is_not_replaced(tmp_path: Path, counting_movie: Path, detector,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    earlier = write_mrc_gain(out / "gain-reference.mrc", np.full(SHAPE, 2.0, np.float32))
    gain = write_mrc_gain(tmp_path / "g.mrc", detector["multiply"])
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain), "--o", str(out)]) == 1
    assert "exists and holds another gain" in capsys.readouterr().err
    with mrcfile.open(earlier) as mrc:
        assert np.all(mrc.data == 2.0)
    # Nor is the --gain file itself, when it is <o>/gain-reference.mrc.
    inside = write_mrc_gain(out / "gain-reference.mrc", file_gain(detector["multiply"], Orientation(0, 1)))
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(inside), "--o", str(out)]) == 1
    assert "is the --gain file itself" in capsys.readouterr().err


@pytest.mark.parametrize("extension", ["dm4", "dm3"])
def test_digital_micrograph_gain_is_refused_with_the_remedy(tmp_path: Path, counting_movie: Path, extension: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    gain = tmp_path / f"gain.{extension}"
    gain.write_bytes(b"\0" * 64)
    report = tmp_path / "r.json"
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain), "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert f"Digital Micrograph format (.{extension})" in err and "dm2mrc" in err
    document = json.loads(report.read_text())
    assert document["state"] == "error" and "dm2mrc" in document["error"] and document["check_gain"] is None


@pytest.mark.parametrize("extra, message", [
    (["--estimate_gain"], "cannot be combined with --estimate_gain"),
    (["--dry_run"], "cannot be combined with --dry_run"),
    (["--pipeline_control", "job/"], "cannot be combined with --pipeline_control"),
])
def test_conflicting_modes_are_refused(in_tmp: Path, extra: list[str], message: str,
                                       capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--check_gain", "--i", "m.mrc", "--gain", "g.mrc", *extra]) == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_writes_nothing(tmp_path: Path, counting_movie: Path, detector, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    from cryotiff.gain_check import check as check_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check_module.GainPattern, "score", interrupted)
    gain = write_mrc_gain(tmp_path / "g.mrc", detector["multiply"])
    assert cli.main(["--check_gain", "--i", str(counting_movie), "--gain", str(gain), "--o", str(tmp_path / "o")]) == 130
    assert "Interrupted; nothing was written." in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_gain_is_required(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--check_gain", "--i", "m.mrc"]) == 2
    assert "--check_gain needs --gain" in capsys.readouterr().err


def test_mpi_refuses_check_gain(tmp_path: Path) -> None:
    from cryotiff.mpi import mpi_problem

    from .test_mpi import MPIRUN, run_mpi

    args = cli.build_parser().parse_args(["--check_gain", "--i", "m.mrc", "--gain", "g.mrc"])
    assert "--check_gain is not available in convert-to-tiff-mpi" in mpi_problem(args, cli.options_from_args(args))
    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the interpreter")
    completed = run_mpi(["--check_gain", "--i", "m.mrc", "--gain", "g.mrc"], tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.count("--check_gain is not available in convert-to-tiff-mpi") == 1


# --------------------------------------------------------------------------- EER movies


@pytest.fixture(scope="module")
def eer_detector() -> dict[str, np.ndarray]:
    sensitivity = asymmetric_sensitivity((EER_DETECTOR, EER_DETECTOR), seed=30)
    return {"divide": sensitivity, "multiply": multiplicative_gain(sensitivity)}


@pytest.fixture(scope="module")
def eer_movie(tmp_path_factory: pytest.TempPathFactory, eer_detector) -> Path:
    """3 raw frames of a 2K EER detector, about 0.1 electrons per pixel each."""
    events = eer_events_with_gain(eer_detector["divide"], 3, 0.1, dose=specimen_dose((EER_DETECTOR, EER_DETECTOR)))
    return write_eer(tmp_path_factory.mktemp("eer") / "movie.eer", events, EER_DETECTOR)


@pytest.mark.parametrize("truth, operation, extension", [
    (Orientation(1, 1), "divide", "mrc"),  # EER convention, as EPU writes MRC gains
    (Orientation(0, 1), "multiply", "gain"),  # TFS .gain: multiplicative, rows as stored
    (Orientation(3, 0), "divide", "tif"),  # read with RELION's TIFF flip
    (IDENTITY, "multiply", "mrc"),  # not what RELION assumes for an MRC gain of EER movies
])
def test_eer_movie(tmp_path: Path, eer_movie: Path, eer_detector, truth: Orientation, operation: str,
                   extension: str, capsys: pytest.CaptureFixture) -> None:
    as_read = file_gain(eer_detector[operation], truth)
    path = tmp_path / f"gain.{extension}"
    if extension == "mrc":
        write_mrc_gain(path, as_read)
    else:
        tifffile.imwrite(path, as_read[::-1] if extension == "tif" else as_read)
    out = tmp_path / "out"
    status = cli.main(["--check_gain", "--i", str(eer_movie), "--gain", str(path), "--o", str(out),
                       "--eer_grouping", "2", "--report", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    assert status == 0, printed
    section = json.loads((tmp_path / "r.json").read_text())["check_gain"]
    assert np.array_equal(apply_relion_flags(as_read, section["gain_rot"], section["gain_flip"]), eer_detector[operation])
    assert section["operation"] == operation
    assert section["frames"]["raw_eer_frames_summed"] == 3 and section["frames"]["frames_summed"] == 2
    relion_expects = "multiply" if extension == "gain" else "divide"
    assert section["relion_flags_suffice"] == (operation == relion_expects)
    motioncor = section["motioncor"]
    mc_turned = Orientation(motioncor["RotGain"], motioncor["FlipGain"]).apply(
        as_read[::-1] if extension == "gain" else as_read)  # MotionCor flips a .gain on reading, RELION not
    assert np.array_equal(mc_turned, eer_detector[operation]) and motioncor["InvGain"] == (operation == "divide")
    with mrcfile.open(out / "gain-reference.mrc") as mrc:
        np.testing.assert_allclose(mrc.data, eer_detector["multiply"], rtol=1e-6)
    assert "Convert the EER movies into this --o without --gain" in printed


def test_eer_reference_is_the_conversions_when_no_turn_is_needed(tmp_path: Path, eer_movie: Path,
                                                                  eer_detector) -> None:
    """A gain already in the movies' orientation and convention gives the gain-reference.mrc
    the EER conversion with --gain writes (MRC row 0 = EER raster row 0, inverted as RELION)."""
    from cryotiff.eer_gain import convert_eer_gain

    path = write_mrc_gain(tmp_path / "gain.mrc", eer_detector["divide"])
    result = check_gain([str(eer_movie)], ConvertOptions(gain=path))
    assert result.decided and result.orientation == IDENTITY and result.relion_flags_suffice
    assert np.array_equal(result.gain_reference(), convert_eer_gain(path, EER_DETECTOR, 1).gain)


def test_eer_gain_at_the_upsampled_grid(tmp_path: Path, eer_movie: Path, eer_detector,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With --eer_upsampling 2 the gain is resized to the 4K grid as the conversion resizes it;
    a grid above the scoring limit (lowered here, to keep the test fast) is scored binned."""
    from cryotiff.gain_check import check as check_module

    monkeypatch.setattr(check_module, "SCORING_MAX_PIXELS", 2048 * 2048)
    truth = Orientation(2, 0)
    path = write_mrc_gain(tmp_path / "gain.mrc", file_gain(eer_detector["divide"], truth))
    result = check_gain([str(eer_movie)], ConvertOptions(gain=path, eer_upsampling=2))
    assert result.decided and result.orientation == truth and result.operation == "divide"
    assert result.gain.resampling == "nearest neighbour x2"
    assert result.frames.shape_yx == (4096, 4096) and result.frames.binning == 2
    reference = result.gain_reference()
    assert reference.shape == (4096, 4096)
    np.testing.assert_allclose(reference[::2, ::2], eer_detector["multiply"], rtol=1e-6)


# --------------------------------------------------------------------------- docs figures


def load_figure_script():
    spec = importlib.util.spec_from_file_location(
        "make_gain_orientation_figures", REPOSITORY / "scripts" / "make_gain_orientation_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure_script_reproduces_the_committed_pictures(tmp_path: Path) -> None:
    script = load_figure_script()
    written = script.write_figures(tmp_path)
    committed = sorted(script.FIGURE_DIR.glob("*.png"))
    assert sorted(p.name for p in written) == [p.name for p in committed] and len(committed) == 8
    for path in committed:
        assert path.stat().st_size < 50_000
        assert np.array_equal(imagecodecs.png_decode(path.read_bytes()),
                              imagecodecs.png_decode((tmp_path / path.name).read_bytes())), path.name
