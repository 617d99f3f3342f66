"""The command line: RELION's options and sections, --version, the demo, exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotiff import __version__
from cryotiff.cli import build_parser, main

from .helpers import read_tiff_frames

RELION_OPTIONS = [
    "--i", "--o", "--only_do_unfinished", "--j", "--gain", "--thresh", "--estimate_gain",
    "--eer_grouping", "--eer_upsampling", "--short", "--compression", "--deflate_level",
    "--ignore_error", "--line_by_line",
]


def test_help_has_relions_options_in_relions_sections(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in RELION_OPTIONS:
        assert option in text
    sections = ["General Options", "EER rendering options", "TIFF writing options"]
    positions = [text.index(section) for section in sections]
    assert positions == sorted(positions)


def test_relion_defaults() -> None:
    args = build_parser().parse_args(["--i", "x.mrc"])
    assert (args.o, args.j, args.thresh, args.eer_grouping, args.eer_upsampling) == ("./", 1, 50, 40, 1)
    assert (args.compression, args.deflate_level) == ("auto", 6)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_missing_input_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--o", "x"])
    assert exit_info.value.code == 2
    assert "--i" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--compression", "bzip2"], "invalid choice"),
        (["--eer_upsampling", "4"], "invalid choice"),
    ],
)
def test_invalid_choices_rejected_by_the_parser(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--i", "x.mrc", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--deflate_level", "13"], "deflate level must be 1..12"),
        (["--j", "0"], "--j must be at least 1"),
        (["--eer_grouping", "0"], "--eer_grouping must be at least 1"),
    ],
)
def test_invalid_values_fail_before_any_file_is_touched(in_tmp: Path, args, message, capsys) -> None:
    assert main(["--i", "x.mrc", "--o", "out", *args]) == 2
    assert message in capsys.readouterr().err
    assert not Path("out").exists()


def test_demo_converts_every_kind_exactly(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryotiff.io.mrc import open_mrc

    assert main(["--demo", "--o", "Demo"]) == 0
    out = capsys.readouterr().out
    assert "Movies converted:" in out and "failed: 0" in out
    movies = sorted(Path("Demo/demo_movies").iterdir())
    assert movies
    for path in movies:
        if path.suffix not in (".mrc", ".mrcs"):
            continue
        with open_mrc(path) as mrc:
            frames = np.stack(list(mrc.iter_frames()))
        np.testing.assert_array_equal(read_tiff_frames(Path("Demo/converted") / (path.stem + ".tif")), frames)


def test_python_dash_m_runs_the_cli() -> None:
    completed = subprocess.run([sys.executable, "-m", "cryotiff", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0
    assert __version__ in completed.stdout


def test_in_movies_is_an_alias_of_i_for_relion_external_jobs(in_tmp: Path) -> None:
    from cryotiff.simulate.write import write_mrc_movie

    frames = np.arange(2 * 5 * 4, dtype=np.int16).reshape(2, 5, 4)
    write_mrc_movie(Path("m.mrc"), frames, 1)
    assert main(["--in_movies", "m.mrc", "--o", "job001"]) == 0
    np.testing.assert_array_equal(read_tiff_frames(Path("job001/m.tif")), frames)
