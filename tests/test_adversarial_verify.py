"""Adversarial cases on what users rely on before they delete the originals: ``--verify_only``
(with the originals and with the manifest), ``--only_do_unfinished`` and ``--watch``. Each case
was found once by trying to make cryotiff say something untrue about an output; it stays here."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.cli import main
from cryotiff.manifest import MANIFEST_NAME
from cryotiff.simulate.write import write_mrc_movie

from .helpers import int16_movie, read_tiff_frames, verdict_lines, wait_until
from .test_watch import finish, mpirun_prefix, start

MPIRUN = Path(sys.executable).parent / "mpirun"


# --------------------------------------------------------------------------- --only_do_unfinished


def test_an_input_replaced_by_another_movie_of_the_same_size_is_converted_again(in_tmp: Path, capsys) -> None:
    """Same name, same shape, same byte size, other frames: the record's name and size agree,
    the pixels do not. Skipping it would leave the old movie's pixels under the new movie's name."""
    int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    size = Path("a.mrc").stat().st_size
    second = int16_movie("a.mrc", 2)
    assert Path("a.mrc").stat().st_size == size
    capsys.readouterr()
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert ("out/a.tif: its last page differs from page 3 of a.mrc (made from another movie of the same name and "
            "size?); converting again") in out, out
    assert "Movies converted: 1, skipped: 0, failed: 0" in out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), second)
    # ... and now it is skipped.
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out


def test_an_eer_replaced_by_another_of_the_same_size_is_converted_again(in_tmp: Path, capsys) -> None:
    """The last page is rendered again with the recorded grouping and compared."""
    from cryotiff.simulate.eer import random_events, write_eer

    events = random_events(np.random.default_rng(1), 2048, 4, 0.002)
    write_eer(Path("m.eer"), events, 2048)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2"]) == 0
    first = read_tiff_frames(Path("out/m.tif"))
    size = Path("m.eer").stat().st_size
    # The same frames in another order (the first and the last swapped): as many bytes, and the
    # last page (frames 3 and 4) now sums frames 3 and 1.
    write_eer(Path("m.eer"), [events[3], events[1], events[2], events[0]], 2048)
    assert Path("m.eer").stat().st_size == size
    capsys.readouterr()
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert "out/m.tif: its last page differs from page 2 of m.eer" in out, out
    assert not np.array_equal(read_tiff_frames(Path("out/m.tif")), first)


# --------------------------------------------------------------------------- --verify_only


def test_an_output_the_manifest_does_not_name_is_not_called_exact(in_tmp: Path, capsys) -> None:
    """Without the originals, the outputs of ``--o`` that no manifest line names (a run whose
    manifest line could not be written, RELION's own outputs, a line removed) are unchecked:
    "every page of every output is exact" must not be said of a set that holds one."""
    int16_movie("a.mrc", 1)
    int16_movie("Sub/c.mrc", 3)
    assert main(["--i", "a.mrc", "Sub/c.mrc", "--o", "out"]) == 0
    manifest = Path("out", MANIFEST_NAME)
    lines = manifest.read_text().splitlines()
    manifest.write_text("".join(line + "\n" for line in lines if json.loads(line)["output"] != "Sub/c.tif"))
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        "OK        out/a.tif (3 pages; compared with the manifest)",
        "UNCHECKED out/Sub/c.tif: no readable line of out/cryotiff-manifest.jsonl names it; check it against its "
        "original with --i",
    ], out
    assert "Verified 2 outputs: 1 OK, 0 differ, 0 missing, 1 could not be checked" in out
    assert "Every page of every output is exact" not in out
    # The originals settle it.
    assert main(["--verify_only", "--i", "a.mrc", "Sub/c.mrc", "--o", "out"]) == 0


def test_a_manifest_line_with_a_page_digest_removed_is_not_read(in_tmp: Path, capsys) -> None:
    """An edited or damaged line whose page digests are fewer than its pages ended the check
    with an IndexError; such a line is not read, and its output is unchecked."""
    int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    manifest = Path("out", MANIFEST_NAME)
    line = json.loads(manifest.read_text())
    line["page_sha256"] = line["page_sha256"][:2]
    manifest.write_text(json.dumps(line) + "\n")
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert verdict_lines(captured.out) == [
        "UNCHECKED out/a.tif: no readable line of out/cryotiff-manifest.jsonl names it; check it against its "
        "original with --i"], captured.out


def test_an_output_that_is_now_a_symlink_is_not_called_exact(in_tmp: Path, capsys) -> None:
    """cryotiff never leaves a link at an output's name; a link there points at a file that may
    go with the originals (or change), so neither check calls it exact."""
    int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    shutil.copy("out/a.tif", "elsewhere.tif")
    os.remove("out/a.tif")
    os.symlink(os.path.abspath("elsewhere.tif"), "out/a.tif")
    capsys.readouterr()
    for command in (["--verify_only", "--o", "out"], ["--verify_only", "--i", "a.mrc", "--o", "out"]):
        assert main(command) == 1, command
        out = capsys.readouterr().out
        assert verdict_lines(out) == [
            f"UNCHECKED out/a.tif: is a symbolic link to {os.path.abspath('elsewhere.tif')}, not the file written "
            "at conversion; check the file it points to, or convert again"], out
        assert "Every page of every output is exact" not in out


def tiff_with_a_tag_renamed(path: Path, pages: np.ndarray, code: int, value: int) -> None:
    """An uncompressed TIFF of ``pages`` as stored, whose IFDs carry tag ``code`` = ``value``
    (SHORT): written with a private tag, renamed in place (tifffile refuses to write these)."""
    import struct

    tifffile.imwrite(path, pages, photometric="minisblack", metadata=None, extratags=[(65000, "H", 1, value, True)])
    data = bytearray(path.read_bytes())
    entry = struct.pack("<HHI", 65000, 3, 1)
    while (at := data.find(entry)) >= 0:
        data[at:at + 2] = struct.pack("<H", code)
    path.write_bytes(bytes(data))


def test_a_predictor_on_uncompressed_pages_is_not_called_exact(in_tmp: Path, capsys) -> None:
    """libtiff (RELION, MotionCor) applies a Predictor only with the codecs that take one, so an
    uncompressed page with Predictor 2 holds its differences to RELION, while tifffile undoes
    them: pages stored as differences read back as the original to tifffile alone (libtiff's
    ``tiffinfo -d`` shows the differences)."""
    frames = int16_movie("a.mrc", 1, n_frames=1)
    stored = frames[:, ::-1, :]
    # tifffile undoes the differences along the whole strip (one strip per page here)
    differences = np.diff(stored.reshape(len(stored), -1), axis=1, prepend=np.int16(0)).astype(np.int16)
    differences = differences.reshape(stored.shape)
    Path("out").mkdir()
    tiff_with_a_tag_renamed(Path("out/a.tif"), differences, 317, 2)
    with tifffile.TiffFile("out/a.tif") as tif:  # how tifffile reads it: the original
        np.testing.assert_array_equal(tif.pages[0].asarray(), stored[0])
    capsys.readouterr()
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        "DIFFERS   out/a.tif: cannot be read (out/a.tif: page 1: the Predictor tag (317) is 2, but compression 1 "
        "takes none: libtiff-based readers (RELION, MotionCor) ignore it, tifffile would not; the file is damaged)"
    ], out


# --------------------------------------------------------------------------- --watch


def tiff_input(path: Path, frames: np.ndarray, seconds_ago: float = 0.0) -> None:
    """A TIFF movie of ``frames`` (rows flipped, as SerialEM writes them), its modification time
    ``seconds_ago``."""
    tifffile.imwrite(path, frames[:, ::-1, :], photometric="minisblack", metadata=None)
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


class Recorder:
    """A reporter that keeps the lines and results."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.finished: list = []

    def movie_started(self, job, index, total) -> None:
        pass

    def page_done(self, job, done, total) -> None:
        pass

    def movie_finished(self, result) -> None:
        self.finished.append(result)

    def message(self, text: str) -> None:
        self.lines.append(text)

    warning = message


def test_a_movie_that_grows_again_after_its_conversion_is_converted_again(in_tmp: Path) -> None:
    """A TIFF movie written page by page is a complete TIFF after every page: one whose writer
    pauses for longer than the settle time is converted with the pages it had then. When it
    grows again, it is converted again once it settles (the TIFF replaced), and counted once."""
    from cryotiff.convert import ConvertOptions
    from cryotiff.watch import WatchOptions, watch_and_convert

    frames = np.random.default_rng(7).integers(0, 50, (5, 24, 32)).astype(np.uint16)
    Path("Movies").mkdir()
    movie = Path("Movies/m.tif")
    tiff_input(movie, frames[:3], seconds_ago=3600)  # 3 of its 5 pages, unchanged for an hour
    now = [0.0]
    sleeps = [0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        sleeps[0] += 1
        if sleeps[0] == 1:  # the writer goes on after the first conversion
            tiff_input(movie, frames, seconds_ago=0)

    reporter = Recorder()
    results = watch_and_convert(["Movies"], ConvertOptions(output_dir=Path("out")),
                                WatchOptions(settle_seconds=10, timeout_seconds=30), reporter,
                                clock=lambda: now[0], sleep=sleep)
    assert [(r.source, r.status) for r in results] == [(movie, "converted")], results
    assert any("Movies/m.tif: changed after its conversion" in line for line in reporter.lines), reporter.lines
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/m.tif")), frames)


def grow_after_the_conversion_during_the_watch(tmp_path: Path, program: list[str]) -> None:
    """``m.tif`` has 3 of its 5 pages and has not changed for an hour when the watch starts;
    once its TIFF is written, the other 2 pages arrive."""
    frames = np.random.default_rng(8).integers(0, 50, (5, 24, 32)).astype(np.uint16)
    (tmp_path / "Movies").mkdir()
    movie = tmp_path / "Movies" / "m.tif"
    tiff_input(movie, frames[:3], seconds_ago=3600)
    process = start(program + ["--i", "Movies", "--o", "out", "--watch", "--settle_seconds", "1", "--watch_timeout",
                               "4", "--report", "report.json"], tmp_path)
    wait_until(lambda: (tmp_path / "out" / "movies.star").exists(), "the first conversion", process)
    tiff_input(movie, frames)
    stdout, stderr = finish(process)
    assert process.returncode == 0, stderr
    assert "Movies/m.tif: changed after its conversion" in stdout, stdout
    assert stdout.count("Processing Movies/m.tif into out/Movies/m.tif") == 2, stdout
    assert "Movies converted: 1, skipped: 0, failed: 0" in stdout, stdout
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "out" / "Movies" / "m.tif"), frames)
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["totals"]["converted"], report["totals"]["failed"], len(report["movies"])) == (1, 0, 1), report


def test_a_movie_that_grows_after_its_conversion_is_converted_again_by_the_command(tmp_path: Path) -> None:
    grow_after_the_conversion_during_the_watch(tmp_path, [sys.executable, "-m", "cryotiff"])


@pytest.mark.skipif(not MPIRUN.exists(), reason=f"no mpirun next to {sys.executable} (pip install .[mpi])")
def test_a_movie_that_grows_after_its_conversion_is_converted_again_under_mpirun(tmp_path: Path) -> None:
    grow_after_the_conversion_during_the_watch(tmp_path, mpirun_prefix() + [sys.executable, "-m", "cryotiff.mpi"])


# --------------------------------------------------------------------------- what the verdicts rest on


def gain_normalised_run(out: str = "out", *extra: str) -> None:
    """``g1.mrc`` (float, gain-normalised) converted with the gain estimated from it and g2.mrc."""
    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(5)
    detector = make_detector((48, 40), rng, defect_fraction=0.002, cold_fraction=0.001)
    for name in ("g1.mrc", "g2.mrc"):
        write_mrc_movie(Path(name), detector.movie(30, rng).frames, 2)
    assert main(["--i", "g1.mrc", "g2.mrc", "--o", "est", "--estimate_gain"]) == 0
    assert main(["--i", "g1.mrc", "--o", out, "--gain", "est/gain_estimate.bin", *extra]) == 0


@pytest.mark.parametrize("originals", [True, False], ids=["with the originals", "with the manifest"])
def test_a_gain_normalised_movie_is_exact_only_with_the_gain_reference_beside_it(in_tmp: Path, capsys,
                                                                                 originals: bool) -> None:
    """The TIFF of a float movie gives back the original only times the gain reference it was
    made with, which users take from ``<o>/gain-reference.mrc``: a TIFF whose ``--o`` lacks
    that file, or holds another one, is not exact. Without the originals too: the manifest
    check passed with that file missing or replaced, which let the originals be deleted with
    nothing left to turn the pages back (the manifest now holds the reference's digest)."""
    import mrcfile

    from cryotiff.gain.files import write_float_mrc

    gain_normalised_run()
    verify = ["--verify_only", "--o", "out"] + (["--i", "g1.mrc"] if originals else [])
    said = "its pages are those of g1.mrc" if originals else "its pixels are as written"
    assert main(verify) == 0
    reference = Path("out/gain-reference.mrc")
    written = reference.read_bytes()
    needed = "out/gain-reference.mrc, which they need (TIFF x gain reference = the original),"

    reference.unlink()
    capsys.readouterr()
    assert main(verify) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [f"DIFFERS   out/g1.tif: {said}, but {needed} does not exist"], out

    with mrcfile.open(Path("est/gain_estimate.bin"), permissive=True) as estimate:
        other = np.array(estimate.data, np.float32)
    write_float_mrc(reference, other * np.float32(1.5))
    assert main(verify) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        f"DIFFERS   out/g1.tif: {said}, but {needed} holds another gain reference than the one they were made "
        "with"], out

    reference.write_bytes(b"not an MRC file")
    assert main(verify) == 1
    assert f"DIFFERS   out/g1.tif: {said}, but {needed} cannot be read" in capsys.readouterr().out

    reference.write_bytes(written)
    assert main(verify) == 0
    assert json.loads(Path("out", MANIFEST_NAME).read_text())["gain_reference"]["file"] == "gain-reference.mrc"


def test_an_8_bit_mrc_of_a_size_relion_reads_as_4_bit_packed_is_written_16_bit(in_tmp: Path, capsys) -> None:
    """RELION reads an 8-bit TIFF of 3710 x 7676 (and the other IMOD 4-bit sizes, ``src/rwTIFF.h``)
    as 4-bit packed, 7420 x 7676: an 8-bit copy of such an MRC is not what RELION reads, although
    every value in it is right. The same values are written 16 bits wide; an 8-bit output of an
    earlier run is not exact and is converted again."""
    frames = np.zeros((1, 7676, 3710), np.int8)
    sparse = frames[0, ::97, ::89]
    sparse[...] = np.random.default_rng(1).integers(-5, 6, sparse.shape)
    write_mrc_movie(Path("a.mrc"), frames, 0)
    Path("out").mkdir()
    tifffile.imwrite("out/a.tif", frames[:, ::-1, :], photometric="minisblack", metadata=None)  # as RELION writes it
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 1
    assert "DIFFERS   out/a.tif: its sample type is int8; a.mrc gives int16" in capsys.readouterr().out

    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    captured = capsys.readouterr()
    assert "out/a.tif: page 1 holds 3710 x 7676 int8, 3710 x 7676 int16 expected; converting again" in captured.out
    assert ("a.mrc: written as int16, not int8: RELION reads 8-bit TIFFs of 3710 x 7676 pixels as IMOD 4-bit "
            "packed data") in captured.err
    with tifffile.TiffFile("out/a.tif") as tif:
        assert tif.pages[0].dtype == np.int16
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 0


def test_the_verdict_on_an_eer_output_says_how_its_pages_were_rendered(in_tmp: Path, capsys) -> None:
    """The pages are compared with the movie rendered as the TIFF records, whatever the command
    line says; the OK line names that rendering, since the originals cannot render it again
    once they are gone (a run asking for --eer_grouping 4 is told that the TIFF holds 2)."""
    from cryotiff.simulate.eer import random_events, write_eer

    write_eer(Path("m.eer"), random_events(np.random.default_rng(1), 2048, 4, 0.002), 2048)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2"]) == 0
    capsys.readouterr()
    assert main(["--verify_only", "--i", "m.eer", "--o", "out", "--eer_grouping", "4"]) == 0
    assert verdict_lines(capsys.readouterr().out) == [
        "OK        out/m.tif (2 pages; compared with m.eer); rendered with --eer_grouping 2, --eer_upsampling 1, "
        "no --short"]


def test_a_symlink_at_the_output_name_is_not_taken_as_finished(in_tmp: Path, capsys) -> None:
    """A link where the TIFF belongs points at a file that can change or go with the originals:
    it is replaced by a TIFF of the movie, as ``--verify_only`` would not call it exact."""
    frames = int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "elsewhere"]) == 0
    Path("out").mkdir()
    os.symlink(os.path.abspath("elsewhere/a.tif"), "out/a.tif")
    capsys.readouterr()
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert (f"out/a.tif: is a symbolic link to {os.path.abspath('elsewhere/a.tif')}, not a file this program wrote; "
            "converting again") in out, out
    assert not Path("out/a.tif").is_symlink()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 0


def test_a_record_whose_options_are_of_the_wrong_type_counts_as_no_record(in_tmp: Path, capsys) -> None:
    """A description edited or damaged into other JSON (``"eer_grouping": "2"``, ``null``) ended
    ``--verify_only`` with a TypeError. Such a record is no record: the pages are compared with
    the movie rendered as the command line says, and ``--only_do_unfinished`` converts again."""
    from cryotiff.simulate.eer import random_events, write_eer

    write_eer(Path("m.eer"), random_events(np.random.default_rng(1), 2048, 4, 0.002), 2048)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2"]) == 0
    with tifffile.TiffFile("out/m.tif") as tif:
        description = json.loads(tif.pages[0].description)
    pages = tifffile.imread("out/m.tif")
    for bad in ("2", None, 2.0, True, [2]):
        description["made_with"]["eer_grouping"] = bad
        tifffile.imwrite("out/m.tif", pages, photometric="minisblack", metadata=None,
                         description=json.dumps(description))
        # The file edited is not the one its manifest line describes (which --verify_only --i
        # calls DIFFERS): here only the record is on trial.
        Path("out", MANIFEST_NAME).unlink(missing_ok=True)
        capsys.readouterr()
        assert main(["--verify_only", "--i", "m.eer", "--o", "out", "--eer_grouping", "2"]) == 0, bad
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        assert main(["--verify_only", "--i", "m.eer", "--o", "out", "--eer_grouping", "1"]) == 1, bad
        capsys.readouterr()
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2", "--only_do_unfinished"]) == 0
    assert "out/m.tif: carries no record of the options that made it" in capsys.readouterr().out


def test_an_eer_whose_damaged_frames_were_left_out_is_not_called_exact(in_tmp: Path, capsys) -> None:
    """A damaged raw frame is left out of its page (as RELION does) and the conversion exits 1;
    rendering the movie again leaves it out again, so the pages compare equal. But the
    original holds electrons the TIFF lacks: not exact, unless ``--ignore_error`` accepts it."""
    from cryotiff.simulate import eer as S

    frames = S.random_events(np.random.default_rng(3), 2048, 4, 0.002)
    streams = [S.encode_frame(frame, 2048, 65001) for frame in frames]
    streams[1] = streams[1][: len(streams[1]) * 2 // 3]  # runs out of data before the last pixel
    S.write_eer(Path("bad.eer"), streams, 2048, 65001)
    assert main(["--i", "bad.eer", "--o", "out", "--eer_grouping", "2"]) == 1
    capsys.readouterr()
    assert main(["--verify_only", "--i", "bad.eer", "--o", "out"]) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        "DIFFERS   out/bad.tif: its pages are bad.eer rendered as at conversion, but they leave out 1 damaged raw "
        "frame of it (frame 2), whose electrons the TIFF lacks (--ignore_error accepts that)"], out
    assert main(["--verify_only", "--i", "bad.eer", "--o", "out", "--ignore_error"]) == 0
    assert "1 damaged raw frame (frame 2) left out, as --ignore_error accepts" in capsys.readouterr().out


def test_a_lossy_output_is_not_said_to_equal_its_original(in_tmp: Path, capsys) -> None:
    """``--lossy`` changes values of unreliable pixels (and ``--ignore_error`` accepts errors):
    such an output is as it was made, but "every page of every output is exact: it equals its
    original" would be untrue of it."""
    gain_normalised_run("out", "--lossy")
    assert main(["--i", "g2.mrc", "--o", "out", "--gain", "est/gain_estimate.bin", "--lossy"]) == 0
    capsys.readouterr()
    assert main(["--verify_only", "--i", "g1.mrc", "g2.mrc", "--o", "out"]) == 0
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        f"OK        out/{name}.tif (30 pages; compared with {name}.mrc); made with --lossy: TIFF x gain reference "
        "gives back the original only approximately, as --lossy accepted" for name in ("g1", "g2")], out
    assert "Every page of every output is exact" not in out
    assert ("Every output is as it was made, but 2 give back their originals only approximately (their lines say "
            "why)") in out


def test_a_pattern_never_takes_the_runs_own_outputs_as_movies(in_tmp: Path, capsys) -> None:
    """``--i 'Movies/**/*.tif' --o Movies/conv``: the pattern also matches the TIFFs written into
    ``Movies/conv``. A rerun converted them again (into Movies/conv/Movies/conv/...), and
    ``--watch`` converted each new output again without end. Like a directory, a pattern leaves
    out what lies inside ``--o`` when ``--o`` lies inside the directories it searches."""
    from cryotiff.convert import ConvertOptions
    from cryotiff.watch import WatchOptions, watch_and_convert

    Path("Movies").mkdir()
    frames = np.random.default_rng(1).integers(0, 50, (2, 16, 20)).astype(np.uint16)
    tiff_input(Path("Movies/a.tif"), frames, seconds_ago=3600)
    assert main(["--i", "Movies/**/*.tif", "--o", "Movies/conv"]) == 0
    capsys.readouterr()
    assert main(["--i", "Movies/**/*.tif", "--o", "Movies/conv", "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out
    os.remove("Movies/a.tif")  # the originals deleted: the outputs are still not movies of the run
    assert main(["--i", "Movies/**/*.tif", "--o", "Movies/conv", "--only_do_unfinished"]) == 1
    assert "Movies/**/*.tif: no file matches this pattern" in capsys.readouterr().err

    tiff_input(Path("Movies/b.tif"), frames, seconds_ago=3600)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    results = watch_and_convert(["Movies/**/*.tif"], ConvertOptions(output_dir=Path("Movies/conv")),
                                WatchOptions(settle_seconds=0, timeout_seconds=3), Recorder(),
                                clock=lambda: now[0], sleep=sleep)
    assert [(str(r.source), r.status) for r in results] == [("Movies/b.tif", "converted")], results
    assert sorted(str(p) for p in Path("Movies").rglob("*.tif")) == [
        "Movies/b.tif", "Movies/conv/Movies/a.tif", "Movies/conv/Movies/b.tif"]


def test_a_directory_inside_the_output_directory_still_gives_its_movies(in_tmp: Path, capsys) -> None:
    """``--i Movies --o .`` (outputs beside the movies, as RELION's ``--o ./``) found no movie:
    everything lay inside ``--o``. What is left out is what lies inside ``--o`` below the
    directory searched, and the outputs of the movies found (so that a rerun or ``--watch`` never
    takes ``Movies/a.tif`` for a movie)."""
    frames = int16_movie("Movies/a.mrc", 1)
    assert main(["--i", "Movies", "--o", "."]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("Movies/a.tif")), frames)
    capsys.readouterr()
    assert main(["--i", "Movies", "--o", ".", "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out


def test_an_mrc_preallocated_to_its_full_size_is_handed_out_again_when_its_data_arrive(tmp_path: Path) -> None:
    """An MRC whose writer sets its full size first (the header claims every frame, the frames
    are zeros) and pauses longer than the settle time looks complete: it is handed out. When
    its frames arrive, it is handed out again once it settles, and only after the first
    conversion is over (``in_progress``)."""
    from cryotiff.convert import ConvertOptions
    from cryotiff.watch import MovieWatch, WatchOptions

    frames = np.random.default_rng(2).integers(1, 9, (3, 16, 20)).astype(np.int16)
    movie = tmp_path / "m.mrc"
    write_mrc_movie(movie, np.zeros_like(frames), 1)
    now = [1000.0]
    busy = {"converting": True}
    watch = MovieWatch([str(tmp_path)], ConvertOptions(output_dir=tmp_path / "out"), WatchOptions(settle_seconds=10),
                       clock=lambda: now[0], wall_clock=lambda: time.time() + now[0] - 1000.0,
                       in_progress=lambda source: busy["converting"])
    now[0] += 20
    assert [job.source for job in watch.look().ready] == [movie]
    before = movie.stat().st_mtime_ns
    write_mrc_movie(movie, frames, 1)  # the frames arrive: same size, later modification time
    os.utime(movie, ns=(before + 10**9, before + 10**9))
    now[0] += 20
    found = watch.look()
    assert found.ready == [] and not found.notes  # its first conversion is still running
    busy["converting"] = False
    found = watch.look()
    assert found.ready == [] and found.notes == [
        f"{movie}: changed after its conversion ({movie.stat().st_size} bytes then, {movie.stat().st_size} now); "
        "converting it again once it is complete"]
    now[0] += 11
    found = watch.look()
    assert [job.source for job in found.ready] == [movie] and found.again == [movie]
    now[0] += 100
    assert watch.look().ready == []  # once more only


# --------------------------------------------------------------------------- what a deletion script trusts


def test_verifying_nothing_is_a_failure(in_tmp: Path, capsys) -> None:
    """A deletion script that trusts exit status 0 went on after "Verified 0 outputs" (an empty
    manifest, a wrong ``--o``): checking nothing proves nothing, so it is a failure, said once."""
    Path("out").mkdir()
    Path("out", MANIFEST_NAME).touch()
    assert main(["--verify_only", "--o", "out"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "ERROR: nothing was verified: out/cryotiff-manifest.jsonl names no output and out holds no .tif file "
        "(is --o the directory the movies were converted into?)"), captured.err
    assert "Verified 0 outputs" not in captured.out
    assert "Traceback" not in captured.err
    if MPIRUN.exists():  # rank 0 of the MPI command says the same
        import subprocess

        done = subprocess.run(mpirun_prefix() + [sys.executable, "-m", "cryotiff.mpi", "--verify_only", "--o", "out"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done
        assert "ERROR: nothing was verified: out/cryotiff-manifest.jsonl names no output" in done.stderr, done
        assert "Verified 0 outputs" not in done.stdout
    # An output there makes it a real check again.
    int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    assert main(["--verify_only", "--o", "out"]) == 0


def test_a_verdict_on_a_single_page_output_says_1_page(in_tmp: Path, capsys) -> None:
    int16_movie("a.mrc", 1, n_frames=1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 0
    assert verdict_lines(capsys.readouterr().out) == ["OK        out/a.tif (1 page; compared with the manifest)"]
    int16_movie("a.mrc", 1, n_frames=2)
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 1
    assert verdict_lines(capsys.readouterr().out) == [
        "DIFFERS   out/a.tif: 1 page of 20 x 16; a.mrc gives 2 pages of 20 x 16"]


def test_a_manifest_line_of_an_earlier_version_without_the_gain_reference_leaves_it_unchecked(
        in_tmp: Path, capsys) -> None:
    """A line written before the manifest recorded the gain reference is still read; its
    pages are checked, but nothing says which gain reference they need, so a gain-normalised
    output is ``UNCHECKED`` (exit status 1) rather than called exact."""
    gain_normalised_run()
    manifest = Path("out", MANIFEST_NAME)
    line = json.loads(manifest.read_text())
    del line["gain_reference"]
    manifest.write_text(json.dumps(line) + "\n")
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 1
    assert verdict_lines(capsys.readouterr().out) == [
        "UNCHECKED out/g1.tif: its pixels are as written, but its manifest line (written by an earlier cryotiff) "
        "does not say which out/gain-reference.mrc they need (TIFF x gain reference = the original); check it "
        "with --i against its original"]
    assert main(["--verify_only", "--i", "g1.mrc", "--o", "out"]) == 0


def eer_with_a_damaged_frame(path: Path, seed: int = 3) -> tuple[list, list]:
    """A 4-frame EER whose raw frame 2 is damaged in place (one byte changed: its runs no longer
    add up, the file keeps its size, as a bit flip on a disk does); the events and the streams
    of the intact movie."""
    from cryotiff.io.eer import EerMovie
    from cryotiff.simulate import eer as S

    frames = S.random_events(np.random.default_rng(seed), 2048, 4, 0.002)
    streams = [S.encode_frame(frame, 2048, 65001) for frame in frames]
    for at in range(len(streams[1]) // 2, len(streams[1])):
        damaged = bytearray(streams[1])
        damaged[at] ^= 0xFF
        S.write_eer(path, [streams[0], bytes(damaged), *streams[2:]], 2048, 65001)
        with EerMovie(path) as movie:
            if movie.corrupt_frames() == [1]:
                return frames, streams
    raise AssertionError("no byte of frame 2 damages it")


def test_a_rerun_does_not_hide_that_an_eer_output_lacks_damaged_frames(in_tmp: Path, capsys) -> None:
    """A damaged raw EER frame is left out of its page, with RELION's warning, and the run
    exits 1 (0 with ``--ignore_error``). A rerun with ``--only_do_unfinished`` skipped the
    output and exited 0 without a word. It now says what the first run said and exits as it
    did; and once the frame reads again (a new copy of the movie), it converts the movie again."""
    from cryotiff.simulate import eer as S

    frames, streams = eer_with_a_damaged_frame(Path("bad.eer"))
    relion_warning = ("WARNING: The number of pixels is not right in bad.eer frame 2. Probably this frame is corrupted. "
                      "This frame is skipped.")
    damaged = "Damaged raw EER frames left out: 1 in 1 movie (each named by a WARNING above)"
    convert = ["--i", "bad.eer", "--o", "out", "--eer_grouping", "1"]
    assert main(convert) == 1
    captured = capsys.readouterr()
    assert relion_warning in captured.err
    assert f"{damaged}; exit status 1 (--ignore_error accepts them)" in captured.out
    written = Path("out/bad.tif").read_bytes()

    kept = ("out/bad.tif: kept from an earlier conversion, which left out 1 damaged raw frame of bad.eer (frame 2); "
            "it is damaged still")
    for extra, status, end in (([], 1, "exit status 1 (--ignore_error accepts them)"),
                               (["--ignore_error"], 0, "accepted with --ignore_error")):
        assert main([*convert, "--only_do_unfinished", *extra]) == status, extra
        captured = capsys.readouterr()
        assert "Movies converted: 0, skipped: 1, failed: 0" in captured.out, captured.out
        assert kept in captured.out
        assert relion_warning in captured.err
        assert f"{damaged}; {end}" in captured.out
        assert Path("out/bad.tif").read_bytes() == written
    if MPIRUN.exists():  # the MPI command's rerun says the same
        import subprocess

        done = subprocess.run(mpirun_prefix() + [sys.executable, "-m", "cryotiff.mpi", *convert, "--only_do_unfinished"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done
        assert kept in done.stdout and relion_warning in done.stderr, done
        assert f"{damaged}; exit status 1" in done.stdout, done

    # A new copy of the movie, of the same size, whose frame 2 reads: converted again, whole.
    S.write_eer(Path("bad.eer"), streams, 2048, 65001)
    assert main([*convert, "--only_do_unfinished"]) == 0
    captured = capsys.readouterr()
    assert ("out/bad.tif: raw frame 2 of bad.eer, left out of it as damaged at its conversion, now reads (a new copy "
            "of the movie?); converting again") in captured.out, captured.out
    assert "Movies converted: 1, skipped: 0, failed: 0" in captured.out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/bad.tif")), [
        np.bincount(frame.positions, minlength=2048 * 2048).reshape(2048, 2048) for frame in frames])
    assert main([*convert, "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out


def test_a_rerun_converts_an_eer_output_that_no_manifest_line_describes_again(in_tmp: Path, capsys) -> None:
    """Whether damaged raw frames were left out of an EER output is known only from its
    manifest line: without one (a manifest removed, a line written by an earlier cryotiff, a
    line of another file than the one there now), the rerun cannot tell, and converts it again."""
    eer_with_a_damaged_frame(Path("bad.eer"))
    convert = ["--i", "bad.eer", "--o", "out", "--eer_grouping", "1", "--ignore_error"]
    assert main(convert) == 0
    manifest = Path("out", MANIFEST_NAME)
    line = json.loads(manifest.read_text())
    assert line["left_out_raw_frames"] == [2]
    del line["left_out_raw_frames"]
    manifest.write_text(json.dumps(line) + "\n")
    capsys.readouterr()
    assert main([*convert, "--only_do_unfinished"]) == 0
    captured = capsys.readouterr()
    assert ("out/bad.tif: no line of out/cryotiff-manifest.jsonl says which damaged raw frames of bad.eer were left "
            "out of it; converting again") in captured.out, captured.out
    assert "Movies converted: 1, skipped: 0, failed: 0" in captured.out
    assert "Damaged raw EER frames left out: 1 in 1 movie" in captured.out
    manifest.unlink()
    assert main([*convert, "--only_do_unfinished"]) == 0
    assert "Movies converted: 1, skipped: 0, failed: 0" in capsys.readouterr().out
    assert main([*convert, "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out


def test_the_manifest_check_of_an_eer_output_that_lacks_damaged_frames_says_so(in_tmp: Path, capsys) -> None:
    """With the originals, an EER output whose damaged raw frames were left out ``DIFFERS``
    unless ``--ignore_error``; the manifest check called it exact, so the verdict depended on
    whether the originals were still there. Both now say the same."""
    eer_with_a_damaged_frame(Path("bad.eer"))
    assert main(["--i", "bad.eer", "--o", "out", "--eer_grouping", "1"]) == 1
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        "DIFFERS   out/bad.tif: its pixels are as written, but they leave out 1 damaged raw frame of bad.eer "
        "(frame 2), whose electrons the TIFF lacks (--ignore_error accepts that)"], out
    assert main(["--verify_only", "--o", "out", "--ignore_error"]) == 0
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        "OK        out/bad.tif (4 pages; compared with the manifest); 1 damaged raw frame (frame 2) left out, as "
        "--ignore_error accepts"], out
    assert "Every page of every output is exact" not in out


def test_an_input_replaced_by_another_movie_with_the_same_last_frame_is_converted_again(in_tmp: Path,
                                                                                       capsys) -> None:
    """Only the last page was compared with the movie: movies whose last frames are alike (blank
    frames at the end of an exposure), or a movie whose first blocks arrived last (a transfer
    that writes a file's blocks out of order, converted before it ended: same size, last frame
    there), kept the old pages. The first page is compared too."""
    first = int16_movie("a.mrc", 1)
    first[-1] = 0  # a blank last frame
    write_mrc_movie(Path("a.mrc"), first, 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    second = first.copy()
    second[0] = np.random.default_rng(2).integers(-3, 9, second[0].shape)
    write_mrc_movie(Path("a.mrc"), second, 1)
    capsys.readouterr()
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert ("out/a.tif: its first page differs from page 1 of a.mrc (made from another movie of the same name and "
            "size?); converting again") in out, out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), second)
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["with the manifest", "with the originals", "with the originals and --gain",
                                 "with the originals and --gain, no manifest"])
def test_the_gain_reference_written_for_eer_movies_is_checked(in_tmp: Path, capsys, how: str) -> None:
    """``--gain`` with EER movies writes ``<o>/gain-reference.mrc``, the EER gain as RELION
    converts it (``src/tiff_converter.cpp``), which the TIFFs' counts are to be multiplied by.
    ``--verify_only`` passed with that file missing or replaced, which let the originals (and
    the gain) be deleted with no gain left for the movies. Its digest is now in each EER line."""
    import mrcfile

    from cryotiff.gain.files import write_float_mrc
    from cryotiff.simulate.eer import random_events, write_eer

    write_eer(Path("m.eer"), random_events(np.random.default_rng(1), 2048, 4, 0.002), 2048)
    eer_gain = np.random.default_rng(2).uniform(0.5, 2.0, (2048, 2048)).astype(np.float32)
    with mrcfile.new("gain.mrc") as mrc:
        mrc.set_data(eer_gain)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2", "--gain", "gain.mrc"]) == 0
    line = json.loads(Path("out", MANIFEST_NAME).read_text())
    assert line["gain_reference"]["file"] == "gain-reference.mrc"
    verify = {"with the manifest": ["--verify_only", "--o", "out"],
              "with the originals": ["--verify_only", "--i", "m.eer", "--o", "out"],
              "with the originals and --gain": ["--verify_only", "--i", "m.eer", "--o", "out", "--gain", "gain.mrc"],
              }.get(how, ["--verify_only", "--i", "m.eer", "--o", "out", "--gain", "gain.mrc"])
    if how.endswith("no manifest"):  # the gain file converted again settles it
        Path("out", MANIFEST_NAME).unlink()
    said = "its pixels are as written" if how == "with the manifest" else "its pages are those of m.eer"
    needed = "out/gain-reference.mrc, the gain their counts need (the EER gain converted as RELION does),"
    capsys.readouterr()
    assert main(verify) == 0
    assert "Every page of every output is exact" in capsys.readouterr().out
    reference = Path("out/gain-reference.mrc")
    written = reference.read_bytes()

    reference.unlink()
    assert main(verify) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [f"DIFFERS   out/m.tif: {said}, but {needed} does not exist"], out

    write_float_mrc(reference, eer_gain)  # the gain as given, not inverted
    assert main(verify) == 1
    out = capsys.readouterr().out
    assert verdict_lines(out) == [
        f"DIFFERS   out/m.tif: {said}, but {needed} holds another gain reference than the one written with them"], out

    reference.write_bytes(b"not an MRC file")
    assert main(verify) == 1
    assert f"DIFFERS   out/m.tif: {said}, but {needed} cannot be read" in capsys.readouterr().out

    reference.write_bytes(written)
    assert main(verify) == 0


def zero_4_kib_inside(path: Path, page_index: int) -> int:
    """Zero the first 4 KiB block (aligned in the file, as a file server's blocks are) that
    lies inside the stored bytes of page ``page_index``; its offset."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        start = min(page.dataoffsets)
        end = max(offset + count for offset, count in zip(page.dataoffsets, page.databytecounts))
    block = -(-start // 4096) * 4096
    assert block + 4096 <= end, "the page is too small to hold an aligned 4 KiB block"
    with open(path, "r+b") as handle:
        handle.seek(block)
        handle.write(bytes(4096))
    return block


def test_a_tif_with_a_zero_filled_hole_inside_a_page_is_not_taken_as_finished(in_tmp: Path, capsys) -> None:
    """Blocks lost by a file server that crashed after the rename read back as zeros (or as a
    hole, which reads as zeros): the file keeps its size and structure, its first and last pages
    decode, and ``--only_do_unfinished`` kept it, although a middle page is damaged
    (``--verify_only`` found it). A stored 4 KiB block of zeros has its page decoded and
    compared with the movie's."""
    frames = int16_movie("a.mrc", 1, n_frames=5, shape_yx=(128, 128)) * 1000
    write_mrc_movie(Path("a.mrc"), frames, 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    hole = zero_4_kib_inside(Path("out/a.tif"), 2)
    capsys.readouterr()
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 1
    assert "DIFFERS   out/a.tif: page 3" in capsys.readouterr().out
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert (f"out/a.tif: page 3 holds 4 KiB of zero bytes at byte {hole} (lost blocks?) and cannot be decoded: "
            "its deflate compressed data are damaged; converting again") in out, out
    assert "Movies converted: 1, skipped: 0, failed: 0" in out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)
    assert main(["--verify_only", "--i", "a.mrc", "--o", "out"]) == 0


def test_a_tif_whose_pages_hold_zero_blocks_of_their_own_is_still_finished(in_tmp: Path, capsys) -> None:
    """Zero bytes a page really holds (a blank frame stored uncompressed) are no hole: the page
    equals the movie's, and the output is kept."""
    frames = int16_movie("a.mrc", 1, n_frames=5, shape_yx=(128, 128))
    frames[2] = 0
    write_mrc_movie(Path("a.mrc"), frames, 1)
    assert main(["--i", "a.mrc", "--o", "out", "--compression", "none"]) == 0
    capsys.readouterr()
    assert main(["--i", "a.mrc", "--o", "out", "--compression", "none", "--only_do_unfinished"]) == 0
    assert "Movies converted: 0, skipped: 1, failed: 0" in capsys.readouterr().out


def test_a_tif_whose_strip_offsets_of_a_page_read_as_zero_is_not_taken_as_finished(in_tmp: Path, capsys) -> None:
    """A page whose StripOffsets read back as zeros (lost blocks where the array is stored) has
    its strips "inside" the TIFF header: the file keeps its size, its first and last pages
    decode, and no page's stored bytes are zero. Such a file is damaged."""
    frames = int16_movie("a.mrc", 1, n_frames=5, shape_yx=(128, 128)) * 1000
    write_mrc_movie(Path("a.mrc"), frames, 1)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    with tifffile.TiffFile("out/a.tif") as tif:
        offsets = tif.pages[2].tags["StripOffsets"]
        at, n_bytes = offsets.valueoffset, offsets.valuebytecount
    with open("out/a.tif", "r+b") as handle:
        handle.seek(at)
        handle.write(bytes(n_bytes))
    capsys.readouterr()
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert ("out/a.tif: damaged (a strip of page 3 of 5 begins inside the TIFF header); converting again") in out, out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)
