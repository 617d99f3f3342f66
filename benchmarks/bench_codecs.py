"""Codec sizes and speeds against RELION's published figures, and the speed table of ``auto``.

RELION's movie-compression page (https://relion.readthedocs.io/en/latest/Reference/MovieCompression.html),
section "Examples", gives RELION's sizes for three movies. This script simulates each
(`cryotiff.simulate`), checks that RELION's own codec gives RELION's size on the simulation, and
measures every codec and the end-to-end conversion with default options:

* Falcon 3, 4096 x 4096 uint16, mean 36.6 (EMPIAR-10309): RELION auto = zlib deflate 6, 53.2 %.
* K2 counting, 3838 x 3710 8-bit, mean 0.96 (EMPIAR-10340): RELION auto = LZW, 27.8 %.
* K2 gain-normalised float32, mean 1.45 (EMPIAR-10317): RELION 11.9 % only after gain estimation
  (measured by benchmarks/bench_gain.py); here the plain codecs on the float data.

    python benchmarks/bench_codecs.py                 # all three cases (a few minutes)
    python benchmarks/bench_codecs.py --case k2       # one case
    python benchmarks/bench_codecs.py --quick         # fewer frames
    python benchmarks/bench_codecs.py speed-table     # remeasure cryotiff.codecs.PIPELINE_MB_PER_S

Speeds are single-thread MB/s of uncompressed data, best of the repeats, on whatever machine runs
this; sizes are deterministic (fixed seeds). Tables are printed as Markdown.
"""

from __future__ import annotations

import argparse
import bz2
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np

from cryotiff.benchmark import benchmark_movie
from cryotiff.codecs import AUTO_CANDIDATES, choose_auto_codec, make_codec_from_label
from cryotiff.convert import ConvertOptions, convert_movie
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.gain_normalised import K2_SHAPE_YX, simulate_gain_normalised
from cryotiff.simulate.write import write_mrc_movie

#: name -> (title, RELION's codec label, RELION's published size %, published bzip2 %, MRC mode)
CASES = {
    "falcon": ("Falcon 3 counting, 4096 x 4096 uint16, mean 36.6 (EMPIAR-10309)", "zlib-6", 53.2, 42.4, 6),
    "k2": ("K2 counting, 3838 x 3710 8-bit, mean 0.96 (EMPIAR-10340)", "lzw", 27.8, 27.8, 0),
    "k2float": ("K2 gain-normalised float32, 3838 x 3710, mean 1.45 (EMPIAR-10317)", "lzw", 11.9, 32.4, 2),
}
DEFAULT_FRAMES = {"falcon": 6, "k2": 12, "k2float": 4}


def simulate(case: str, n_frames: int, seed: int = 2024) -> np.ndarray:
    if case == "falcon":
        return falcon_frames(n_frames, (4096, 4096), 36.6, seed=seed)
    if case == "k2":
        # EPU writes K2 counts as MRC mode 0 (RELION reads it as int8); nx = 3838.
        return counting_frames(n_frames, K2_SHAPE_YX, 0.96, np.int8, seed=seed)
    return simulate_gain_normalised(K2_SHAPE_YX, n_frames, seed, mean_counts_per_pixel=1.45).frames


def relion_encoder_only(frames: np.ndarray, label: str, repeats: int) -> tuple[float, float]:
    """Size % and best single-thread MB/s of RELION's encoder alone (no reading, writing or
    verification): its best case."""
    codec = make_codec_from_label(label)
    best = float("inf")
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = sum(len(codec.encode(np.ascontiguousarray(frame[::-1]))) for frame in frames)
        best = min(best, time.perf_counter() - started)
    return 100.0 * size / frames.nbytes, frames.nbytes / 1e6 / best


# libtiff tags RELION sets (write_tiff_one_page in RELION's src/tiff_converter.h; docs/relion-behaviour.md)
# and the one that picks zlib over libdeflate.
_TAG_WIDTH, _TAG_LENGTH, _TAG_BITS, _TAG_COMPRESSION, _TAG_PHOTOMETRIC = 256, 257, 258, 259, 262
_TAG_SAMPLES, _TAG_ROWS_PER_STRIP, _TAG_SAMPLE_FORMAT = 277, 278, 339
_TAG_ZIPQUALITY, _TAG_DEFLATE_SUBCODEC = 65557, 65570
#: RELION's codec labels -> (TIFF Compression, extra libtiff tags)
_LIBTIFF_CODECS = {"lzw": (5, {}), "zlib-6": (8, {_TAG_ZIPQUALITY: 6, _TAG_DEFLATE_SUBCODEC: 0})}


def _without_unknown_subcodec(lib, path: Path, tags: dict[int, int]) -> dict[int, int]:
    """``tags`` without the deflate sub-codec tag when this libtiff has no libdeflate (then it
    only has zlib and does not know the tag); its error message is silenced for the probe."""
    import ctypes

    if _TAG_DEFLATE_SUBCODEC not in tags:
        return tags
    lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
    lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
    previous = lib.TIFFSetErrorHandler(None)
    handle = ctypes.c_void_p(lib.TIFFOpen(str(path).encode(), b"w"))
    try:
        lib.TIFFSetField(handle, ctypes.c_uint32(_TAG_COMPRESSION), ctypes.c_int(tags[_TAG_COMPRESSION]))
        known = lib.TIFFSetField(handle, ctypes.c_uint32(_TAG_DEFLATE_SUBCODEC), ctypes.c_int(0)) == 1
    finally:
        lib.TIFFClose(handle)
        lib.TIFFSetErrorHandler(previous)
        path.unlink(missing_ok=True)
    return tags if known else {tag: value for tag, value in tags.items() if tag != _TAG_DEFLATE_SUBCODEC}


def relion_writer_libtiff(frames: np.ndarray, label: str, repeats: int, scratch: Path) -> tuple[float, float] | None:
    """Size % and best MB/s of RELION's writing loop run through the system libtiff (ctypes): per
    frame a flipped copy, the tags RELION sets and ``TIFFWriteEncodedStrip`` with RELION's codec
    (zlib, not libdeflate, for deflate, as RELION's ~10 MB/s shows), then ``TIFFWriteDirectory``.
    This is RELION's own encoder; only the MRC read is left out. None without libtiff."""
    import ctypes
    import ctypes.util

    import tifffile

    library = ctypes.util.find_library("tiff")
    if library is None or label not in _LIBTIFF_CODECS:
        return None
    lib = ctypes.CDLL(library)
    lib.TIFFOpen.restype = ctypes.c_void_p
    lib.TIFFOpen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.TIFFWriteEncodedStrip.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_ssize_t]
    lib.TIFFWriteEncodedStrip.restype = ctypes.c_ssize_t
    lib.TIFFWriteDirectory.argtypes = [ctypes.c_void_p]
    lib.TIFFClose.argtypes = [ctypes.c_void_p]
    compression, extra_tags = _LIBTIFF_CODECS[label]
    n_frames, height, width = frames.shape
    sample_format = 3 if frames.dtype.kind == "f" else 2 if frames.dtype.kind == "i" else 1
    tags = {_TAG_WIDTH: width, _TAG_LENGTH: height, _TAG_BITS: 8 * frames.itemsize, _TAG_SAMPLES: 1,
            _TAG_SAMPLE_FORMAT: sample_format, _TAG_PHOTOMETRIC: 1, _TAG_ROWS_PER_STRIP: height,
            _TAG_COMPRESSION: compression, **extra_tags}
    path = scratch / "relion-libtiff.tif"
    tags = _without_unknown_subcodec(lib, path, tags)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        handle = ctypes.c_void_p(lib.TIFFOpen(str(path).encode(), b"w"))
        for frame in frames:
            flipped = np.ascontiguousarray(frame[::-1])
            for tag, value in tags.items():  # variadic: the values go as C ints
                if lib.TIFFSetField(handle, ctypes.c_uint32(tag), ctypes.c_int(value)) != 1:
                    raise RuntimeError(f"libtiff refused tag {tag}")
            if lib.TIFFWriteEncodedStrip(handle, 0, flipped.ctypes.data, flipped.nbytes) != flipped.nbytes:
                raise RuntimeError("TIFFWriteEncodedStrip failed")
            lib.TIFFWriteDirectory(handle)
        lib.TIFFClose(handle)
        best = min(best, time.perf_counter() - started)
    with tifffile.TiffFile(path) as tif:
        size = sum(sum(page.databytecounts) for page in tif.pages)
        if not np.array_equal(tif.pages[-1].asarray(), frames[-1][::-1]):
            raise RuntimeError("libtiff's file does not hold the frames")
    path.unlink()
    return 100.0 * size / frames.nbytes, frames.nbytes / 1e6 / best


def end_to_end(source: Path, out_dir: Path, threads: int, repeats: int, **options) -> tuple[str, float, float]:
    """Codec, size % of the MRC and best MB/s of ``convert_movie`` with ``options``."""
    best, result = float("inf"), None
    for _ in range(repeats):
        convert_options = ConvertOptions(output_dir=out_dir, threads=threads, **options)
        destination = out_dir / f"{source.stem}.tif"
        destination.unlink(missing_ok=True)
        executor = ThreadPoolExecutor(threads) if threads > 1 else None
        try:
            result = convert_movie(source, destination, convert_options, executor)
        finally:
            if executor is not None:
                executor.shutdown()
        best = min(best, result.seconds)
        destination.unlink()
    mrc_bytes = source.stat().st_size
    return result.codec, 100.0 * result.output_bytes / mrc_bytes, mrc_bytes / 1e6 / best


def run_case(case: str, n_frames: int, repeats: int, scratch: Path) -> None:
    title, relion_label, published, published_bz2, mode = CASES[case]
    frames = simulate(case, n_frames)
    source = write_mrc_movie(scratch / f"{case}.mrc", frames, mode, pixel_size_angstrom=1.0)
    print(f"\n## {title}\n")
    print(f"Simulated: {n_frames} frames, {frames.nbytes / 1e6:.0f} MB, mean {frames.mean():.3f}.\n")

    relion_size, relion_speed = relion_encoder_only(frames, relion_label, repeats)
    bz2_size = 100.0 * sum(len(bz2.compress(f.tobytes(), 9)) for f in frames[:2]) / frames[:2].nbytes
    print("| check of the simulation | RELION's movie (published) | simulated movie |")
    print("|---|---:|---:|")
    if case == "k2float":
        print(f"| RELION after gain estimation | {published:.1f} % | see bench_gain.py |")
        print(f"| LZW (IMOD mrc2tif: 68.3 %) | 68.3 % | {relion_size:.1f} % |")
    else:
        print(f"| RELION auto = {relion_label} | {published:.1f} % | {relion_size:.2f} % |")
    print(f"| bzip2 -9 (first 2 frames here) | {published_bz2:.1f} % | {bz2_size:.2f} % |\n")

    print("| conversion (convert_movie, default options except as noted) | codec | size % of MRC | MB/s of MRC |")
    print("|---|---|---:|---:|")
    print(f"| RELION's encoder alone ({relion_label}, 1 thread, no I/O, no verification) | {relion_label} | "
          f"{relion_size:.2f} | {relion_speed:.1f} |")
    libtiff = relion_writer_libtiff(frames, relion_label, repeats, scratch)
    if libtiff is not None:
        print(f"| RELION's writing loop through libtiff ({relion_label}: flip, TIFFWriteEncodedStrip, "
              f"1 thread, no MRC read) | {relion_label} | {libtiff[0]:.2f} | {libtiff[1]:.1f} |")
    with tempfile.TemporaryDirectory(dir=scratch) as out:
        out_dir = Path(out)
        relion_like = {"compression": "lzw"} if relion_label == "lzw" else {"compression": "deflate", "deflate_level": 6}
        for label, threads, options in [
            ("cryotiff --compression auto --j 1 (default)", 1, {}),
            ("cryotiff --compression auto --j 1 --no_verify", 1, {"verify": False}),
            ("cryotiff --compression auto --j 2", 2, {}),
            (f"cryotiff --compression {relion_like['compression']} --j 1 (RELION's codec choice)", 1, relion_like),
        ]:
            codec, size, speed = end_to_end(source, out_dir, threads, repeats, **options)
            print(f"| {label} | {codec} | {size:.2f} | {speed:.1f} |")
    decision = choose_auto_codec(frames[0], frames.shape[2], False)
    tried = ", ".join(f"{k} {100.0 * v / decision.sample_bytes:.2f} %" for k, v in decision.sizes.items())
    print(f"\nauto on the first frame: data class {decision.lzw_bits_per_byte:.2f} LZW bits/byte, speed floor "
          f"{decision.floor_mb_per_s:.0f} MB/s; sample sizes: {tried} -> {decision.codec.label}.\n")

    print("Every codec on the first frames (cryotiff --benchmark):\n")
    print("| codec | TIFF | size % | enc MB/s | dec MB/s | used by |")
    print("|---|---:|---:|---:|---:|---|")
    for row in benchmark_movie(source, ConvertOptions(output_dir=scratch)):
        used_by = ", ".join(n for n, f in (("RELION", row.is_relion), ("auto", row.is_auto)) if f)
        print(f"| {row.codec} | {row.tiff_code} | {row.size_percent:.2f} | {row.encode_mb_per_s:.1f} | "
              f"{row.decode_mb_per_s:.1f} | {used_by} |")
    source.unlink()


# --------------------------------------------------------------------------- speed table


def speed_table_data(seed: int = 7) -> dict[str, np.ndarray]:
    """The data classes of the speed table: counts from sparse to dense, Falcon, float."""
    rng = np.random.default_rng(seed)
    data = {f"counts {dose}": rng.poisson(dose, (2048, 2048)).astype(np.uint8) for dose in (0.02, 0.1, 0.5, 1.0, 2.0, 4.0)}
    data["falcon uint16"] = falcon_frames(1, (2048, 2048), seed=seed)[0]
    data["gain-normalised float32"] = simulate_gain_normalised((1024, 2048), 1, seed).frames[0]
    return data


def speed_table(repeats: int) -> None:
    """Single-thread encode + decode MB/s (what a verified conversion spends per strip) of every
    auto candidate and RELION's zlib-6, per data class; prints the table for codecs.py."""
    labels = list(AUTO_CANDIDATES) + ["zlib-6"]
    rows = []
    for name, frame in speed_table_data().items():
        strip = np.ascontiguousarray(frame[::-1])
        lzw_bits = 8.0 * len(imagecodecs.lzw_encode(strip)) / strip.nbytes
        best = {label: [float("inf"), float("inf"), 0] for label in labels}
        for _ in range(repeats):  # interleaved, so that load changes hit every codec alike
            for label in labels:
                codec = make_codec_from_label(label)
                started = time.perf_counter()
                encoded = codec.encode(strip)
                encoded_at = time.perf_counter()
                codec.decode(encoded, strip.nbytes)
                decoded_at = time.perf_counter()
                best[label][0] = min(best[label][0], encoded_at - started)
                best[label][1] = min(best[label][1], decoded_at - encoded_at)
                best[label][2] = len(encoded)
        rows.append((name, lzw_bits, best, strip.nbytes))
    print("| data | LZW bits/byte | " + " | ".join(f"{label} (bits/byte, enc, dec, enc+dec MB/s)" for label in labels) + " |")
    print("|---|---:|" + "---|" * len(labels))
    for name, lzw_bits, best, nbytes in rows:
        cells = []
        for label in labels:
            encode_s, decode_s, size = best[label]
            cells.append(f"{8 * size / nbytes:.3f}, {nbytes / 1e6 / encode_s:.0f}, {nbytes / 1e6 / decode_s:.0f}, "
                         f"**{nbytes / 1e6 / (encode_s + decode_s):.0f}**")
        print(f"| {name} | {lzw_bits:.2f} | " + " | ".join(cells) + " |")
    print("\nPIPELINE_MB_PER_S = {")
    for label in labels:
        points = ", ".join(
            f"({lzw_bits:.2f}, {nbytes / 1e6 / (best[label][0] + best[label][1]):.0f}.0)"
            for _, lzw_bits, best, nbytes in sorted(rows, key=lambda r: r[1])
        )
        print(f'    "{label}": ({points}),')
    print("}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="cases", choices=("cases", "speed-table"))
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="only this case (repeatable)")
    parser.add_argument("--frames", type=int, help="frames per simulated movie (default: 6 Falcon, 12 K2, 4 float)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the best is kept")
    parser.add_argument("--quick", action="store_true", help="2 frames, 1 repeat")
    args = parser.parse_args()
    if args.what == "speed-table":
        speed_table(max(args.repeats, 5))
        return
    print(f"zlib {zlib.ZLIB_RUNTIME_VERSION}, imagecodecs {imagecodecs.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-codecs-") as scratch:
        for case in args.case or list(CASES):
            frames = 2 if args.quick else args.frames or DEFAULT_FRAMES[case]
            run_case(case, frames, 1 if args.quick else args.repeats, Path(scratch))


if __name__ == "__main__":
    main()
