"""Fitting into RELION pipelines: External-job exit files, --dry_run, --report (movies.star: test_movies_star.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryotiff.cli import main
from cryotiff.pipeline import (
    ABORT_NOW_NAME,
    EXIT_ABORTED_NAME,
    EXIT_FAILURE_NAME,
    EXIT_SUCCESS_NAME,
    OUTPUT_NODES_NAME,
    PipelineReporter,
    pipeline_control_from_argv,
)
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames


def movie(path: str, seed: int, n_frames: int = 3, shape_yx: tuple[int, int] = (24, 32)) -> np.ndarray:
    frames = np.random.default_rng(seed).poisson(1.5, (n_frames, *shape_yx)).astype(np.int8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 0, pixel_size_angstrom=0.83)
    return frames


def read_star(path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return starfile.read(path, always_dict=True)


OPTICS = """
# version 50001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
opticsGroup1 1 0.830000 300.000000 2.700000 0.100000
opticsGroup2 2 0.415000 300.000000 2.700000 0.100000
"""


def import_star(rows: list[str], optics: str = OPTICS) -> str:
    movies = "\n".join(rows)
    return f"""{optics}
# version 50001

data_movies

loop_
_rlnMicrographMovieName #1
_rlnOpticsGroup #2
{movies}
"""


# --------------------------------------------------------------------------- External job


def test_success_writes_the_exit_file_and_the_output_nodes(in_tmp: Path) -> None:
    movie("Movies/a.mrc", 1)
    job = Path("External/job004")
    job.mkdir(parents=True)
    (job / EXIT_FAILURE_NAME).touch()  # from an earlier attempt
    assert main(["--i", "Movies/a.mrc", "--o", str(job), "--pipeline_control", str(job)]) == 0
    assert sorted(p.name for p in job.glob("RELION_JOB_EXIT_*")) == [EXIT_SUCCESS_NAME]
    nodes = read_star(job / OUTPUT_NODES_NAME)["output_nodes"]
    assert list(nodes["rlnPipeLineNodeName"]) == ["External/job004/movies.star"]
    assert list(nodes["rlnPipeLineNodeTypeLabel"]) == ["MicrographMovieGroupMetadata.star.relion"]
    assert list(nodes["rlnPipeLineNodeType"]) == [0]
    assert Path("External/job004/movies.star").exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--i", "missing.mrc"],  # a movie fails
        ["--i", "Movies/a.mrc", "--compression", "bzip2"],  # argparse rejects the command line
        ["--i", "Movies/a.mrc", "--deflate_level", "99"],  # an invalid value
        ["--i", "Nowhere/*.mrc"],  # an input that names nothing
    ],
    ids=["movie", "parser", "option", "input"],
)
@pytest.mark.parametrize("spelling", ["--pipeline_control", "--pipeline-control"])
def test_every_failure_writes_the_failure_file(in_tmp: Path, arguments: list[str], spelling: str, capsys) -> None:
    movie("Movies/a.mrc", 1)
    job = Path("External/job005")
    job.mkdir(parents=True)
    (job / EXIT_SUCCESS_NAME).touch()  # from an earlier run: must not survive
    try:
        status = main([*arguments, "--o", str(job), spelling, str(job)])
    except SystemExit as exit_info:
        status = exit_info.code
    assert status in (1, 2)
    assert sorted(p.name for p in job.glob("RELION_JOB_EXIT_*")) == [EXIT_FAILURE_NAME]


def test_relion_abort_stops_between_movies(in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    movie("a.mrc", 1)
    movie("b.mrc", 2)
    job = Path("External/job006")
    real_finished = PipelineReporter.movie_finished

    def finished_then_abort(self, result) -> None:  # the user presses "Abort" during a.mrc
        real_finished(self, result)
        (job / ABORT_NOW_NAME).touch()

    monkeypatch.setattr(PipelineReporter, "movie_finished", finished_then_abort)
    status = main(["--i", "a.mrc", "b.mrc", "--o", str(job), "--pipeline_control", str(job),
                   "--report", str(job / "report.json")])
    assert status == 1
    assert "RELION asked the job to abort" in capsys.readouterr().err
    assert sorted(p.name for p in job.glob("RELION_JOB_*")) == [EXIT_ABORTED_NAME]  # ABORT_NOW consumed
    assert (job / "a.tif").exists() and not (job / "b.tif").exists() and not list(job.glob("*.tmp"))
    assert json.loads((job / "report.json").read_text())["state"] == "aborted"


def test_pipeline_control_is_found_before_parsing() -> None:
    assert pipeline_control_from_argv(["--i", "x", "--pipeline_control", "J/"]) == Path("J/")
    assert pipeline_control_from_argv(["--pipeline-control=J2/"]) == Path("J2/")
    assert pipeline_control_from_argv(["--i", "x"]) is None
    # Given without a directory: the job directory, --o
    assert pipeline_control_from_argv(["--o", "External/job007/", "--pipeline_control", "--j", "4"]) == Path(
        "External/job007/"
    )
    assert pipeline_control_from_argv(["--pipeline_control"]) == Path("./")


def test_an_external_job_command_line_as_relion_builds_it(in_tmp: Path) -> None:
    """RELION's External job runs ``<exe> --o <job>/ --<label> <value> ... --j <threads>``; the job
    directory is not known when the parameters are typed, so --pipeline_control is given empty."""
    frames = movie("Movies/a.mrc", 1)
    Path("Import/job001").mkdir(parents=True)
    Path("Import/job001/movies.star").write_text(import_star(["Movies/a.mrc 1"]))
    Path("External/job007").mkdir(parents=True)
    command = "--o External/job007/ --i Import/job001/movies.star --pipeline_control  --j 2"
    assert main(command.split()) == 0
    job = Path("External/job007")
    assert sorted(p.name for p in job.glob("RELION_JOB_EXIT_*")) == [EXIT_SUCCESS_NAME]
    nodes = read_star(job / OUTPUT_NODES_NAME)["output_nodes"]
    assert list(nodes["rlnPipeLineNodeName"]) == ["External/job007/movies.star"]
    table = read_star(job / "movies.star")["movies"]
    np.testing.assert_array_equal(read_tiff_frames(Path(table["rlnMicrographMovieName"][0])), frames)


# --------------------------------------------------------------------------- --dry_run


def test_dry_run_lists_and_estimates_without_writing(in_tmp: Path, capsys) -> None:
    for seed in range(5):
        movie(f"Movies/m{seed}.mrc", seed, n_frames=6, shape_yx=(64, 96))
    Path("Movies/bad.mrc").write_bytes(b"junk" * 300)
    assert main(["--i", "Movies/m0.mrc", "--o", "out"]) == 0  # one is done already
    capsys.readouterr()

    assert main(["--i", "Movies", "--o", "out", "--only_do_unfinished", "--dry_run", "--report", "plan.json"]) == 1
    out = capsys.readouterr().out
    assert "Would skip Movies/m0.mrc: out/Movies/m0.tif is complete" in out
    for seed in range(1, 5):
        assert f"Would convert Movies/m{seed}.mrc into out/Movies/m{seed}.tif  (6 pages 96 x 64 int8, " in out
    assert "Cannot convert: Movies/bad.mrc:" in out
    assert "4 movies would be converted, 1 skipped, 1 cannot be converted. Nothing was written." in out
    assert "Estimated by encoding the first frame of 4 of 4 movies" in out
    assert sorted(p.name for p in Path("out").rglob("*")) == ["Movies", "cryotiff-manifest.jsonl", "m0.tif",
                                                              "movies.star"]

    plan = json.loads(Path("plan.json").read_text())
    assert plan["state"] == "dry_run" and plan["totals"]["would_convert"] == 4
    estimated = plan["totals"]["estimated_output_bytes"]
    assert main(["--i", "Movies", "--o", "out", "--only_do_unfinished", "--report", "run.json"]) == 1  # bad.mrc
    written = sum(p.stat().st_size for p in Path("out/Movies").glob("m[1-4].tif"))
    assert 0.8 < estimated / written < 1.25
    # the codec of the plan is the one the run chose (auto measures candidates on the first frame)
    planned = {m["source"]: m["codec"] for m in plan["movies"] if m["action"] == "convert"}
    used = {m["source"]: m["codec"] for m in json.loads(Path("run.json").read_text())["movies"] if m["codec"]}
    assert planned == used and len(used) == 4


def test_dry_run_samples_a_few_of_many_movies(in_tmp: Path, capsys) -> None:
    for seed in range(12):
        movie(f"Movies/m{seed:02d}.mrc", seed, n_frames=2)
    assert main(["--i", "Movies", "--o", "out", "--dry_run"]) == 0
    assert "first frame of 8 of 12 movies" in capsys.readouterr().out
    assert not Path("out").exists()


# --------------------------------------------------------------------------- --report


def test_report_has_per_movie_results_totals_options_and_version(in_tmp: Path) -> None:
    from cryotiff import __version__

    movie("a.mrc", 1, n_frames=4)
    assert main(["--i", "a.mrc", "missing.mrc", "--o", "out", "--report", "reports/run.json",
                 "--compression", "deflate", "--deflate_level", "3"]) == 1
    report = json.loads(Path("reports/run.json").read_text())
    assert report["cryotiff_version"] == __version__
    assert report["state"] == "finished" and report["exit_status"] == 1
    assert report["options"]["compression"] == "deflate" and report["options"]["deflate_level"] == 3
    assert report["movies_star"] == "out/movies.star"
    a, missing = report["movies"]
    assert (a["source"], a["destination"], a["status"]) == ("a.mrc", "out/a.tif", "converted")
    assert a["n_pages"] == 4 and a["frames_verified"] == 4 and a["codec"] == "deflate-3" and a["dtype"] == "int8"
    assert a["output_bytes"] == Path("out/a.tif").stat().st_size
    assert missing["status"] == "failed" and "no such file" in missing["message"]
    totals = report["totals"]
    assert (totals["converted"], totals["skipped"], totals["failed"], totals["frames_verified"]) == (1, 0, 1, 4)
    assert totals["input_bytes"] == 4 * 24 * 32


def test_report_of_a_run_that_could_not_start(in_tmp: Path) -> None:
    assert main(["--i", "Nowhere/*.mrc", "--o", "out", "--report", "run.json"]) == 1
    report = json.loads(Path("run.json").read_text())
    assert report["state"] == "error" and "no file matches" in report["error"] and report["movies"] == []


def test_dry_run_with_a_gain_plans_what_the_run_writes(in_tmp: Path, capsys) -> None:
    """With --gain, gain-normalised float movies are written as gain-divided pages: the dry run
    loads the gain (without writing gain-reference.mrc) and plans the same sample type and codec."""
    from cryotiff.simulate.gain_normalised import make_detector

    rng = np.random.default_rng(1)
    detector = make_detector((40, 30), rng)
    write_mrc_movie(Path("k2.mrc"), detector.movie(20, rng).frames, 2)
    assert main(["--i", "k2.mrc", "--o", "Est", "--estimate_gain"]) == 0
    arguments = ["--i", "k2.mrc", "--o", "Conv", "--gain", "Est/gain_estimate.bin", "--lossy"]
    assert main([*arguments, "--dry_run", "--report", "plan.json"]) == 0
    assert not Path("Conv").exists()
    assert main([*arguments, "--report", "run.json"]) == 0
    planned = json.loads(Path("plan.json").read_text())["movies"][0]
    done = json.loads(Path("run.json").read_text())["movies"][0]
    assert (planned["dtype"], planned["codec"]) == (done["dtype"], done["codec"])
    assert 0.7 < planned["estimated_output_bytes"] / done["output_bytes"] < 1.4


def test_estimate_gain_never_ignores_dry_run(in_tmp: Path, capsys) -> None:
    write_mrc_movie(Path("k2.mrc"), np.ones((2, 8, 8), np.float32), 2)
    assert main(["--i", "k2.mrc", "--o", "Est", "--estimate_gain", "--dry_run"]) == 2
    assert "--estimate_gain" in capsys.readouterr().err
    assert not Path("Est").exists()


def test_estimate_gain_writes_its_report(in_tmp: Path, capsys) -> None:
    """--report with --estimate_gain: the movies (one failing), totals and exit status."""
    rng = np.random.default_rng(2)
    gain = rng.uniform(0.8, 1.2, (16, 24)).astype(np.float32)
    write_mrc_movie(Path("a.mrc"), (rng.poisson(2.0, (3, 16, 24)) * gain).astype(np.float32), 2)
    write_mrc_movie(Path("counts.mrc"), rng.poisson(2.0, (2, 16, 24)).astype(np.uint8), 0)
    assert main(["--i", "a.mrc", "counts.mrc", "--o", "Est", "--estimate_gain", "--report", "est.json"]) == 1
    assert "Movies estimated: 1, failed: 1" in capsys.readouterr().out
    report = json.loads(Path("est.json").read_text())
    assert (report["state"], report["exit_status"], report["options"]["estimate_gain"]) == ("finished", 1, True)
    assert (report["totals"]["converted"], report["totals"]["failed"]) == (1, 1)
    assert [(m["source"], m["status"], m["n_pages"]) for m in report["movies"]] == [
        ("a.mrc", "converted", 3), ("counts.mrc", "failed", 0)]
    assert "not in mode 2" in report["movies"][1]["message"]
    assert Path("Est/gain_estimate.bin").exists()


def test_an_interrupted_gain_estimation_still_writes_its_report(in_tmp: Path, monkeypatch) -> None:
    import cryotiff.jobs

    write_mrc_movie(Path("a.mrc"), np.ones((2, 8, 8), np.float32), 2)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cryotiff.jobs, "estimate", interrupted)
    assert main(["--i", "a.mrc", "--o", "Est", "--estimate_gain", "--report", "est.json"]) == 130
    report = json.loads(Path("est.json").read_text())
    assert (report["state"], report["exit_status"]) == ("interrupted", 130)
