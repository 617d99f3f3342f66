"""Readers and writers of movie files.

Every reader returns a :class:`Movie`: header facts in :class:`MovieInfo` plus random access to
frames. Frames are numpy arrays of shape ``(ny, nx)`` in the file's own raster order (MRC row 0
first, EER raster row 0 first); only the TIFF reader and writer know about TIFF's vertical flip.

This package imports nothing from the rest of cryotiff except :mod:`cryotiff.errors` and, for
the EER decoder, :mod:`cryotiff.kernels` (the compiled loops; a leaf that imports only numpy and
numba).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from cryotiff.errors import CryotiffError, InputError


def check_regular_file(
    path: str | os.PathLike[str], what: str = "a movie", error: type[CryotiffError] = InputError
) -> int:
    """Return the size in bytes of ``path``; raise ``error`` (naming the file) if it is missing,
    unreadable, a directory, or not a regular file.

    Only a look by name: a file read afterwards must be opened with :func:`open_regular_file`,
    which makes the same refusals of the descriptor it opened (a name checked here can be taken
    by a named pipe before an open by name, which would then block for ever). Symbolic links
    are followed (a link to a regular file is fine). ``what`` completes the messages, e.g.
    ``"an MRC file"``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{os.fspath(path)}: no such file.") from None
    except OSError as err:
        raise error(f"{os.fspath(path)}: cannot be read ({err.strerror or err}).") from None
    _refuse_unless_regular(path, st.st_mode, what, error)
    return st.st_size


def _refuse_unless_regular(path: str | os.PathLike[str], mode: int, what: str, error: type[CryotiffError]) -> None:
    if stat.S_ISDIR(mode):
        raise error(f"{os.fspath(path)}: is a directory, not {what}.")
    if not stat.S_ISREG(mode):
        raise error(f"{os.fspath(path)}: is {special_file_kind(mode)}, not a regular file; {what} must be a "
                    "regular file.")


#: How an input is opened: read-only; ``O_NONBLOCK`` so that neither a named pipe nor a device
#: at the name can block the open, ``O_NOCTTY`` so that a terminal there never becomes ours.
_READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


def open_regular_file(
    path: str | os.PathLike[str], what: str = "a movie", error: type[CryotiffError] = InputError,
    dir_fd: int | None = None,
) -> int:
    """Open ``path`` for reading and return the descriptor, which the caller closes; raise
    ``error`` (naming the file, as :func:`check_regular_file` does) if it is missing,
    unreadable, a directory, or not a regular file.

    The refusals are made of the file opened (``fstat`` of the descriptor), not of the name
    before opening it: the open itself cannot block (``O_NONBLOCK``: a named pipe put at the
    name after any earlier check is opened at once, then refused), and ``O_NONBLOCK`` is
    cleared before the descriptor is handed back, so reads through it wait for the disk as
    usual. Read everything through this descriptor (``os.pread``, :func:`open_regular_stream`),
    never the name again. Symbolic links are followed, except with ``dir_fd`` (a descriptor
    of ``path``'s directory, in which its name is opened): then a link is refused.
    """
    try:
        fd, status = open_to_read(path, dir_fd)
    except FileNotFoundError:
        raise error(f"{os.fspath(path)}: no such file.") from None
    except OSError as err:
        if err.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV):  # a socket, a device without a driver
            try:
                _refuse_unless_regular(path, _stat_of(path, dir_fd).st_mode, what, error)
            except OSError:
                pass
        raise error(f"{os.fspath(path)}: cannot be read ({err.strerror or err}).") from None
    try:
        _refuse_unless_regular(path, status.st_mode, what, error)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stat_of(path: str | os.PathLike[str], dir_fd: int | None) -> os.stat_result:
    if dir_fd is None:
        return os.stat(path)
    return os.stat(Path(path).name, dir_fd=dir_fd, follow_symlinks=False)


def open_to_read(path: str | os.PathLike[str], dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """``(descriptor, its fstat)`` of ``path`` opened read-only without blocking, whatever it is
    (see :func:`open_regular_file`, which refuses all but regular files); for a regular file
    ``O_NONBLOCK`` is cleared again. The caller closes the descriptor. With ``dir_fd``, the
    name of ``path`` is opened in that directory, never through a symbolic link.

    Raises:
        OSError: it cannot be opened.
    """
    if dir_fd is None:
        fd = os.open(path, _READ_FLAGS)
    else:
        fd = os.open(Path(path).name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode) and _READ_FLAGS & getattr(os, "O_NONBLOCK", 0):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, status


def open_regular_stream(
    path: str | os.PathLike[str], what: str = "a movie", error: type[CryotiffError] = InputError
) -> BinaryIO:
    """:func:`open_regular_file` as a binary file object (buffered, its ``name`` the path),
    for readers that take one (tifffile); the caller closes it."""
    fd = open_regular_file(path, what, error)
    try:
        return open(os.fspath(path), "rb", opener=lambda *_: fd)  # noqa: SIM115
    except BaseException:
        os.close(fd)
        raise


def pread_exactly(fd: int, n_bytes: int, offset: int) -> bytes:
    """Up to ``n_bytes`` from ``offset`` of ``fd`` (fewer only at the end of the file), read
    with ``os.pread``: the descriptor's offset, which other threads may share, is not moved."""
    parts = []
    while n_bytes > 0:
        part = os.pread(fd, n_bytes, offset)
        if not part:
            break
        parts.append(part)
        n_bytes -= len(part)
        offset += len(part)
    return b"".join(parts)


def special_file_kind(mode: int) -> str:
    """What a file that is not a regular file is, from its ``st_mode``: ``a directory``, ``a
    named pipe (FIFO)``, ``a socket``, ``a device`` or ``a special file``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


class HeldFile:
    """A file held open (read-only) while a movie is converted, to tell afterwards whether its
    content changed (by the held descriptor: its size and modification time) and whether its
    name still leads to it. A reader keeps reading the file it opened when the name is removed
    or taken by another file, so only a change of content spoils the pages read.

    ``descriptor``: the one the movie's reader reads its pages through; the held file is a
    duplicate of it, so that it is the very file converted whatever happens to the name. Without
    one, ``path`` is opened (without blocking: a named pipe put at the name meanwhile must not
    block the open)."""

    def __init__(self, path: str | os.PathLike[str], descriptor: int | None = None):
        self.path = path
        self._fd: int | None = None
        self._before: os.stat_result | None = None
        try:
            self._fd = os.dup(descriptor) if descriptor is not None else os.open(path, _READ_FLAGS)
            self._before = os.fstat(self._fd)
        except OSError:
            self.close()

    @property
    def identity(self) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the held file, None if it could not be opened."""
        return None if self._before is None else (self._before.st_dev, self._before.st_ino)

    def fileno(self) -> int | None:
        """The held descriptor (None if the file could not be opened); closed by :meth:`close`."""
        return self._fd

    def status_when_opened(self) -> os.stat_result | None:
        """Its ``fstat`` when it was opened (None if it could not be)."""
        return self._before

    def content_change(self) -> str | None:
        """How the held file's content changed since it was opened (``its size went from 10 to
        12 bytes``, ``it was written to``); None if it did not, or cannot be told."""
        if self._fd is None or self._before is None:
            return None
        try:
            now = os.fstat(self._fd)
        except OSError:
            return None
        if now.st_size != self._before.st_size:
            return f"its size went from {self._before.st_size} to {now.st_size} bytes"
        if now.st_mtime_ns != self._before.st_mtime_ns:
            return "it was written to"
        return None

    def name_change(self) -> str | None:
        """``it was removed`` or ``another file took its name`` when the path no longer leads to
        the held file; None if it does (or cannot be told)."""
        if self._before is None:
            return None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "it was removed"
        except OSError:
            return None
        if (now.st_dev, now.st_ino) != (self._before.st_dev, self._before.st_ino):
            return "another file took its name"
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TifffileLog(logging.Handler):
    """tifffile's log records of warning level and above: ``messages`` all of them, ``errors``
    those of error level (a damaged IFD: tifffile then silently reports fewer pages)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if record.levelno >= logging.ERROR:
            self.errors.append(message)


@contextlib.contextmanager
def capture_tifffile_log() -> Iterator[TifffileLog]:
    """Collect tifffile's log records instead of letting Python's last-resort handler print
    them. tifffile reports damaged IFDs this way rather than raising, so readers must look at
    what was logged."""
    logger = logging.getLogger("tifffile")
    capture = TifffileLog()
    logger.addHandler(capture)
    previous = logger.propagate
    logger.propagate = False
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.propagate = previous


@dataclass(frozen=True)
class MovieInfo:
    """Header facts of one movie.

    Attributes:
        path: the movie file.
        kind: ``"mrc"``, ``"tiff"`` or ``"eer"``.
        n_frames: number of frames (for EER: raw detector frames).
        shape_yx: ``(ny, nx)`` of one frame as yielded by the reader.
        dtype: numpy dtype of the frames yielded by the reader.
        mrc_mode: the MRC header's MODE word (None for TIFF and EER).
        pixel_size_angstrom: pixel size from the header (MRC ``cella.x / mx``; TIFF resolution
            tags), or None when the file carries none.
        frame_nbytes: bytes one frame occupies in the input file (before any unpacking); used for
            throughput figures.
        extra: reader-specific facts (for example the EER bit widths).
        warnings: what the reader tolerated and the user should know (data after the last
            frame, malformed resolution tags), complete sentences naming the file.
    """

    path: Path
    kind: str
    n_frames: int
    shape_yx: tuple[int, int]
    dtype: np.dtype
    mrc_mode: int | None = None
    pixel_size_angstrom: float | None = None
    frame_nbytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def will_need(fd: int, offset: int, n_bytes: int) -> None:
    """Tell the operating system that ``n_bytes`` at ``offset`` of ``fd`` will be read soon
    (``posix_fadvise`` ``WILLNEED``: it starts reading them into the page cache without waiting),
    so that the disk works while the frame before is converted. Only a hint: where it is not
    available or refused, nothing happens."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or n_bytes <= 0:
        return
    try:
        advise(fd, offset, n_bytes, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


class Movie:
    """A movie opened for reading. Use as a context manager; ``read_frame`` is thread-safe."""

    info: MovieInfo
    #: Whether ``read_frame(index, out=frame)`` reads into an earlier frame (MRC).
    reads_into = False

    def read_frame(self, index: int) -> np.ndarray:
        """Return frame ``index`` (0-based) as an array of shape ``info.shape_yx``, raster order."""
        raise NotImplementedError

    def iter_frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield frames ``start`` .. ``stop - 1`` one at a time (memory stays one frame deep)."""
        stop = self.info.n_frames if stop is None else stop
        for index in range(start, stop):
            yield self.read_frame(index)

    def close(self) -> None:
        """Release the file (idempotent)."""

    def __enter__(self) -> "Movie":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameRecycler:
    """Frames of one movie read into arrays that their users handed back, instead of fresh ones
    (each fresh frame-sized array costs its page faults again: 10 ms per 57 MB float32 frame,
    15 ms per 32 MB Falcon frame, about a third of reading it from the page cache).

    Only frames given to :meth:`give_back` are read into again, so a frame that anyone still
    holds is never overwritten: a user gives a frame back once it has let go of it and of every
    view of it. Thread-safe. For movies that cannot read into a given array (``reads_into``
    false) it reads fresh frames and keeps nothing.

    Attributes:
        movie: the movie read.
        capacity: frames kept for reuse at most (those given back beyond it are let go).
    """

    def __init__(self, movie: Movie, capacity: int):
        self.movie = movie
        self.capacity = capacity if movie.reads_into else 0
        self._free: list[np.ndarray] = []

    def read(self, index: int) -> np.ndarray:
        """Frame ``index``, as ``movie.read_frame(index)`` gives it."""
        try:
            spare = self._free.pop()  # list.pop and append are atomic: no lock needed
        except IndexError:
            return self.movie.read_frame(index)
        return self.movie.read_frame(index, out=spare)

    def give_back(self, frame: np.ndarray) -> None:
        """Hand back a frame from :meth:`read` that nothing uses any more (a frame of another
        shape or type is ignored: the movie would not read into it)."""
        if (len(self._free) < self.capacity and frame.base is None and frame.shape == tuple(self.movie.info.shape_yx)
                and frame.dtype == self.movie.info.dtype):
            self._free.append(frame)

    def let_go(self) -> None:
        """Keep no frame any more (the movie is finished)."""
        self._free = []
