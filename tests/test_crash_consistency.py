"""A facility's day under crashes: ``kill -9`` at chosen points of a conversion and of a
``--watch`` run, power cuts (the order of ``fsync`` and ``rename``), full disks; after each, the
rerun with ``--only_do_unfinished`` completes the set and ``--verify_only`` never calls an output
OK that is missing, partial or not the one its manifest line describes.

A process is killed at a point by :data:`KILL_AT`, a wrapper run as ``python -c``: it patches one
function of cryotiff so that it sends itself SIGKILL when the point is reached (no sleeps)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cryotiff.cli import main
from cryotiff.manifest import MANIFEST_NAME, read_manifest

from .helpers import HANG_SECONDS, int16_movie, read_tiff_frames, temporary_files_of, verdict_lines


def manifest_outputs(output_dir: Path) -> list[str]:
    return sorted(read_manifest(output_dir))


# --------------------------------------------------------------------------- the manifest: torn lines


def test_a_torn_last_line_of_the_manifest_does_not_swallow_the_next_entry(in_tmp: Path, capsys) -> None:
    """A power cut (or a full disk) can leave the manifest's last line cut short, without its
    newline. The next run's line was appended right after it, on the same line, and neither
    could be read: that output was UNCHECKED for ever after the originals were gone."""
    a = int16_movie("a.mrc", 1)
    b = int16_movie("b.mrc", 2)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    manifest = Path("out", MANIFEST_NAME)
    whole = manifest.read_bytes()
    with open(manifest, "ab") as handle:
        handle.write(whole[: len(whole) // 2])  # a line for some output, cut short
    assert main(["--i", "b.mrc", "--o", "out"]) == 0
    assert manifest_outputs(Path("out")) == ["a.tif", "b.tif"]
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 0
    assert verdict_lines(capsys.readouterr().out) == [
        "OK        out/a.tif (3 pages; compared with the manifest)",
        "OK        out/b.tif (3 pages; compared with the manifest)",
    ]
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), a)
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)


def test_a_manifest_line_cut_short_by_a_full_disk_is_taken_back(in_tmp: Path, capsys, monkeypatch) -> None:
    """A write of the line that stops part-way (ENOSPC after some bytes) leaves nothing of it:
    the manifest ends with the last whole line, the run says which output is not in it and
    ends with exit status 1, and a rerun once there is space adds it."""
    import cryotiff.manifest as manifest_module

    int16_movie("a.mrc", 1)
    b = int16_movie("b.mrc", 2)
    assert main(["--i", "a.mrc", "--o", "out"]) == 0
    manifest = Path("out", MANIFEST_NAME)
    before = manifest.read_bytes()
    real_write = os.write

    def write_then_fill_the_disk(descriptor: int, data: bytes) -> int:
        if os.path.realpath(f"/proc/self/fd/{descriptor}") == os.path.realpath(manifest):
            if len(data) > 10:
                return real_write(descriptor, data[:10])  # what fitted
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    monkeypatch.setattr(manifest_module.os, "write", write_then_fill_the_disk)
    capsys.readouterr()
    assert main(["--i", "b.mrc", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert "out/b.tif is complete but not in the manifest" in err, err
    assert "Traceback" not in err
    assert manifest.read_bytes() == before  # nothing of the cut line stays
    monkeypatch.setattr(manifest_module.os, "write", real_write)
    # Space again: the rerun writes b.tif and its line anew.
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    assert manifest_outputs(Path("out")) == ["a.tif", "b.tif"]
    np.testing.assert_array_equal(read_tiff_frames(Path("out/b.tif")), b)
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 0


# --------------------------------------------------------------------------- kill -9 at chosen points

#: ``python -c KILL_AT <point> <n> <convert-to-tiff arguments>``: convert-to-tiff that kills
#: itself (SIGKILL, as the OOM killer or a lost node would) at the ``n``-th time ``point`` is
#: reached:
#: * ``renamed:<name>``: just after a file named ``<name>`` (``*.tif``, ``movies.star``, ...) got
#:   its name (its temporary file renamed, or linked into place), before anything else happens;
#: * ``before-rename:<name>``: just before, the temporary file complete;
#: * ``manifest-half``: half of a manifest line written;
#: * ``manifest-line``: a whole manifest line written.
#: Except at the manifest's own points, the lines of the movies before are written first (a
#: background thread adds them), so that what the kill leaves does not depend on timing.
KILL_AT = textwrap.dedent("""
    import fnmatch
    import os
    import signal
    import sys

    import cryotiff.io.atomic as atomic
    import cryotiff.manifest as manifest

    point, wanted = sys.argv[1], int(sys.argv[2])
    reached = [0]
    manifests = []
    real_init = manifest.Manifest.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        manifests.append(self)

    manifest.Manifest.__init__ = init

    def reach():
        reached[0] += 1
        if reached[0] == wanted:
            if not kind.startswith("manifest-"):
                for known in manifests:  # the lines of the movies before, which a background thread adds
                    known.wait()
            os.kill(os.getpid(), signal.SIGKILL)

    kind, _, pattern = point.partition(":")

    def reaching_around(put_in_place):
        # os.replace, or os.link (how a file never replaced is put in place), with the kill
        # point just before or just after a name matching the pattern is put in place.

        def patched(source, destination, *args, **kwargs):
            matches = fnmatch.fnmatch(os.path.basename(destination), pattern)
            if matches and kind == "before-rename":
                reach()
            put_in_place(source, destination, *args, **kwargs)
            if matches and kind == "renamed":
                reach()

        return staticmethod(patched)

    class PatchedOs:
        def __getattr__(self, name):
            return getattr(os, name)

        replace = reaching_around(atomic.os.replace)
        link = reaching_around(atomic.os.link)

    if kind in ("renamed", "before-rename"):
        atomic.os = PatchedOs()

    real_write = os.write

    class ManifestOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def write(descriptor, data):
            if kind == "manifest-half":
                first = real_write(descriptor, data[: len(data) // 2])
                reach()
                return first + real_write(descriptor, data[len(data) // 2:])
            written = real_write(descriptor, data)
            reach()
            return written

    if kind.startswith("manifest-"):
        manifest.os = ManifestOs()

    from cryotiff.cli import run_command

    sys.exit(run_command(sys.argv[3:]))
""")


def killed_at(point: str, n: int, *arguments: str) -> subprocess.CompletedProcess:
    """convert-to-tiff run with ``arguments``, killed at the ``n``-th ``point`` (:data:`KILL_AT`)."""
    completed = subprocess.run([sys.executable, "-c", KILL_AT, point, str(n), *arguments], capture_output=True,
                               text=True, timeout=HANG_SECONDS)
    assert completed.returncode == -signal.SIGKILL, (completed.stdout, completed.stderr)
    return completed


def convert_to_tiff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryotiff", *arguments], capture_output=True, text=True,
                          timeout=HANG_SECONDS)


def leftover_temporaries(directory: Path) -> list[str]:
    return sorted(str(path) for path in directory.rglob("*.tmp"))


def listed_in_movies_star(path: Path) -> list[str]:
    from cryotiff.io.star import MOVIE_NAME_COLUMN, movie_table_name, read_star_blocks

    blocks = read_star_blocks(path)
    table = blocks[movie_table_name(blocks)]
    return sorted(str(name) for name in table[MOVIE_NAME_COLUMN])


def three_movies() -> dict[str, np.ndarray]:
    return {name: int16_movie(f"{name}.mrc", seed) for seed, name in enumerate(("a", "b", "c"), start=1)}


def assert_the_day_completes(frames: dict[str, np.ndarray], arguments: list[str], converted_again: list[str]) -> str:
    """The rerun after a crash (``arguments`` and ``--only_do_unfinished``): converts exactly
    ``converted_again``, skips the rest, removes the stale temporary files; every .tif equals its
    movie, the manifest names each and ``--verify_only`` (with and without the originals) says
    OK to each, and movies.star lists each. Returns the rerun's stdout."""
    rerun = convert_to_tiff(*arguments, "--only_do_unfinished")
    assert rerun.returncode == 0, (rerun.stdout, rerun.stderr)
    processed = sorted(line.split()[1] for line in rerun.stdout.splitlines() if line.startswith("Processing "))
    assert processed == sorted(f"{name}.mrc" for name in converted_again), rerun.stdout
    # Stale temporary files are removed, also an empty one (killed between its creation and its
    # first bytes): a writer that had not locked it yet takes another name (io/atomic.py).
    assert leftover_temporaries(Path("out")) == []
    for name, movie in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(Path(f"out/{name}.tif")), movie)
    assert manifest_outputs(Path("out")) == sorted(f"{name}.tif" for name in frames)
    assert listed_in_movies_star(Path("out/movies.star")) == sorted(f"out/{name}.tif" for name in frames)
    for check in (["--verify_only", "--o", "out"], ["--verify_only", "--i", *[f"{n}.mrc" for n in frames], "--o", "out"]):
        verified = convert_to_tiff(*check)
        assert verified.returncode == 0, (verified.stdout, verified.stderr)
        assert [line.split()[0] for line in verdict_lines(verified.stdout)] == ["OK"] * len(frames), verified.stdout
    return rerun.stdout


DAY = ["--i", "a.mrc", "b.mrc", "c.mrc", "--o", "out"]


def test_killed_just_after_a_tif_got_its_name_before_its_manifest_line(in_tmp: Path) -> None:
    """The .tif is complete, but no manifest line names it: the rerun skipped it, and once the
    originals were gone it could never be checked. It is converted again (which writes its
    line)."""
    frames = three_movies()
    killed_at("renamed:b.tif", 1, *DAY)
    assert Path("out/b.tif").exists() and not Path("out/c.tif").exists()
    assert "b.tif" not in manifest_outputs(Path("out"))
    out = assert_the_day_completes(frames, DAY, converted_again=["b", "c"])
    assert (f"out/b.tif: no line of out/{MANIFEST_NAME} describes it (a run stopped, or a full disk, before its line "
            "was written), so --verify_only could not check it once the originals are gone; converting again") in out


def test_killed_in_the_middle_of_a_manifest_line(in_tmp: Path) -> None:
    frames = three_movies()
    killed_at("manifest-half", 2, *DAY)
    text = Path("out", MANIFEST_NAME).read_text()
    assert not text.endswith("\n")  # the torn line
    assert manifest_outputs(Path("out")) == ["a.tif"]
    assert_the_day_completes(frames, DAY, converted_again=["b", "c"])


def test_killed_after_a_manifest_line(in_tmp: Path) -> None:
    frames = three_movies()
    killed_at("manifest-line", 2, *DAY)
    assert manifest_outputs(Path("out")) == ["a.tif", "b.tif"]
    assert_the_day_completes(frames, DAY, converted_again=["c"])


def test_killed_just_before_a_tif_got_its_name(in_tmp: Path) -> None:
    frames = three_movies()
    killed_at("before-rename:b.tif", 1, *DAY)
    assert not Path("out/b.tif").exists() and temporary_files_of(Path("out/b.tif"))
    assert_the_day_completes(frames, DAY, converted_again=["b", "c"])


@pytest.mark.parametrize("point", ["before-rename:movies.star", "renamed:movies.star"])
def test_killed_while_movies_star_is_written(in_tmp: Path, point: str) -> None:
    """After every movie: its temporary file (when it had not got its name) is removed by the
    rerun, which lists every movie."""
    frames = three_movies()
    killed_at(point, 1, *DAY)
    assert sorted(p.name for p in Path("out").glob("*.tif")) == ["a.tif", "b.tif", "c.tif"]
    assert_the_day_completes(frames, DAY, converted_again=[])


@pytest.mark.parametrize("point", ["before-rename:report.json", "renamed:report.json"])
def test_killed_while_the_report_is_written(in_tmp: Path, point: str) -> None:
    frames = three_movies()
    killed_at(point, 1, *DAY, "--report", "out/report.json")
    assert_the_day_completes(frames, [*DAY, "--report", "out/report.json"], converted_again=[])
    report = json.loads(Path("out/report.json").read_text())
    assert sorted(movie["source"] for movie in report["movies"]) == ["a.mrc", "b.mrc", "c.mrc"]


# --------------------------------------------------------------------------- power cut: fsync before rename


def test_every_file_is_on_the_disk_before_its_name_and_its_name_before_its_manifest_line(
        in_tmp: Path, monkeypatch) -> None:
    """A power cut loses what was written but not synced. A .tif renamed before its data reached
    the disk can come back complete-looking but zero-filled (and its manifest line, synced,
    then vouches for it); so each file is synced before its rename, the directory after it, and
    a .tif's manifest line is added only then. (Recorded through os.fsync / os.replace, since a
    real power cut cannot be made here.)"""
    int16_movie("a.mrc", 1)
    int16_movie("b.mrc", 2)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, destination, *args, **kwargs) -> None:
        real_replace(source, destination, *args, **kwargs)
        directory = kwargs.get("dst_dir_fd")  # io.atomic renames within its directory's descriptor
        where = os.readlink(f"/proc/self/fd/{directory}") if directory is not None else ""
        events.append(("rename", os.path.abspath(os.path.join(where, destination))))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out", "--report", "out/report.json"]) == 0
    out = str(in_tmp / "out")
    manifest_syncs = [i for i, event in enumerate(events) if event == ("fsync", f"{out}/{MANIFEST_NAME}")]
    assert len(manifest_syncs) == 2, events  # one per line
    for name in ("a.tif", "b.tif", "movies.star", "report.json"):
        renamed = events.index(("rename", f"{out}/{name}"))
        synced = [i for i, (what, path) in enumerate(events)
                  if what == "fsync" and Path(path).name.startswith(f"{name}.cryotiff-")]
        assert synced and synced[-1] < renamed, (name, events)  # the data, then the name
        directory_synced = [i for i in range(renamed + 1, len(events)) if events[i] == ("fsync", out)]
        assert directory_synced, (name, events)  # the name on the disk
        if name.endswith(".tif"):
            line = manifest_syncs["ab".index(name[0])]
            assert directory_synced[0] < line, (name, events)  # then the line that vouches for it


# --------------------------------------------------------------------------- full disks found at fsync


def full_disk_at_fsync_of(patch: pytest.MonkeyPatch, name: str, error_number: int = errno.ENOSPC) -> list[str]:
    """``os.fsync`` of a temporary file of ``name`` fails as a file system that allocates late
    (NFS, a quota checked on write-back, thin provisioning) reports a full disk: at the sync,
    after every write seemed to succeed. Returns the files refused."""
    refused: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        if Path(path).name.startswith(f"{name}.cryotiff-"):
            refused.append(path)
            raise OSError(error_number, os.strerror(error_number))
        real_fsync(descriptor)

    patch.setattr(os, "fsync", fsync)
    return refused


def errors_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR")]


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_found_at_the_sync_of_a_tif(in_tmp: Path, capsys, error_number: int) -> None:
    """The writes of the .tif succeeded, its sync does not: before, the file was renamed without
    a sync (the error came, if at all, after the rename, and the .tif kept the holes). Now the
    movie fails with one line, no .tif and no temporary file stay, the next movie converts, the
    exit status is 1 and the rerun completes the set."""
    frames = three_movies()
    with pytest.MonkeyPatch.context() as patch:
        refused = full_disk_at_fsync_of(patch, "b.tif", error_number)
        assert main(DAY) == 1
    captured = capsys.readouterr()
    assert refused and "Traceback" not in captured.err
    assert f"out/b.tif: cannot write ({os.strerror(error_number)})" in captured.out + captured.err
    assert not Path("out/b.tif").exists() and not temporary_files_of(Path("out/b.tif"))
    assert manifest_outputs(Path("out")) == ["a.tif", "c.tif"]
    assert listed_in_movies_star(Path("out/movies.star")) == ["out/a.tif", "out/c.tif"]
    assert_the_day_completes(frames, DAY, converted_again=["b"])


@pytest.mark.parametrize("name", ["movies.star", "report.json"])
def test_a_full_disk_found_at_the_sync_of_movies_star_or_the_report(in_tmp: Path, capsys, name: str) -> None:
    """One ERROR naming the file, exit status 1, nothing of it left (the earlier one, if any,
    stays as it was); the rerun writes it."""
    frames = three_movies()
    with pytest.MonkeyPatch.context() as patch:
        refused = full_disk_at_fsync_of(patch, name)
        assert main([*DAY, "--report", "out/report.json"]) == 1
    captured = capsys.readouterr()
    assert refused and "Traceback" not in captured.err
    errors = errors_of(captured.err)
    assert len(errors) == 1 and f"out/{name}" in errors[0] and "No space left on device" in errors[0], errors
    assert not Path("out", name).exists() and not temporary_files_of(Path("out", name))
    assert_the_day_completes(frames, [*DAY, "--report", "out/report.json"], converted_again=[])


def test_a_full_disk_found_at_the_sync_of_the_gain_reference(in_tmp: Path, capsys) -> None:
    """gain-reference.mrc, which the TIFFs of gain-normalised movies need: the run stops before
    any movie with one line (no TIFF would be usable without it), nothing of it is left, and the
    rerun once there is space converts everything."""
    from .test_adversarial_outputs import gain_normalised_movie

    movie = gain_normalised_movie("m.mrc")
    assert main(["--i", "m.mrc", "--o", "est", "--estimate_gain"]) == 0
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        refused = full_disk_at_fsync_of(patch, "gain-reference.mrc")
        status = main(["--i", "m.mrc", "--o", "out", "--gain", "est/gain_estimate.bin"])
    captured = capsys.readouterr()
    assert status != 0 and refused and "Traceback" not in captured.err
    errors = errors_of(captured.err)
    assert len(errors) == 1 and "out/gain-reference.mrc" in errors[0] and "No space left" in errors[0], errors
    assert not Path("out/gain-reference.mrc").exists() and not temporary_files_of(Path("out/gain-reference.mrc"))
    assert not Path("out/m.tif").exists()
    assert main(["--i", "m.mrc", "--o", "out", "--gain", "est/gain_estimate.bin", "--only_do_unfinished"]) == 0
    capsys.readouterr()
    assert main(["--verify_only", "--o", "out"]) == 0
    assert main(["--verify_only", "--i", "m.mrc", "--o", "out", "--gain", "est/gain_estimate.bin"]) == 0
    assert read_tiff_frames(Path("out/m.tif")).shape == movie.shape


# --------------------------------------------------------------------------- --verify_only after a crash


def test_a_tif_replaced_by_a_later_run_killed_before_its_manifest_line_is_not_ok(in_tmp: Path) -> None:
    """A rerun with other options (another codec) replaced a.tif and was killed before its
    manifest line: the line describes the file that is gone. With the originals, the pages are
    right, but once they are deleted the manifest could not check it: not OK before the
    deletion either. The rerun with --only_do_unfinished converts it again and all is OK."""
    frames = {"a": int16_movie("a.mrc", 1)}
    assert convert_to_tiff("--i", "a.mrc", "--o", "out", "--compression", "deflate").returncode == 0
    killed_at("renamed:a.tif", 1, "--i", "a.mrc", "--o", "out", "--compression", "none")
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames["a"])
    with_originals = convert_to_tiff("--verify_only", "--i", "a.mrc", "--o", "out")
    assert with_originals.returncode == 1, with_originals.stdout
    assert verdict_lines(with_originals.stdout) == [
        f"DIFFERS   out/a.tif: its pages are those of a.mrc, but the last line for it in out/{MANIFEST_NAME} "
        "describes another file (written by an earlier conversion), so --verify_only could not check it once "
        "a.mrc is gone; convert it again (--only_do_unfinished does) before deleting a.mrc"], with_originals.stdout
    without = convert_to_tiff("--verify_only", "--o", "out")
    assert without.returncode == 1 and verdict_lines(without.stdout)[0].startswith("DIFFERS   out/a.tif"), without.stdout
    out = assert_the_day_completes(frames, ["--i", "a.mrc", "--o", "out"], converted_again=["a"])
    assert (f"out/a.tif: the last line for it in out/{MANIFEST_NAME} describes another file (a run stopped, or a full "
            "disk, before its line was written), so --verify_only could not check it once the originals are gone; "
            "converting again") in out


# --------------------------------------------------------------------------- a --watch run killed


@pytest.mark.parametrize("point", ["renamed:b.tif", "manifest-half:2", "before-rename:movies.star:2"])
def test_a_watch_killed_at_a_point_is_completed_by_the_next_watch(in_tmp: Path, point: str) -> None:
    """The collection's --watch (with --only_do_unfinished, as the user guide has it) killed in
    the middle; the next one (the same command) completes the set."""
    kind, _, rest = point.partition(":")
    pattern, _, n = rest.partition(":") if kind != "manifest-half" else ("", "", rest)
    frames = {}
    for seed, name in enumerate(("a", "b", "c"), start=1):
        frames[name] = int16_movie(f"Movies/{name}.mrc", seed)
        os.utime(f"Movies/{name}.mrc", (1e9, 1e9))  # long complete
    watch = ["--i", "Movies/*.mrc", "--o", "out", "--only_do_unfinished", "--watch", "--settle_seconds", "0",
             "--watch_timeout", "1"]
    killed_at(f"{kind}:{pattern}" if pattern else kind, int(n or 1), *watch)
    rerun = convert_to_tiff(*watch)
    assert rerun.returncode == 0, (rerun.stdout, rerun.stderr)
    assert leftover_temporaries(Path("out")) == []
    for name, movie in frames.items():
        np.testing.assert_array_equal(read_tiff_frames(Path(f"out/Movies/{name}.tif")), movie)
    assert manifest_outputs(Path("out")) == [f"Movies/{name}.tif" for name in frames]
    assert listed_in_movies_star(Path("out/movies.star")) == [f"out/Movies/{name}.tif" for name in frames]
    verified = convert_to_tiff("--verify_only", "--o", "out")
    assert verified.returncode == 0, verified.stdout
    verified = convert_to_tiff("--verify_only", "--i", "Movies/*.mrc", "--o", "out")
    assert verified.returncode == 0, verified.stdout


def test_an_ok_with_the_originals_says_when_no_manifest_line_names_the_output(in_tmp: Path) -> None:
    """Killed between the rename and the manifest line: with the originals the pages are right
    (OK), but the check after their deletion could not check it; the OK line says so, while the
    originals are still there to convert it again."""
    frames = {"a": int16_movie("a.mrc", 1), "b": int16_movie("b.mrc", 2)}
    killed_at("renamed:b.tif", 1, "--i", "a.mrc", "b.mrc", "--o", "out")
    verified = convert_to_tiff("--verify_only", "--i", "a.mrc", "b.mrc", "--o", "out")
    assert verified.returncode == 0, verified.stdout
    assert verdict_lines(verified.stdout) == [
        "OK        out/a.tif (3 pages; compared with a.mrc)",
        f"OK        out/b.tif (3 pages; compared with b.mrc); no line of out/{MANIFEST_NAME} names it: once b.mrc is "
        "gone, --verify_only --o cannot check it (--only_do_unfinished converts it again, which writes its line)",
    ], verified.stdout
    assert_the_day_completes(frames, ["--i", "a.mrc", "b.mrc", "--o", "out"], converted_again=["b"])


@pytest.mark.parametrize("point", ["before-rename:gain-reference.mrc", "renamed:gain-reference.mrc"])
def test_killed_while_the_gain_reference_is_written(in_tmp: Path, point: str) -> None:
    """gain-reference.mrc, written before any movie: killed just before it got its name (the
    rerun removes its temporary file and writes it) or just after (the rerun keeps it, as it
    holds this run's reference); either way the set completes and verifies."""
    from .test_adversarial_outputs import gain_normalised_movie

    gain_normalised_movie("m.mrc")
    assert convert_to_tiff("--i", "m.mrc", "--o", "est", "--estimate_gain").returncode == 0
    arguments = ["--i", "m.mrc", "--o", "out", "--gain", "est/gain_estimate.bin"]
    killed_at(point, 1, *arguments)
    assert not Path("out/m.tif").exists()
    rerun = convert_to_tiff(*arguments, "--only_do_unfinished")
    assert rerun.returncode == 0, (rerun.stdout, rerun.stderr)
    assert leftover_temporaries(Path("out")) == []
    for check in (["--verify_only", "--o", "out"], ["--verify_only", *arguments]):
        verified = convert_to_tiff(*check)
        assert verified.returncode == 0, (verified.stdout, verified.stderr)
        assert [line.split()[0] for line in verdict_lines(verified.stdout)] == ["OK"], verified.stdout
