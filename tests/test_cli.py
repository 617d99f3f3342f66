"""The command line: RELION's options and sections, --version, the demo, exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryotiff import __version__
from cryotiff.cli import build_parser, main
from cryotiff.simulate.eer import random_events

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


def test_demo_converts_every_kind_exactly_without_warnings(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind through its user-guide recipe (the float movies through the gain path, the EER
    with its .gain), no warning, every movie listed at the end."""
    import mrcfile

    from cryotiff import demo
    from cryotiff.io.mrc import open_mrc
    from cryotiff.simulate.eer import expected_render

    events = []
    monkeypatch.setattr(demo, "random_events", lambda *args: events.extend(random_events(*args)) or events)
    assert main(["--demo", "--o", "Demo"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out
    assert "WARNING" not in out and out.count("failed: 0") == 4  # three conversions, one estimation
    movies = sorted(Path("Demo/demo_movies").glob("*.*"))
    assert {p.suffix for p in movies} == {".mrc", ".eer", ".gain"}
    listing = out[out.index("The demo movies"):]
    for path in movies:
        if path.suffix != ".gain":
            assert f"  {path.name} " in listing
    with mrcfile.open("Demo/converted/gain_normalised/gain-reference.mrc") as mrc:
        gain_reference = np.array(mrc.data)
    for path in movies:
        if path.suffix != ".mrc":
            continue
        with open_mrc(path) as mrc:
            frames = np.stack(list(mrc.iter_frames()))
        if "gain_normalised" in path.name:
            stored = read_tiff_frames(Path("Demo/converted/gain_normalised") / (path.stem + ".tif"))
            np.testing.assert_array_equal(stored * gain_reference, frames)  # TIFF x gain = original
            assert (stored == np.rint(stored)).mean() > 0.5  # the gain path recovered counts
        else:
            np.testing.assert_array_equal(read_tiff_frames(Path("Demo/converted/counting") / (path.stem + ".tif")), frames)
    page = read_tiff_frames(Path("Demo/converted/eer/falcon4.tif"))
    np.testing.assert_array_equal(page[0], expected_render(events, 4096, 1))
    assert Path("Demo/converted/eer/gain-reference.mrc").is_file()


def test_demo_refuses_options_it_would_not_use(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--demo", "--o", "Demo", "--gain", "g.bin", "--dry_run"]) == 2
    assert "--demo runs its own recipes on its own movies; it does not take --gain, --dry_run" in capsys.readouterr().err
    assert not Path("Demo").exists()


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
