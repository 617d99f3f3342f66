"""``--j N``: pages of one movie are made and encoded in threads; the output must not depend on N.

Every comparison is both byte-for-byte (the files) and pixel-for-pixel (decoded pages against the
source frames), because identical bytes alone would not catch a bug common to both runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryotiff.convert import ConvertOptions, PageAhead, PageSource, convert_movie, ordered_map
from cryotiff.errors import InputError
from cryotiff.jobs import Job, Reporter, make_executor, run_job
from cryotiff.simulate.detectors import counting_frames, falcon_frames
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames, temporary_files_of

THREAD_COUNTS = (1, 2, 3)


def convert_with_threads(movie: Path, out_dir: Path, threads: int, **option_values) -> Path:
    options = ConvertOptions(output_dir=out_dir, threads=threads, **option_values)
    destination = out_dir / (movie.stem + ".tif")
    out_dir.mkdir(parents=True, exist_ok=True)
    executor = make_executor(threads)
    try:
        convert_movie(movie, destination, options, executor=executor)
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
    return destination


def convert_source(source: PageSource, destination: Path, threads: int, **option_values) -> None:
    """Convert a page source of the tests with ``--j threads`` (its own pool, shut down after)."""
    executor = make_executor(threads)
    try:
        convert_movie(source.path, destination, ConvertOptions(threads=threads, **option_values), executor=executor,
                      source=source)
    finally:
        if executor is not None:
            executor.shutdown(wait=True)


@pytest.fixture(scope="module")
def falcon_movie(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = falcon_frames(7, shape_yx=(96, 4096 // 32), seed=3)
    path = write_mrc_movie(tmp_path_factory.mktemp("falcon") / "falcon.mrc", frames, 6, pixel_size_angstrom=0.8)
    return path, frames


@pytest.fixture(scope="module")
def k2_movie(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = counting_frames(9, shape_yx=(70, 58), dtype=np.int8, seed=4)
    path = write_mrc_movie(tmp_path_factory.mktemp("k2") / "k2.mrc", frames, 0)
    return path, frames


@pytest.mark.parametrize("compression", ["auto", "deflate", "lzw", "none"])
@pytest.mark.parametrize("line_by_line", [False, True])
@pytest.mark.parametrize("movie_name", ["falcon_movie", "k2_movie"])
def test_threads_give_identical_files(
    movie_name: str, compression: str, line_by_line: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    movie, frames = request.getfixturevalue(movie_name)
    outputs = {
        threads: convert_with_threads(movie, tmp_path / f"j{threads}", threads,
                                      compression=compression, line_by_line=line_by_line)
        for threads in THREAD_COUNTS
    }
    reference = outputs[1].read_bytes()
    for threads, path in outputs.items():
        np.testing.assert_array_equal(read_tiff_frames(path), frames, err_msg=f"--j {threads}")
        assert path.read_bytes() == reference, f"--j {threads} differs from --j 1"


@pytest.mark.parametrize("wide_frame", [5, 0, 1])
def test_float_movie_rewritten_wider_gives_identical_files(wide_frame: int, tmp_path: Path) -> None:
    """An all-integer float movie is written as int8 until a frame needs uint16; the rewrite is
    triggered inside a worker thread while other pages are in flight (frame 5), while the codec
    is decided on page 0 with page 1 being made ahead (frame 0), or by the page made ahead
    (frame 1). The same pixels and the same file at every --j."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 100, (8, 40, 50)).astype(np.float32)
    frames[wide_frame, 3, 7] = 40000.0
    movie = write_mrc_movie(tmp_path / "float.mrc", frames, 2)
    outputs = [convert_with_threads(movie, tmp_path / f"j{threads}", threads) for threads in THREAD_COUNTS]
    for path in outputs:
        decoded = read_tiff_frames(path)
        assert decoded.dtype == np.uint16
        np.testing.assert_array_equal(decoded, frames)
        assert path.read_bytes() == outputs[0].read_bytes()


# --------------------------------------------------------------------------- order and errors


class SlowFirstPages(PageSource):
    """Pages that finish in reverse order when made concurrently (earlier pages sleep longer),
    each filled with its own index so that a page written out of order is visible."""

    def __init__(self, path: Path, n_pages: int, fail_at: int | None = None, error: type[BaseException] = InputError):
        self.path = path
        self.n_pages = n_pages
        self.shape_yx = (16, 24)
        self.dtype = np.dtype(np.uint16)
        self.pixel_size_angstrom = None
        self.input_bytes = n_pages * 16 * 24 * 2
        self.fail_at = fail_at
        self.error = error
        self.started: list[int] = []
        self._lock = threading.Lock()

    def page(self, index: int) -> np.ndarray:
        with self._lock:
            self.started.append(index)
        time.sleep(0.002 * (self.n_pages - index) if index % 3 == 0 else 0)
        if index == self.fail_at:
            raise self.error(f"{self.path}: page {index + 1} is broken")
        return np.full(self.shape_yx, index, dtype=self.dtype) + np.arange(24, dtype=self.dtype)


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_pages_stay_in_order_when_tasks_finish_out_of_order(threads: int, tmp_path: Path) -> None:
    source = SlowFirstPages(tmp_path / "fake.mrc", 13)
    destination = tmp_path / "fake.tif"
    convert_source(source, destination, threads)
    decoded = read_tiff_frames(destination)
    expected = np.stack([source.page(k) for k in range(13)])
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("threads", (2, 3))
@pytest.mark.parametrize("error", [InputError, RuntimeError])
def test_error_in_one_page_task_leaves_no_file(threads: int, error: type[BaseException], tmp_path: Path) -> None:
    source = SlowFirstPages(tmp_path / "broken.mrc", 12, fail_at=6, error=error)
    destination = tmp_path / "broken.tif"
    executor = make_executor(threads)
    try:
        with pytest.raises(error, match="page 7 is broken"):
            convert_movie(source.path, destination, ConvertOptions(threads=threads), executor=executor, source=source)
        # The executor is still usable for the next movie (nothing was left running on it).
        assert executor.submit(lambda: 42).result(timeout=10) == 42
    finally:
        executor.shutdown(wait=True)
    assert not destination.exists()
    assert not temporary_files_of(destination)
    assert list(tmp_path.iterdir()) == []


def test_error_in_a_thread_becomes_a_failed_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``run_job``: a broken frame in the middle of a real movie read by worker threads."""
    frames = counting_frames(6, shape_yx=(20, 30), dtype=np.int8, seed=1)
    movie = write_mrc_movie(tmp_path / "m.mrc", frames, 0)
    import cryotiff.io.mrc as mrc

    original = mrc.MrcMovie.read_frame

    def read_frame(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        if index == 4:
            raise InputError(f"{self.info.path}: frame {index} is unreadable")
        return original(self, index, out)

    monkeypatch.setattr(mrc.MrcMovie, "read_frame", read_frame)
    job = Job(movie, tmp_path / "out" / "m.tif")
    executor = make_executor(2)
    try:
        result = run_job(job, ConvertOptions(output_dir=tmp_path / "out", threads=2), executor, Reporter())
    finally:
        executor.shutdown(wait=True)
    assert result.status == "failed"
    assert "frame 4 is unreadable" in result.message
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- the bounded window


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 30), window=st.integers(1, 6), threads=st.integers(1, 4))
def test_ordered_map_is_map_in_order_with_a_bounded_window(count: int, window: int, threads: int) -> None:
    """Results come in order, and when result ``i`` is handed over no task beyond ``i + window``
    has been started: memory stays ``window`` pages deep whatever the movie length."""
    started: list[int] = []
    lock = threading.Lock()

    def task(index: int) -> int:
        with lock:
            started.append(index)
        if index % 2:
            time.sleep(0.0005)
        return index * index

    executor = make_executor(threads) if threads > 1 else None
    try:
        results = []
        for position, value in enumerate(ordered_map(task, count, executor, window)):
            with lock:
                assert max(started) <= position + window
            results.append(value)
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
    assert results == [k * k for k in range(count)]


def test_ordered_map_cancels_pending_tasks_when_the_consumer_stops() -> None:
    executor = make_executor(2)
    started: list[int] = []
    try:
        gate = threading.Event()

        def task(index: int) -> int:
            started.append(index)
            gate.wait(5)
            return index

        iterator = ordered_map(task, 100, executor, window=4)
        gate.set()
        assert next(iterator) == 0
        iterator.close()  # the consumer stops (a write error, for example)
    finally:
        executor.shutdown(wait=True)
    assert max(started) < 10


def test_no_executor_means_inline(tmp_path: Path) -> None:
    """``--j 1`` runs every page in the caller's thread."""
    threads_seen: set[int] = set()

    class Recording(SlowFirstPages):
        def page(self, index: int) -> np.ndarray:
            threads_seen.add(threading.get_ident())
            return super().page(index)

    source = Recording(tmp_path / "fake.mrc", 4)
    convert_movie(source.path, tmp_path / "fake.tif", ConvertOptions(), executor=None, source=source)
    assert threads_seen == {threading.get_ident()}



def test_two_threads_make_two_pages_at_once(tmp_path: Path) -> None:
    """``--j 2``: the next page is made while the one before is still being made or encoded
    (two page tasks meet at a barrier, which a single thread would never pass). Pages 2 and 3:
    page 1 is made ahead, beside page 0 (test_page_1_is_made_while_page_0_decides_the_codec)."""
    meeting = threading.Barrier(2, timeout=60)
    threads_seen: set[int] = set()

    class Meeting(SlowFirstPages):
        def page(self, index: int) -> np.ndarray:
            threads_seen.add(threading.get_ident())
            if index in (2, 3):
                meeting.wait()
            return super().page(index)

    source = Meeting(tmp_path / "fake.mrc", 6)
    convert_source(source, tmp_path / "fake.tif", 2)
    assert len(threads_seen - {threading.get_ident()}) == 2
    expected = np.stack([SlowFirstPages.page(source, k) for k in range(6)])
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "fake.tif"), expected)


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_pages_in_memory_stay_within_the_window(threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's strips are let go once written, before the next page is asked for: when a page
    is started, the strips of at most ``threads`` other pages are alive with ``--j threads``
    (those made ahead and the one being written), none with ``--j 1``, besides the first strip
    of the movie, which tifffile's writer keeps (it looks at it before writing), whatever the
    movie length."""
    import cryotiff.convert as convert_module

    alive: set[int] = set()
    most_alive = [0]
    lock = threading.Lock()

    class Strip(bytes):
        """A strip that says when it is let go."""

        def __del__(self) -> None:
            with lock:
                alive.discard(self.page_index)

    encode_page = convert_module._encode_page

    def tracked_encode_page(source, codec, rows_per_strip, verify, index, *args):
        encoded_page = encode_page(source, codec, rows_per_strip, verify, index, *args)
        strips = []
        for data in encoded_page.strips:
            strip = Strip(data)
            strip.page_index = index
            strips.append(strip)
        encoded_page.strips = strips
        del strips
        with lock:
            alive.add(index)
        return encoded_page

    class Counted(SlowFirstPages):
        def page(self, index: int) -> np.ndarray:
            with lock:
                most_alive[0] = max(most_alive[0], len(alive - {0}))
            return super().page(index)

    monkeypatch.setattr(convert_module, "_encode_page", tracked_encode_page)
    source = Counted(tmp_path / "fake.mrc", 20)
    convert_source(source, tmp_path / "fake.tif", threads, compression="none")
    assert most_alive[0] <= (threads if threads > 1 else 0)
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "fake.tif"),
                                  np.stack([SlowFirstPages.page(source, k) for k in range(20)]))


# --------------------------------------------------------------------------- page 1 made ahead


class RecordingPages(SlowFirstPages):
    """Records which pages were made, which were handed back and when the source was closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.made: list[int] = []
        self.recycled: list[int] = []
        self.made_after_close: list[int] = []
        self.closed = False

    def page(self, index: int) -> np.ndarray:
        page = super().page(index)
        with self._lock:
            self.made.append(index)
            if self.closed:
                self.made_after_close.append(index)
        return page

    def recycle(self, page: np.ndarray) -> None:
        with self._lock:
            self.recycled.append(int(page[0, 0]))

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("threads", (2, 3))
def test_page_1_is_made_while_page_0_decides_the_codec(threads: int, tmp_path: Path) -> None:
    """``--j 2``: ``auto`` decides the codec on page 0 in the calling thread; page 1 is made on
    the pool meanwhile (page 0 and page 1 meet at a barrier, which page 0 would never pass if
    page 1 waited for the decision), and each page is still made once."""
    meeting = threading.Barrier(2, timeout=120)
    caller = threading.get_ident()
    made_on: dict[int, int] = {}

    class Meeting(RecordingPages):
        def page(self, index: int) -> np.ndarray:
            made_on[index] = threading.get_ident()
            if index in (0, 1):
                meeting.wait()
            return super().page(index)

    source = Meeting(tmp_path / "fake.mrc", 5)
    convert_source(source, tmp_path / "fake.tif", threads, compression="auto")
    assert made_on[0] == caller and made_on[1] != caller
    assert sorted(source.made) == list(range(5))
    np.testing.assert_array_equal(read_tiff_frames(tmp_path / "fake.tif"),
                                  np.stack([SlowFirstPages.page(source, k) for k in range(5)]))


@pytest.mark.parametrize("compression", ["auto", "deflate"])
def test_a_page_made_ahead_is_let_go_when_page_0_fails(compression: str, tmp_path: Path) -> None:
    """Page 0 fails while page 1 is made ahead: the movie fails with page 0's error, page 1 is
    waited for (it reads the source, which is closed next) and handed back, and nothing is left.
    (Page tasks already running when a page fails are not waited for, as before: ordered_map.)"""
    source = RecordingPages(tmp_path / "broken.mrc", 6, fail_at=0)
    destination = tmp_path / "broken.tif"
    executor = make_executor(2)
    try:
        with pytest.raises(InputError, match="page 1 is broken"):
            convert_movie(source.path, destination, ConvertOptions(threads=2, compression=compression),
                          executor=executor, source=source)
        assert executor.submit(lambda: 42).result(timeout=60) == 42
    finally:
        executor.shutdown(wait=True)
    assert PageAhead.INDEX not in source.made_after_close
    if 1 in source.made:
        assert 1 in source.recycled
    assert not destination.exists() and list(tmp_path.iterdir()) == []


def test_a_page_made_ahead_that_fails_fails_its_movie(tmp_path: Path) -> None:
    source = RecordingPages(tmp_path / "broken.mrc", 6, fail_at=1)
    destination = tmp_path / "broken.tif"
    with pytest.raises(InputError, match="page 2 is broken"):
        convert_source(source, destination, 2)
    assert PageAhead.INDEX not in source.made_after_close
    assert not destination.exists() and list(tmp_path.iterdir()) == []
