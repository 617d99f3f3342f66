"""numba's cache of the compiled kernels: an entry that cannot be loaded (damaged, written for
another module, by another numba) is compiled again, never a traceback. Each run here uses a
private cache (``NUMBA_CACHE_DIR``) filled with copies of the suite's entries, so that only the
entries damaged on purpose are compiled."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from .helpers import read_tiff_frames


def private_cache(root: Path) -> Path:
    """``NUMBA_CACHE_DIR`` = ``root``, holding copies of the kernels' cache entries where numba
    looks for them under it; the directory of the kernels' entries."""
    from numba.core.caching import _CacheLocator

    from cryotiff import kernels

    kernel = kernels.lzw_encode
    entries = Path(root, _CacheLocator.get_suitable_cache_subpath(kernel.py_func.__code__.co_filename))
    entries.mkdir(parents=True)
    for path in glob.glob(os.path.join(kernel._cache.cache_path, "*.nb[ic]")):
        shutil.copy(path, entries)
    return entries


def entries_of(directory: Path, kernel: str, suffix: str) -> list[Path]:
    found = sorted(directory.glob(f"{kernel}-*.py{sys.version_info[0]}{sys.version_info[1]}*{suffix}"))
    assert found, f"no cache entry of {kernel} in {directory}"
    return found


def convert(cache: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryotiff", *argv], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NUMBA_CACHE_DIR=str(cache), NUMBA_DEBUG_CACHE="1"))


def test_cache_entries_that_cannot_be_loaded_are_compiled_again(in_tmp: Path) -> None:
    """A truncated index (``.nbi``), a truncated data file (``.nbc``), a data file of a kernel of
    another module (a copy of the package under another name: numba matches entries by the
    source file's contents, so one package's entries are taken for the other's, and unpickling
    imports the other module): each ended the run with a traceback (``UnpicklingError``,
    ``EOFError``, ``ModuleNotFoundError``). Now each is compiled again, the pages are right, and
    the entries are written anew, so that the next run loads them. (An index written by another
    numba version numba itself ignores.)"""
    from cryotiff.simulate.eer import expected_render, random_events, write_eer

    events = random_events(np.random.default_rng(1), 2048, 4, 0.002)
    write_eer(Path("m.eer"), events, 2048)
    entries = private_cache(in_tmp / "cache")
    for index in entries_of(entries, "lzw.lzw_encode", ".nbi"):
        index.write_bytes(index.read_bytes()[:20])
    for data in entries_of(entries, "lzw_decode.lzw_decodes_to", ".nbc"):
        data.write_bytes(data.read_bytes()[:100])
    for data in entries_of(entries, "eer._add_frames_physical", ".nbc"):
        data.write_bytes(b"ccryotiff_elsewhere.kernels.eer\n_add_frames_physical\n.")  # a global of another module

    completed = convert(in_tmp / "cache", "--i", "m.eer", "--o", "out", "--eer_grouping", "2")
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
    pages = read_tiff_frames(Path("out/m.tif"))
    for k in range(2):
        np.testing.assert_array_equal(pages[k], expected_render(events[2 * k: 2 * k + 2], 2048, 1))

    shutil.rmtree("out")
    completed = convert(in_tmp / "cache", "--i", "m.eer", "--o", "out", "--eer_grouping", "2")
    assert completed.returncode == 0, completed.stderr
    loaded = "".join(line for line in completed.stdout.splitlines() if "data loaded" in line)
    saved = "".join(line for line in completed.stdout.splitlines() if "data saved" in line)
    for kernel in ("lzw.lzw_encode", "lzw_decode.lzw_decodes_to", "eer._add_frames_physical"):
        assert f"/{kernel}-" in loaded and f"/{kernel}-" not in saved, (kernel, completed.stdout)  # taken, not compiled
    np.testing.assert_array_equal(read_tiff_frames(Path("out/m.tif")), pages)


def test_an_entry_of_a_kernel_of_another_importable_module_is_not_taken(tmp_path: Path) -> None:
    """Two copies of one module under two names (a package and a copy of it kept for a
    comparison): numba matches entries by the source file's contents, so the copy loaded the
    original's machine code, bound to the original module. It is compiled for its own."""
    source = "from cryotiff.kernels._jit import _jit\n\n\n@_jit\ndef add(a, b):\n    return a + b\n"
    for package in ("original", "kept_copy"):
        Path(tmp_path, package).mkdir()
        Path(tmp_path, package, "kernel.py").write_text(source)
    probe = ("import sys; from {0}.kernel import add; assert add(1, 2) == 3; "
             "print(dict(add.stats.cache_hits), dict(add.stats.cache_misses))")

    def run(package: str) -> str:
        completed = subprocess.run([sys.executable, "-c", probe.format(package)], capture_output=True, text=True,
                                   timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
        assert completed.returncode == 0, completed.stderr
        return completed.stdout.strip()

    run("original")
    shutil.copytree(tmp_path / "original" / "__pycache__", tmp_path / "kept_copy" / "__pycache__")
    assert run("kept_copy") == "{} {(int64, int64): 1}"  # compiled, not loaded
    assert run("kept_copy") == "{(int64, int64): 1} {}"  # and now its own entry is loaded
