"""``--check_gain`` on full-size detectors: wall time, frames summed and peak memory.

Cases (synthetic movies from cryotiff.simulate.gain_reference, the gain given rotated by
``--gain_rot 1 --gain_flip 1``, so the check has to find a non-trivial answer):

* K2 counting MRC, 3838 x 3710 (ny x nx) uint8, 1 e/px per frame, 3 movies of 10 frames;
* EER 4K, 200 raw frames per movie at 0.025 e/px each (Falcon 4 rates), 2 movies, the TFS
  ``.gain`` convention, ``--eer_grouping 40`` (chunks of 40 raw frames).

The movies are made in one child process and each check runs in another (``python -m cryotiff --check_gain``), so that the peak
resident memory (``ru_maxrss`` of that child, from ``os.wait4``) is the check's own.

    python benchmarks/bench_check_gain.py            # both cases
    python benchmarks/bench_check_gain.py --case eer
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from cryotiff.gain_check import Orientation
from cryotiff.simulate.eer import write_eer
from cryotiff.simulate.gain_reference import (
    asymmetric_sensitivity,
    counting_frames_with_gain,
    eer_events_with_gain,
    multiplicative_gain,
    specimen_dose,
)
from cryotiff.simulate.write import write_mrc_movie

TRUTH = Orientation(1, 1)


def make_k2(directory: Path) -> tuple[list[str], Path]:
    shape = (3838, 3710)
    sensitivity = asymmetric_sensitivity(shape, seed=1)
    movies = []
    for k in range(3):
        frames = counting_frames_with_gain(sensitivity, 10, 1.0, dose=specimen_dose(shape, seed=k), dtype=np.uint8, seed=k)
        movies.append(str(write_mrc_movie(directory / f"k2_{k}.mrc", frames, 0 if frames.max() < 128 else 6)))
    gain = directory / "k2_gain.mrc"
    with mrcfile.new(gain) as mrc:
        mrc.set_data(TRUTH.inverse().apply(multiplicative_gain(sensitivity)))
    return movies, gain


def make_eer(directory: Path) -> tuple[list[str], Path]:
    size = 4096
    sensitivity = asymmetric_sensitivity((size, size), seed=2)
    dose = specimen_dose((size, size))
    movies = []
    for k in range(2):
        events = eer_events_with_gain(sensitivity, 200, 0.025, dose=dose, seed=10 + k)
        movies.append(str(write_eer(directory / f"eer_{k}.eer", events, size)))
    gain = directory / "eer.gain"
    tifffile.imwrite(gain, TRUTH.inverse().apply(multiplicative_gain(sensitivity)))
    return movies, gain


CASES = {"k2": ("K2 counting MRC 3838 x 3710", make_k2, []),
         "eer": ("EER 4K, TFS .gain", make_eer, ["--eer_grouping", "40"])}


def run_check(movies: list[str], gain: Path, extra: list[str], out: Path) -> tuple[float, float, str]:
    """Wall seconds, peak MB of the child, and its answer line."""
    command = [sys.executable, "-m", "cryotiff", "--check_gain", "--i", *movies, "--gain", str(gain),
               "--o", str(out), *extra]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, _, usage = os.wait4(process.pid, 0)  # this child's own peak memory
        seconds = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        lines, errors = stdout.read().splitlines(), stderr.read()
    peak_mb = usage.ru_maxrss / 1024
    answer = next((line for line in lines if line.startswith("Answer")), errors.strip()[:80])
    summed = next((line for line in lines if line.startswith("Summed")), "")
    return seconds, peak_mb, f"{summed} | {answer}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--make", nargs=2, metavar=("CASE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:  # in a child process, so that the parent (and the check it starts) stays small
        movies, gain = CASES[args.make[0]][1](Path(args.make[1]))
        print("\n".join([str(gain), *movies]))
        return 0
    print("| case | wall s | peak MB | frames summed, answer |")
    print("|---|---|---|---|")
    for name in args.case or list(CASES):
        label, _, extra = CASES[name]
        with tempfile.TemporaryDirectory(prefix="bench-check-gain-") as scratch:
            made = subprocess.run([sys.executable, __file__, "--make", name, scratch], check=True,
                                  capture_output=True, text=True).stdout.split()
            gain, movies = Path(made[0]), made[1:]
            seconds, peak_mb, what = run_check(movies, gain, extra, Path(scratch) / "out")
        print(f"| {label} | {seconds:.1f} | {peak_mb:.0f} | {what} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
