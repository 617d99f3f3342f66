"""A deterministic race for the tests of inputs opened by name (tests/test_input_races.py): a
run in which, right after the n-th look at one file's name (``os.stat``, ``os.lstat``,
``os.open``, ``open``), the file is moved away and a named pipe (FIFO) takes its name, as
another process could do between a check and an open.

Run as ``python -m tests.races <run.json>`` in a fresh directory: for n = 0 (no swap: counts
the looks), then n = 1 .. looks, the inputs it names are made again in ``run-<n>/`` and
``convert-to-tiff <argv>`` runs there in this process. It prints one JSON line: per run, ``n``,
the exit status, stdout, stderr and whether the swap happened. A run that opens the FIFO to
read it blocks for ever: the test calls that a hang.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

#: The frames of the MRC and TIFF movies a run can name (their pixels are compared).
MOVIE_SHAPE = (3, 24, 32)


def movie_frames(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 9, MOVIE_SHAPE).astype(np.int16)


def make_inputs(directory: Path, inputs: dict[str, str]) -> None:
    """``inputs``: file name -> what it is: ``mrc``, ``tif``, ``eer``, ``gain`` (a 2048 x 2048
    multiplicative ``.gain`` TIFF), ``lst:<movie>``, ``star:<movie>``."""
    import tifffile

    from cryotiff.simulate.write import write_mrc_movie
    from cryotiff.simulate.eer import random_events, write_eer

    directory.mkdir(parents=True)
    for name, kind in inputs.items():
        path = directory / name
        if kind == "mrc":
            write_mrc_movie(path, movie_frames(), 1, pixel_size_angstrom=1.05)
        elif kind == "tif":
            tifffile.imwrite(path, movie_frames().astype(np.uint16), compression="zlib", photometric="minisblack",
                             metadata=None)
        elif kind == "eer":
            write_eer(path, random_events(np.random.default_rng(3), 2048, 2, 0.001), 2048, 65001)
        elif kind == "gain":
            tifffile.imwrite(path, np.full((2048, 2048), 1.0, np.float32), metadata=None)
        elif kind.startswith("lst:"):
            path.write_text(kind[4:] + "\n")
        elif kind.startswith("star:"):
            path.write_text("data_movies\n\nloop_\n_rlnMicrographMovieName #1\n" + kind[5:] + "\n")
        else:
            raise ValueError(kind)


class NameSwap:
    """Counts the looks at ``target`` and, right after look ``after`` (0: never), moves the file
    to ``<target>.moved`` and puts a named pipe at its name."""

    def __init__(self, target: Path, after: int):
        self.target = os.path.abspath(target)
        self.after = after
        self.looks = 0
        self.swapped = False
        self._real = {"stat": os.stat, "lstat": os.lstat, "open": os.open, "builtin_open": builtins.open}

    def _looked(self, argument, keywords) -> None:
        if keywords.get("dir_fd") is not None or isinstance(argument, int):
            return
        try:
            name = os.fspath(argument)
        except TypeError:
            return
        if isinstance(name, bytes) or os.path.abspath(name) != self.target:
            return
        self.looks += 1
        if self.looks == self.after and not self.swapped:
            self.swapped = True
            os.rename(self.target, self.target + ".moved")
            os.mkfifo(self.target)

    def _wrap(self, key: str):
        real = self._real[key]

        def look(argument, *args, **keywords):
            result = real(argument, *args, **keywords)
            self._looked(argument, keywords)
            return result

        return look

    def __enter__(self) -> "NameSwap":
        os.stat, os.lstat, os.open = self._wrap("stat"), self._wrap("lstat"), self._wrap("open")
        builtins.open = io.open = self._wrap("builtin_open")
        return self

    def __exit__(self, *exc) -> None:
        os.stat, os.lstat, os.open = self._real["stat"], self._real["lstat"], self._real["open"]
        builtins.open = io.open = self._real["builtin_open"]


def run(spec: dict) -> list[dict]:
    from cryotiff.cli import main

    root = Path.cwd()
    runs = []
    n, looks = 0, None
    while looks is None or n <= looks:
        directory = root / f"run-{n}"
        make_inputs(directory, spec["inputs"])
        out, err = io.StringIO(), io.StringIO()
        os.chdir(directory)
        try:
            with NameSwap(directory / spec["target"], n) as swap, contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(err):
                status = main(list(spec["argv"]))
        finally:
            os.chdir(root)
        if looks is None:
            looks = swap.looks
        runs.append({"n": n, "status": status, "stdout": out.getvalue(), "stderr": err.getvalue(),
                     "swapped": swap.swapped, "looks": swap.looks})
        n += 1
    return runs


if __name__ == "__main__":
    print(json.dumps(run(json.loads(Path(sys.argv[1]).read_text()))))
