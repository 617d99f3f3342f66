"""Adversarial cases on what users rely on before they delete the originals: ``--verify_only``
(with the originals and with the manifest), ``--only_do_unfinished`` and ``--watch``. Each case
was found once by trying to make cryotiff say something untrue about an output; it stays here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import tifffile

from cryotiff.cli import main
from cryotiff.manifest import MANIFEST_NAME
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames


def int16_movie(path: str | Path, seed: int, n_frames: int = 3, shape_yx: tuple[int, int] = (16, 20)) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(-3, 9, (n_frames, *shape_yx)).astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 1)
    return frames


def verdict_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.split(" ")[0] in ("OK", "DIFFERS", "MISSING", "UNCHECKED")]


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
        "UNCHECKED out/Sub/c.tif: no line of out/cryotiff-manifest.jsonl names it; check it against its original "
        "with --i",
    ], out
    assert "Verified 2 outputs: 1 OK, 0 differ, 0 missing, 1 could not be checked" in out
    assert "Every page of every output is exact" not in out
    # The originals settle it.
    assert main(["--verify_only", "--i", "a.mrc", "Sub/c.mrc", "--o", "out"]) == 0


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
