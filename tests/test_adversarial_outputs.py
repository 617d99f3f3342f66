"""Adversarial cases on the output side: inputs that outputs could overwrite, symlinks in and
around ``--o``, concurrent runs into one ``--o``, stale temporary files, ``--only_do_unfinished``
meeting damaged outputs or outputs made with other options, permissions, and unwritable gain
files. Each case was found once by trying to make cryotiff lose or misstate data; it stays here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import int16_movie, read_tiff_frames
from .test_safety import start_cli, wait_until_half_written


def tiff_movie(path: str | Path, frames: np.ndarray) -> None:
    """A TIFF input movie holding ``frames`` (written with the documented vertical flip)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, frames[:, ::-1, :], photometric="minisblack", metadata=None)


def temporary_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*.tmp"))


def errors_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


# --------------------------------------------------------------------------- inputs never overwritten


def test_an_input_is_never_overwritten_by_another_inputs_output(in_tmp: Path, capsys) -> None:
    """``--i Movies/x.mrc Movies/x.tif --o ./``: x.mrc's output would be Movies/x.tif, an input."""
    int16_movie("Movies/x.mrc", 1)
    tif_frames = np.random.default_rng(2).integers(0, 100, (2, 16, 20)).astype(np.uint16)
    tiff_movie("Movies/x.tif", tif_frames)
    before = Path("Movies/x.tif").read_bytes()
    y = int16_movie("Movies/y.mrc", 3)
    for order in (["Movies/x.mrc", "Movies/x.tif"], ["Movies/x.tif", "Movies/x.mrc"]):
        assert main(["--i", *order, "Movies/y.mrc", "--o", "./"]) == 1
        captured = capsys.readouterr()
        assert Path("Movies/x.tif").read_bytes() == before, order
        errors = errors_of(captured.err)
        assert any("Movies/x.mrc" in e and "input" in e for e in errors), errors
        assert "Traceback" not in captured.err
        np.testing.assert_array_equal(read_tiff_frames(Path("Movies/y.tif")), y)  # the others go on


def test_an_input_reached_through_a_symlinked_directory_is_never_overwritten(in_tmp: Path, capsys) -> None:
    """The output directory holds a symlink to the movie directory: ``out/Movies -> ../Movies``.
    x.mrc's output ``out/Movies/x.tif`` is then the input ``Movies/x.tif``."""
    int16_movie("Movies/x.mrc", 1)
    tiff_movie("Movies/x.tif", np.ones((2, 16, 20), np.uint16))
    before = Path("Movies/x.tif").read_bytes()
    Path("out").mkdir()
    Path("out/Movies").symlink_to("../Movies")
    assert main(["--i", "Movies/x.mrc", "Movies/x.tif", "--o", "out"]) == 1
    assert Path("Movies/x.tif").read_bytes() == before
    errors = errors_of(capsys.readouterr().err)
    assert any("Movies/x.mrc" in e and "is an input" in e for e in errors), errors


def test_an_input_hard_linked_at_the_output_name_is_refused(in_tmp: Path, capsys) -> None:
    int16_movie("Movies/x.mrc", 1)
    tiff_movie("Raw/x.tif", np.ones((2, 16, 20), np.uint16))
    Path("out/Movies").mkdir(parents=True)
    os.link("Raw/x.tif", "out/Movies/x.tif")  # the same file under the output's name
    before = Path("Raw/x.tif").read_bytes()
    assert main(["--i", "Movies/x.mrc", "Raw/x.tif", "--o", "out"]) == 1
    assert Path("Raw/x.tif").read_bytes() == before
    assert os.path.samefile("Raw/x.tif", "out/Movies/x.tif")
    assert any("Movies/x.mrc" in e and "is an input" in e for e in errors_of(capsys.readouterr().err))


# --------------------------------------------------------------------------- collisions on the real file


def test_two_movies_for_one_real_output_through_a_symlinked_directory(in_tmp: Path, capsys) -> None:
    """``out/b/A -> B``: b/A/x.mrc and b/B/x.mrc would both be written to out/b/B/x.tif."""
    a = int16_movie("b/A/x.mrc", 1)
    int16_movie("b/B/x.mrc", 2)
    Path("out/b/B").mkdir(parents=True)
    Path("out/b/A").symlink_to("B")
    assert main(["--i", "b/A/x.mrc", "b/B/x.mrc", "--o", "out"]) == 1
    captured = capsys.readouterr()
    errors = errors_of(captured.err)
    assert len(errors) == 1 and "b/B/x.mrc" in errors[0] and "b/A/x.mrc" in errors[0], errors
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b/B/x.tif")), a)
    assert "Movies converted: 1, skipped: 0, failed: 1" in captured.out


# --------------------------------------------------------------------------- never through a symlink


def test_a_symlink_at_the_old_temporary_name_is_never_written_through(in_tmp: Path) -> None:
    frames = int16_movie("c/Movies/x.mrc", 1)
    victim = in_tmp / "victim.dat"
    victim.write_bytes(b"precious")
    Path("out/c/Movies").mkdir(parents=True)
    Path("out/c/Movies/x.tif.tmp").symlink_to(victim)
    assert main(["--i", "c/Movies/x.mrc", "--o", "out"]) == 0
    assert victim.read_bytes() == b"precious"
    np.testing.assert_array_equal(read_tiff_frames(Path("out/c/Movies/x.tif")), frames)


def test_a_symlink_at_the_temporary_name_is_never_written_through(in_tmp: Path, monkeypatch) -> None:
    """Whatever name the temporary file gets, a link planted there is not followed: the
    writer takes another fresh name."""
    from cryotiff.io import atomic

    frames = int16_movie("x.mrc", 1)
    victim = in_tmp / "victim.dat"
    victim.write_bytes(b"precious")
    Path("out").mkdir()
    real_token = atomic._random_token
    tokens = iter(["00000000", "00000000"])  # the first two names tried are the planted one
    monkeypatch.setattr(atomic, "_random_token", lambda: next(tokens, None) or real_token())
    planted = Path("out") / atomic.temporary_name("x.tif", token="00000000")
    planted.symlink_to(victim)
    assert main(["--i", "x.mrc", "--o", "out"]) == 0
    assert victim.read_bytes() == b"precious" and planted.is_symlink()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/x.tif")), frames)


def test_a_symlinked_output_is_replaced_not_written_through(in_tmp: Path) -> None:
    frames = int16_movie("x.mrc", 1)
    victim = in_tmp / "victim.dat"
    victim.write_bytes(b"precious")
    Path("out").mkdir()
    Path("out/x.tif").symlink_to(victim)
    assert main(["--i", "x.mrc", "--o", "out"]) == 0
    assert victim.read_bytes() == b"precious"
    assert not Path("out/x.tif").is_symlink()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/x.tif")), frames)


# --------------------------------------------------------------------------- concurrent runs, stale files

#: A movie that takes a good part of a second to write at deflate level 12.
SLOW_SHAPE = (12, 512, 512)
SLOW_CODEC = ("--compression", "deflate", "--deflate_level", "12")


def slow_movie(path: str, seed: int = 7) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 16, SLOW_SHAPE, dtype=np.int16)
    write_mrc_movie(Path(path), frames, 1)
    return frames


def test_two_runs_into_one_output_directory_at_once_do_not_disturb_each_other(in_tmp: Path) -> None:
    big = slow_movie("big.mrc")
    small = int16_movie("small.mrc", 3)
    first = start_cli("--i", "big.mrc", "small.mrc", "--o", "out", *SLOW_CODEC)
    wait_until_half_written(first, Path("out/big.tif"), min_nbytes=1 << 16)
    second = start_cli("--i", "big.mrc", "small.mrc", "--o", "out", *SLOW_CODEC)
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "Traceback" not in err1 + err2
    np.testing.assert_array_equal(read_tiff_frames(Path("out/big.tif")), big)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/small.tif")), small)
    assert temporary_files(Path("out")) == []


def stale_temporary(directory: Path, output_name: str, token: str = "12345-0badcafe") -> Path:
    """A temporary file as a ``kill -9`` leaves it: cryotiff's name, some bytes, no lock."""
    from cryotiff.io import atomic

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / atomic.temporary_name(output_name, token=token)
    path.write_bytes(b"II*\x00" + bytes(1000))
    return path


def test_a_stale_temporary_file_is_removed_and_reported(in_tmp: Path, capsys) -> None:
    a = int16_movie("a.mrc", 1)
    int16_movie("b.mrc", 2)
    assert main(["--i", "b.mrc", "--o", "out"]) == 0
    stale_a = stale_temporary(Path("out"), "a.tif")
    stale_b = stale_temporary(Path("out"), "b.tif")  # b is finished: skipped, its stale file removed too
    other = stale_temporary(Path("out"), "c.tif")  # no movie of this run: left alone
    capsys.readouterr()
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert not stale_a.exists() and not stale_b.exists() and other.exists()
    assert f"Removed {stale_a}" in out and f"Removed {stale_b}" in out, out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


def test_a_locked_temporary_file_is_never_removed(in_tmp: Path) -> None:
    """A temporary file whose lock is held (here by another process) belongs to a live run."""
    a = int16_movie("a.mrc", 1)
    held = stale_temporary(Path("out"), "a.tif")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(held)!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["--i", "a.mrc", "--o", "out"]) == 0
        assert held.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


def test_a_foreign_x_tif_tmp_is_left_alone(in_tmp: Path) -> None:
    """RELION's own ``X.tif.tmp`` carries no lock: it may belong to a RELION run writing now."""
    int16_movie("a.mrc", 1)
    Path("out").mkdir()
    Path("out/a.tif.tmp").write_bytes(b"RELION at work")
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    assert Path("out/a.tif.tmp").read_bytes() == b"RELION at work"


# --------------------------------------------------------------------------- planning


def test_a_dot_or_root_line_in_a_list_fails_that_line_only(in_tmp: Path, capsys) -> None:
    a = int16_movie("a.mrc", 1)
    Path("movies.lst").write_text("a.mrc\n.\n/\n")
    assert main(["--i", "movies.lst", "--o", "out"]) == 1
    captured = capsys.readouterr()
    errors = errors_of(captured.err)
    assert len(errors) == 2 and all("not a movie file name" in e for e in errors), errors
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)
    assert "Movies converted: 1, skipped: 0, failed: 2" in captured.out


# --------------------------------------------------------------------------- --only_do_unfinished: complete?


def deflate_output(movie: str, frames_seed: int, n_frames: int = 4) -> tuple[np.ndarray, Path]:
    frames = int16_movie(movie, frames_seed, n_frames=n_frames, shape_yx=(48, 40))
    assert main(["--i", movie, "--o", "out", "--compression", "deflate"]) == 0
    return frames, Path("out") / Path(movie).with_suffix(".tif")


def last_strip(path: Path) -> tuple[int, int, int]:
    """``(offset, byte count, IFD offset)`` of the last page's last strip."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[-1]
        return page.dataoffsets[-1], page.databytecounts[-1], page.offset


def rerun_unfinished(capsys, movie: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--i", movie, "--o", "out", "--only_do_unfinished", "--compression", "deflate"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_tif_cut_inside_its_last_strip_is_converted_again(in_tmp: Path, capsys) -> None:
    frames, tif = deflate_output("a.mrc", 1)
    offset, count, ifd = last_strip(tif)
    assert ifd < offset  # the last IFD is intact, only the pixels are cut
    os.truncate(tif, offset + count // 2)
    status, out, err = rerun_unfinished(capsys, "a.mrc")
    assert status == 0, err
    assert "Skipping" not in out
    assert "out/a.tif: incomplete (page 4 of 4 ends beyond the end of the file); converting again" in out, out
    np.testing.assert_array_equal(read_tiff_frames(tif), frames)


def test_a_tif_cut_inside_an_ifd_says_incomplete_not_tifffiles_message(in_tmp: Path, capsys) -> None:
    frames, tif = deflate_output("a.mrc", 1)
    with tifffile.TiffFile(tif) as handle:
        third_ifd = handle.pages[2].offset
    os.truncate(tif, third_ifd + 5)
    status, out, err = rerun_unfinished(capsys, "a.mrc")
    assert status == 0, err
    assert "out/a.tif: incomplete" in out and "converting again" in out, out
    assert "tifffile" not in out + err and "invalid page offset" not in out + err
    np.testing.assert_array_equal(read_tiff_frames(tif), frames)


def test_a_last_strip_damaged_in_place_is_converted_again(in_tmp: Path, capsys) -> None:
    frames, tif = deflate_output("a.mrc", 1)
    offset, count, _ = last_strip(tif)
    with open(tif, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes(count))
    status, out, err = rerun_unfinished(capsys, "a.mrc")
    assert status == 0, err
    assert "out/a.tif: incomplete (page 4 cannot be decoded" in out, out
    np.testing.assert_array_equal(read_tiff_frames(tif), frames)


def test_a_tif_of_another_frame_size_or_type_is_converted_again(in_tmp: Path, capsys) -> None:
    frames = int16_movie("a.mrc", 1, n_frames=4, shape_yx=(48, 40))
    Path("out").mkdir()
    tifffile.imwrite("out/a.tif", np.zeros((4, 40, 48), np.int16), photometric="minisblack", metadata=None)
    status, out, _ = rerun_unfinished(capsys, "a.mrc")
    assert status == 0 and "out/a.tif: page 1 holds 48 x 40 int16, 40 x 48 int16 expected; converting again" in out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)
    tifffile.imwrite("out/a.tif", np.zeros((4, 48, 40), np.uint16), photometric="minisblack", metadata=None)
    status, out, _ = rerun_unfinished(capsys, "a.mrc")
    assert status == 0 and "out/a.tif: page 1 holds 40 x 48 uint16, 40 x 48 int16 expected; converting again" in out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)


def test_a_complete_tif_made_with_the_same_options_is_skipped(in_tmp: Path, capsys) -> None:
    frames, tif = deflate_output("a.mrc", 1)
    written = tif.stat().st_mtime_ns
    status, out, _ = rerun_unfinished(capsys, "a.mrc")
    assert status == 0 and "Skipping already processed a.mrc" in out and "converting again" not in out
    assert tif.stat().st_mtime_ns == written
    np.testing.assert_array_equal(read_tiff_frames(tif), frames)


# --------------------------------------------------------------------------- --only_do_unfinished: same options?

EER_DETECTOR = 2048


def eer_movie(path: str, n_frames: int, seed: int = 3):
    from cryotiff.simulate.eer import random_events, write_eer

    events = random_events(np.random.default_rng(seed), EER_DETECTOR, n_frames, 0.004)
    write_eer(Path(path), events, EER_DETECTOR)
    return events


def test_eer_converted_at_another_upsampling_is_converted_again(in_tmp: Path, capsys) -> None:
    from cryotiff.simulate.eer import expected_render

    events = eer_movie("m.eer", 4)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2"]) == 0
    capsys.readouterr()
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2", "--eer_upsampling", "2",
                 "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert ("out/m.tif: made with --eer_upsampling 1, this run asks for --eer_upsampling 2; converting again"
            in out), out
    pages = read_tiff_frames(Path("out/m.tif"))
    assert pages.shape == (2, 2 * EER_DETECTOR, 2 * EER_DETECTOR)
    np.testing.assert_array_equal(pages[1], expected_render(events[2:4], EER_DETECTOR, 2))


def test_eer_converted_with_another_grouping_of_the_same_page_count_is_converted_again(in_tmp: Path, capsys) -> None:
    """8 raw frames give 2 pages with a grouping of 4 and of 3: the pages alone cannot tell."""
    from cryotiff.simulate.eer import expected_render

    events = eer_movie("m.eer", 8)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "4"]) == 0
    capsys.readouterr()
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "3", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert "out/m.tif: made with --eer_grouping 4, this run asks for --eer_grouping 3; converting again" in out
    pages = read_tiff_frames(Path("out/m.tif"))
    np.testing.assert_array_equal(pages[1], expected_render(events[3:6], EER_DETECTOR, 1))
    capsys.readouterr()
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "3", "--only_do_unfinished"]) == 0
    assert "Skipping already processed m.eer" in capsys.readouterr().out


def test_a_float_movie_converted_without_the_gain_is_converted_again_with_it(in_tmp: Path, capsys) -> None:
    import mrcfile

    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(7)
    detector = make_detector((96, 80), rng, defect_fraction=0.002, cold_fraction=0.001)
    frames = detector.movie(40, rng).frames
    write_mrc_movie(Path("m.mrc"), frames, 2, pixel_size_angstrom=1.05)
    assert main(["--i", "m.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert main(["--i", "m.mrc", "--o", "out"]) == 0  # no gain: float32 as they are
    capsys.readouterr()
    assert main(["--i", "m.mrc", "--o", "out", "--gain", "Est/gain_estimate.bin", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert "out/m.tif: made with no --gain, this run asks for --gain Est/gain_estimate.bin (SHA-256 " in out, out
    with mrcfile.open("out/gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    stored = read_tiff_frames(Path("out/m.tif"))
    np.testing.assert_array_equal(stored * gain_reference, frames)  # TIFF x gain = the original
    # Another --thresh makes another gain reference: the one out/m.tif needs is not replaced ...
    rerun = ["--i", "m.mrc", "--o", "out", "--gain", "Est/gain_estimate.bin", "--only_do_unfinished", "--thresh", "20"]
    assert main(rerun) == 2
    assert "out/gain-reference.mrc exists and holds another gain reference" in capsys.readouterr().err
    with mrcfile.open("out/gain-reference.mrc") as mrc:
        np.testing.assert_array_equal(read_tiff_frames(Path("out/m.tif")) * np.array(mrc.data), frames)
    # ... unless it is removed knowingly.
    os.remove("out/gain-reference.mrc")
    assert main(rerun) == 0
    assert "made with --thresh 50, this run asks for --thresh 20; converting again" in capsys.readouterr().out
    assert main(["--i", "m.mrc", "--o", "out", "--only_do_unfinished"]) == 0  # and back without
    assert "made with --gain Est/gain_estimate.bin (SHA-256 " in capsys.readouterr().out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/m.tif")), frames)


def test_an_output_of_another_input_file_is_converted_again(in_tmp: Path, capsys) -> None:
    int16_movie("a.mrcs", 1)
    assert main(["--i", "a.mrcs", "--o", "out"]) == 0
    os.remove("a.mrcs")
    second = int16_movie("a.mrc", 2)
    capsys.readouterr()
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    assert "out/a.tif: made from a.mrcs, not from a.mrc; converting again" in capsys.readouterr().out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), second)


def test_an_output_of_an_input_that_changed_since_is_converted_again(in_tmp: Path, capsys) -> None:
    frames = np.random.default_rng(1).integers(0, 9, (3, 32, 24)).astype(np.uint16)
    tiff_movie("x.tiff", frames)
    assert main(["--i", "x.tiff", "--o", "out"]) == 0
    size = Path("x.tiff").stat().st_size
    tifffile.imwrite("x.tiff", frames[:, ::-1, :], photometric="minisblack", metadata=None, compression="zlib")
    capsys.readouterr()
    assert main(["--i", "x.tiff", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert f"out/x.tif: made from x.tiff when it had {size} bytes; it now has {Path('x.tiff').stat().st_size}" in out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/x.tif")), frames)


def relion_tiff(path: str, pages: np.ndarray) -> None:
    """A TIFF as RELION writes it: no ImageDescription, rows flipped."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pages[:, ::-1, :], photometric="minisblack", metadata=None, software="RELION")


def test_an_output_without_a_record_is_kept_only_where_no_option_changes_pixels(in_tmp: Path, capsys) -> None:
    frames = int16_movie("a.mrc", 1)
    relion_tiff("out/a.tif", frames)
    eer_movie("m.eer", 4)
    relion_tiff("out/m.tif", np.zeros((1, EER_DETECTOR, EER_DETECTOR), np.uint8))
    written = Path("out/a.tif").stat().st_mtime_ns
    assert main(["--i", "a.mrc", "m.eer", "--o", "out", "--only_do_unfinished", "--eer_grouping", "4"]) == 0
    out = capsys.readouterr().out
    assert "Skipping already processed a.mrc" in out
    assert "out/a.tif: carries no record of the options that made it (written by RELION or an older cryotiff); kept" in out
    assert Path("out/a.tif").stat().st_mtime_ns == written
    assert ("out/m.tif: carries no record of the options that made it (written by RELION or an older cryotiff), "
            "and the pixels of m.eer depend on --eer_grouping, --eer_upsampling, --short; converting again") in out
    assert read_tiff_frames(Path("out/m.tif")).any()


def test_the_record_leaves_the_tiff_a_plain_page_by_page_movie(in_tmp: Path) -> None:
    """tifffile must not take the record for its own "shaped" metadata, and libtiff reads it."""
    from cryotiff.recorded_options import read_record

    from .helpers import libtiff_decodes

    frames = int16_movie("a.mrc", 1, n_frames=5)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    with tifffile.TiffFile("out/a.tif") as tif:
        assert not tif.is_shaped and not tif.is_imagej
        assert len(tif.series) == 1 and tif.series[0].shape == frames.shape
        assert len(tif.pages) == 5
        for k, page in enumerate(tif.pages):
            np.testing.assert_array_equal(page.asarray()[::-1], frames[k])
    np.testing.assert_array_equal(tifffile.imread("out/a.tif")[:, ::-1], frames)
    record = read_record(Path("out/a.tif"))
    assert record is not None and record.made_with == {} and record.input_name == "a.mrc"
    assert record.n_pages == 5 and record.sample_type == "int16" and record.verified
    libtiff_decodes(Path("out/a.tif"))


def test_mpi_removes_stale_files_and_says_why_an_output_is_converted_again(in_tmp: Path) -> None:
    from .test_mpi import MPIRUN, run_mpi

    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the interpreter")
    frames, tif = deflate_output("a.mrc", 1)
    b = int16_movie("b.mrc", 2)
    offset, count, _ = last_strip(tif)
    os.truncate(tif, offset + count // 2)
    stale = stale_temporary(Path("out"), "b.tif")
    completed = run_mpi(["--i", "a.mrc", "b.mrc", "--o", "out", "--only_do_unfinished"], in_tmp)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("out/a.tif: incomplete (page 4 of 4 ends beyond the end of the file); "
                                  "converting again") == 1, completed.stdout
    assert not stale.exists() and completed.stdout.count(f"Removed {stale}") == 1
    np.testing.assert_array_equal(read_tiff_frames(tif), frames)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)


# --------------------------------------------------------------------------- permissions


def gain_normalised_movie(path: str, seed: int = 7, n_frames: int = 40) -> np.ndarray:
    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(seed)
    detector = make_detector((48, 40), rng, defect_fraction=0.002, cold_fraction=0.001)
    frames = detector.movie(n_frames, rng).frames
    write_mrc_movie(Path(path), frames, 2, pixel_size_angstrom=1.05)
    return frames


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_file_written_has_the_permissions_open_gives_under_the_umask(in_tmp: Path, umask: int) -> None:
    gain_normalised_movie("m.mrc")
    previous = os.umask(umask)
    try:
        assert main(["--i", "m.mrc", "--o", "Est", "--estimate_gain", "--report", "Est/report.json"]) == 0
        assert main(["--i", "m.mrc", "--o", "out", "--gain", "Est/gain_estimate.bin", "--report", "out/report.json",
                     "--pipeline_control"]) == 0
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    written = ["Est/gain_estimate.bin", "Est/gain_estimate_reliablity.bin", "Est/report.json", "out/m.tif",
               "out/gain-reference.mrc", "out/movies.star", "out/report.json", "out/RELION_OUTPUT_NODES.star"]
    modes = {name: oct(Path(name).stat().st_mode & 0o777) for name in written}
    assert modes == {name: oct(expected) for name in written}


# --------------------------------------------------------------------------- gain files that cannot be written


def refuse_temporary_files(monkeypatch, name_part: str, error_number: int) -> None:
    """The file system refuses to create files whose name holds ``name_part`` (a read-only or
    full ``--o``; root ignores chmod, so the refusal is simulated where files are created)."""
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if name_part in os.fspath(path) and flags & os.O_CREAT:
            raise OSError(error_number, os.strerror(error_number), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_a_gain_estimate_that_cannot_be_saved_is_a_clear_error(in_tmp: Path, capsys, monkeypatch) -> None:
    import errno

    gain_normalised_movie("m.mrc")
    refuse_temporary_files(monkeypatch, "gain_estimate", errno.EROFS)
    assert main(["--i", "m.mrc", "--o", "Est", "--estimate_gain"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = errors_of(err)
    assert len(errors) == 1 and "Est/gain_estimate" in errors[0] and "Read-only file system" in errors[0], errors
    assert not list(Path("Est").glob("gain_estimate*"))


def test_a_full_disk_while_saving_the_estimate_keeps_the_previous_pair(in_tmp: Path, capsys, monkeypatch) -> None:
    """The second of the files written during a save fails: the pair on disk must be the one
    saved before, byte for byte (not a new reliability map beside the old gain)."""
    import errno

    from mrcfile.mrcinterpreter import MrcInterpreter

    from cryotiff.gain import GainEstimate

    gain_normalised_movie("m1.mrc", seed=7)
    gain_normalised_movie("m2.mrc", seed=8)
    assert main(["--i", "m1.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert main(["--i", "m1.mrc", "m2.mrc", "--o", "Control", "--estimate_gain"]) == 0
    before = {name: Path("Est", name).read_bytes() for name in ("gain_estimate.bin", "gain_estimate_reliablity.bin")}
    after = GainEstimate.load(Path("Control/gain_estimate.bin"))
    assert not np.array_equal(after.gain, GainEstimate.load(Path("Est/gain_estimate.bin")).gain)  # gains change
    capsys.readouterr()
    real_flush = MrcInterpreter.flush
    flushes = []

    def flush(self) -> None:
        flushes.append(self._read_only)
        if flushes.count(False) == 2:  # the second file written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_flush(self)

    monkeypatch.setattr(MrcInterpreter, "flush", flush)
    assert main(["--i", "m2.mrc", "--o", "Est", "--estimate_gain", "--gain", "Est/gain_estimate.bin"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = errors_of(err)
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert "unchanged" in errors[0]
    assert {name: Path("Est", name).read_bytes() for name in before} == before
    assert sorted(p.name for p in Path("Est").iterdir()) == sorted(before)  # no temporary file left


@pytest.mark.parametrize("failing", [1, 2, 3])
def test_a_save_whose_fsync_fails_leaves_the_saved_pair_unchanged(in_tmp: Path, capsys, monkeypatch,
                                                                  failing: int) -> None:
    """The files of a save go to the disk on threads of their own while the next is written; when
    one of them cannot (its fsync fails), nothing is renamed: the pair saved before stays, byte
    for byte, no temporary file is left, and the error names the disk's problem."""
    import errno

    gain_normalised_movie("m1.mrc", seed=7)
    gain_normalised_movie("m2.mrc", seed=8)
    assert main(["--i", "m1.mrc", "--o", "Est", "--estimate_gain"]) == 0
    before = {name: Path("Est", name).read_bytes() for name in ("gain_estimate.bin", "gain_estimate_reliablity.bin")}
    capsys.readouterr()
    real_fsync = os.fsync
    calls = []

    def fsync(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) == failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["--i", "m2.mrc", "--o", "Est", "--estimate_gain", "--gain", "Est/gain_estimate.bin"]) == 1
    assert len(calls) == 3  # the interim reliability map, the gain, the reliability map
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = errors_of(err)
    assert len(errors) == 1 and os.strerror(errno.EIO) in errors[0] and "unchanged" in errors[0], errors
    assert {name: Path("Est", name).read_bytes() for name in before} == before
    assert sorted(p.name for p in Path("Est").iterdir()) == sorted(before)


def test_a_gain_reference_that_cannot_be_written_is_a_clear_error(in_tmp: Path, capsys, monkeypatch) -> None:
    import errno

    gain_normalised_movie("m.mrc")
    assert main(["--i", "m.mrc", "--o", "Est", "--estimate_gain"]) == 0
    capsys.readouterr()
    refuse_temporary_files(monkeypatch, "gain-reference.mrc", errno.EACCES)
    assert main(["--i", "m.mrc", "--o", "out", "--gain", "Est/gain_estimate.bin"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert errors_of(err) == ["ERROR: out/gain-reference.mrc: cannot write (Permission denied)"]


# --------------------------------------------------------------------------- inputs that name nothing, or one movie many times


def test_a_list_file_with_a_byte_order_mark(in_tmp: Path) -> None:
    a = int16_movie("a.mrc", 1)
    Path("movies.lst").write_bytes(b"\xef\xbb\xbfa.mrc\r\n")
    assert main(["--i", "movies.lst", "--o", "out"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)


def test_an_empty_list_file_is_an_error(in_tmp: Path, capsys) -> None:
    Path("movies.lst").write_text("# nothing yet\n\n")
    assert main(["--i", "movies.lst", "--o", "out"]) == 1
    assert errors_of(capsys.readouterr().err) == ["ERROR: movies.lst: the list names no movie"]


def test_a_star_file_with_an_empty_movies_table(in_tmp: Path, capsys) -> None:
    Path("movies.star").write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n_rlnMicrographOriginalPixelSize #3\n"
        "opticsGroup1 1 0.83\n\n\ndata_movies\n\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n\n")
    assert main(["--i", "movies.star", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert errors_of(err) == ["ERROR: movies.star: the movies table lists no movie"], err


def test_a_recursive_pattern_through_a_symlink_loop_converts_each_movie_once(in_tmp: Path, capsys) -> None:
    a = int16_movie("Movies/a.mrc", 1)
    Path("Movies/loop").symlink_to(".")
    assert main(["--i", "Movies/**/*.mrc", "--o", "out"]) == 0
    out = capsys.readouterr().out
    assert "Movies converted: 1, skipped: 0, failed: 0" in out
    assert sorted(str(p) for p in Path("out").rglob("*.tif")) == ["out/Movies/a.tif"]
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), a)


def test_a_benchmark_where_every_movie_failed_exits_1(in_tmp: Path, capsys) -> None:
    Path("broken.mrc").write_bytes(b"not an MRC file" * 100)
    assert main(["--benchmark", "--i", "broken.mrc"]) == 1
    assert "broken.mrc" in capsys.readouterr().out


def test_a_dry_run_of_one_movie_says_movie(in_tmp: Path, capsys) -> None:
    int16_movie("a.mrc", 1)
    assert main(["--i", "a.mrc", "--o", "out", "--dry_run"]) == 0
    assert "Dry run: 1 movie would be converted, 0 skipped, 0 cannot be converted." in capsys.readouterr().out


def test_a_stale_temporary_gain_file_is_removed_by_the_next_estimation(in_tmp: Path, capsys) -> None:
    gain_normalised_movie("m.mrc")
    stale = stale_temporary(Path("Est"), "gain_estimate.bin")
    assert main(["--i", "m.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert not stale.exists()
    assert f"Removed {stale}: a temporary file left by an interrupted run" in capsys.readouterr().out
    assert sorted(p.name for p in Path("Est").iterdir()) == ["gain_estimate.bin", "gain_estimate_reliablity.bin"]


def test_the_gain_reference_never_replaces_the_gain_given(in_tmp: Path, capsys) -> None:
    """``--gain out/gain-reference.mrc --o out`` (an EER gain kept under that name): the run
    would write its converted gain over the gain it reads."""
    import mrcfile

    eer_movie("m.eer", 4)
    Path("out").mkdir()
    gain = np.random.default_rng(4).uniform(0.5, 2.0, (EER_DETECTOR, EER_DETECTOR)).astype(np.float32)
    with mrcfile.new("out/gain-reference.mrc") as mrc:
        mrc.set_data(gain)
    before = Path("out/gain-reference.mrc").read_bytes()
    assert main(["--i", "m.eer", "--o", "out", "--gain", "out/gain-reference.mrc", "--eer_grouping", "2"]) == 2
    assert errors_of(capsys.readouterr().err) == [
        "ERROR: --gain out/gain-reference.mrc: this run would write out/gain-reference.mrc over it; "
        "choose another --o (or rename the gain file)"]
    assert Path("out/gain-reference.mrc").read_bytes() == before
