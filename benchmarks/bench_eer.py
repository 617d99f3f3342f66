"""Speed of EER rendering: raw frames per second and MB/s of EER data read, at ``--eer_upsampling``
1 and 2, with ``--j 1`` and ``--j 2``. Prints a table (docs/benchmarks/eer.md holds a run and its
command).

    python benchmarks/bench_eer.py [--workdir DIR] [--frames N] [--grouping G] [--repeats R]
                                   [--density E] [--upsampling 1 2] [--threads 1 2]

The movie is a simulated Falcon 4 EER (4096 x 4096, compression 65001, ``--density`` electrons
per physical pixel per raw frame, default 0.025, about 420,000 events and 590 kB per raw frame),
written once into ``--workdir`` and reused. Two measurements per upsampling and thread count:

* ``render``: ``EerMovie.render`` of every output page (``--grouping`` raw frames each), the pages
  run on a ThreadPoolExecutor of ``--j`` threads as the conversion pipeline runs them (inline for
  ``--j 1``).
* ``convert``: ``cryotiff.convert.convert_movie`` end to end (render, flip, encode with
  ``--compression auto``, verify, write), with a ThreadPoolExecutor of ``--j`` threads (None for
  ``--j 1``, as ``cryotiff.jobs`` does). ``auto`` renders page 0 in the calling thread to choose
  the codec before the pages go to the threads, so with few pages that part does not scale.

Rates count the raw frames that are rendered (the ``N mod G`` left over are not) and the EER bytes
of those frames. Each figure is the best of ``--repeats`` runs. The machine may be shared, and other
processes on the CPUs make ``--j 2`` look worse than it is: before each run the script waits (up to
a minute) until the CPUs are mostly idle, measures during the run how much CPU time other processes
took (``/proc/stat`` minus this process), keeps only runs where that was under 10 % of the CPUs
(trying up to 4 x ``--repeats`` times) and prints it in the column ``others``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DETECTOR = 4096


def make_movie(path: Path, n_frames: int, density: float, seed: int = 0) -> Path:
    """A simulated Falcon 4 movie (cached by file name)."""
    if path.exists():
        return path
    from cryotiff.simulate.eer import acquisition_metadata, random_events, write_eer

    frames = random_events(np.random.default_rng(seed), DETECTOR, n_frames, density)
    partial = path.with_name(path.name + ".partial")
    write_eer(partial, frames, DETECTOR, 65001, metadata=acquisition_metadata(n_frames, DETECTOR, density))
    os.replace(partial, path)
    return path


def busy_fraction(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; 0 where it does not exist)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(threshold: float = 0.1, max_seconds: float = 60.0) -> float:
    """Wait until less than ``threshold`` of the CPUs are busy; return the last busy fraction."""
    started = time.perf_counter()
    busy = busy_fraction()
    while busy > threshold and time.perf_counter() - started < max_seconds:
        busy = busy_fraction()
    return busy


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (/proc/stat; 0 where it does not exist)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(run) -> tuple[float, float]:
    """``(seconds, others)``: wall time of ``run()`` and the fraction of all CPUs that other
    processes used meanwhile."""
    busy0, own0 = busy_cpu_seconds(), sum(os.times()[:2])
    seconds = run()
    busy1, own1 = busy_cpu_seconds(), sum(os.times()[:2])
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (seconds * (os.cpu_count() or 1))
    return seconds, others


def time_render(path: Path, pages: list[tuple[int, int]], upsampling: int, threads: int) -> float:
    from cryotiff.io.eer import EerMovie

    with EerMovie(path) as movie:
        movie.render(0, 1, upsampling)  # warm up (imports, first allocations)
        started = time.perf_counter()
        if threads == 1:
            for start, stop in pages:
                movie.render(start, stop, upsampling)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda page: movie.render(page[0], page[1], upsampling), pages))
        return time.perf_counter() - started


def time_convert(path: Path, out_dir: Path, grouping: int, upsampling: int, threads: int) -> float:
    from cryotiff.convert import ConvertOptions, convert_movie

    options = ConvertOptions(output_dir=out_dir, threads=threads, eer_grouping=grouping, eer_upsampling=upsampling)
    destination = out_dir / (path.stem + ".tif")
    executor = ThreadPoolExecutor(threads, thread_name_prefix="bench") if threads > 1 else None
    try:
        started = time.perf_counter()
        convert_movie(path, destination, options, executor)
        seconds = time.perf_counter() - started
    finally:
        if executor is not None:
            executor.shutdown()
    destination.unlink()
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cryotiff-bench-eer")
    parser.add_argument("--frames", type=int, default=120, help="raw frames in the movie (default 120)")
    parser.add_argument("--grouping", type=int, default=25, help="--eer_grouping (default 25)")
    parser.add_argument("--density", type=float, default=0.025, help="electrons per pixel per raw frame")
    parser.add_argument("--repeats", type=int, default=3, help="best of R runs (default 3)")
    parser.add_argument("--upsampling", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sections", nargs="+", default=["render", "convert"], choices=["render", "convert"])
    args = parser.parse_args(argv)

    from cryotiff.io.eer import EerMovie, plan_groups

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = make_movie(args.workdir / f"falcon4_{args.frames}_{args.density:g}.eer", args.frames, args.density)
    pages, _ = plan_groups(args.frames, args.grouping)
    with EerMovie(path) as movie:
        frame_bytes = [sum(count for _, count in movie._strips[k]) for k in range(args.frames)]
    n_rendered = len(pages) * args.grouping
    mb_read = sum(frame_bytes[:n_rendered]) / 1e6
    print(f"movie: {path} ({args.frames} raw frames of {DETECTOR}x{DETECTOR}, {args.density:g} e/px/frame, "
          f"{mb_read / n_rendered * 1e3:.0f} kB per raw frame); {len(pages)} pages of {args.grouping} raw frames; "
          f"{os.cpu_count()} CPUs; best of {args.repeats}")
    print()
    print(f"{'what':8} {'up':>3} {'--j':>4} {'seconds':>8} {'frames/s':>9} {'MB/s':>7} {'others':>6}")
    out_dir = args.workdir / "out"
    out_dir.mkdir(exist_ok=True)
    for section in args.sections:
        for upsampling in args.upsampling:
            for threads in args.threads:
                if section == "render":
                    def run():
                        return time_render(path, pages, upsampling, threads)
                else:
                    def run():
                        return time_convert(path, out_dir, args.grouping, upsampling, threads)
                runs: list[tuple[float, float]] = []
                for _ in range(4 * args.repeats):
                    wait_until_quiet()
                    runs.append(timed(run))
                    if sum(others < 0.1 for _, others in runs) >= args.repeats:
                        break
                quiet = [r for r in runs if r[1] < 0.1] or runs
                best, others = min(quiet)
                print(f"{section:8} {upsampling:>3} {threads:>4} {best:8.2f} {n_rendered / best:9.1f} "
                      f"{mb_read / best:7.1f} {others:6.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
