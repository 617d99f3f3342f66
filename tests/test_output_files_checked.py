"""movies.star (with movies_unassigned.star and its lock) and the --report go into their
directory as the run checked it, as the TIFFs do (io.atomic.CheckedDirectory): a directory
replaced by a symbolic link (or another directory) after the check is never written into, and
the user reads one message naming the file that was not written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

import cryotiff.cli as cli
import cryotiff.movies_star as MS
from cryotiff.io.atomic import TEMPORARY_MARK, CheckedDirectory
from cryotiff.convert import MovieResult

from .test_output_directory_races import movie, swap_for_link

REPLACED = "the output directory was replaced (by a symbolic link or another directory) since the run checked it"


def everything_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_o_replaced_by_a_link_after_the_movies_gets_no_movies_star_nor_report_through_it(
        in_tmp: Path, capsys, monkeypatch) -> None:
    frames = movie(Path("Movies/a.mrc"))
    real_run = cli.run

    def converted_then_swapped(*args, **kwargs):
        results = real_run(*args, **kwargs)
        swap_for_link(Path("out"), Path("out.checked"), Path("elsewhere").resolve())
        return results

    monkeypatch.setattr(cli, "run", converted_then_swapped)
    status = cli.main(["--i", "Movies/a.mrc", "--o", "out", "--report", "out/report.json"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    assert everything_in(Path("elsewhere")) == []  # nothing through the link: no list, no lock, no report
    assert err.count("out/movies.star: not written: out: " + REPLACED) == 1, err
    assert err.count("out/report.json: not written: out: " + REPLACED) == 1, err
    np.testing.assert_array_equal(tifffile.imread("out.checked/Movies/a.tif")[..., ::-1, :], frames)
    assert not Path("out.checked/movies.star").exists() and not Path("out.checked/report.json").exists()
    assert [p for p in Path("out.checked").iterdir() if TEMPORARY_MARK in p.name] == []


def test_a_report_outside_o_is_not_written_through_a_link_that_replaced_its_directory(
        in_tmp: Path, capsys, monkeypatch) -> None:
    movie(Path("a.mrc"))
    Path("reports").mkdir()
    real_run = cli.run

    def converted_then_swapped(*args, **kwargs):
        results = real_run(*args, **kwargs)
        swap_for_link(Path("reports"), Path("reports.checked"), Path("elsewhere").resolve())
        return results

    monkeypatch.setattr(cli, "run", converted_then_swapped)
    assert cli.main(["--i", "a.mrc", "--o", "out", "--report", "reports/run.json"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("reports/run.json: not written: reports: " + REPLACED) == 1, err
    assert everything_in(Path("elsewhere")) == [] and everything_in(Path("reports.checked")) == []
    assert Path("out/movies.star").is_file()  # --o itself was not replaced


def test_the_run_writes_its_files_as_before_when_nothing_is_replaced(in_tmp: Path) -> None:
    movie(Path("a.mrc"))
    assert cli.main(["--i", "a.mrc", "--o", "out", "--report", "out/r/report.json"]) == 0
    assert json.loads(Path("out/r/report.json").read_text())["state"] == "finished"
    assert MS.is_written_by_cryotiff(Path("out/movies.star"))


def converted(name: str, output: Path) -> MovieResult:
    destination = output / name.replace(".mrc", ".tif")
    destination.write_bytes(b"II*\0")
    return MovieResult(Path(name), destination, "converted", "")


def test_a_directory_replaced_between_the_check_and_the_writing_gets_nothing(in_tmp: Path) -> None:
    out = Path("out")
    out.mkdir()
    results = [converted("a.mrc", out)]
    checked = CheckedDirectory(out, out)
    swap_for_link(out, Path("out.checked"), Path("elsewhere").resolve())
    try:
        MS.write_movies_star(["a.mrc"], results, out, directory=checked)
    except MS.OutputError as exc:
        assert str(exc) == "out/movies.star: not written: out: " + REPLACED + "; nothing is written there"
    else:
        raise AssertionError("written through the link")
    assert everything_in(Path("elsewhere")) == []


def test_a_directory_replaced_while_the_list_is_made_keeps_it_where_it_was_written(
        in_tmp: Path, monkeypatch) -> None:
    """Everything from the lock to the rename goes through one descriptor of the directory: the
    earlier list read is the one in the directory written into, never one in the link's."""
    out = Path("out")
    out.mkdir()
    MS.write_movies_star(["a.mrc"], [converted("a.mrc", out)], out)
    elsewhere = Path("elsewhere")
    elsewhere.mkdir()
    (elsewhere / "movies.star").write_text("# not ours\ndata_movies\nloop_\n_rlnMicrographMovieName\nplanted.tif\n")
    real_merge = MS._merge

    def merged_then_swapped(entries):
        swap_for_link(out, Path("out.checked"), elsewhere.resolve())
        return real_merge(entries)

    monkeypatch.setattr(MS, "_merge", merged_then_swapped)
    try:
        MS.write_movies_star(["b.mrc"], [converted("b.mrc", out)], out, directory=None)
    except MS.OutputError as exc:
        assert str(exc).startswith("out/movies.star: its directory was replaced (by a symbolic link or another "
                                   "directory) while the file was written; the file went into the directory"), exc
    else:
        raise AssertionError("no message")
    assert everything_in(elsewhere) == ["movies.star"]
    assert "planted" in (elsewhere / "movies.star").read_text()  # neither read nor replaced
    listed = (Path("out.checked") / "movies.star").read_text()
    assert "out/a.tif" in listed and "out/b.tif" in listed and "planted" not in listed
    assert sorted(p.name for p in Path("out.checked").iterdir()) == ["a.tif", "b.tif", "movies.star"]


def test_the_gain_reference_is_not_written_through_a_link_that_replaced_o(in_tmp: Path, capsys, monkeypatch) -> None:
    """gain-reference.mrc, written before any movie, goes into --o as the run checked it when it
    made it, as the TIFFs and movies.star do."""
    import cryotiff.jobs as J

    from .test_adversarial_outputs import gain_normalised_movie

    gain_normalised_movie("m.mrc")
    assert cli.main(["--i", "m.mrc", "--o", "est", "--estimate_gain"]) == 0
    Path("out").mkdir()
    real = J._prepare_to_write

    def prepared_then_swapped(*args, **kwargs):
        real(*args, **kwargs)
        swap_for_link(Path("out"), Path("out.checked"), Path("elsewhere").resolve())

    monkeypatch.setattr(J, "_prepare_to_write", prepared_then_swapped)
    capsys.readouterr()
    status = cli.main(["--i", "m.mrc", "--o", "out", "--gain", "est/gain_estimate.bin"])
    err = capsys.readouterr().err
    assert status != 0 and "Traceback" not in err
    assert err.count("out/gain-reference.mrc: not written: out: " + REPLACED) == 1, err
    assert everything_in(Path("elsewhere")) == []
    assert everything_in(Path("out.checked")) == []
