"""Adversarial cases found after the first round (never lose, never misstate), kept in the suite:
pixel sizes no header gave, gain references replaced by later runs, Ctrl-C in background runs,
the reasons of --dry_run and the plain words of TIFF refusals."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryotiff.cli import main
from cryotiff.simulate import eer as S
from cryotiff.simulate.write import write_mrc_movie

from .helpers import libtiff_decodes, read_tiff_frames

#: The TIFF tags that state a pixel size.
RESOLUTION_TAGS = {282: "XResolution", 283: "YResolution", 296: "ResolutionUnit"}


def int16_movie(path: str | Path, seed: int, pixel_size_angstrom: float | None = None) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 9, (3, 24, 32)).astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=pixel_size_angstrom)
    return frames


def errors_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


# --------------------------------------------------------------------------- pixel sizes no input gave


def resolution_tags_of(path: Path) -> list[dict[int, object]]:
    """The resolution tags (code: value) of every page."""
    with tifffile.TiffFile(path) as tif:
        return [{code: page.tags[code].value for code in RESOLUTION_TAGS if code in page.tags} for page in tif.pages]


def tiffinfo_mentions_resolution(path: Path) -> bool | None:
    """Whether libtiff's ``tiffinfo`` reports a resolution for any page (None: not installed)."""
    tiffinfo = shutil.which("tiffinfo")
    if tiffinfo is None:
        return None
    completed = subprocess.run([tiffinfo, str(path)], capture_output=True, text=True, check=True)
    return "Resolution" in completed.stdout


def set_header_word(path: Path, offset: int, fmt: str, value: float) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["cella-zero", "mx-zero"])
def test_an_mrc_without_a_pixel_size_gets_no_resolution_tags_and_a_warning(in_tmp: Path, capsys, what: str) -> None:
    """RELION writes 1.0 A (its samplingRateX default) when CELLA.X or MX is 0: a pixel size no
    header gave. The TIFF gets no XResolution, YResolution or ResolutionUnit at all (not even
    tifffile's placeholder 1/1 "no unit"), and a warning says so."""
    frames = int16_movie("none.mrc", 1, pixel_size_angstrom=None if what == "cella-zero" else 1.05)
    if what == "mx-zero":
        set_header_word(Path("none.mrc"), 28, "<i", 0)  # MX
    stated = int16_movie("stated.mrc", 2, pixel_size_angstrom=1.05)
    assert main(["--i", "none.mrc", "stated.mrc", "--o", "out"]) == 0
    captured = capsys.readouterr()
    assert "none.mrc: the header states no pixel size" in captured.err, captured.err
    assert "the TIFF gets no resolution tags" in captured.err
    assert "stated.mrc" not in captured.err
    assert resolution_tags_of(Path("out/none.tif")) == [{}] * 3
    assert tiffinfo_mentions_resolution(Path("out/none.tif")) in (False, None)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/none.tif")), frames)
    libtiff_decodes(Path("out/none.tif"))
    # A stated pixel size is still written, as RELION writes it.
    tags = resolution_tags_of(Path("out/stated.tif"))[0]
    assert tags[296] == 3 and tags[282][0] / tags[282][1] == pytest.approx(1e8 / 1.05)
    assert tiffinfo_mentions_resolution(Path("out/stated.tif")) in (True, None)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/stated.tif")), stated)


def test_an_eer_movie_gets_no_resolution_tags(in_tmp: Path) -> None:
    """EER pages carry no pixel size (as in RELION): no resolution tags, not tifffile's 1/1."""
    from cryotiff.simulate.eer import expected_render

    events = S.random_events(np.random.default_rng(3), 2048, 4, 0.002)
    S.write_eer(Path("m.eer"), events, 2048, 65001)
    assert main(["--i", "m.eer", "--o", "out", "--eer_grouping", "2"]) == 0
    assert resolution_tags_of(Path("out/m.tif")) == [{}] * 2
    assert tiffinfo_mentions_resolution(Path("out/m.tif")) in (False, None)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/m.tif"))[0], expected_render(events[0:2], 2048, 1))


@pytest.mark.parametrize("compression", ["deflate", "none"])
@pytest.mark.parametrize("bigtiff", [False, True])
def test_the_writer_leaves_the_resolution_tags_out_without_a_pixel_size(
    tmp_path: Path, bigtiff: bool, compression: str
) -> None:
    """:func:`cryotiff.io.tiff.write_movie` with no pixel size: no resolution tags on any page,
    in classic TIFF and in BigTIFF, every other tag and every strip as before."""
    from cryotiff.codecs import resolve_codec
    from cryotiff.io import tiff as T

    frames = np.random.default_rng(5).integers(0, 200, (4, 16, 12)).astype(np.uint16)
    codec = resolve_codec(compression, 6, 12, False)
    for pixel_size, name in ((None, "none.tif"), (2.5, "stated.tif")):
        layout = T.TiffLayout(4, (16, 12), np.dtype(np.uint16), codec.tiff_code, 16, pixel_size, "cryotiff")
        if bigtiff:
            layout = _force_bigtiff(layout)
        strips = [codec.encode(np.ascontiguousarray(frame[::-1])) for frame in frames]
        T.write_movie(tmp_path / name, layout, strips, description='{"x": 1}')
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.is_bigtiff == bigtiff
            assert tif.pages.first.description == '{"x": 1}'
            np.testing.assert_array_equal(np.stack([p.asarray() for p in tif.pages])[:, ::-1], frames)
        libtiff_decodes(tmp_path / name)
    assert resolution_tags_of(tmp_path / "none.tif") == [{}] * 4
    assert all(len(tags) == 3 for tags in resolution_tags_of(tmp_path / "stated.tif"))


def _force_bigtiff(layout):
    class Big(type(layout)):
        @property
        def bigtiff(self) -> bool:
            return True

    return Big(*(getattr(layout, name) for name in layout.__dataclass_fields__))


# --------------------------------------------------------------------------- signals in background runs


@pytest.fixture
def sigint_ignored():
    """This process ignores SIGINT, as pytest does when a shell without job control (a script's
    ``&``, a CI runner) starts it."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_test_children_take_ctrl_c_when_the_suite_ignores_it(sigint_ignored) -> None:
    """The helper that starts the children of the Ctrl-C tests gives them SIGINT at its default,
    so that Python installs its KeyboardInterrupt handler there."""
    import sys

    from .helpers import start_process

    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"]
    process = start_process(probe, stdout=subprocess.PIPE, text=True)
    assert "default_int_handler" in process.communicate(timeout=60)[0]
    plain = subprocess.run(probe, capture_output=True, text=True, timeout=60).stdout  # what it would inherit
    assert plain.strip() in ("1", "Handlers.SIG_IGN")  # SIG_IGN


def test_a_run_started_ignoring_sigint_keeps_ignoring_it_and_sigterm_still_cleans_up(in_tmp: Path,
                                                                                      sigint_ignored) -> None:
    """POSIX convention: a job started in the background (``&`` without job control, ``nohup``)
    ignores Ctrl-C, and convert-to-tiff leaves it so; SIGTERM (``kill``, a batch system) still
    removes the movie being written and exits 130."""
    import signal
    import sys
    import time

    from .test_safety import SLOW_CODEC, slow_movie, wait_until_half_written

    slow_movie("big.mrc")
    process = subprocess.Popen([sys.executable, "-m", "cryotiff", "--i", "big.mrc", "--o", "out", *SLOW_CODEC],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # inherits SIG_IGN
    try:
        wait_until_half_written(process, Path("out/big.tif"))
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert process.poll() is None, process.communicate()  # ignored
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert not Path("out/big.tif").exists()
    assert not [p.name for p in Path("out").iterdir() if p.name.startswith("big.tif")]


# --------------------------------------------------------------------------- gain references of earlier runs


def gain_normalised_movies(names: list[str], seed: int = 7, n_frames: int = 30) -> list[np.ndarray]:
    """Gain-normalised float movies of one simulated K2 detector (so that every estimate of its
    gain fits every movie)."""
    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(seed)
    detector = make_detector((48, 40), rng, defect_fraction=0.002, cold_fraction=0.001)
    movies = []
    for name in names:
        frames = detector.movie(n_frames, rng).frames
        write_mrc_movie(Path(name), frames, 2, pixel_size_angstrom=1.05)
        movies.append(frames)
    return movies


def gain_reference_of(directory: str) -> np.ndarray:
    import mrcfile

    with mrcfile.open(Path(directory) / "gain-reference.mrc") as mrc:
        return np.array(mrc.data)


def test_a_gain_reference_of_an_earlier_run_is_never_replaced_by_another(in_tmp: Path, capsys) -> None:
    """The TIFFs of gain-normalised movies are right only with their gain reference (TIFF x gain
    reference = the movie). A second run into the same --o with another gain refuses before
    converting anything, naming both, and the earlier TIFFs stay right."""
    a, b = gain_normalised_movies(["a.mrc", "b.mrc"])
    assert main(["--i", "a.mrc", "--o", "Est1", "--estimate_gain"]) == 0
    assert main(["--i", "a.mrc", "b.mrc", "--o", "Est2", "--estimate_gain"]) == 0
    assert main(["--i", "a.mrc", "--o", "out", "--gain", "Est1/gain_estimate.bin"]) == 0
    first_reference = Path("out/gain-reference.mrc").read_bytes()
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")) * gain_reference_of("out"), a)
    capsys.readouterr()

    assert main(["--i", "b.mrc", "--o", "out", "--gain", "Est2/gain_estimate.bin"]) == 2
    captured = capsys.readouterr()
    errors = errors_of(captured.err)
    assert len(errors) == 1, captured.err
    assert errors[0].startswith("ERROR: out/gain-reference.mrc exists and holds another gain reference than the "
                                "one --gain Est2/gain_estimate.bin gives"), errors
    assert "out/a.tif" not in errors[0]  # not an output of this run: not looked at
    assert "Give another --o, or remove out/gain-reference.mrc yourself" in errors[0]
    assert "Processing" not in captured.out and not Path("out/b.tif").exists()
    assert Path("out/gain-reference.mrc").read_bytes() == first_reference
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")) * gain_reference_of("out"), a)

    # Redoing a.mrc with the other gain: the refusal names the output made with the first one.
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--gain", "Est2/gain_estimate.bin"]) == 2
    error = errors_of(capsys.readouterr().err)[0]
    assert "; out/a.tif was made with --gain Est1/gain_estimate.bin (SHA-256 " in error, error
    assert Path("out/gain-reference.mrc").read_bytes() == first_reference

    # Into another --o, the other gain is written, and TIFF x its reference is the movie there too.
    assert main(["--i", "b.mrc", "--o", "out2", "--gain", "Est2/gain_estimate.bin"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("out2/b.tif")) * gain_reference_of("out2"), b)


def test_the_same_gain_reference_is_kept_not_rewritten(in_tmp: Path, capsys) -> None:
    a, b = gain_normalised_movies(["a.mrc", "b.mrc"])
    assert main(["--i", "a.mrc", "b.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert main(["--i", "a.mrc", "--o", "out", "--gain", "Est/gain_estimate.bin"]) == 0
    before = Path("out/gain-reference.mrc").stat()
    capsys.readouterr()
    assert main(["--i", "b.mrc", "--o", "out", "--gain", "Est/gain_estimate.bin"]) == 0
    out = capsys.readouterr().out
    assert ("Kept (identical) out/gain-reference.mrc. Please use this file as a gain reference when processing the "
            "converted movies.") in out
    after = Path("out/gain-reference.mrc").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    for name, frames in (("a", a), ("b", b)):
        np.testing.assert_array_equal(read_tiff_frames(Path(f"out/{name}.tif")) * gain_reference_of("out"), frames)


def eer_gain_file(path: str, seed: int, size: int = 2048) -> None:
    import mrcfile

    gain = np.random.default_rng(seed).uniform(0.5, 2.0, (size, size)).astype(np.float32)
    with mrcfile.new(path) as mrc:
        mrc.set_data(gain)


def test_an_eer_gain_reference_of_an_earlier_run_is_never_replaced(in_tmp: Path, capsys) -> None:
    events = S.random_events(np.random.default_rng(3), 2048, 4, 0.002)
    S.write_eer(Path("a.eer"), events, 2048, 65001)
    S.write_eer(Path("b.eer"), events, 2048, 65001)
    eer_gain_file("g1.mrc", 1)
    eer_gain_file("g2.mrc", 2)
    assert main(["--i", "a.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g1.mrc"]) == 0
    first_reference = Path("out/gain-reference.mrc").read_bytes()
    capsys.readouterr()
    assert main(["--i", "b.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g2.mrc"]) == 2
    captured = capsys.readouterr()
    assert ("ERROR: out/gain-reference.mrc exists and holds another gain reference than the one --gain g2.mrc "
            "gives") in captured.err
    assert not Path("out/b.tif").exists() and Path("out/gain-reference.mrc").read_bytes() == first_reference
    assert main(["--i", "b.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g1.mrc"]) == 0  # the same: kept
    assert "Kept (identical) out/gain-reference.mrc" in capsys.readouterr().out
    assert Path("out/gain-reference.mrc").read_bytes() == first_reference


def test_dry_run_says_the_run_would_refuse_the_gain(in_tmp: Path, capsys) -> None:
    events = S.random_events(np.random.default_rng(3), 2048, 4, 0.002)
    S.write_eer(Path("a.eer"), events, 2048, 65001)
    eer_gain_file("g1.mrc", 1)
    eer_gain_file("g2.mrc", 2)
    assert main(["--i", "a.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g1.mrc"]) == 0
    capsys.readouterr()
    assert main(["--i", "a.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g2.mrc", "--dry_run"]) == 2
    assert "ERROR: out/gain-reference.mrc exists and holds another gain reference" in capsys.readouterr().err
    assert main(["--i", "a.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g1.mrc", "--dry_run"]) == 0


def test_a_gain_reference_written_meanwhile_by_another_run_is_never_replaced(tmp_path: Path, monkeypatch) -> None:
    """Two runs into one --o at once: the file is linked into place, which fails where the other
    run's file has appeared since the check; that one is kept, or refused if it differs."""
    from cryotiff.errors import ExistingOutputError
    from cryotiff.gain import files as G

    path = tmp_path / "gain-reference.mrc"
    ours, theirs = np.full((4, 6), 2.0, np.float32), np.full((4, 6), 3.0, np.float32)
    real_temporary = G._write_mrc_temporary

    def other_run_first(destination, data, **kwargs):
        target = real_temporary(destination, data, **kwargs)
        real_temporary(destination, other, **kwargs).commit()  # the other run's file appears now
        return target

    monkeypatch.setattr(G, "_write_mrc_temporary", other_run_first)
    other = ours
    assert G.keep_or_write_gain_reference(path, ours, made_from="--gain g") is False  # identical: kept
    path.unlink()
    other = theirs
    with pytest.raises(ExistingOutputError, match="holds another gain reference than the one --gain g gives"):
        G.keep_or_write_gain_reference(path, ours, made_from="--gain g")
    monkeypatch.undo()
    assert np.all(gain_reference_of(str(tmp_path)) == 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gain-reference.mrc"]  # no temporary file left


def test_mpi_refuses_another_gain_reference_on_every_rank(in_tmp: Path) -> None:
    from .test_mpi import MPIRUN, run_mpi

    if not MPIRUN.exists():
        pytest.skip("no mpirun next to the interpreter (pip install .[mpi])")
    events = S.random_events(np.random.default_rng(3), 2048, 4, 0.002)
    S.write_eer(Path("a.eer"), events, 2048, 65001)
    eer_gain_file("g1.mrc", 1)
    eer_gain_file("g2.mrc", 2)
    assert main(["--i", "a.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g1.mrc"]) == 0
    first_reference = Path("out/gain-reference.mrc").read_bytes()
    Path("out/a.tif").unlink()
    completed = run_mpi(["--i", "a.eer", "--o", "out", "--eer_grouping", "2", "--gain", "g2.mrc"], in_tmp)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.count("ERROR: out/gain-reference.mrc exists and holds another gain reference") == 1
    assert not Path("out/a.tif").exists() and Path("out/gain-reference.mrc").read_bytes() == first_reference


def test_a_fresh_estimate_into_an_output_holding_one_says_it_replaces_it(in_tmp: Path, capsys) -> None:
    """--estimate_gain without --gain into an --o that holds an estimate replaces it (as RELION
    does) after the first movie: said, with the way to add to it instead. Resuming says nothing
    of the kind."""
    gain_normalised_movies(["a.mrc", "b.mrc"])
    assert main(["--i", "a.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert "is replaced" not in capsys.readouterr().err
    assert main(["--i", "b.mrc", "--o", "Est", "--estimate_gain"]) == 0
    assert ("WARNING: Est/gain_estimate.bin exists; after the first movie it is replaced by a new estimate with the "
            "movies given, without the movies in it now. To add the movies to it instead, give --gain "
            "Est/gain_estimate.bin.") in capsys.readouterr().err
    assert main(["--i", "a.mrc", "--o", "Est", "--estimate_gain", "--gain", "Est/gain_estimate.bin"]) == 0
    assert "is replaced" not in capsys.readouterr().err


# --------------------------------------------------------------------------- --dry_run says why


def test_dry_run_says_why_an_existing_output_would_be_converted_again(in_tmp: Path, capsys) -> None:
    """The reasons are those --only_do_unfinished prints when it converts again (one check for
    both); without --only_do_unfinished, that the existing file would be replaced."""
    import json

    int16_movie("done.mrc", 1, 1.05)
    int16_movie("cut.mrc", 2, 1.05)
    int16_movie("changed.mrc", 3, 1.05)
    int16_movie("new.mrc", 4, 1.05)
    assert main(["--i", "done.mrc", "cut.mrc", "changed.mrc", "--o", "out"]) == 0
    data = Path("out/cut.tif").read_bytes()
    Path("out/cut.tif").write_bytes(data[: len(data) - 20])
    int16_movie("changed.mrc", 5, 1.05)
    with open("changed.mrc", "ab") as handle:
        handle.write(bytes(24 * 32 * 2))  # another size (a frame the header does not count)
    capsys.readouterr()

    movies = ["done.mrc", "cut.mrc", "changed.mrc", "new.mrc"]
    assert main(["--i", *movies, "--o", "out", "--only_do_unfinished", "--dry_run", "--report", "plan.json"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "Would skip done.mrc: out/done.tif is complete" in lines
    cut = lines.index(next(line for line in lines if line.startswith("Would convert cut.mrc into out/cut.tif")))
    assert lines[cut + 1].startswith("  out/cut.tif: incomplete (") and lines[cut + 1].endswith("; converting again")
    changed = lines.index(next(line for line in lines if line.startswith("Would convert changed.mrc")))
    assert lines[changed + 1] == (f"  out/changed.tif: made from changed.mrc when it had {3 * 24 * 32 * 2 + 1024} "
                                  f"bytes; it now has {4 * 24 * 32 * 2 + 1024}; converting again")
    new = lines.index(next(line for line in lines if line.startswith("Would convert new.mrc")))
    assert not lines[new + 1].startswith("  ")
    plan = {Path(m["source"]).name: m for m in json.loads(Path("plan.json").read_text())["movies"]}
    assert plan["cut.mrc"]["reason"] == lines[cut + 1].strip() and plan["new.mrc"]["reason"] == ""

    # The real run gives the same reasons.
    assert main(["--i", *movies, "--o", "out", "--only_do_unfinished"]) == 0
    real = capsys.readouterr().out.splitlines()
    assert lines[cut + 1].strip() in real and lines[changed + 1].strip() in real

    # Without --only_do_unfinished every existing output is replaced: said so.
    assert main(["--i", "done.mrc", "new.mrc", "--o", "out2", "--dry_run"]) == 0
    assert "  out2/done.tif" not in capsys.readouterr().out
    assert main(["--i", "done.mrc", "--o", "out", "--dry_run"]) == 0
    assert ("  out/done.tif exists and would be replaced (without --only_do_unfinished every movie is converted)"
            in capsys.readouterr().out.splitlines())


# --------------------------------------------------------------------------- TIFF refusals in plain words


def damaged_tiff(path: Path, damage: str) -> None:
    """A 3-page deflate TIFF movie, damaged one way."""
    from .test_adversarial_inputs import patch_tag, tiff_movie

    tiff_movie(path, software="a writer")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        first_ifd, second = tif.pages[0].offset, tif.pages[1]
        n_tags = len(tif.pages[0].tags)
        strip = (second.dataoffsets[0], second.databytecounts[0])
    if damage == "value-offset":
        patch_tag(path, 0, 305, value=10**9)  # the Software text beyond the end
    elif damage == "data-type":
        patch_tag(path, 0, 282, dtype=19)
    elif damage == "next-ifd":
        struct.pack_into("<I", data, first_ifd + 2 + 12 * n_tags, len(data) + 5000)
        path.write_bytes(bytes(data))
    elif damage == "text-counts":
        patch_tag(path, 0, 279, dtype=2)  # StripByteCounts as ASCII: tifffile compares text with numbers
    elif damage == "rational-rows":
        patch_tag(path, 0, 278, dtype=5)
    elif damage == "two-widths":
        patch_tag(path, 0, 256, count=2, dtype=3)
    elif damage == "strip-data":
        for index in range(strip[0] + 2, strip[0] + strip[1] - 4):
            data[index] ^= 0x5A
        path.write_bytes(bytes(data))
    elif damage == "header":
        path.write_bytes(b"HI" + bytes(data[2:]))
    elif damage == "first-ifd":
        struct.pack_into("<I", data, 4, 10**6)
        path.write_bytes(bytes(data))
    else:
        raise ValueError(damage)


@pytest.mark.parametrize("damage, message", [
    ("value-offset", "the value of tag 305 (Software) lies outside the file; the file is truncated or damaged"),
    ("data-type", "tag 282 (XResolution) has an invalid data type (19); the file is damaged"),
    ("next-ifd", "points outside the file; the file is truncated or damaged"),
    ("text-counts", "page 1: the StripByteCounts tag (279) is of type ASCII, where whole numbers are needed; "
                    "the file is damaged"),
    ("rational-rows", "page 1: the RowsPerStrip tag (278) is of type RATIONAL, where whole numbers are needed"),
    ("two-widths", "page 1: the ImageWidth tag (256) holds 2 different values (40, 0) where one is needed"),
    ("strip-data", "page 2 cannot be decoded: its deflate compressed data are damaged"),
    ("header", "its first bytes are no TIFF header (not a TIFF file, or its start is damaged)"),
    ("first-ifd", "the TIFF file has no readable image: its header puts the first page (IFD) at byte 1000000, "
                  "beyond the end of the file"),
])
def test_a_damaged_tiff_is_refused_in_plain_words(in_tmp: Path, capsys, damage: str, message: str) -> None:
    """tifffile's own words (``<tifffile.TiffPages @8> invalid page offset``, ``'<' not supported
    between instances of 'str' and 'int'``) say nothing to a user: the refusal names the file,
    the page and the tag, and what is wrong with them."""
    from .test_adversarial_inputs import RAW_TIFFFILE_TEXT

    damaged_tiff(Path("bad.tif"), damage)
    good = int16_movie("good.mrc", 1, 1.05)
    assert main(["--i", "bad.tif", "good.mrc", "--o", "out"]) == 1
    errors = errors_of(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith("ERROR: bad.tif: "), errors
    assert message in errors[0], errors
    assert not any(raw in errors[0] for raw in RAW_TIFFFILE_TEXT), errors
    np.testing.assert_array_equal(read_tiff_frames(Path("out/good.tif")), good)


def test_an_output_damaged_in_its_structure_is_converted_again_saying_why(in_tmp: Path, capsys) -> None:
    """--only_do_unfinished meets a .tif whose IFD chain is damaged: the same plain words."""
    frames = int16_movie("m.mrc", 1, 1.05)
    assert main(["--i", "m.mrc", "--o", "out"]) == 0
    data = bytearray(Path("out/m.tif").read_bytes())
    with tifffile.TiffFile("out/m.tif") as tif:
        first, n_tags = tif.pages[0].offset, len(tif.pages[0].tags)
    struct.pack_into("<I", data, first + 2 + 12 * n_tags, len(data) + 100)  # the next IFD beyond the end
    Path("out/m.tif").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["--i", "m.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    out = capsys.readouterr().out
    assert (f"out/m.tif: incomplete (the TIFF structure is cut or damaged after page 1: the IFD offset of a page "
            f"({len(data) + 100}) points outside the file; the file is truncated or damaged); converting again"
            in out), out
    np.testing.assert_array_equal(read_tiff_frames(Path("out/m.tif")), frames)
