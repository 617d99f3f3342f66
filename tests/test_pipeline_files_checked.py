"""RELION's files in the --pipeline_control directory (the exit file, RELION_OUTPUT_NODES.star)
are written as the run's other files are: atomically, never through a symbolic link at their
name, and into the job directory as the run checked it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import cryotiff.cli as cli
from cryotiff.pipeline import EXIT_FAILURE_NAME, EXIT_SUCCESS_NAME, OUTPUT_NODES_NAME, PipelineControl
from cryotiff.simulate.write import write_mrc_movie


def movie(path: str) -> None:
    frames = np.random.default_rng(3).integers(0, 9, (2, 16, 20)).astype(np.int16)
    write_mrc_movie(Path(path), frames, 1, pixel_size_angstrom=1.0)


def test_the_exit_file_is_not_written_through_a_link_at_its_name(in_tmp: Path) -> None:
    job = Path("External/job007")
    job.mkdir(parents=True)
    Path("elsewhere").mkdir()
    control = PipelineControl(job)
    control.start()
    os.symlink(Path("elsewhere/planted").resolve(), job / EXIT_SUCCESS_NAME)  # dangling: touch would create it
    assert control.finish(0) == job / EXIT_SUCCESS_NAME
    assert not (job / EXIT_SUCCESS_NAME).is_symlink() and (job / EXIT_SUCCESS_NAME).is_file()
    assert list(Path("elsewhere").iterdir()) == []


def test_the_output_nodes_are_not_written_through_a_link_at_their_name(in_tmp: Path) -> None:
    job = Path("External/job008")
    job.mkdir(parents=True)
    Path("elsewhere").mkdir()
    os.symlink(Path("elsewhere/planted.star").resolve(), job / OUTPUT_NODES_NAME)
    PipelineControl(job).write_output_nodes(job / "movies.star")
    assert not (job / OUTPUT_NODES_NAME).is_symlink() and (job / OUTPUT_NODES_NAME).is_file()
    assert list(Path("elsewhere").iterdir()) == []


def test_a_job_directory_replaced_by_a_link_during_the_run_gets_no_relion_file_through_it(
        in_tmp: Path, capsys, monkeypatch) -> None:
    movie("a.mrc")
    job = Path("External/job009")
    job.mkdir(parents=True)
    control_dir = Path("Control")  # a job directory apart from --o, so that movies.star is written
    control_dir.mkdir()
    real_run = cli.run

    def converted_then_swapped(*args, **kwargs):
        results = real_run(*args, **kwargs)
        os.rename(control_dir, "Control.checked")
        Path("elsewhere").mkdir()
        os.symlink(Path("elsewhere").resolve(), control_dir)
        return results

    monkeypatch.setattr(cli, "run", converted_then_swapped)
    status = cli.main(["--i", "a.mrc", "--o", str(job), "--pipeline_control", str(control_dir)])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.count(f"Control/{OUTPUT_NODES_NAME}: not written: Control: the output directory was replaced") == 1, err
    assert list(Path("elsewhere").iterdir()) == []
    assert (job / "movies.star").is_file()
    assert not list(Path("Control.checked").glob("RELION_JOB_EXIT_*")) or \
        [p.name for p in Path("Control.checked").glob("RELION_JOB_EXIT_*")] == [EXIT_FAILURE_NAME]
