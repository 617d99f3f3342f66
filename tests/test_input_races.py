"""Inputs checked by name and then opened: a named pipe (FIFO) that takes the name in between
must give the usual one-line refusal or leave the file that was checked converted, never a hang
(tests/races.py swaps the name after each look at it in turn)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers import HANG_SECONDS
from tests.races import movie_frames

REPOSITORY = Path(__file__).resolve().parent.parent
#: The hang limit (tests/helpers.HANG_SECONDS); CRYOTIFF_RACE_HANG_SECONDS shortens it to see the
#: tests fail on a version that hangs.
HANG_LIMIT = float(os.environ.get("CRYOTIFF_RACE_HANG_SECONDS", HANG_SECONDS))


def race_runs(tmp_path: Path, inputs: dict[str, str], target: str, argv: list[str]) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"inputs": inputs, "target": target, "argv": argv}))
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run([sys.executable, "-m", "tests.races", str(spec)], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=HANG_LIMIT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"a run hung (a named pipe at {target} was opened to be read): {exc.stderr}") from None
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout.splitlines()[-1])
    assert runs[0]["looks"] >= 1 and len(runs) == runs[0]["looks"] + 1, runs[0]
    return runs


def check_outcome(run: dict, target: str, output: Path, expected: np.ndarray | None, flip: bool = True,
                  converted_on_failure: bool = False) -> None:
    """Converted from the file that was there (pixels equal, after the flip of an MRC movie's
    rows; a TIFF movie's pages are copied as stored), or one clear failure naming the file as a
    named pipe, and no .tif (``converted_on_failure``: a list file read again after its movie
    was converted, whose failure leaves the .tif); never a traceback."""
    assert "Traceback" not in run["stderr"], run
    if run["status"] != 0:
        assert f"{target}: is a named pipe (FIFO), not a regular file" in run["stderr"], run
        # A movie converted whose original could not be hashed for its manifest line (the pipe
        # took its name after the conversion opened it) keeps its .tif, and exit status 1 says
        # that the line is missing.
        kept = converted_on_failure or "is complete but not in the manifest" in run["stderr"]
        assert kept or not output.exists(), run
    else:
        assert output.is_file(), run
    if output.exists() and expected is not None:
        pages = tifffile.imread(output)
        np.testing.assert_array_equal(pages[..., ::-1, :] if flip else pages, expected)


@pytest.mark.parametrize("kind", ["mrc", "tif"])
def test_a_movie_whose_name_a_named_pipe_takes_after_any_look_never_hangs(tmp_path: Path, kind: str) -> None:
    name = f"a.{kind}"
    runs = race_runs(tmp_path, {name: kind}, name, ["--i", name, "--o", "out", "--j", "1"])
    for run in runs:
        check_outcome(run, name, tmp_path / f"run-{run['n']}/out/a.tif", movie_frames().astype(
            np.int16 if kind == "mrc" else np.uint16), flip=kind == "mrc")
    assert runs[0]["status"] == 0 and not runs[0]["swapped"]
    assert any(run["status"] == 0 and run["swapped"] for run in runs[1:]), "no swap after the movie was opened"


def test_an_eer_movie_and_its_gain_whose_names_a_named_pipe_takes_never_hang(tmp_path: Path) -> None:
    inputs = {"a.eer": "eer", "g.gain": "gain"}
    argv = ["--i", "a.eer", "--o", "out", "--gain", "g.gain", "--eer_grouping", "2"]
    for target in ("a.eer", "g.gain"):
        for run in race_runs(tmp_path / target.replace(".", "-"), inputs, target, argv):
            check_outcome(run, target, tmp_path / target.replace(".", "-") / f"run-{run['n']}/out/a.tif", None)


@pytest.mark.parametrize("list_name", ["movies.star", "movies.lst"])
def test_a_list_of_movies_whose_name_a_named_pipe_takes_never_hangs(tmp_path: Path, list_name: str) -> None:
    kind = "star" if list_name.endswith(".star") else "lst"
    runs = race_runs(tmp_path, {"a.mrc": "mrc", list_name: f"{kind}:a.mrc"}, list_name,
                     ["--i", list_name, "--o", "out"])
    for run in runs:
        check_outcome(run, list_name, tmp_path / f"run-{run['n']}/out/a.tif", movie_frames(),
                      converted_on_failure=True)


def test_the_descriptor_opened_is_what_is_refused_or_read(tmp_path: Path) -> None:
    """open_regular_file judges the file it opened: a named pipe is opened without blocking and
    refused; a regular file's descriptor reads as usual (O_NONBLOCK cleared)."""
    import fcntl

    from cryotiff.errors import InputError
    from cryotiff.io import open_regular_file

    os.mkfifo(tmp_path / "pipe.mrc")
    with pytest.raises(InputError, match=r"pipe\.mrc: is a named pipe \(FIFO\), not a regular file; an MRC file "):
        open_regular_file(tmp_path / "pipe.mrc", "an MRC file")
    (tmp_path / "here").mkdir()
    with pytest.raises(InputError, match=r"here: is a directory, not a movie"):
        open_regular_file(tmp_path / "here")
    (tmp_path / "plain").write_bytes(b"abc")
    descriptor = open_regular_file(tmp_path / "plain")
    try:
        assert not fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_NONBLOCK
        assert os.pread(descriptor, 3, 0) == b"abc"
    finally:
        os.close(descriptor)


def test_a_manifest_that_is_a_named_pipe_is_refused_when_read_and_when_added_to(tmp_path: Path) -> None:
    from cryotiff.errors import OutputError
    from cryotiff.manifest import MANIFEST_NAME, Manifest, read_manifest

    os.mkfifo(tmp_path / MANIFEST_NAME)
    with pytest.raises(OutputError, match=r"cryotiff-manifest\.jsonl: is a named pipe \(FIFO\), not a regular file"):
        read_manifest(tmp_path)
    manifest = Manifest(tmp_path)
    with pytest.raises(OutputError, match=r"cryotiff-manifest\.jsonl: is a named pipe \(FIFO\), not a regular file"):
        manifest.recorded(tmp_path / "a.tif")
    from cryotiff.manifest import _append_locked

    with pytest.raises(OutputError, match=r"cryotiff-manifest\.jsonl: is a named pipe \(FIFO\), not a regular file"):
        _append_locked(tmp_path / MANIFEST_NAME, "{}\n")
