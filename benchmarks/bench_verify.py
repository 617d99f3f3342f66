"""What the manifest costs a conversion, and how fast ``--verify_only`` checks outputs against
plain decoding. Prints tables (docs/benchmarks/verify.md holds a run and its command).

    python benchmarks/bench_verify.py [--workdir DIR] [--frames N] [--repeats R]

* ``conversion``: seconds to convert a simulated Falcon movie (4096 x 4096 uint16, MRC mode 6)
  and a K2 movie (3838 x 3710 counts, mode 0) with ``--compression auto``, through
  :func:`cryotiff.convert.convert_movie` with and without a manifest in the run's context,
  alternating, best of ``--repeats``; one thread. "with": the movie's own time (its pages are
  hashed as they are encoded); "+ hashing": until the background thread has also hashed the
  written TIFF and the original, which a run overlaps with its next movie.
* ``verify``: MB/s of pixels for decoding every page of the TIFFs with tifffile in one thread
  (plain decoding, the floor), and for ``convert-to-tiff --verify_only`` against the manifest
  (``--o`` only) and against the originals (``--i``) with ``--j 1`` and ``--j 2``, each in a
  fresh process timed from outside (interpreter start-up included), best of ``--repeats``.

Long movies repeat a few distinct frames (simulating a 4096 x 4096 frame takes seconds); every
frame is still encoded, hashed, decoded and compared as a fresh one would be.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FALCON_SHAPE_YX = (4096, 4096)
K2_SHAPE_YX = (3838, 3710)
DISTINCT_FRAMES = 3


def make_movies(workdir: Path, n_frames: int) -> dict[str, Path]:
    from cryotiff.simulate.detectors import counting_frames, falcon_frames
    from cryotiff.simulate.write import write_mrc_movie

    movies = {}
    for kind, mode, frames in (
        ("falcon", 6, lambda: falcon_frames(DISTINCT_FRAMES, shape_yx=FALCON_SHAPE_YX, seed=1)),
        ("k2", 0, lambda: counting_frames(DISTINCT_FRAMES, shape_yx=K2_SHAPE_YX, dtype=np.int8, seed=2)),
    ):
        path = workdir / f"{kind}.mrc"
        if not path.exists():
            distinct = frames()
            write_mrc_movie(path, distinct[np.arange(n_frames) % DISTINCT_FRAMES], mode, pixel_size_angstrom=1.0)
        movies[kind] = path
    return movies


def time_conversions(movies: dict[str, Path], workdir: Path, repeats: int) -> list[tuple[str, float, float]]:
    from cryotiff.convert import ConvertOptions, RunContext, convert_movie
    from cryotiff.manifest import Manifest

    rows = []
    for kind, movie in movies.items():
        best = {"without": float("inf"), "with": float("inf"), "waited": float("inf")}
        for _ in range(repeats):
            for with_manifest in (False, True):
                out = workdir / ("with" if with_manifest else "without")
                out.mkdir(exist_ok=True)
                manifest = Manifest(out) if with_manifest else None
                started = time.perf_counter()
                convert_movie(movie, out / f"{kind}.tif", ConvertOptions(output_dir=out),
                              context=RunContext(manifest=manifest))
                seconds = time.perf_counter() - started
                if manifest is None:
                    best["without"] = min(best["without"], seconds)
                    continue
                best["with"] = min(best["with"], seconds)
                manifest.wait()  # the files hashed in the background too
                best["waited"] = min(best["waited"], time.perf_counter() - started)
        rows.append((kind, best["without"], best["with"], best["waited"]))
    return rows


def plain_decode_seconds(paths: list[Path]) -> float:
    import tifffile

    started = time.perf_counter()
    for path in paths:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                page.asarray()
    return time.perf_counter() - started


def run_seconds(arguments: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cryotiff", *arguments], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cryotiff-bench-verify-"))
    workdir.mkdir(parents=True, exist_ok=True)
    movies = make_movies(workdir, args.frames)
    pixels = {kind: os.path.getsize(path) - 1024 for kind, path in movies.items()}

    print(f"Conversion with and without the manifest ({args.frames} frames per movie, one thread, best of "
          f"{args.repeats}):\n")
    print(f"{'movie':<8} {'MB':>6} {'without s':>10} {'with s':>7} {'cost %':>7} {'+ hashing s':>12} {'cost %':>7}")
    for kind, without, with_manifest, waited in time_conversions(movies, workdir, args.repeats):
        print(f"{kind:<8} {pixels[kind] / 1e6:>6.0f} {without:>10.2f} {with_manifest:>7.2f} "
              f"{100 * (with_manifest / without - 1):>7.1f} {waited:>12.2f} {100 * (waited / without - 1):>7.1f}")

    outputs = [workdir / "with" / f"{kind}.tif" for kind in movies]
    total = sum(pixels.values())
    names = [f"{kind}.mrc" for kind in movies]
    cases = [("tifffile decode, 1 thread", lambda: plain_decode_seconds(outputs))]
    for threads in (1, 2):
        cases.append((f"--verify_only --o, --j {threads}",
                      lambda threads=threads: run_seconds(["--verify_only", "--o", "with", "--j", str(threads)], workdir)))
        cases.append((f"--verify_only --i, --j {threads}",
                      lambda threads=threads: run_seconds(["--verify_only", "--i", *names, "--o", "with", "--j",
                                                           str(threads)], workdir)))
    best = {label: float("inf") for label, _ in cases}
    for _ in range(args.repeats):
        for label, case in cases:
            best[label] = min(best[label], case())
    print(f"\nChecking both outputs ({total / 1e6:.0f} MB of pixels; best of {args.repeats}):\n")
    print(f"{'how':<28} {'s':>6} {'MB/s':>7}")
    for label, _ in cases:
        print(f"{label:<28} {best[label]:>6.2f} {total / 1e6 / best[label]:>7.1f}")


if __name__ == "__main__":
    main()
