"""Throughput of ``--j`` threads and of ``convert-to-tiff-mpi`` ranks, and peak memory against
movie length. Prints tables (docs/benchmarks/parallel.md holds a run and its command).

    python benchmarks/bench_parallel.py [--workdir DIR] [--frames N] [--repeats R] [--sections ...]

Sections:

* ``stages``: milliseconds per frame of each step of the page pipeline (read, flip copy, encode,
  verification decode, compare) on one thread, for Falcon and K2 with RELION's codec (deflate-6,
  LZW) and with Huffman-only deflate; this is the work ``--j`` spreads over cores.
* ``threads``: MB/s of input for ``--j 1`` and ``--j 2`` on a simulated Falcon movie (4096 x 4096
  uint16, mean 36.6, MRC mode 6) and a K2 movie (3838 x 3710 counts, mean 0.96, MRC mode 0), with
  ``--compression auto`` (cryotiff's policy) and explicit ``deflate`` (RELION's choice for
  4096-wide movies) and ``lzw`` (RELION's choice otherwise). Each conversion runs in a fresh child
  process and is timed there (interpreter start-up excluded); runs alternate between ``--j 1``
  and ``--j 2`` and the best of ``--repeats`` is shown.
* ``mpi``: MB/s of input for several Falcon movies with ``convert-to-tiff`` and with
  ``mpirun -np 1`` / ``-np 2 convert-to-tiff-mpi`` (``--j 1``), timed from outside, so
  ``mpirun`` start-up (about 1 s) is included; the run's own "Speed" line is shown too.
* ``memory``: peak resident memory (the child's own ``VmHWM``, see :func:`peak_rss_bytes`)
  converting a 10-frame and a 100-frame movie of 2048 x 2048 uint16 (8 MiB per frame, so frames
  dominate over the 40-odd MiB of the interpreter and libraries), with ``--j 1`` and ``--j 2``.

On a shared machine other processes distort timings: before each run the benchmark waits (up to
``--max_wait`` s) for idle CPUs, measures how much CPU other processes used during the run
(machine busy time minus the run's own CPU time) and repeats a run they disturbed by more than
10 % of the CPUs (up to 6 times); a footnote gives the figures.

Movies are simulated once into ``--workdir`` and reused. Simulating a 4096 x 4096 Falcon frame
takes about 2 s, so long movies repeat a few distinct frames; every frame is still read,
encoded, verified and written, and compresses as a fresh frame would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

FALCON_SHAPE_YX = (4096, 4096)
K2_SHAPE_YX = (3838, 3710)
MEMORY_SHAPE_YX = (2048, 2048)
DISTINCT_FRAMES = 4
BIN_DIR = Path(sys.executable).parent


# --------------------------------------------------------------------------- movies


def make_movie(path: Path, kind: str, n_frames: int, shape_yx: tuple[int, int] | None = None, seed: int = 0) -> Path:
    """A simulated movie (cached): ``falcon`` (uint16, mode 6) or ``k2`` (int8 counts, mode 0)."""
    if path.exists():
        return path
    from cryotiff.simulate.detectors import counting_frames, falcon_frames
    from cryotiff.simulate.write import write_mrc_movie

    distinct = min(n_frames, DISTINCT_FRAMES)
    if kind == "falcon":
        frames = falcon_frames(distinct, shape_yx=shape_yx or FALCON_SHAPE_YX, seed=seed)
        mode = 6
    else:
        frames = counting_frames(distinct, shape_yx=shape_yx or K2_SHAPE_YX, dtype=np.int8, seed=seed)
        mode = 0
    tiled = frames[np.arange(n_frames) % distinct]
    partial = path.with_name(path.name + ".partial")
    write_mrc_movie(partial, tiled, mode, pixel_size_angstrom=1.0)
    os.replace(partial, path)
    return path


# --------------------------------------------------------------------------- child processes


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: ``VmHWM``, which belongs to the address space
    made by ``exec`` and so starts afresh in a child. (``ru_maxrss`` of a child on Linux starts at
    the parent's peak, inherited through ``fork``, which hides the child's own figure.)"""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child_convert(movie: str, out_dir: str, threads: int, compression: str) -> None:
    """In a child process: convert one movie and print its timing as JSON."""
    from cryotiff.convert import ConvertOptions
    from cryotiff.jobs import plan, run

    options = ConvertOptions(output_dir=Path(out_dir), threads=threads, compression=compression)
    jobs, failures = plan([movie], options)
    started = time.perf_counter()
    results = run(jobs, options)
    seconds = time.perf_counter() - started
    result = results[0]
    if failures or result.status != "converted":
        raise SystemExit(f"conversion failed: {failures or result.message}")
    print(json.dumps({"seconds": seconds, "input_bytes": result.input_bytes, "output_bytes": result.output_bytes,
                      "codec": result.codec, "peak_bytes": peak_rss_bytes()}))


def child_baseline() -> None:
    """In a child process: import what a conversion imports, convert nothing."""
    import imagecodecs  # noqa: F401
    import tifffile  # noqa: F401

    import cryotiff.jobs  # noqa: F401

    print(json.dumps({"peak_bytes": peak_rss_bytes()}))


def cpu_jiffies() -> tuple[int, int]:
    """(all, idle) CPU time of the machine so far, in clock ticks (Linux /proc/stat; zeros
    elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait


def busy_fraction(interval_seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``interval_seconds``."""
    before = cpu_jiffies()
    time.sleep(interval_seconds)
    after = cpu_jiffies()
    return 1.0 - (after[1] - before[1]) / max(after[0] - before[0], 1)


def run_measured(command: list[str], cwd: Path | None = None) -> tuple[str, float, float]:
    """Run ``command``; return its stdout, the wall seconds, and the load of *other* processes
    during the run as a fraction of all CPUs: the machine's busy time minus the command's own CPU
    time (from ``os.wait4``, which includes the processes it started and waited for, such as
    ``mpirun``'s ranks)."""
    before = cpu_jiffies()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    stdout = process.stdout.read()  # drained before wait4, so the child never blocks on a full pipe
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    after = cpu_jiffies()
    process.stdout.close()
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{stderr}")
    busy_seconds = ((after[0] - before[0]) - (after[1] - before[1])) / os.sysconf("SC_CLK_TCK")
    own_seconds = usage.ru_utime + usage.ru_stime
    other_load = max(0.0, busy_seconds - own_seconds) / (seconds * (os.cpu_count() or 1))
    return stdout, seconds, other_load


def run_child(arguments: list[str]) -> tuple[dict, float]:
    """Run this script as a child; return its JSON and the other processes' load during it."""
    stdout, _, other_load = run_measured([sys.executable, __file__, *arguments])
    return json.loads(stdout), other_load


WAITED_SECONDS = [0.0]
#: Load of other processes during each timed run kept (fraction of all CPUs), for the footnote.
OTHER_LOAD: list[float] = []
MAX_WAIT_SECONDS = [180.0]
#: A run during which other processes kept more than this fraction of the CPUs busy is repeated.
MAX_OTHER_LOAD = 0.10
MAX_ATTEMPTS = 6


def wait_until_quiet(threshold: float = 0.15) -> None:
    """Timings on a shared machine are only meaningful when nothing else runs: wait (up to
    ``--max_wait`` seconds) until less than ``threshold`` of the CPUs are busy."""
    started = time.perf_counter()
    while busy_fraction() > threshold and time.perf_counter() - started < MAX_WAIT_SECONDS[0]:
        time.sleep(2.0)
    WAITED_SECONDS[0] += time.perf_counter() - started


def undisturbed(run: Callable[[], tuple]) -> tuple:
    """``run()`` (returning ``(..., other_load)``) again until other processes left the CPUs
    alone during it, at most :data:`MAX_ATTEMPTS` times; the last attempt is kept anyway and its
    load shows in the footnote."""
    for _ in range(MAX_ATTEMPTS):
        wait_until_quiet()
        outcome = run()
        if outcome[-1] <= MAX_OTHER_LOAD:
            break
    OTHER_LOAD.append(outcome[-1])
    return outcome


def convert_once(movie: Path, scratch: Path, threads: int, compression: str) -> dict:
    """One conversion in a fresh child process, undisturbed by other processes if possible."""
    def attempt() -> tuple[dict, float]:
        out_dir = Path(tempfile.mkdtemp(dir=scratch))
        try:
            return run_child(["--child-convert", str(movie), str(out_dir), str(threads), compression])
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    figures, _ = undisturbed(attempt)
    return figures


def timed_conversions(movie: Path, scratch: Path, thread_counts: tuple[int, ...], compression: str,
                      repeats: int) -> dict[int, dict]:
    """The fastest of ``repeats`` conversions for each thread count; the runs alternate between
    thread counts so that a disturbance hits both alike."""
    best: dict[int, dict] = {}
    for _ in range(repeats):
        for threads in thread_counts:
            figures = convert_once(movie, scratch, threads, compression)
            if threads not in best or figures["seconds"] < best[threads]["seconds"]:
                best[threads] = figures
    return best


# --------------------------------------------------------------------------- sections


def section_stages(workdir: Path, repeats: int) -> None:
    from cryotiff.codecs import make_codec_from_label
    from cryotiff.io.mrc import open_mrc
    from cryotiff.io.tiff import flip_rows

    print(f"\n## Pipeline stages, one thread (ms per frame, best of {repeats} x {DISTINCT_FRAMES} frames)\n")
    print("| movie | codec | read | flip copy | encode | decode | compare | total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, label in (("falcon", "deflate-6"), ("falcon", "deflate-huffman"), ("k2", "lzw"), ("k2", "deflate-huffman")):
        movie = make_movie(workdir / f"{kind}_{DISTINCT_FRAMES}.mrc", kind, DISTINCT_FRAMES)
        codec = make_codec_from_label(label)
        best: dict[str, float] = {}
        wait_until_quiet()
        with open_mrc(movie) as source:
            for _ in range(repeats):
                for index in range(source.info.n_frames):
                    times = {}
                    t0 = time.perf_counter()
                    frame = source.read_frame(index)
                    t1 = time.perf_counter()
                    rows = np.ascontiguousarray(flip_rows(frame))
                    raw = rows.view(np.uint8).reshape(rows.shape[0], -1)
                    t2 = time.perf_counter()
                    encoded = codec.encode(raw)
                    t3 = time.perf_counter()
                    decoded = np.frombuffer(codec.decode(encoded), dtype=np.uint8)
                    t4 = time.perf_counter()
                    assert np.array_equal(decoded, raw.ravel())
                    t5 = time.perf_counter()
                    times = {"read": t1 - t0, "flip": t2 - t1, "encode": t3 - t2, "decode": t4 - t3, "compare": t5 - t4}
                    for key, value in times.items():
                        best[key] = min(best.get(key, value), value)
        total = sum(best.values())
        cells = " | ".join(f"{1e3 * best[key]:.0f}" for key in ("read", "flip", "encode", "decode", "compare"))
        print(f"| {kind} | {codec.label} | {cells} | {1e3 * total:.0f} |")


def section_threads(workdir: Path, scratch: Path, n_frames: int, repeats: int) -> None:
    print(f"\n## --j threads: MB/s of input ({n_frames} frames, best of {repeats}, conversion only)\n")
    print("| movie | --compression | codec | size % | --j 1 MB/s | --j 2 MB/s | speed-up |")
    print("|---|---|---|---:|---:|---:|---:|")
    for kind in ("falcon", "k2"):
        movie = make_movie(workdir / f"{kind}_{n_frames}.mrc", kind, n_frames)
        for compression in ("auto", "deflate", "lzw"):
            best = timed_conversions(movie, scratch, (1, 2), compression, repeats)
            rates = {threads: f["input_bytes"] / 1e6 / f["seconds"] for threads, f in best.items()}
            figures = best[1]
            ratio = 100 * figures["output_bytes"] / figures["input_bytes"]
            print(f"| {kind} | {compression} | {figures['codec']} | {ratio:.1f} | {rates[1]:.1f} | {rates[2]:.1f} "
                  f"| {rates[2] / rates[1]:.2f}x |", flush=True)


def mpirun_command(n_ranks: int) -> list[str]:
    command = [str(BIN_DIR / "mpirun"), "-np", str(n_ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return command


def section_mpi(workdir: Path, scratch: Path, n_movies: int, n_frames: int, repeats: int) -> None:
    movies = [make_movie(workdir / f"falcon_{n_frames}_{k}.mrc", "falcon", n_frames, seed=100 + k) for k in range(n_movies)]
    input_bytes = sum(movie.stat().st_size for movie in movies)
    print(f"\n## MPI ranks: {n_movies} Falcon movies of {n_frames} frames ({input_bytes / 1e9:.2f} GB), "
          f"--j 1, --compression auto, best of {repeats}\n")
    print("| command | wall s | MB/s (wall, incl. start-up) | MB/s (run's own Speed line) |")
    print("|---|---:|---:|---:|")
    variants = [
        ("convert-to-tiff", [str(BIN_DIR / "convert-to-tiff")]),
        ("mpirun -np 1 convert-to-tiff-mpi", mpirun_command(1) + [str(BIN_DIR / "convert-to-tiff-mpi")]),
        ("mpirun -np 2 convert-to-tiff-mpi", mpirun_command(2) + [str(BIN_DIR / "convert-to-tiff-mpi")]),
    ]
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for label, command in variants:
            def attempt(command: list[str] = command) -> tuple[float, float, float]:
                out_dir = Path(tempfile.mkdtemp(dir=scratch))
                try:
                    stdout, seconds, other_load = run_measured(command + ["--i", *map(str, movies), "--o", str(out_dir)],
                                                               cwd=scratch)
                finally:
                    shutil.rmtree(out_dir, ignore_errors=True)
                speed = re.search(r"Speed:\s+([\d.]+) MB/s", stdout)
                return seconds, float(speed.group(1)) if speed else float("nan"), other_load

            seconds, speed, _ = undisturbed(attempt)
            if label not in best or seconds < best[label][0]:
                best[label] = (seconds, speed)
    for label, _ in variants:
        seconds, speed = best[label]
        print(f"| {label} | {seconds:.1f} | {input_bytes / 1e6 / seconds:.1f} | {speed:.1f} |", flush=True)


def section_memory(workdir: Path, scratch: Path) -> None:
    baseline = run_child(["--child-baseline"])[0]["peak_bytes"]
    frame_mib = MEMORY_SHAPE_YX[0] * MEMORY_SHAPE_YX[1] * 2 / 2**20
    print(f"\n## Peak memory (VmHWM) against movie length: {MEMORY_SHAPE_YX[0]} x {MEMORY_SHAPE_YX[1]} uint16 "
          f"Falcon-like frames ({frame_mib:.0f} MiB each)\n")
    print(f"Interpreter + libraries alone: {baseline / 2**20:.0f} MiB\n")
    print("| --j | --compression | codec | 10 frames MiB | 100 frames MiB | 100 / 10 | above baseline, 10 / 100 frames MiB |")
    print("|---:|---|---|---:|---:|---:|---:|")
    movies = {n: make_movie(workdir / f"memory_{n}.mrc", "falcon", n, shape_yx=MEMORY_SHAPE_YX, seed=7) for n in (10, 100)}
    for compression in ("auto", "deflate"):
        for threads in (1, 2):
            figures = {n: convert_once(movie, scratch, threads, compression) for n, movie in movies.items()}
            peaks = {n: f["peak_bytes"] for n, f in figures.items()}
            print(f"| {threads} | {compression} | {figures[100]['codec']} | {peaks[10] / 2**20:.0f} | "
                  f"{peaks[100] / 2**20:.0f} | {peaks[100] / peaks[10]:.2f} "
                  f"| {(peaks[10] - baseline) / 2**20:.0f} / {(peaks[100] - baseline) / 2**20:.0f} |", flush=True)


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-convert":
        child_convert(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-baseline":
        child_baseline()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cryotiff-bench-parallel",
                        help="where simulated movies are cached and outputs written")
    parser.add_argument("--frames", type=int, default=40, help="frames of the --j movies (default 40, as in a typical EPU movie)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best is shown (default 2)")
    parser.add_argument("--mpi_movies", type=int, default=4, help="Falcon movies in the MPI section (default 4)")
    parser.add_argument("--mpi_frames", type=int, default=8, help="frames per MPI movie (default 8)")
    parser.add_argument("--max_wait", type=float, default=180.0,
                        help="seconds to wait before each run for other processes to leave the CPUs idle (default 180)")
    parser.add_argument("--sections", nargs="+", default=["stages", "threads", "mpi", "memory"],
                        choices=["stages", "threads", "mpi", "memory"])
    args = parser.parse_args()
    MAX_WAIT_SECONDS[0] = args.max_wait
    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = args.workdir / "out"
    scratch.mkdir(exist_ok=True)
    print(f"# cryotiff parallel benchmark ({os.cpu_count()} CPUs; {' '.join(sys.argv)})")
    if "stages" in args.sections:
        section_stages(args.workdir, args.repeats)
    if "threads" in args.sections:
        section_threads(args.workdir, scratch, args.frames, args.repeats)
    if "mpi" in args.sections:
        section_mpi(args.workdir, scratch, args.mpi_movies, args.mpi_frames, args.repeats)
    if "memory" in args.sections:
        section_memory(args.workdir, scratch)
    if OTHER_LOAD:
        quiet = sum(load <= MAX_OTHER_LOAD for load in OTHER_LOAD)
        print(f"\n(Other processes: waited {WAITED_SECONDS[0]:.0f} s in all for idle CPUs; in {quiet} of "
              f"{len(OTHER_LOAD)} timed runs kept they used less than {100 * MAX_OTHER_LOAD:.0f} % of the CPUs, "
              f"in the worst {100 * max(OTHER_LOAD):.0f} %.)")


if __name__ == "__main__":
    main()
