"""The files of --check_gain (gain-reference.mrc, the --report), and the reports of --dry_run and
--estimate_gain, go into their directory as the run checked it, as a conversion's do
(tests/test_output_files_checked.py): a directory replaced by a symbolic link since gets nothing,
and one message names the file not written. The comparison with an existing gain-reference.mrc
reads it through the same descriptor of the directory as the writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

import cryotiff.cli as cli
import cryotiff.gain_check.check as check_module
import cryotiff.io.atomic as atomic
from cryotiff.errors import ExistingOutputError
from cryotiff.gain.files import keep_or_write_gain_reference
from cryotiff.io.atomic import CheckedDirectory
from cryotiff.simulate.gain_reference import asymmetric_sensitivity, counting_frames_with_gain, multiplicative_gain, \
    specimen_dose
from cryotiff.simulate.write import write_mrc_movie

from .test_output_files_checked import REPLACED, everything_in, swap_for_link

SHAPE = (96, 128)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A counting movie recorded through an asymmetric gain, and that gain as an MRC file."""
    directory = tmp_path_factory.mktemp("session")
    sensitivity = asymmetric_sensitivity(SHAPE, seed=0)
    frames = counting_frames_with_gain(sensitivity, 8, 1.5, dose=specimen_dose(SHAPE), hot_pixels=5)
    movie = write_mrc_movie(directory / "movie.mrc", frames, 6)
    gain = directory / "gain.mrc"
    with mrcfile.new(gain) as mrc:
        mrc.set_data(multiplicative_gain(sensitivity).astype(np.float32))
    return {"movie": movie, "gain": gain}


def check_then_swap(monkeypatch: pytest.MonkeyPatch, directory: str) -> None:
    """``directory`` is replaced by a link to ``elsewhere`` once the check has its answer."""
    real = check_module.check_gain

    def checked_then_swapped(*args, **kwargs):
        result = real(*args, **kwargs)
        swap_for_link(Path(directory), Path(directory + ".checked"), Path("elsewhere").resolve())
        return result

    monkeypatch.setattr(check_module, "check_gain", checked_then_swapped)


def test_check_gain_writes_no_gain_reference_through_a_link_that_replaced_o(
        in_tmp: Path, session: dict, capsys, monkeypatch) -> None:
    Path("out").mkdir()
    check_then_swap(monkeypatch, "out")
    status = cli.main(["--check_gain", "--i", str(session["movie"]), "--gain", str(session["gain"]), "--o", "out",
                       "--report", "out/report.json"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    assert err.count("out/gain-reference.mrc: not written: out: " + REPLACED) == 1, err
    assert err.count("out/report.json: not written: out: " + REPLACED) == 1, err
    assert everything_in(Path("elsewhere")) == [] and everything_in(Path("out.checked")) == []


def test_check_gain_writes_no_report_through_a_link_that_replaced_its_directory(
        in_tmp: Path, session: dict, capsys, monkeypatch) -> None:
    Path("reports").mkdir()
    check_then_swap(monkeypatch, "reports")
    status = cli.main(["--check_gain", "--i", str(session["movie"]), "--gain", str(session["gain"]), "--o", "out",
                       "--report", "reports/check.json"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("reports/check.json: not written: reports: " + REPLACED) == 1, err
    assert everything_in(Path("elsewhere")) == [] and everything_in(Path("reports.checked")) == []
    with mrcfile.open("out/gain-reference.mrc") as mrc:  # --o was not replaced: the answer is there
        assert mrc.data.shape == SHAPE


def test_check_gain_without_replacements_writes_as_before(in_tmp: Path, session: dict) -> None:
    assert cli.main(["--check_gain", "--i", str(session["movie"]), "--gain", str(session["gain"]), "--o", "new/out",
                     "--report", "new/r/check.json"]) == 0
    assert json.loads(Path("new/r/check.json").read_text())["state"] == "check_gain"
    assert Path("new/out/gain-reference.mrc").is_file()


def small_movie(path: str) -> None:
    frames = np.random.default_rng(1).integers(0, 9, (3, 24, 32)).astype(np.int16)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=1.05)


def test_a_dry_run_report_is_not_written_through_a_link_that_replaced_its_directory(
        in_tmp: Path, capsys, monkeypatch) -> None:
    small_movie("a.mrc")
    Path("reports").mkdir()
    real = cli.plan_dry_run

    def planned_then_swapped(*args, **kwargs):
        planned = real(*args, **kwargs)
        swap_for_link(Path("reports"), Path("reports.checked"), Path("elsewhere").resolve())
        return planned

    monkeypatch.setattr(cli, "plan_dry_run", planned_then_swapped)
    status = cli.main(["--i", "a.mrc", "--o", "out", "--dry_run", "--report", "reports/plan.json"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    assert err.count("reports/plan.json: not written: reports: " + REPLACED) == 1, err
    assert everything_in(Path("elsewhere")) == [] and everything_in(Path("reports.checked")) == []


def test_an_estimate_report_is_not_written_through_a_link_that_replaced_its_directory(
        in_tmp: Path, capsys, monkeypatch) -> None:
    import cryotiff.jobs as jobs

    from .test_adversarial_outputs import gain_normalised_movie

    gain_normalised_movie("m.mrc")
    Path("reports").mkdir()
    real = jobs.estimate

    def estimated_then_swapped(*args, **kwargs):
        results = real(*args, **kwargs)
        swap_for_link(Path("reports"), Path("reports.checked"), Path("elsewhere").resolve())
        return results

    monkeypatch.setattr(jobs, "estimate", estimated_then_swapped)
    status = cli.main(["--i", "m.mrc", "--o", "est", "--estimate_gain", "--report", "reports/est.json"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    assert err.count("reports/est.json: not written: reports: " + REPLACED) == 1, err
    assert everything_in(Path("elsewhere")) == [] and everything_in(Path("reports.checked")) == []
    assert Path("est/gain_estimate.bin").is_file()


# --------------------------------------------------------------------------- the existing file


def write_gain_reference(path: Path, value: float) -> np.ndarray:
    image = np.full((8, 10), value, np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(image)
    return image


def swapped_once_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    """``out`` is replaced by a link to ``elsewhere`` right after the run's check of it opened it:
    what follows must go through that descriptor, never the name."""
    real_open = CheckedDirectory.open
    swapped: list[bool] = []

    def open_then_swap(self):
        fd = real_open(self)
        if not swapped:
            swapped.append(True)
            swap_for_link(Path("out"), Path("out.checked"), Path("elsewhere").resolve())
        return fd

    monkeypatch.setattr(atomic.CheckedDirectory, "open", open_then_swap)


def test_the_existing_gain_reference_compared_is_the_one_in_the_directory_checked(
        in_tmp: Path, monkeypatch) -> None:
    Path("out").mkdir()
    Path("elsewhere").mkdir()
    reference = write_gain_reference(Path("out/gain-reference.mrc"), 2.0)
    write_gain_reference(Path("elsewhere/gain-reference.mrc"), 3.0)
    checked = CheckedDirectory("out", "out")
    swapped_once_opened(monkeypatch)
    # The one in the directory checked holds this reference: kept; the link's is not looked at.
    assert keep_or_write_gain_reference(Path("out/gain-reference.mrc"), reference, made_from="--gain g.mrc",
                                        directory=checked) is False
    with mrcfile.open("elsewhere/gain-reference.mrc") as mrc:
        assert np.all(mrc.data == 3.0)
    assert sorted(os.listdir("out.checked")) == ["gain-reference.mrc"]


def test_a_gain_reference_behind_a_link_that_replaced_o_does_not_stand_for_the_one_in_o(
        in_tmp: Path, monkeypatch) -> None:
    """The directory checked has none: it gets one (and the run is told that its name leads
    elsewhere now, as for movies.star), even though the link's directory holds the same image,
    which, read by name, made the run believe --o had it."""
    from cryotiff.errors import OutputError

    Path("out").mkdir()
    Path("elsewhere").mkdir()
    reference = write_gain_reference(Path("elsewhere/gain-reference.mrc"), 2.0)
    checked = CheckedDirectory("out", "out")
    swapped_once_opened(monkeypatch)
    with pytest.raises(OutputError, match="^out/gain-reference.mrc: its directory was replaced .* the file went into "
                                          "the directory that was there when the writing began"):
        keep_or_write_gain_reference(Path("out/gain-reference.mrc"), reference, made_from="--gain g.mrc",
                                     directory=checked)
    with mrcfile.open("out.checked/gain-reference.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, reference)
    assert sorted(os.listdir("elsewhere")) == ["gain-reference.mrc"]


def test_another_gain_reference_in_the_directory_checked_is_still_refused(in_tmp: Path) -> None:
    Path("out").mkdir()
    write_gain_reference(Path("out/gain-reference.mrc"), 2.0)
    with pytest.raises(ExistingOutputError, match="holds another gain reference"):
        keep_or_write_gain_reference(Path("out/gain-reference.mrc"), np.full((8, 10), 5.0, np.float32),
                                     made_from="--gain g.mrc", directory=CheckedDirectory("out", "out"))
    with mrcfile.open("out/gain-reference.mrc") as mrc:
        assert np.all(mrc.data == 2.0)
