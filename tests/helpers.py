"""Test helpers: every conversion test decodes the written TIFF and compares pixels."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import tifffile

#: Real EPU images for the few tests that use them: the directory named by CRYOTIFF_REAL_DATA, else
#: ../shared/data/real beside the repository. Without them those tests are skipped (see real_data).
REAL_DATA = Path(os.environ.get("CRYOTIFF_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "real")

#: The real images, by the name the tests use, and their name in tests/test_data/ of mrcfile's
#: source distribution (mrcfile 1.5.4, BSD licence), where they come from.
REAL_DATA_SOURCES = {
    "falcon_epu2.9_single_frame.mrc": "epu2.9_example.mrc",
    "k2_epu1.2_single_frame.mrc": "fei-extended.mrc",
}


def real_data(name: str) -> Path:
    """The path of the real image ``name``; skips the test, saying how to provide it, if it is
    not there."""
    import pytest

    path = REAL_DATA / name
    if not path.is_file():
        pytest.skip(
            f"{path} is not available. To run this test, take {REAL_DATA_SOURCES[name]} from tests/test_data/ "
            "of mrcfile's source distribution (pip download --no-deps --no-binary :all: mrcfile==1.5.4), "
            f"save it as {name} in a directory and set CRYOTIFF_REAL_DATA to that directory"
        )
    return path


def read_tiff_frames(path: Path) -> np.ndarray:
    """All pages of a movie TIFF, flipped back to raster order (the documented vertical flip):
    ``result[k]`` should equal frame ``k`` of the source movie."""
    with tifffile.TiffFile(path) as tif:
        pages = np.stack([page.asarray() for page in tif.pages])
    return pages[:, ::-1, :]


def temporary_files_of(destination: Path) -> list[Path]:
    """Temporary files of ``destination``: cryotiff's ``X.tif.cryotiff-<pid>-<hex>.tmp``, and
    ``X.tif.tmp`` (RELION's name, which cryotiff used too before it locked its files)."""
    destination = Path(destination)
    return sorted(destination.parent.glob(glob.escape(destination.name) + "*.tmp"))


def is_temporary_of(path: str | Path, output_name: str) -> bool:
    """``path`` is a temporary file of the output named ``output_name`` (``a.tif``)."""
    name = Path(path).name
    return name.startswith(output_name + ".") and name.endswith(".tmp")


def tiff_tags(path: Path, page: int = 0) -> dict[str, object]:
    with tifffile.TiffFile(path) as tif:
        return {tag.name: tag.value for tag in tif.pages[page].tags.values()}


def libtiff_decodes(path: Path) -> None:
    """Decode every strip with libtiff's own tools (Debian's libtiff-tools) when installed."""
    tiffinfo = shutil.which("tiffinfo")
    if tiffinfo is None:
        return
    completed = subprocess.run([tiffinfo, "-D", str(path)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "error" not in completed.stderr.lower(), completed.stderr


def wait_until(condition, what: str, process, timeout: float = 60.0) -> None:
    """Poll ``condition()`` until it is true; fail if ``process`` (a Popen) ends first or after
    ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.communicate()}")
        time.sleep(0.005)
    raise AssertionError(f"{what}: not within {timeout:g} s")


#: How long a test waits for a subprocess (or a condition on one) before calling it hung. Only a
#: hang must fail: CI's loaded 2-core machine once needed more than 120 s for a run of seconds.
HANG_SECONDS = 600.0


class OutputSoFar:
    """What a running process (a text-mode Popen with pipes for stdout and stderr) has written
    so far, read by two threads as it comes, so that a test waits for a line (``wait_until``)
    instead of sleeping for as long as the line usually takes."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self._parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._threads = [threading.Thread(target=self._read, args=(name,), daemon=True) for name in self._parts]
        for thread in self._threads:
            thread.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.process, name)
        try:
            for line in stream:
                self._parts[name].append(line)
        finally:
            stream.close()  # as communicate() closes it

    def text(self, name: str = "stdout") -> str:
        return "".join(list(self._parts[name]))

    def finish(self, timeout: float = HANG_SECONDS) -> tuple[str, str]:
        """Wait for the process to end and its pipes to close: ``(stdout, stderr)``.

        Raises:
            subprocess.TimeoutExpired: it has not ended after ``timeout`` seconds.
        """
        self.process.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout)
        return self.text("stdout"), self.text("stderr")


def start_process(command: list[str], **popen_arguments) -> subprocess.Popen:
    """``subprocess.Popen(command, **popen_arguments)`` with SIGINT and SIGHUP at their default
    actions in the child, also when this process ignores them (SIGHUP: under ``nohup``).

    A shell without job control (``python -m pytest &`` in a script, a CI runner) starts pytest
    with SIGINT ignored, and an ignored signal stays ignored across ``exec``: the child would
    ignore the Ctrl-C a test sends it (Python installs its KeyboardInterrupt handler only where
    SIGINT was not ignored). A caught signal is reset to its default by ``exec``, so SIGINT is
    caught here while the child starts (no ``preexec_fn``, which is unsafe with threads).
    Call it from the main thread, as tests run.
    """
    caught_while_starting = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: lambda signum, frame: None}
    ignored = [signum for signum in caught_while_starting if signal.getsignal(signum) == signal.SIG_IGN]
    for signum in ignored:
        signal.signal(signum, caught_while_starting[signum])
    try:
        return subprocess.Popen(command, **popen_arguments)
    finally:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def sigint_handler_that_says_so():
    """SIGINT raises KeyboardInterrupt (as Python's own handler does), also where pytest was
    started with SIGINT ignored (``python -m pytest &`` in a script, a CI runner: an ignored signal
    sent by ``pthread_kill`` is lost), and sets the event it yields first, so that a test (or the
    work it holds) knows the interrupt has landed."""
    landed = threading.Event()

    def on_sigint(signum, frame):
        landed.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield landed
    finally:
        signal.signal(signal.SIGINT, previous)


def int16_movie(path: str | Path, seed: int, n_frames: int = 3, shape_yx: tuple[int, int] = (16, 20)) -> np.ndarray:
    """A small int16 MRC movie (mode 1) of random counts at ``path`` (its directory made); its frames."""
    from cryotiff.simulate.write import write_mrc_movie

    frames = np.random.default_rng(seed).integers(-3, 9, (n_frames, *shape_yx)).astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(Path(path), frames, 1)
    return frames


def verdict_lines(text: str) -> list[str]:
    """The verdict lines of --verify_only's output (OK, DIFFERS, MISSING, UNCHECKED), in order."""
    return [line for line in text.splitlines() if line.split(" ")[0] in ("OK", "DIFFERS", "MISSING", "UNCHECKED")]
