"""<o>/movies.star: optics groups, merging with an earlier list, files cryotiff did not write."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cryotiff.movies_star as movies_star_module
from cryotiff.cli import main
from cryotiff.convert import MovieResult
from cryotiff.movies_star import LOCK_NAME, MARKER, is_written_by_cryotiff, write_movies_star
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames
from .test_relion_pipeline import OPTICS, import_star, movie, read_star

ONE_GROUP = OPTICS.replace("opticsGroup2 2 0.415000 300.000000 2.700000 0.100000\n", "")


def assert_relion_readable(path: Path) -> None:
    """What RELION's STAR reader and ObservationModel::loadSafely need (RELION's
    src/metadata_table.cpp, src/jaz/single_particle/obs_model.cpp): every line holding "data_" opens
    a block, no "# version" tag (a file without optics must read as RELION 3.0), no missing values,
    optics groups numbered 1..N in row order with voltage, Cs and a pixel size, every movie's group
    defined, each movie once."""
    text = path.read_text()
    for line in text.splitlines():
        if "data_" in line:
            assert line.startswith("data_"), line
    assert "# version" not in text
    assert "<NA>" not in text and "\tnan" not in text.lower()
    assert text.splitlines()[0].startswith(MARKER)
    blocks = read_star(path)
    movie_blocks = [name for name in blocks if name != "optics"]
    assert len(movie_blocks) == 1
    movies = blocks[movie_blocks[0]]
    names = list(movies["rlnMicrographMovieName"])
    assert len(names) == len(set(names))
    if "optics" in blocks:
        optics = blocks["optics"]
        assert list(optics["rlnOpticsGroup"]) == list(range(1, len(optics) + 1))
        assert {"rlnVoltage", "rlnSphericalAberration", "rlnMicrographOriginalPixelSize"} <= set(optics.columns)
        if "rlnOpticsGroupName" in optics.columns:
            assert optics["rlnOpticsGroupName"].is_unique
        assert set(movies["rlnOpticsGroup"]) <= set(optics["rlnOpticsGroup"])


def converted(*names: str, out: str = "out", status: str = "converted") -> list[MovieResult]:
    return [MovieResult(Path(name), Path(out) / Path(name).with_suffix(".tif"), status) for name in names]


def listed(path: Path) -> list[str]:
    blocks = read_star(path)
    return list(blocks[[name for name in blocks if name != "optics"][0]]["rlnMicrographMovieName"])


def group_of(path: Path) -> dict[str, tuple]:
    """movie -> (optics group number, group name, pixel size)."""
    blocks = read_star(path)
    optics = blocks["optics"].set_index("rlnOpticsGroup")
    movies = blocks["movies"]
    return {
        name: (group, optics.loc[group, "rlnOpticsGroupName"], float(optics.loc[group, "rlnMicrographOriginalPixelSize"]))
        for name, group in zip(movies["rlnMicrographMovieName"], movies["rlnOpticsGroup"])
    }


# --------------------------------------------------------------------------- the list and its optics


def test_movies_star_keeps_the_optics_and_points_to_the_converted_tifs(in_tmp: Path, capsys) -> None:
    frames = {"Movies/a.mrc": movie("Movies/a.mrc", 1), "Movies/b.mrc": movie("Movies/b.mrc", 2),
              "Movies/c.mrc": movie("Movies/c.mrc", 3)}
    Path("Movies/broken.mrc").write_bytes(b"not an MRC file" * 100)
    Path("Import/job001").mkdir(parents=True)
    Path("Import/job001/movies.star").write_text(
        import_star(["Movies/a.mrc 1", "Movies/broken.mrc 1", "Movies/b.mrc 2", "Movies/c.mrc 1"])
    )
    assert main(["--i", "Import/job001/movies.star", "--o", "Converted"]) == 1  # broken.mrc fails
    assert "Written Converted/movies.star listing 3 movies" in capsys.readouterr().out

    blocks = read_star(Path("Converted/movies.star"))
    original = read_star(Path("Import/job001/movies.star"))
    assert blocks["optics"].equals(original["optics"])
    table = blocks["movies"]
    assert list(table.columns) == ["rlnMicrographMovieName", "rlnOpticsGroup"]
    assert list(table["rlnMicrographMovieName"]) == ["Converted/Movies/a.tif", "Converted/Movies/b.tif",
                                                     "Converted/Movies/c.tif"]
    assert list(table["rlnOpticsGroup"]) == [1, 2, 1]
    for name, tif in zip(["Movies/a.mrc", "Movies/b.mrc", "Movies/c.mrc"], table["rlnMicrographMovieName"]):
        np.testing.assert_array_equal(read_tiff_frames(Path(tif)), frames[name])
    assert_relion_readable(Path("Converted/movies.star"))

    # During collection: a rerun with --only_do_unfinished lists the finished movies too.
    movie("Movies/d.mrc", 4)
    Path("Import/job001/movies.star").write_text(
        import_star(["Movies/a.mrc 1", "Movies/b.mrc 2", "Movies/c.mrc 1", "Movies/d.mrc 2"])
    )
    assert main(["--i", "Import/job001/movies.star", "--o", "Converted", "--only_do_unfinished"]) == 0
    table = read_star(Path("Converted/movies.star"))["movies"]
    assert list(table["rlnMicrographMovieName"]) == [f"Converted/Movies/{x}.tif" for x in "abcd"]
    assert list(table["rlnOpticsGroup"]) == [1, 2, 1, 2]
    assert not Path("Converted", LOCK_NAME).exists()


def test_relion_30_star_and_plain_inputs_give_a_movies_table_without_optics(in_tmp: Path) -> None:
    movie("Movies/a.mrc", 1)
    movie("Movies/b.mrc", 2)
    Path("old.star").write_text("data_\n\nloop_\n_rlnMicrographMovieName #1\nMovies/a.mrc\nMovies/b.mrc\n")
    assert main(["--i", "old.star", "--o", "Old"]) == 0
    blocks = read_star(Path("Old/movies.star"))
    assert list(blocks) == [""]  # the block keeps its name (RELION reads the first block of such a file)
    assert list(blocks[""]["rlnMicrographMovieName"]) == ["Old/Movies/a.tif", "Old/Movies/b.tif"]
    assert_relion_readable(Path("Old/movies.star"))

    assert main(["--i", "Movies/*.mrc", "--o", "Glob"]) == 0
    blocks = read_star(Path("Glob/movies.star"))
    assert list(blocks) == ["movies"]
    assert list(blocks["movies"]["rlnMicrographMovieName"]) == ["Glob/Movies/a.tif", "Glob/Movies/b.tif"]


def test_a_movie_not_from_the_star_file_never_joins_its_optics_group(in_tmp: Path, capsys) -> None:
    """`--i movies.star K2/k2_0.mrc`: the K2 movie (1.05 A) must not be listed in the STAR file's
    optics group (0.83 A): an optics group needs a voltage and Cs no movie header states."""
    movie("Movies/a.mrc", 1)
    k2 = np.random.default_rng(5).poisson(1.5, (3, 24, 32)).astype(np.int8)
    Path("K2").mkdir()
    write_mrc_movie(Path("K2/k2_0.mrc"), k2, 0, pixel_size_angstrom=1.05)
    Path("movies.star").write_text(import_star(["Movies/a.mrc 1"], optics=ONE_GROUP))
    assert main(["--i", "movies.star", "K2/k2_0.mrc", "--o", "One"]) == 0
    err = capsys.readouterr().err
    assert "not in One/movies.star but in One/movies_unassigned.star" in err
    assert "K2/k2_0.tif: it did not come from a STAR file" in err

    assert group_of(Path("One/movies.star")) == {"One/Movies/a.tif": (1, "opticsGroup1", 0.83)}
    assert_relion_readable(Path("One/movies.star"))
    assert listed(Path("One/movies_unassigned.star")) == ["One/K2/k2_0.tif"]
    np.testing.assert_array_equal(read_tiff_frames(Path("One/K2/k2_0.tif")), k2)

    # With two groups as well (before: left out of every list).
    Path("two.star").write_text(import_star(["Movies/a.mrc 2"]))
    assert main(["--i", "two.star", "K2/k2_0.mrc", "--o", "Two"]) == 0
    assert listed(Path("Two/movies.star")) == ["Two/Movies/a.tif"]
    assert listed(Path("Two/movies_unassigned.star")) == ["Two/K2/k2_0.tif"]


def test_star_files_with_clashing_optics_groups_are_not_merged_wrongly(in_tmp: Path, capsys) -> None:
    """Two Import jobs both call their group 1 "opticsGroup1", at other pixel sizes."""
    for name, seed in (("S1/a.mrc", 1), ("S1/b.mrc", 2), ("S2/c.mrc", 3), ("S3/d.mrc", 4)):
        movie(name, seed)
    Path("s1.star").write_text(import_star(["S1/a.mrc 1", "S1/b.mrc 2"]))
    Path("s2.star").write_text(import_star(["S2/c.mrc 1"], optics=ONE_GROUP.replace("0.830000", "1.050000")))
    Path("s3.star").write_text(import_star(["S3/d.mrc 1"], optics=ONE_GROUP))  # equal to group 1 of s1
    assert main(["--i", "s1.star", "s2.star", "s3.star", "--o", "out"]) == 0
    assert "optics group opticsGroup1 of s2.star differs from another group of that name" in capsys.readouterr().err
    assert group_of(Path("out/movies.star")) == {
        "out/S1/a.tif": (1, "opticsGroup1", 0.83),
        "out/S1/b.tif": (2, "opticsGroup2", 0.415),
        "out/S2/c.tif": (3, "opticsGroup1_3", 1.05),
        "out/S3/d.tif": (1, "opticsGroup1", 0.83),
    }
    assert_relion_readable(Path("out/movies.star"))

    # A later run of the second session alone finds its renamed group again.
    movie("S2/e.mrc", 5)
    Path("s2.star").write_text(import_star(["S2/c.mrc 1", "S2/e.mrc 1"], optics=ONE_GROUP.replace("0.830000", "1.050000")))
    assert main(["--i", "s2.star", "--o", "out", "--only_do_unfinished"]) == 0
    groups = group_of(Path("out/movies.star"))
    assert groups["out/S2/e.tif"] == (3, "opticsGroup1_3", 1.05)
    assert len(read_star(Path("out/movies.star"))["optics"]) == 3


def test_groups_of_equal_values_but_other_names_stay_apart(in_tmp: Path) -> None:
    """Users split identical optics into groups on purpose (beam-tilt groups, for example)."""
    Path("out").mkdir()
    Path("a.star").write_text(import_star(["m1.mrc 1"], optics=ONE_GROUP))
    Path("b.star").write_text(import_star(["m2.mrc 1"], optics=ONE_GROUP.replace("opticsGroup1 1", "tiltGroup7 1")))
    write_movies_star(["a.star", "b.star"], converted("m1.mrc", "m2.mrc"), Path("out"))
    assert group_of(Path("out/movies.star")) == {"out/m1.tif": (1, "opticsGroup1", 0.83),
                                                 "out/m2.tif": (2, "tiltGroup7", 0.83)}


def test_up_sampled_eer_movies_get_the_rendered_pixel_size(in_tmp: Path) -> None:
    """EER rendered at --eer_upsampling 2 gives TIFF pixels half the physical size."""
    Path("eer.star").write_text(import_star(["Movies/e1.eer 1", "Movies/e2.eer 1", "Movies/m.mrc 2"]))
    Path("out").mkdir()
    outcome = write_movies_star(["eer.star"], converted("Movies/e1.eer", "Movies/e2.eer", "Movies/m.mrc"),
                                Path("out"), eer_upsampling=2)
    assert outcome.n_movies == 3 and outcome.has_optics
    optics = read_star(Path("out/movies.star"))["optics"]
    assert list(optics["rlnMicrographOriginalPixelSize"]) == pytest.approx([0.415, 0.415])  # group 2 is MRC


def test_an_optics_group_holding_eer_and_mrc_movies_is_split_by_pixel_size(in_tmp: Path) -> None:
    """Before, the group kept the physical pixel size, which is wrong for the up-sampled EER."""
    Path("mixed.star").write_text(import_star(["e.eer 1", "m.mrc 1"], optics=ONE_GROUP))
    Path("out").mkdir()
    write_movies_star(["mixed.star"], converted("e.eer", "m.mrc"), Path("out"), eer_upsampling=2)
    groups = group_of(Path("out/movies.star"))
    assert groups["out/m.tif"] == (1, "opticsGroup1", 0.83)
    assert groups["out/e.tif"][0] == 2 and groups["out/e.tif"][2] == pytest.approx(0.415)
    assert_relion_readable(Path("out/movies.star"))


# --------------------------------------------------------------------------- merging across runs


def test_a_second_run_into_the_same_output_merges_with_the_first(in_tmp: Path, capsys) -> None:
    for name, seed in (("Movies/a.mrc", 1), ("Movies/b.mrc", 2), ("Movies/c.mrc", 3)):
        movie(name, seed)
    Path("movies.star").write_text(import_star(["Movies/a.mrc 1", "Movies/b.mrc 2", "Movies/c.mrc 1"]))
    # A subset, then the rest, each from the same STAR file.
    Path("part1.star").write_text(import_star(["Movies/a.mrc 1", "Movies/b.mrc 2"]))
    Path("part2.star").write_text(import_star(["Movies/c.mrc 1"]))
    assert main(["--i", "part1.star", "--o", "out"]) == 0
    capsys.readouterr()
    assert main(["--i", "part2.star", "--o", "out"]) == 0
    assert "listing 3 movies (2 from earlier runs)" in capsys.readouterr().out
    assert group_of(Path("out/movies.star")) == {
        "out/Movies/a.tif": (1, "opticsGroup1", 0.83),
        "out/Movies/b.tif": (2, "opticsGroup2", 0.415),
        "out/Movies/c.tif": (1, "opticsGroup1", 0.83),
    }
    assert_relion_readable(Path("out/movies.star"))

    # A rerun lists every movie once, and the same file comes out.
    before = Path("out/movies.star").read_text().splitlines()[1:]
    assert main(["--i", "movies.star", "--o", "out", "--only_do_unfinished"]) == 0
    assert Path("out/movies.star").read_text().splitlines()[1:] == before


def test_a_movie_that_failed_and_whose_tif_is_gone_is_dropped(in_tmp: Path) -> None:
    Path("out").mkdir()
    write_movies_star(["m.lst"], converted("a.mrc", "b.mrc"), Path("out"))
    Path("out/a.tif").touch()  # still there: kept
    write_movies_star(["m.lst"], converted("a.mrc", "b.mrc", status="failed"), Path("out"))
    assert listed(Path("out/movies.star")) == ["out/a.tif"]


def test_a_movies_star_cryotiff_did_not_write_is_never_replaced(in_tmp: Path, capsys) -> None:
    movie("Movies/a.mrc", 1)
    movie("Movies/b.mrc", 2)
    Path("out").mkdir()
    users_own = import_star(["somewhere/else.mrc 1"])
    Path("out/movies.star").write_text(users_own)
    assert main(["--i", "Movies/a.mrc", "--o", "out"]) == 0
    captured = capsys.readouterr()
    assert "out/movies.star was not replaced: cryotiff did not write it" in captured.err
    assert "Written out/movies_cryotiff.star listing 1 movie" in captured.out
    assert Path("out/movies.star").read_text() == users_own
    assert is_written_by_cryotiff(Path("out/movies_cryotiff.star"))

    assert main(["--i", "Movies/b.mrc", "--o", "out"]) == 0  # merges into the file it wrote
    assert listed(Path("out/movies_cryotiff.star")) == ["out/Movies/a.tif", "out/Movies/b.tif"]
    assert Path("out/movies.star").read_text() == users_own


def test_movies_star_never_overwrites_the_input_star(in_tmp: Path, capsys) -> None:
    movie("a.mrc", 1)
    Path("out").mkdir()
    text = import_star(["a.mrc 1"])
    Path("out/movies.star").write_text(text)
    assert main(["--i", "out/movies.star", "--o", "out"]) == 0
    assert Path("out/movies.star").read_text() == text
    assert "out/movies.star was not replaced: it is an input STAR file" in capsys.readouterr().err
    assert listed(Path("out/movies_cryotiff.star")) == ["out/a.tif"]


def test_a_link_named_movies_star_is_not_written_through(in_tmp: Path) -> None:
    Path("out").mkdir()
    Path("elsewhere.star").write_text("# " + MARKER + "\n")
    Path("out/movies.star").symlink_to(Path("elsewhere.star").resolve())
    write_movies_star(["m.lst"], converted("a.mrc"), Path("out"))
    assert Path("elsewhere.star").read_text() == "# " + MARKER + "\n"
    assert listed(Path("out/movies_cryotiff.star")) == ["out/a.tif"]


def test_tilt_series_star_keeps_its_block_name_and_columns(in_tmp: Path) -> None:
    movie("frames/TS_01_001.mrc", 1)
    movie("frames/TS_01_002.mrc", 2)
    Path("tilt_series").mkdir()
    Path("tilt_series/220728_TS_01.star").write_text(
        "\n# version 50001\n\ndata_220728_TS_01\n\nloop_\n"
        "_rlnMicrographMovieName #1\n_rlnTomoTiltMovieFrameCount #2\n_rlnTomoNominalStageTiltAngle #3\n"
        "_rlnMicrographPreExposure #4\n"
        "frames/TS_01_001.mrc 3 0.000000 0.000000\nframes/TS_01_002.mrc 3 3.000000 3.000000\n"
    )
    assert main(["--i", "tilt_series/220728_TS_01.star", "--o", "out"]) == 0
    blocks = read_star(Path("out/movies.star"))
    assert list(blocks) == ["220728_TS_01"]
    table = blocks["220728_TS_01"]
    assert list(table.columns) == ["rlnMicrographMovieName", "rlnTomoTiltMovieFrameCount",
                                   "rlnTomoNominalStageTiltAngle", "rlnMicrographPreExposure"]
    assert list(table["rlnMicrographMovieName"]) == ["out/frames/TS_01_001.tif", "out/frames/TS_01_002.tif"]
    assert list(table["rlnTomoNominalStageTiltAngle"]) == [0.0, 3.0]
    assert_relion_readable(Path("out/movies.star"))


def test_two_runs_at_the_same_time_keep_each_others_movies(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run reads the earlier list, merges and writes; the read is slowed down so that without
    the lock both would read the empty list and the second write would drop the first's movies."""
    read_earlier = movies_star_module._earlier_entries

    def slow_read(*args):
        entries = read_earlier(*args)
        time.sleep(0.3)
        return entries

    monkeypatch.setattr(movies_star_module, "_earlier_entries", slow_read)
    Path("out").mkdir()
    Path("s.star").write_text(import_star([f"m{i}.mrc {1 + i % 2}" for i in range(6)]))
    errors: list[BaseException] = []

    def run(names: list[str]) -> None:
        try:
            write_movies_star(["s.star"], converted(*names), Path("out"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=([f"m{i}.mrc" for i in part],)) for part in ((0, 2, 4), (1, 3, 5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(listed(Path("out/movies.star"))) == [f"out/m{i}.tif" for i in range(6)]
    assert_relion_readable(Path("out/movies.star"))
    assert not Path("out", LOCK_NAME).exists()


def test_the_marker_is_no_star_syntax_for_relion() -> None:
    line = movies_star_module._marker_lines()[0]
    assert line.startswith(MARKER) and line.startswith("#")
    assert "data_" not in line and "# version" not in line and "loop_" not in line
