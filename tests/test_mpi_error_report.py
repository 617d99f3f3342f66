"""convert-to-tiff-mpi stopped by an error outside the stop protocol (a bug on rank 0, then
MPI_Abort): rank 0 writes the ``--report`` in state ``error``, with the movies done so far, as
convert-to-tiff does (cli._report_if_failed). Under a real ``mpirun``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .helpers import read_tiff_frames
from .test_mpi import MPIRUN, run_mpi, write_k2

pytestmark = pytest.mark.skipif(not MPIRUN.exists(), reason="no mpirun next to python (pip install .[mpi])")

#: Probe scripts: rank 0 raises through a patched function.
BUGS = {
    # rank 0's main thread, once every movie is converted (waiting for its manifest lines)
    "main thread": """
        real = mpi.manifest_written

        def manifest_written(manifest, reporter):
            if MPI.COMM_WORLD.rank == 0:
                raise RuntimeError("injected bug on rank 0")
            return real(manifest, reporter)

        mpi.manifest_written = manifest_written
    """,
    # rank 0's service thread, as it takes in a result of rank 1
    "service thread": """
        class Broken(mpi.MpiReporter):
            def report_result(self, result):
                if result.details.get("mpi_rank") == 1:
                    raise RuntimeError("injected bug on rank 0")
                super().report_result(result)

        mpi.MpiReporter = Broken
    """,
}


@pytest.mark.parametrize("where", sorted(BUGS))
def test_a_bug_on_rank_zero_writes_the_report_in_state_error_with_the_movies_done(tmp_path: Path, where: str) -> None:
    movies = {f"m{k}.mrc": write_k2(tmp_path / f"m{k}.mrc", 3, seed=k) for k in range(4)}
    script = tmp_path / "driver.py"
    script.write_text("import sys\nfrom mpi4py import MPI\nimport cryotiff.mpi as mpi\n"
                      + textwrap.dedent(BUGS[where]) + "sys.exit(mpi.main())\n")
    completed = run_mpi(["--i", "m*.mrc", "--o", "out", "--report", "report.json"], tmp_path, script=script)
    assert completed.returncode != 0
    assert "injected bug on rank 0" in completed.stderr
    report_path = tmp_path / "report.json"
    assert report_path.exists(), f"no --report written\nstderr:\n{completed.stderr}"
    report = json.loads(report_path.read_text())
    assert report["state"] == "error"
    assert report["exit_status"] == 1
    assert "injected bug on rank 0" in report["error"]
    done = {Path(entry["source"]).name: entry for entry in report["movies"]}
    if where == "main thread":
        assert sorted(done) == sorted(movies)  # every movie was converted before the bug
    assert done, "the movies done so far are missing"
    for name, entry in done.items():
        assert entry["status"] == "converted"
        assert np.array_equal(read_tiff_frames(tmp_path / entry["destination"]), movies[name])


def test_a_bug_on_rank_zero_in_gain_estimation_writes_the_report_in_state_error(tmp_path: Path) -> None:
    """--estimate_gain: rank 0's main thread raises once every movie is estimated (as it
    writes its summary)."""
    from cryotiff.simulate.gain_normalised import make_detector
    from cryotiff.simulate.write import write_mrc_movie

    rng = np.random.default_rng(11)
    detector = make_detector((36, 44), rng, defect_fraction=0.01, cold_fraction=0.01)
    names = []
    for k, n_frames in enumerate((6, 9, 4)):
        write_mrc_movie(tmp_path / f"g{k}.mrc", detector.movie(n_frames, rng, 1.45).frames, 2)
        names.append(f"g{k}.mrc")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import sys
        from mpi4py import MPI
        import cryotiff.mpi as mpi

        def finish_estimation(*args, **kwargs):
            raise RuntimeError("injected bug on rank 0")

        mpi.finish_estimation = finish_estimation
        sys.exit(mpi.main())
    """))
    completed = run_mpi(["--estimate_gain", "--i", *names, "--o", "out", "--report", "report.json"], tmp_path,
                        script=script)
    assert completed.returncode != 0
    report_path = tmp_path / "report.json"
    assert report_path.exists(), f"no --report written\nstderr:\n{completed.stderr}"
    report = json.loads(report_path.read_text())
    assert report["state"] == "error" and "injected bug on rank 0" in report["error"]
    assert sorted(Path(entry["source"]).name for entry in report["movies"]) == names
    assert all(entry["status"] == "converted" for entry in report["movies"])  # estimated


#: --watch: rank 0 raises in its main thread once the watch has ended (waiting for its manifest
#: lines), or in its watcher thread at its second look at the inputs (the first found the movies).
WATCH_BUGS = {
    "main thread": BUGS["main thread"],
    "watcher thread": """
        import cryotiff.watch as watch

        real_look = watch.MovieWatch.look
        looks = []

        def look(self):
            looks.append(1)
            if len(looks) == 2:
                raise RuntimeError("injected bug on rank 0")
            return real_look(self)

        watch.MovieWatch.look = look
    """,
}


@pytest.mark.parametrize("where", sorted(WATCH_BUGS))
def test_a_bug_on_rank_zero_during_a_watch_writes_the_report_in_state_error(tmp_path: Path, where: str) -> None:
    """Before, the report of a --watch stayed in state ``watching`` until a later run found the
    process gone; now rank 0 writes it in state ``error`` before it aborts the job."""
    import os
    import time

    movies = {}
    for k in range(2):
        movies[f"m{k}.mrc"] = write_k2(tmp_path / f"m{k}.mrc", 2, seed=k, shape_yx=(32, 24))
        past = time.time() - 3600  # ready at the watch's first look
        os.utime(tmp_path / f"m{k}.mrc", (past, past))
    script = tmp_path / "driver.py"
    script.write_text("import sys\nfrom mpi4py import MPI\nimport cryotiff.mpi as mpi\n"
                      + textwrap.dedent(WATCH_BUGS[where]) + "sys.exit(mpi.main())\n")
    completed = run_mpi(["--i", "m*.mrc", "--o", "out", "--report", "report.json", "--watch", "--settle_seconds", "0",
                         "--watch_timeout", "1"], tmp_path, script=script)
    assert completed.returncode != 0
    assert "injected bug on rank 0" in completed.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["state"] == "error", report["state"]
    assert report["exit_status"] == 1 and "injected bug on rank 0" in report["error"]
    for entry in report["movies"]:
        if entry["status"] == "converted":
            assert np.array_equal(read_tiff_frames(tmp_path / entry["destination"]), movies[Path(entry["source"]).name])
    if where == "main thread":
        assert sorted(Path(entry["source"]).name for entry in report["movies"]) == sorted(movies)
