"""Size of a gain-normalised K2 movie: original float32, plain deflate, RELION's gain path, --lossy.

The example of RELION's movie-compression page (https://relion.readthedocs.io/en/latest/Reference/MovieCompression.html)
(EMPIAR-10317): 3838 x 3710, 40 frames, float32 from EPU, mean 1.45;
IMOD deflate-6 55.9 %, RELION after gain estimation 11.9 %, 1502 unreliable pixels. This script
simulates such a movie (Poisson counts x a per-pixel gain, 0.1 % defect pixels replaced by the
mean of their neighbours as Digital Micrograph does, a few cold pixels), estimates the gain over
separate movies of the same detector, then converts the 40-frame movie four ways and prints each
size as a percentage of the float32 MRC.

    python benchmarks/bench_gain.py                    # the seed's size (takes a few minutes)
    python benchmarks/bench_gain.py --shape 960 928    # a quick run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cryotiff.convert import ConvertOptions, convert_movie
from cryotiff.gain import GainEstimate
from cryotiff.jobs import Job, Reporter, estimate, prepare
from cryotiff.simulate.gain_normalised import make_detector
from cryotiff.simulate.write import write_mrc_movie


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(3838, 3710), metavar=("NY", "NX"))
    parser.add_argument("--frames", type=int, default=40, help="frames of the converted movie")
    parser.add_argument("--estimation_frames", type=int, default=200,
                        help="frames (in movies of 40) used to estimate the gain")
    parser.add_argument("--mean", type=float, default=1.45, help="electrons per pixel per frame")
    parser.add_argument("--seed", type=int, default=10317)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    shape = tuple(args.shape)
    detector = make_detector(shape, rng)
    with tempfile.TemporaryDirectory(prefix="cryotiff-bench-gain-") as scratch:
        work = Path(scratch)
        movie = work / "movie.mrc"
        write_mrc_movie(movie, detector.movie(args.frames, rng, args.mean).frames, 2, pixel_size_angstrom=1.0)
        training = []
        for index in range(max(1, args.estimation_frames // 40)):
            path = work / f"training_{index}.mrc"
            write_mrc_movie(path, detector.movie(40, rng, args.mean).frames, 2)
            training.append(path)
        input_bytes = movie.stat().st_size

        started = time.perf_counter()
        est_options = ConvertOptions(output_dir=work / "est", estimate_gain=True, threads=2)
        estimate([Job(path, work / "unused.tif") for path in training + [movie]], est_options)
        estimation_seconds = time.perf_counter() - started
        state = GainEstimate.load(work / "est" / "gain_estimate.bin")
        n_unreliable = state.n_unreliable(50)

        rows = []

        def convert(label: str, **changes) -> None:
            options = ConvertOptions(output_dir=work / label, **changes)
            options.output_dir.mkdir(parents=True, exist_ok=True)
            job = Job(movie, options.output_dir / "movie.tif")
            context = prepare([job], options, Reporter())
            t0 = time.perf_counter()
            result = convert_movie(movie, job.destination, options, context=context)
            seconds = time.perf_counter() - t0
            rows.append((label, result.dtype, result.codec, 100.0 * result.output_bytes / input_bytes,
                         input_bytes / 1e6 / seconds))

        gain = work / "est" / "gain_estimate.bin"
        convert("plain deflate-6 (no gain)", compression="deflate", deflate_level=6)
        convert("plain auto (no gain)")
        convert("--gain (RELION's path)", gain=gain)
        convert("--gain --lossy", gain=gain, lossy=True)

    print(f"K2 gain-normalised, {shape[1]} x {shape[0]}, {args.frames} frames, mean {args.mean} e/px/frame, "
          f"float32 MRC {input_bytes:,} bytes")
    print(f"gain estimated over {len(training) * 40 + args.frames} frames in {estimation_seconds:.1f} s; "
          f"{n_unreliable} unreliable pixels of {shape[0] * shape[1]}")
    print()
    print(f"| {'conversion':<28} | {'TIFF type':>9} | {'codec':>20} | {'size % of float32':>17} | {'MB/s':>6} |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 22}|{'-' * 19}|{'-' * 8}|")
    for label, dtype, codec, percent, speed in rows:
        print(f"| {label:<28} | {dtype:>9} | {codec:>20} | {percent:>17.1f} | {speed:>6.1f} |")
    print()
    print("RELION's published figures for the real movie: IMOD deflate-6 55.9 %, relion_convert_to_tiff after "
          "gain estimation 11.9 %.")


if __name__ == "__main__":
    main()
