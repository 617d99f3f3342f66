"""cryotiff against RELION's ``relion_convert_to_tiff`` on the same files, in the same run.

    python benchmarks/bench_vs_relion.py [--relion PATH] [--baseline SRC] [--repeats N]
                                         [--workdir DIR] [--cases eer,eer-up2,...] [--first-run]
    python benchmarks/bench_vs_relion.py --kernels [--baseline SRC]   # numba and zlib-ng figures
    python benchmarks/bench_vs_relion.py --lzw-encoder [--baseline SRC]   # the LZW kernels' rows only
    python benchmarks/bench_vs_relion.py --memory-floor   # peak memory before a frame is held

Generates the cases (once, cached in ``--workdir``), then runs each case's command with
cryotiff at ``--j 1`` and ``--j 2``, and with ``--relion`` (RELION 5.0.1's relion_convert_to_tiff
built from its public source) on the same inputs, interleaved (one run of each in turn, ``--repeats``
rounds), and prints one table: best-of-N wall seconds of the whole command, ratios to RELION,
output sizes and peak resident memory. ``--baseline SRC`` adds a column for another cryotiff
(a ``src`` directory, put first on PYTHONPATH), e.g. an export of an older commit, so that
ratios can be given against it when RELION is not at hand. The outputs of every program are
decoded and compared: the same pixels (TIFF pages), the same gain estimate. ``--first-run``
also times cryotiff once with an empty numba cache (the JIT compile a fresh install pays once).

The cases (the table of the speed issue):

* ``eer``: a simulated Falcon 4 EER, 4096x4096, compression 65001, 400 raw frames at 0.025
  e/pixel/raw frame (240 MB), ``--eer_grouping 20``; ``eer-up2``: the same at ``--eer_upsampling 2``;
* ``estimate``: ``--estimate_gain`` over two gain-normalised K2 movies (float32 MRC, 3710 x 3838
  pixels, ``--k2gain-frames`` each, 40 by default: long enough for nearly every pixel to become
  reliable at ``--thresh 50``), listed in a ``.lst`` (RELION's ``--i`` takes one file);
* ``gain``: ``--gain`` with that estimate over the same two movies;
* ``k2``: K2 counts, MRC mode 0, 3838 x 3710, 10 frames at 0.96 e/pixel/frame;
* ``k2-star``: the same movie given as the main use gives it, listed in a movie STAR file;
* ``falcon``: Falcon 16-bit, MRC mode 6, 4096 x 4096, 8 frames.

Wall time is of the whole process (start-up, imports, reading, writing); the package's bytecode
is compiled first, as ``pip install`` does. Peak memory is the
child's ``ru_maxrss``; this script imports nothing beyond the standard library in the process
that starts the programs (a child's ``ru_maxrss`` starts at its parent's peak on Linux), and
makes and compares data in child processes of its own. The machine may be shared: other jobs
slow all programs alike only when the runs are interleaved, so read the ratios, and repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CASES = ("eer", "eer-up2", "estimate", "gain", "k2", "k2-star", "falcon")
K2_SHAPE_YX = (3710, 3838)


# --------------------------------------------------------------------------------------------
# Data (made in a child process: python bench_vs_relion.py --make WORKDIR FRAMES)


#: The k2-star case's input: k2.mrc listed in a movie STAR file, as RELION's Import job writes it.
K2_STAR = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
opticsGroup1 1 1.0 300.0 2.7 0.1

# version 30001

data_movies

loop_
_rlnMicrographMovieName #1
_rlnOpticsGroup #2
{movie} 1
"""


def make_data(workdir: Path, k2gain_frames: int) -> None:
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    import bench_eer
    from cryotiff.simulate.detectors import counting_frames, falcon_frames
    from cryotiff.simulate.gain_normalised import make_detector
    from cryotiff.simulate.write import write_mrc_movie

    workdir.mkdir(parents=True, exist_ok=True)
    bench_eer.make_movie(workdir / "eer400.eer", 400, 0.025)
    if not (workdir / "k2.mrc").exists():
        write_mrc_movie(workdir / "k2.partial.mrc", counting_frames(10, (3838, 3710), 0.96, np.int8, seed=1), 0,
                        pixel_size_angstrom=1.05)
        os.replace(workdir / "k2.partial.mrc", workdir / "k2.mrc")
    if not (workdir / "k2.star").exists():  # the main use: the same movie listed in a movie STAR file
        (workdir / "k2.star").write_text(K2_STAR.format(movie=workdir / "k2.mrc"))
    if not (workdir / "falcon.mrc").exists():
        write_mrc_movie(workdir / "falcon.partial.mrc", falcon_frames(8, (4096, 4096), seed=2), 6, pixel_size_angstrom=0.83)
        os.replace(workdir / "falcon.partial.mrc", workdir / "falcon.mrc")
    import mrcfile

    names = [f"k2gain_{k}.mrc" for k in range(2)]
    if not all((workdir / name).exists() for name in names):
        rng = np.random.default_rng(3)
        detector = make_detector(K2_SHAPE_YX, rng)
        for name in names:
            partial = workdir / (name + ".partial")
            with mrcfile.new_mmap(partial, shape=(k2gain_frames, *K2_SHAPE_YX), mrc_mode=2, overwrite=True) as mrc:
                for first in range(0, k2gain_frames, 8):
                    count = min(8, k2gain_frames - first)
                    mrc.data[first : first + count] = detector.movie(count, rng).frames
                mrc.voxel_size = 1.05
            os.replace(partial, workdir / name)
    (workdir / "k2gain.lst").write_text("".join(f"{workdir / name}\n" for name in names))


def compare_outputs(reference: Path, other: Path) -> str:
    """``same`` when every TIFF page and gain file in ``reference`` has the same pixels in
    ``other`` (found under the same name), else what differs."""
    import numpy as np
    import tifffile

    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from cryotiff.gain import read_mrc_image

    problems = []
    found = 0
    for path in sorted(reference.rglob("*")):
        if path.suffix not in (".tif", ".bin", ".mrc") or not path.is_file():
            continue
        twins = list(other.rglob(path.name))
        if not twins:
            problems.append(f"{path.name} missing")
            continue
        found += 1
        if path.suffix == ".tif":
            with tifffile.TiffFile(path) as a, tifffile.TiffFile(twins[0]) as b:
                if len(a.pages) != len(b.pages):
                    problems.append(f"{path.name}: {len(a.pages)} against {len(b.pages)} pages")
                    continue
                for k, (pa, pb) in enumerate(zip(a.pages, b.pages)):
                    x, y = pa.asarray(), pb.asarray()
                    # RELION writes the gain path's integers as float32 (cryotiff too, except --lossy)
                    if x.shape != y.shape or not np.array_equal(x.astype(np.float64), y.astype(np.float64)):
                        problems.append(f"{path.name} page {k + 1} differs")
                        break
        elif "reliab" not in path.name:  # the counters depend on the movies' order (RELION shuffles)
            x, y = read_mrc_image(path), read_mrc_image(twins[0])
            if not np.array_equal(x, y, equal_nan=True):
                problems.append(f"{path.name} differs")
    if not found:
        return "nothing to compare"
    return "same" if not problems else "; ".join(problems[:3])


# --------------------------------------------------------------------------------------------
# The measurements behind the choice of numba and zlib-ng (python bench_vs_relion.py --kernels)


def kernel_figures(workdir: Path) -> None:
    """CPU seconds of one thread (``time.thread_time``, less disturbed by other jobs than wall
    time) of each compiled kernel against the numpy code it replaced, and of zlib-ng against
    zlib for Huffman-only and RLE Deflate (and whether the bytes are the same). The EER
    figure of the code before the kernels comes from ``--baseline``'s ``EerMovie.render``."""
    import zlib

    import numpy as np
    from zlib_ng import zlib_ng

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    import gain_oracle
    from cryotiff import gain as G
    from cryotiff.io.eer import EerMovie
    from cryotiff.simulate.detectors import counting_frames, falcon_frames

    def best(function, repeats=3):
        times = []
        for _ in range(repeats):
            started = time.thread_time()
            function()
            times.append(time.thread_time() - started)
        return min(times)

    print("| what | before | now | speed-up |\n|---|---:|---:|---:|")
    for name, frame in (("K2 counts frame", counting_frames(1, (3838, 3710), 0.96, np.uint8, seed=1)[0]),
                        ("Falcon frame", falcon_frames(1, (4096, 4096), seed=2)[0])):
        data = frame.tobytes()
        for strategy in ("Z_HUFFMAN_ONLY", "Z_RLE"):
            def encode(module):
                compressor = module.compressobj(1, module.DEFLATED, 15, 9, getattr(module, strategy))
                return compressor.compress(data) + compressor.flush()
            same = encode(zlib) == encode(zlib_ng)
            old, new = best(lambda: encode(zlib)), best(lambda: encode(zlib_ng))
            print(f"| {name}, {strategy}: zlib -> zlib-ng MB/s (same bytes: {same}) | {len(data) / old / 1e6:.0f} | "
                  f"{len(data) / new / 1e6:.0f} | {old / new:.2f}x |")
        huffman_figures(name, frame, best)
        if name.startswith("K2"):
            lzw_figures(name, frame, best)
    rng = np.random.default_rng(0)
    shape = K2_SHAPE_YX
    gain = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    frame = (rng.poisson(1.45, shape).astype(np.float32) * gain).astype(np.float32)
    estimate = G.GainEstimate.new(shape)
    estimate.update(frame)
    oracle_gain, oracle_rel = estimate.gain.copy(), estimate.reliability.copy()
    reliable = rng.random(shape) < 0.999
    rows = [
        ("--estimate_gain update", lambda: gain_oracle.update(oracle_gain, oracle_rel, frame, 50), lambda: estimate.update(frame)),
        ("--gain integerisation", lambda: gain_oracle.integerise(frame, gain, reliable), lambda: G.integerise(frame, gain, reliable)),
        ("--lossy", lambda: gain_oracle.lossy_counts(frame, reliable, gain_oracle.integerise(frame, gain, reliable)[0]),
         lambda: G.lossy_integerise(frame, gain, reliable)),
    ]
    for name, old, new in rows:
        old_s, new_s = best(old), best(new)
        print(f"| {name}, ms per K2 frame | {old_s * 1e3:.0f} | {new_s * 1e3:.0f} | {old_s / new_s:.1f}x |")
    lzw_figures("K2 gain-corrected float32 frame (--gain)", frame, best)
    eer_render_figures(workdir, "")
    with EerMovie(workdir / "eer400.eer") as movie:
        huffman_figures("EER page of 20 raw frames", movie.render(0, 20, 1, dtype=np.uint8).counts, best)
        lzw_figures("EER page of 20 raw frames, upsampling 2", movie.render(0, 20, 2, dtype=np.uint8).counts, best)
    lzw_thread_figures()
    start_up_figures()


def huffman_figures(name: str, frame, best) -> None:
    """Rows of the Huffman-only encoders (zlib-ng against cryotiff's compiled kernel: speed and
    size) and of the inflaters that verify them (zlib-ng against ISA-L, on the kernel's stream
    and on zlib-ng's), for one frame in TIFF row order."""
    import numpy as np
    from isal import isal_zlib
    from zlib_ng import zlib_ng

    from cryotiff.codecs import make_codec

    rows = np.ascontiguousarray(frame[::-1]).view(np.uint8).reshape(frame.shape[0], -1)
    mb = rows.nbytes / 1e6
    kernel, zlib_ng_codec = make_codec("deflate-huffman"), make_codec("deflate-huffman", huffman_encoder="zlib-ng")
    kernel.encode_rows(rows)  # loaded once
    by_kernel, by_zlib_ng = kernel.encode_rows(rows), zlib_ng_codec.encode_rows(rows)
    old, new = best(lambda: zlib_ng_codec.encode_rows(rows)), best(lambda: kernel.encode_rows(rows))
    print(f"| {name}, Huffman-only Deflate: zlib-ng -> cryotiff kernel, MB/s (size {len(by_zlib_ng) / rows.nbytes:.2%} "
          f"-> {len(by_kernel) / rows.nbytes:.2%}) | {mb / old:.0f} | {mb / new:.0f} | {old / new:.2f}x |")
    for stream, whose in ((by_kernel, "the kernel's"), (by_zlib_ng, "zlib-ng's")):
        old, new = best(lambda: zlib_ng.decompress(stream)), best(lambda: isal_zlib.decompress(stream))
        print(f"| {name}, verification inflate of {whose} stream: zlib-ng -> ISA-L, MB/s | {mb / old:.0f} | "
              f"{mb / new:.0f} | {old / new:.2f}x |")


def lzw_figures(name: str, frame, best) -> None:
    """Rows of the LZW encoders (imagecodecs against cryotiff's compiled kernel: MB/s of one
    thread's CPU time, best of 3, and whether the bytes are the same) and of the decoders that
    verify them (imagecodecs' and cryotiff's compiled one: the decode alone, and the whole check
    against the rows as the pipeline makes it), for one frame in TIFF row order."""
    import imagecodecs
    import numpy as np

    from cryotiff.codecs import make_codec

    rows = np.ascontiguousarray(frame[::-1]).view(np.uint8).reshape(frame.shape[0], -1)
    mb = rows.nbytes / 1e6
    kernel, library = make_codec("lzw", lzw_encoder="cryotiff"), make_codec("lzw", lzw_encoder="imagecodecs")
    kernel.encode_rows(rows)  # loaded once
    by_kernel, by_library = kernel.encode_rows(rows), library.encode_rows(rows)
    old, new = best(lambda: library.encode_rows(rows)), best(lambda: kernel.encode_rows(rows))
    print(f"| {name}, LZW: imagecodecs -> cryotiff kernel, MB/s (size {len(by_library) / rows.nbytes:.2%}, "
          f"same bytes: {by_kernel == by_library}) | {mb / old:.0f} | {mb / new:.0f} | {old / new:.2f}x |")
    decode = best(lambda: imagecodecs.lzw_decode(by_kernel, out=rows.nbytes + 1))
    print(f"| {name}, LZW verification decode (imagecodecs), MB/s | | {mb / decode:.0f} | |")
    from cryotiff import kernels

    stream = np.frombuffer(by_kernel, np.uint8)
    buffer = np.empty(kernels.lzw_decode_buffer_bytes(rows.nbytes), np.uint8)
    assert kernels.lzw_decode_into(stream, buffer) == rows.nbytes
    new = best(lambda: kernels.lzw_decode_into(stream, buffer))
    print(f"| {name}, LZW decode: imagecodecs -> cryotiff kernel, MB/s | {mb / decode:.0f} | {mb / new:.0f} | "
          f"{decode / new:.2f}x |")
    # The whole check as the pipeline runs it, on the flipped view of the frame: imagecodecs'
    # decode and numpy's comparison against the kernel's decode and comparison.
    flipped = frame[::-1].view(np.uint8).reshape(frame.shape[0], -1)
    assert library.decodes_to(by_kernel, flipped) and kernel.decodes_to(by_kernel, flipped)
    old, new = best(lambda: library.decodes_to(by_kernel, flipped)), best(lambda: kernel.decodes_to(by_kernel, flipped))
    print(f"| {name}, LZW verification (decode and compare with the rows): imagecodecs -> cryotiff kernel, MB/s | "
          f"{mb / old:.0f} | {mb / new:.0f} | {old / new:.2f}x |")


def lzw_thread_figures() -> None:
    """How imagecodecs' LZW scales on two threads (whether it releases the GIL): the wall time
    of the same work on one thread against twice the work on two, sparse 8-bit counts."""
    import threading

    import imagecodecs
    import numpy as np

    data = np.random.default_rng(0).poisson(0.3, (2048, 4096)).astype(np.uint8).tobytes()
    encoded = imagecodecs.lzw_encode(data)

    def wall(function, n_threads: int) -> float:
        threads = [threading.Thread(target=lambda: [function() for _ in range(6)]) for _ in range(n_threads)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    from cryotiff.codecs import make_codec

    kernel = make_codec("lzw", lzw_encoder="cryotiff")
    scaling = []
    rows = np.frombuffer(data, np.uint8).reshape(1, -1)
    for function in (lambda: imagecodecs.lzw_encode(data), lambda: imagecodecs.lzw_decode(encoded, out=len(data) + 1),
                     lambda: kernel.encode(data), lambda: kernel.decodes_to(encoded, rows)):
        one, two = min(wall(function, 1) for _ in range(2)), min(wall(function, 2) for _ in range(2))
        scaling.append(2 * one / two)
    print(f"| LZW (imagecodecs) on two threads, sparse 8-bit counts: encode / decode, scaling | | "
          f"{scaling[0]:.2f}x / {scaling[1]:.2f}x | |")
    print(f"| LZW (cryotiff kernel) encode on two threads, sparse 8-bit counts, scaling | | {scaling[2]:.2f}x | |")
    print(f"| LZW (cryotiff kernel) verification on two threads, sparse 8-bit counts, scaling | | {scaling[3]:.2f}x | |")


def start_up_figures() -> None:
    """CPU seconds of a fresh interpreter importing numba and loading a cached compiled kernel
    (Huffman-only Deflate, LZW, the EER adder at upsampling 1), and of compiling it with an
    empty cache (what a fresh install pays once)."""
    eer_adder = ("K.eer_add_frames(np.zeros(8, np.uint8), np.zeros(1, np.int64), np.full(1, 8, np.int64), 16, 7, 4, 0, "
                 "K.EER_ADD_PHYSICAL, 2, 1, np.zeros(16, np.int64), np.zeros(16, np.uint8), 8, np.zeros(1, np.bool_))")
    for name, use in (("Huffman-only kernel", "make_codec('deflate-huffman').encode(np.zeros(4096, np.uint8))"),
                      ("LZW kernel", "make_codec('lzw', lzw_encoder='cryotiff').encode(np.zeros(4096, np.uint8))"),
                      ("EER adder at upsampling 1 (uint8 pages)", eer_adder)):
        probe = ("import time; import numpy as np; from cryotiff.codecs import make_codec; from cryotiff import kernels as K; "
                 f"t0 = time.process_time(); {use}; print(time.process_time() - t0)")
        with tempfile.TemporaryDirectory() as cache:
            for what, env in (("compile (empty numba cache)", {"NUMBA_CACHE_DIR": cache}),
                              ("load from the cache", {"NUMBA_CACHE_DIR": cache})):
                out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                     env={**os.environ, **env}).stdout.split()
                print(f"| {name}: numba import + {what}, CPU s | | {float(out[0]):.2f} | |")


def memory_floor_figures() -> None:
    """Peak RSS of a fresh interpreter that has only started, imported what a conversion imports,
    imported numba, and loaded one cached kernel (or each kernel family in turn): the memory a
    run has before it holds any frame, against which RELION's peak RSS can be read."""
    eer_adder = ("K.eer_add_frames(np.zeros(8, np.uint8), np.zeros(1, np.int64), np.full(1, 8, np.int64), 16, 7, 4, 0, "
                 "K.EER_ADD_PHYSICAL, 2, 1, np.zeros(16, np.int64), np.zeros(16, np.uint8), 8, np.zeros(1, np.bool_))")
    gain_update = ("K.gain_update(np.full(16, 999.9, np.float32), np.full(16, -1, np.int16), "
                   "np.ones(16, np.float32), 50, np.float32(1e-4))")
    steps = (
        ("Python started", ""),
        ("+ cryotiff's command and converter imported (numpy, tifffile, imagecodecs, zlib-ng, ISA-L)",
         "import cryotiff.cli, cryotiff.convert, cryotiff.codecs"),
        ("+ numba imported", "import cryotiff.cli, cryotiff.convert, cryotiff.codecs, numba"),
        ("+ the Huffman-only kernel loaded", "import cryotiff.cli, cryotiff.convert; from cryotiff.codecs import make_codec; "
                                              "make_codec('deflate-huffman').encode(np.zeros(4096, np.uint8))"),
        ("+ the EER adder loaded instead", f"import cryotiff.cli, cryotiff.convert; from cryotiff import kernels as K; {eer_adder}"),
        ("+ the gain update loaded instead", f"import cryotiff.cli, cryotiff.convert; from cryotiff import kernels as K; {gain_update}"),
        ("+ all three loaded", "import cryotiff.cli, cryotiff.convert; from cryotiff.codecs import make_codec; "
                               "from cryotiff import kernels as K; make_codec('deflate-huffman').encode(np.zeros(4096, np.uint8)); "
                               f"{eer_adder}; {gain_update}"),
    )
    print("| process | peak RSS MiB (median of 3 fresh processes) |\n|---|---:|")
    for name, use in steps:
        probe = ("import resource, numpy as np\n" if use else "import resource\n") + use + \
            "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        peaks = [int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
                 for _ in range(3)]
        label = name if use else "Python started (numpy imported)"
        print(f"| {label} | {statistics.median(peaks) / 1024:.0f} |")


def eer_render_figures(workdir: Path, label: str) -> None:
    """ms per raw frame (CPU of one thread, best of 5) of ``EerMovie.render`` of the cryotiff on
    PYTHONPATH into a page of uint8, as a conversion renders it, at upsampling 1, 2 and -1;
    ``--baseline``'s code prints the same rows with ``label`` ", before"."""
    import numpy as np
    from cryotiff.io.eer import EerMovie

    with EerMovie(workdir / "eer400.eer") as movie:
        for up in (1, 2, -1):
            movie.render(0, 2, up, dtype=np.uint8)
            times = []
            for _ in range(5):
                started = time.thread_time()
                movie.render(0, 20, up, dtype=np.uint8)
                times.append(time.thread_time() - started)
            print(f"| EER 4K raw frame at 0.025 e/pixel, upsampling {up}, ms{label} | | {min(times) / 20 * 1e3:.2f} | |")


def _load_module(name: str, path: Path):
    """The module at ``path`` under ``name`` (a baseline's kernel beside the current one).

    It is loaded from a copy in a directory of its own, so that numba caches its kernels there,
    under this name: cached beside the baseline's own file, they would be the entries that the
    baseline's package then loads, and fail to find their module."""
    import hashlib
    import importlib.util

    source = path.read_bytes()
    private = Path(tempfile.gettempdir()) / "cryotiff-bench-baseline-kernels" / hashlib.sha256(source).hexdigest()[:16]
    private.mkdir(parents=True, exist_ok=True)
    copy = private / path.name
    if not copy.exists():
        copy.write_bytes(source)
    spec = importlib.util.spec_from_file_location(name, copy)
    module = importlib.util.module_from_spec(spec)
    # Registered, so that numba, loading the module's kernels from its cache in a later run,
    # finds the module they belong to by its name.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _encoder_rows(pages, versions, bound, encode, check=None, rounds: int = 7) -> None:
    """One table row per page: MB/s (CPU of one thread, the median of ``rounds`` interleaved
    runs after a first that loads the kernels) of ``encode(module, data, start, stride, n_rows,
    row_bytes, out)`` on the flipped view of the page, as the pipeline encodes it, and of
    ``check(module, stream, data, start, stride, n_rows, row_bytes)`` (True: the strip decodes to
    its rows) on its stream; with a baseline among ``versions`` also the speed-ups. Every version
    must write the same bytes."""
    import numpy as np
    from cryotiff.codecs import _row_span

    names = list(versions)
    before = "before" in versions
    header = "| page (flipped view, as encoded) | size | " + " | ".join(f"encoder {n}, MB/s" for n in names)
    header += " | encoder speed-up |" if before else " |"
    columns = 2 + len(names) + before
    if check is not None:
        header += " " + " | ".join(f"check {n}, MB/s" for n in names) + (" | check speed-up |" if before else " |")
        columns += len(names) + before
    print(header)
    print("|---|" + "---:|" * (columns - 1))
    for name, page in pages:
        rows = page[::-1].view(np.uint8).reshape(page.shape[0], -1)
        data, start, stride = _row_span(rows)
        out = np.empty(bound(rows.size), np.uint8)
        encode_times = {n: [] for n in names}
        check_times = {n: [] for n in names}
        for round_ in range(rounds + 1):
            streams = {}
            for n in names if round_ % 2 else names[::-1]:
                started = time.thread_time()
                n_bytes = encode(versions[n], data, start, stride, rows.shape[0], rows.shape[1], out)
                elapsed = time.thread_time() - started
                stream = out[:n_bytes].copy()
                if check is not None:
                    started = time.thread_time()
                    if not check(versions[n], stream, data, start, stride, rows.shape[0], rows.shape[1]):
                        raise SystemExit(f"{name}: the {n} check does not find its own strip the same")
                    checked = time.thread_time() - started
                streams[n] = stream.tobytes()
                if round_:
                    encode_times[n].append(elapsed)
                    if check is not None:
                        check_times[n].append(checked)
            if len(set(streams.values())) != 1:
                raise SystemExit(f"{name}: the encoders wrote different bytes")
        line = f"| {name} | {n_bytes / rows.size:.2%} |"
        for times in (encode_times, check_times) if check is not None else (encode_times,):
            speed = {n: rows.size / 1e6 / statistics.median(times[n]) for n in names}
            line += " " + " | ".join(f"{speed[n]:.0f}" for n in names) + " |"
            if before:
                line += f" {speed['now'] / speed['before']:.2f}x |"
        print(line, flush=True)


def lzw_encoder_figures(workdir: Path, baseline: Path | None = None) -> None:
    """The compiled LZW encoder and the compiled check of its strips (decode and compare with
    the rows) on each page the pipeline encodes in LZW: a K2 counts frame, a ``--gain`` page
    (integer counts as float32, as RELION writes them) and an EER page at upsampling 2. With
    ``baseline`` (the ``src`` of another cryotiff), its ``kernels/lzw.py`` and
    ``kernels/lzw_decode.py`` run in the same process, each run beside the current one
    (:func:`_encoder_rows`); the bytes and verdicts must agree."""
    import numpy as np
    from cryotiff import kernels
    from cryotiff.io.eer import EerMovie
    from cryotiff.simulate.detectors import counting_frames

    versions = {"now": (kernels, kernels)}
    if baseline is not None:
        versions = {"before": (_load_module("baseline_lzw", baseline / "cryotiff/kernels/lzw.py"),
                               _load_module("baseline_lzw_decode", baseline / "cryotiff/kernels/lzw_decode.py")),
                    **versions}
    with EerMovie(workdir / "eer400.eer") as movie:
        eer_page = movie.render(0, 20, 2, dtype=np.uint8).counts
    pages = (("K2 counts frame", counting_frames(1, (3838, 3710), 0.96, np.uint8, seed=1)[0]),
             ("K2 --gain page (integers as float32)",
              np.random.default_rng(0).poisson(1.45, K2_SHAPE_YX).astype(np.float32)),
             ("EER page of 20 raw frames, upsampling 2", eer_page))

    def encode(version, data, start, stride, n_rows, row_bytes, out):
        return version[0].lzw_encode(data, start, stride, n_rows, row_bytes, out)

    def check(version, stream, data, start, stride, n_rows, row_bytes):
        decoder = version[1]
        buffer = np.empty(decoder.lzw_check_buffer_bytes(n_rows * row_bytes), np.uint8)
        verdict = decoder.lzw_decodes_to(stream, data, start, stride, n_rows, row_bytes, buffer)
        return verdict == decoder.LZW_DECODE_SAME

    _encoder_rows(pages, versions, kernels.lzw_bound, encode, check)


def huffman_encoder_figures(workdir: Path, baseline: Path | None = None) -> None:
    """The compiled Huffman-only Deflate encoder (one block per strip, as the pipeline writes
    it) on each kind of page it encodes: a K2 counts frame, a Falcon frame, EER pages at
    upsampling 1 and 2. With ``baseline``, its ``kernels/deflate.py`` runs beside the current
    one in the same process (:func:`_encoder_rows`); the bytes must agree. ISA-L checks the
    strips in the pipeline; its speed is not the kernel's, so it is not timed here."""
    import numpy as np
    from cryotiff import kernels
    from cryotiff.io.eer import EerMovie
    from cryotiff.simulate.detectors import counting_frames, falcon_frames

    versions = {"now": kernels}
    if baseline is not None:
        versions = {"before": _load_module("baseline_deflate", baseline / "cryotiff/kernels/deflate.py"), **versions}
    with EerMovie(workdir / "eer400.eer") as movie:
        eer_pages = [movie.render(0, 20, up, dtype=np.uint8).counts for up in (1, 2)]
    pages = (("K2 counts frame", counting_frames(1, (3838, 3710), 0.96, np.uint8, seed=1)[0]),
             ("Falcon frame", falcon_frames(1, (4096, 4096), seed=2)[0]),
             ("EER page of 20 raw frames, upsampling 1", eer_pages[0]),
             ("EER page of 20 raw frames, upsampling 2", eer_pages[1]))

    def bound(n_bytes: int) -> int:
        return kernels.deflate_huffman_bound(n_bytes, 1)

    def encode(version, data, start, stride, n_rows, row_bytes, out):
        return version.deflate_huffman_encode(data, start, stride, n_rows, row_bytes, max(n_rows, 1), out.view(np.uint32))

    _encoder_rows(pages, versions, bound, encode)


# --------------------------------------------------------------------------------------------
# Running


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float, int]:
    """``(wall seconds, peak RSS MiB, exit status)`` of one command (its output discarded); its
    CPU seconds (user + system, all threads) are kept in :data:`LAST_CPU_SECONDS`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    LAST_CPU_SECONDS[0] = usage.ru_utime + usage.ru_stime
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, process.returncode


#: CPU seconds of the last :func:`run` (a figure that the machine's other jobs move less than
#: the wall time, for a shared machine).
LAST_CPU_SECONDS = [0.0]


def case_arguments(case: str, workdir: Path, estimate_dir: Path) -> list[str]:
    if case in ("eer", "eer-up2"):
        args = ["--i", str(workdir / "eer400.eer"), "--eer_grouping", "20"]
        return args + (["--eer_upsampling", "2"] if case == "eer-up2" else [])
    if case == "estimate":
        return ["--i", str(workdir / "k2gain.lst"), "--estimate_gain"]
    if case == "gain":
        return ["--i", str(workdir / "k2gain.lst"), "--gain", str(estimate_dir / "gain_estimate.bin")]
    if case == "k2-star":
        return ["--i", str(workdir / "k2.star")]
    return ["--i", str(workdir / f"{case}.mrc")]


def tree_bytes(directory: Path, suffixes=(".tif",)) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.suffix in suffixes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relion", type=Path, help="RELION's relion_convert_to_tiff")
    parser.add_argument("--baseline", type=Path, help="the src directory of another cryotiff to time alongside")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best is reported (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cryotiff-bench-vs-relion")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--k2gain-frames", type=int, default=40, help="frames of each gain-normalised movie (default 40)")
    parser.add_argument("--first-run", action="store_true", help="also time cryotiff once with an empty numba cache")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--lzw-encoder", action="store_true",
                        help="print only the compiled LZW encoder's and check's rows (with --baseline: "
                             "its kernels run beside them in the same process)")
    parser.add_argument("--huffman-encoder", action="store_true",
                        help="print only the compiled Huffman-only encoder's rows (with --baseline: "
                             "its kernel runs beside it in the same process)")
    parser.add_argument("--kernels", action="store_true",
                        help="print the kernel and encoder measurements (numba, zlib-ng) instead")
    parser.add_argument("--memory-floor", action="store_true",
                        help="only the peak memory of a run before it holds a frame: imports, numba, a kernel loaded")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-eer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make:
        make_data(args.make, args.k2gain_frames)
        return 0
    if args.compare:
        print(compare_outputs(*args.compare))
        return 0
    if args.baseline_eer:
        eer_render_figures(args.baseline_eer, ", before")
        return 0
    if args.memory_floor:
        memory_floor_figures()
        return 0
    if args.kernels or args.lzw_encoder or args.huffman_encoder:
        workdir = args.workdir.resolve()
        subprocess.run([sys.executable, str(HERE), "--make", str(workdir), "--k2gain-frames", str(args.k2gain_frames)], check=True)
        baseline = args.baseline.resolve() if args.baseline else None
        if args.kernels:
            kernel_figures(workdir)
        if args.kernels or args.lzw_encoder:
            lzw_encoder_figures(workdir, baseline)
        if args.kernels or args.huffman_encoder:
            huffman_encoder_figures(workdir, baseline)
        if args.baseline and args.kernels:
            baseline_env = dict(os.environ, PYTHONPATH=str(args.baseline.resolve()))
            subprocess.run([sys.executable, str(HERE), "--baseline-eer", str(workdir)], env=baseline_env, check=True)
        return 0

    workdir = args.workdir.resolve()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    subprocess.run([sys.executable, str(HERE), "--make", str(workdir), "--k2gain-frames", str(args.k2gain_frames)], check=True)
    src = HERE.parents[1] / "src"
    # As pip installs it: with bytecode. Where PYTHONDONTWRITEBYTECODE is set, Python would
    # otherwise compile every module of the package from source on every run (about 0.14 s).
    for tree in (src, args.baseline):
        if tree is not None:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=True, stdout=subprocess.DEVNULL)
    cryotiff_env = dict(os.environ, PYTHONPATH=str(src))
    programs: dict[str, tuple[list[str], dict[str, str]]] = {}
    if args.relion:
        programs["RELION"] = ([str(args.relion.resolve())], dict(os.environ, OMP_NUM_THREADS="1"))
    if args.baseline:
        baseline_env = dict(os.environ, PYTHONPATH=str(args.baseline.resolve()))
        programs["baseline --j 1"] = ([sys.executable, "-m", "cryotiff", "--j", "1"], baseline_env)
        programs["baseline --j 2"] = ([sys.executable, "-m", "cryotiff", "--j", "2"], baseline_env)
    programs["cryotiff --j 1"] = ([sys.executable, "-m", "cryotiff", "--j", "1"], cryotiff_env)
    programs["cryotiff --j 2"] = ([sys.executable, "-m", "cryotiff", "--j", "2"], cryotiff_env)

    out_root = workdir / "out"
    estimate_dir = workdir / "estimate-for-gain"
    if "gain" in cases and not (estimate_dir / "gain_estimate.bin").exists():
        command, env = programs["cryotiff --j 1"]
        subprocess.run(command + case_arguments("estimate", workdir, estimate_dir) + ["--o", str(estimate_dir) + "/"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    cpu_seconds: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    same: dict[tuple[str, str], str] = {}
    first_run: dict[str, float] = {}
    for case in cases:
        for round_ in range(args.repeats):
            for name, (command, env) in programs.items():
                out = out_root / case / name.replace(" ", "_")
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                seconds, rss, status = run(command + case_arguments(case, workdir, estimate_dir) + ["--o", str(out) + "/"], env)
                if status != 0:
                    print(f"{case}: {name} exited with {status}", file=sys.stderr)
                figures.setdefault((case, name), []).append((seconds, rss))
                cpu_seconds.setdefault((case, name), []).append(LAST_CPU_SECONDS[0])
                sizes[(case, name)] = tree_bytes(out, (".bin",) if case == "estimate" else (".tif",))
        reference = "RELION" if args.relion else "cryotiff --j 1"
        for name in programs:
            if name != reference:
                result = subprocess.run([sys.executable, str(HERE), "--compare", str(out_root / case / reference.replace(" ", "_")),
                                         str(out_root / case / name.replace(" ", "_"))],
                                        capture_output=True, text=True, env=cryotiff_env)
                same[(case, name)] = (result.stdout.strip() or result.stderr.strip()[-200:])
        if args.first_run:
            command, env = programs["cryotiff --j 1"]
            with tempfile.TemporaryDirectory() as cache:
                out = out_root / case / "first_run"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                first_run[case] = run(command + case_arguments(case, workdir, estimate_dir) + ["--o", str(out) + "/"],
                                      dict(env, NUMBA_CACHE_DIR=cache))[0]
        print_table(cases[: cases.index(case) + 1], programs, figures, sizes, same, first_run, args, cpu_seconds)
    if args.json:
        args.json.write_text(json.dumps({f"{c}|{n}": v for (c, n), v in figures.items()}, indent=1))
    return 0


def print_table(cases, programs, figures, sizes, same, first_run, args, cpu_seconds=None) -> None:
    names = list(programs)
    reference = "RELION" if "RELION" in programs else ("baseline --j 1" if "baseline --j 1" in programs else None)
    lines = [f"best of {args.repeats} interleaved runs, wall seconds of the whole command (median in brackets)", ""]
    header = "| case | " + " | ".join(names) + (f" | ratio to {reference} (--j 1 / --j 2)" if reference else "")
    with_baseline = reference == "RELION" and "baseline --j 1" in programs
    header += " | baseline's ratio to RELION (--j 1 / --j 2)" if with_baseline else ""
    header += " | CPU s, best (" + ", ".join(names) + ")" if cpu_seconds else ""
    header += " | output MB (" + ", ".join(names) + ") | peak RSS MiB (" + ", ".join(names) + ") | same pixels |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for case in cases:
        best = {n: min(s for s, _ in figures[(case, n)]) for n in names}
        median = {n: statistics.median(s for s, _ in figures[(case, n)]) for n in names}
        rss = {n: max(r for _, r in figures[(case, n)]) for n in names}
        cells = [f"{best[n]:.2f} ({median[n]:.2f})" for n in names]
        row = f"| {case} | " + " | ".join(cells)
        if reference:
            reference_j2 = "baseline --j 2" if reference == "baseline --j 1" else reference  # --j 2 against --j 2
            row += f" | {best[reference] / best['cryotiff --j 1']:.2f}x / {best[reference_j2] / best['cryotiff --j 2']:.2f}x"
        if with_baseline:
            row += f" | {best[reference] / best['baseline --j 1']:.2f}x / {best[reference] / best['baseline --j 2']:.2f}x"
        if cpu_seconds:
            row += " | " + ", ".join(f"{min(cpu_seconds[(case, n)]):.2f}" for n in names)
        row += " | " + ", ".join(f"{sizes[(case, n)] / 1e6:.1f}" for n in names)
        row += " | " + ", ".join(f"{rss[n]:.0f}" for n in names)
        row += " | " + "; ".join(f"{n}: {same[(case, n)]}" for n in names if (case, n) in same) + " |"
        lines.append(row)
    if first_run:
        lines += ["", "first run with an empty numba cache (cryotiff --j 1, once): "
                  + ", ".join(f"{c} {s:.2f} s" for c, s in first_run.items())]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
