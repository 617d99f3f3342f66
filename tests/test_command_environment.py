"""The commands set ``OPENBLAS_NUM_THREADS=1`` before numpy is imported (command_environment.py):
numpy's OpenBLAS would otherwise start a thread per processor that spins at every start-up, in
every MPI rank. A setting of the user's is kept; importing the library alone changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
import {module}
import numpy
print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""

needs_threads_to_show = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or not os.path.isdir("/proc/self/task"),
    reason="OpenBLAS starts no thread of its own on one processor, or /proc cannot count them")


def threads_after_import(module: str, **environment: str) -> tuple[int, str | None]:
    """The threads of a fresh interpreter that imported ``module`` then numpy, and the setting it saw."""
    env = {name: value for name, value in os.environ.items() if name != "OPENBLAS_NUM_THREADS"}
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    return int(out[0]), None if out[1] == "None" else out[1]


@needs_threads_to_show
@pytest.mark.parametrize("module", ["cryotiff.cli", "cryotiff.mpi"])
def test_the_commands_start_numpy_without_openblas_threads(module: str) -> None:
    assert threads_after_import(module) == (1, "1")


@needs_threads_to_show
def test_a_users_openblas_setting_is_kept() -> None:
    assert threads_after_import("cryotiff.cli", OPENBLAS_NUM_THREADS="2") == (2, "2")


@needs_threads_to_show
def test_the_library_alone_leaves_openblas_as_it_is() -> None:
    """Without the commands' setting numpy's OpenBLAS starts its threads: the probe can see them
    (so that the first test can fail), and the library (cryotiff.convert) does not set it."""
    threads, setting = threads_after_import("cryotiff.convert")
    assert setting is None and threads >= 2
