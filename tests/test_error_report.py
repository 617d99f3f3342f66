"""convert-to-tiff stopped by an unexpected error (a bug, not a CryotiffError) still writes its
``--report`` in state ``error``, with the movies done so far (cli._report_if_failed), as
convert-to-tiff-mpi's rank 0 does (tests/test_mpi_error_report.py): a script that reads the report
must not take a crashed run for one still going."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cryotiff.jobs as jobs
from cryotiff.cli import main

from .helpers import int16_movie, read_tiff_frames


def test_a_bug_during_the_run_writes_the_report_in_state_error_with_the_movies_done(in_tmp: Path, monkeypatch) -> None:
    frames = int16_movie("Movies/a.mrc", seed=1)
    int16_movie("Movies/b.mrc", seed=2)
    real = jobs.handle_job
    calls = []

    def handle_job(job, *args, **kwargs):
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("injected bug")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(jobs, "handle_job", handle_job)
    with pytest.raises(RuntimeError, match="injected bug"):
        main(["--i", "Movies/*.mrc", "--o", "out", "--report", "out/report.json"])
    report = json.loads(Path("out/report.json").read_text())
    assert report["state"] == "error" and report["exit_status"] == 1
    assert report["error"] == "unexpected error: RuntimeError: injected bug"
    done = [movie for movie in report["movies"] if movie["status"] == "converted"]
    assert [movie["source"] for movie in done] == ["Movies/a.mrc"]
    np.testing.assert_array_equal(read_tiff_frames(Path("out/Movies/a.tif")), frames)
    assert not Path("out/Movies/b.tif").exists()


def test_a_cryotiff_error_writes_its_message_as_before(in_tmp: Path, capsys) -> None:
    assert main(["--i", "Movies/*.mrc", "--o", "out", "--report", "out/report.json"]) != 0
    report = json.loads(Path("out/report.json").read_text())
    assert report["state"] == "error" and not report["error"].startswith("unexpected error")
